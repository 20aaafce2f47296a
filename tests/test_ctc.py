"""ctc family: ctc_loss against torch.nn.functional.ctc_loss and the float64
oracles (alpha-beta recursion, brute-force enumeration); decoders against
brute force."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, HAS_CUDA
from hypothesis import given
from hypothesis import strategies as st
from reference import ctc as ref

from visionops import nn as vnn
from visionops import ops

# float64: both implementations run the same recursion in float64 with sums in
# a different order; over <= a few hundred log-add-exps the difference is ~1e-13.
FP64_TOL = dict(rtol=1e-9, atol=1e-9)
# float32: log-space recursions over T <= 40 steps drift by ~T ulps of the loss.
FP32_TOL = dict(rtol=1e-4, atol=1e-4)


def min_input_length(target) -> int:
    """T is just feasible at S + (number of adjacent repeats): a blank must separate them."""
    return len(target) + sum(1 for a, b in zip(target, target[1:]) if a == b)


@st.composite
def ctc_cases(draw, max_t=30, max_n=4, max_c=12, max_s=10):
    c = draw(st.integers(2, max_c))
    blank = draw(st.sampled_from([0, c - 1, draw(st.integers(0, c - 1))]))
    labels = [k for k in range(c) if k != blank]
    # few distinct labels make repeats (aa, aba) likely
    alphabet = labels[: draw(st.integers(1, len(labels)))]
    n = draw(st.integers(1, max_n))
    t = draw(st.integers(1, max_t))
    s = draw(st.integers(0, max_s))
    targets, input_lengths = [], []
    for _ in range(n):
        target = draw(st.lists(st.sampled_from(alphabet), min_size=0, max_size=s))
        need = min_input_length(target)
        kind = draw(st.sampled_from(["any", "barely", "infeasible"]))
        if kind == "barely" and need <= t:
            length = need
        elif kind == "infeasible" and need >= 1:
            length = min(need - 1, t)
        else:
            length = draw(st.integers(0, t))
        targets.append(target)
        input_lengths.append(length)
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(t=t, c=c, blank=blank, targets=targets, input_lengths=input_lengths, seed=seed)


def make_inputs(case, dtype=torch.float64, device="cpu", concatenated=False, pad_value=None):
    g = torch.Generator().manual_seed(case["seed"])
    n = len(case["targets"])
    logits = torch.randn(case["t"], n, case["c"], generator=g, dtype=torch.float64) * 2
    log_probs = logits.log_softmax(2).to(device=device, dtype=dtype)
    lengths = [len(tg) for tg in case["targets"]]
    if concatenated:
        targets = torch.tensor([k for tg in case["targets"] for k in tg], dtype=torch.long)
    else:
        width = max(lengths + [0])
        # padding is ignored whatever it holds: fill it with blank or garbage
        fill = case["blank"] if pad_value is None else pad_value
        targets = torch.full((n, width), fill, dtype=torch.long)
        for i, tg in enumerate(case["targets"]):
            targets[i, : len(tg)] = torch.tensor(tg, dtype=torch.long)
    il = torch.tensor(case["input_lengths"], dtype=torch.long)
    tl = torch.tensor(lengths, dtype=torch.long)
    return log_probs, targets.to(device), il, tl


def both(fn_args, reduction, zero_infinity, blank, log_probs, fns=(ops.ctc_loss, F.ctc_loss)):
    """(loss, grad) of visionops and torch on the same inputs."""
    out = []
    for fn in fns:
        x = log_probs.detach().clone().requires_grad_(True)
        loss = fn(x, *fn_args, blank=blank, reduction=reduction, zero_infinity=zero_infinity)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        out.append((loss.detach(), grad))
    return out


# ---------------------------------------------------------------- against F.ctc_loss


@pytest.mark.parametrize("device", DEVICES)
@given(
    case=ctc_cases(),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    zero_infinity=st.booleans(),
    concatenated=st.booleans(),
)
def test_matches_torch_ctc_loss(device, case, reduction, zero_infinity, concatenated):
    log_probs, targets, il, tl = make_inputs(case, device=device, concatenated=concatenated, pad_value=-7)
    (loss, grad), (loss_ref, grad_ref) = both((targets, il, tl), reduction, zero_infinity, case["blank"], log_probs)
    torch.testing.assert_close(loss, loss_ref, equal_nan=True, **FP64_TOL)
    # impossible alignments without zero_infinity: torch's gradient rows are NaN, ours too
    torch.testing.assert_close(grad, grad_ref, equal_nan=True, **FP64_TOL)


@pytest.mark.parametrize("device", DEVICES)
@given(case=ctc_cases(max_t=40, max_c=40, max_s=12), zero_infinity=st.booleans())
def test_float32_matches_torch(device, case, zero_infinity):
    log_probs, targets, il, tl = make_inputs(case, dtype=torch.float32, device=device)
    # CUDA: float64 torch is the reference (float32 could take the cuDNN path)
    (loss, grad), _ = both((targets, il, tl), "none", zero_infinity, case["blank"], log_probs)
    (loss_ref, grad_ref), _ = both((targets, il, tl), "none", zero_infinity, case["blank"], log_probs.double())
    (loss_t, grad_t) = both((targets, il, tl), "none", zero_infinity, case["blank"], log_probs)[1]
    torch.testing.assert_close(loss.double(), loss_ref, equal_nan=True, **FP32_TOL)
    torch.testing.assert_close(grad.double(), grad_ref, equal_nan=True, **FP32_TOL)
    torch.testing.assert_close(loss, loss_t, equal_nan=True, **FP32_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_lengths_as_tuples_and_mixed_devices(device):
    case = dict(t=12, c=5, blank=0, targets=[[1, 2, 2], [3], []], input_lengths=[12, 7, 3], seed=1)
    log_probs, targets, il, tl = make_inputs(case, device=device)
    expected = F.ctc_loss(log_probs, targets, il, tl, reduction="none")
    for args in [(tuple(il.tolist()), tuple(tl.tolist())), (il, tl), (il.to(device), tl.to(device))]:
        torch.testing.assert_close(ops.ctc_loss(log_probs, targets, *args, reduction="none"), expected, **FP64_TOL)
    # targets may stay on the CPU, like torch's (cuDNN-style) calls
    torch.testing.assert_close(ops.ctc_loss(log_probs, targets.cpu(), il, tl, reduction="none"), expected, **FP64_TOL)
    # int32 targets and lengths
    out = ops.ctc_loss(log_probs, targets.int(), il.int(), tl.int(), reduction="none")
    torch.testing.assert_close(out, expected, **FP64_TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_unbatched_input(device, reduction):
    case = dict(t=10, c=6, blank=2, targets=[[1, 1, 4, 5]], input_lengths=[9], seed=2)
    log_probs, targets, il, tl = make_inputs(case, device=device)
    x = log_probs[:, 0].clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    loss = ops.ctc_loss(x, targets[0], il[0], tl[0], blank=2, reduction=reduction)
    loss_ref = F.ctc_loss(x_ref, targets[0], il[0], tl[0], blank=2, reduction=reduction)
    assert loss.shape == loss_ref.shape
    torch.testing.assert_close(loss, loss_ref, **FP64_TOL)
    loss.backward()
    loss_ref.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **FP64_TOL)


# ---------------------------------------------------------------- against the float64 oracles


@given(case=ctc_cases(max_t=12, max_n=3, max_c=6, max_s=5))
def test_matches_alpha_beta_oracle(case):
    log_probs, targets, il, tl = make_inputs(case)
    x = log_probs.clone().requires_grad_(True)
    loss = ops.ctc_loss(x, targets, il, tl, blank=case["blank"], reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    for i, target in enumerate(case["targets"]):
        lp = log_probs[: il[i], i].numpy()
        expected = ref.nll(lp, target, case["blank"])
        assert math.isclose(loss[i].item(), expected, rel_tol=1e-9, abs_tol=1e-9) or loss[i].item() == expected
        g = np.zeros((case["t"], case["c"]))
        g[: il[i]] = ref.grad_torch_form(lp, target, case["blank"])
        np.testing.assert_allclose(grad[:, i].numpy(), g, rtol=1e-8, atol=1e-9)


@given(
    t=st.integers(1, 5),
    c=st.integers(2, 3),
    target=st.lists(st.integers(0, 2), max_size=3),
    blank=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_brute_force_enumeration(t, c, target, blank, seed):
    blank = blank % c
    target = [k % c for k in target if k % c != blank]
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(t, 1, c, generator=g, dtype=torch.float64).log_softmax(2)
    loss = ops.ctc_loss(log_probs, torch.tensor([target + [0]]), [t], [len(target)], blank=blank, reduction="none")
    expected = ref.brute_force_nll(log_probs[:, 0].numpy(), target, blank)
    if math.isinf(expected):
        assert math.isinf(loss.item())
    else:
        assert math.isclose(loss.item(), expected, rel_tol=1e-10, abs_tol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_large_vocabulary_10k_classes(device):
    case = dict(t=24, c=10_000, blank=9_999, targets=[[5, 5, 9998, 0, 4321], [17] * 3], input_lengths=[24, 20], seed=3)
    log_probs, targets, il, tl = make_inputs(case, device=device)
    (loss, grad), (loss_ref, grad_ref) = both((targets, il, tl), "sum", False, case["blank"], log_probs)
    torch.testing.assert_close(loss, loss_ref, **FP64_TOL)
    torch.testing.assert_close(grad, grad_ref, **FP64_TOL)
    expected = sum(ref.nll(log_probs[: il[i], i].cpu().numpy(), tg, case["blank"]) for i, tg in enumerate(case["targets"]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_long_target_s500(device):
    g = torch.Generator().manual_seed(4)
    target = torch.randint(1, 20, (1, 500), generator=g)
    target[0, 100:110] = 7  # a run of repeats
    t = min_input_length(target[0].tolist()) + 37
    log_probs = torch.randn(t, 1, 20, generator=g, dtype=torch.float64).log_softmax(2).to(device)
    (loss, grad), (loss_ref, grad_ref) = both((target.to(device), [t], [500]), "mean", False, 0, log_probs)
    # 1000 positions x 600 steps: the float64 sums drift a little more
    torch.testing.assert_close(loss, loss_ref, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-7, atol=1e-8)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- precision, gradients, opcheck, compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_accumulates_in_float32(device, dtype, tol):
    case = dict(t=40, c=37, blank=0, targets=[[3, 3, 5, 9, 2, 2, 2], [1, 36]], input_lengths=[40, 31], seed=5)
    log_probs, targets, il, tl = make_inputs(case, dtype=dtype, device=device)
    ((loss, grad),) = both((targets, il, tl), "none", False, 0, log_probs, fns=(ops.ctc_loss,))
    ((loss32, grad32),) = both((targets, il, tl), "none", False, 0, log_probs.float(), fns=(ops.ctc_loss,))
    assert loss.dtype == grad.dtype == dtype
    # same (rounded) inputs, float32 arithmetic: only the output rounding differs
    torch.testing.assert_close(loss.float(), loss32, rtol=tol, atol=0)
    torch.testing.assert_close(grad.float(), grad32, rtol=0, atol=tol)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_returns_float32_like_torch(device):
    case = dict(t=16, c=8, blank=0, targets=[[1, 2, 3], [4, 4]], input_lengths=[16, 9], seed=6)
    log_probs, targets, il, tl = make_inputs(case, dtype=torch.float32, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.ctc_loss(log_probs.bfloat16(), targets, il, tl, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ops.ctc_loss(log_probs.bfloat16().float(), targets, il, tl, reduction="none"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck_through_log_softmax(device, reduction):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 3, 5, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    targets = torch.tensor([[1, 1, 3], [2, 4, 0], [4, 0, 0]], device=device)
    fn = lambda x: ops.ctc_loss(x.log_softmax(2), targets, [9, 7, 4], [3, 2, 1], reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def _op_args(device, requires_grad):
    g = torch.Generator().manual_seed(8)
    log_probs = torch.randn(7, 3, 5, generator=g).log_softmax(2).to(device).requires_grad_(requires_grad)
    targets = torch.tensor([[1, 1, 3], [2, 4, 0], [4, 0, 0]], device=device)
    il = torch.tensor([7, 5, 2], device=device)
    tl = torch.tensor([3, 2, 1], device=device)
    return log_probs, targets, il, tl


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    log_probs, targets, il, tl = _op_args(device, True)
    for zi in (False, True):
        torch.library.opcheck(torch.ops.visionops.ctc_loss.default, (log_probs, targets, il, tl, 3, 0, zi))
    flat = torch.tensor([1, 1, 3, 2, 4, 4], device=device)
    torch.library.opcheck(torch.ops.visionops.ctc_loss.default, (log_probs, flat, il, tl, 3, 0, False))
    _, log_alpha = torch.ops.visionops.ctc_loss(log_probs.detach(), targets, il, tl, 3, 0, False)
    grad = torch.rand(3, device=device)
    torch.library.opcheck(
        torch.ops.visionops._ctc_loss_backward.default,
        (grad, log_probs.detach(), targets, il, tl, log_alpha, 0, False),
    )
    if device == "cpu":
        torch.library.opcheck(torch.ops.visionops.ctc_beam_search_decode.default, (log_probs.detach(), il, 4, 0))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    log_probs, targets, il, tl = _op_args(device, False)

    def f(x):
        return ops.ctc_loss(x, targets, il, tl, reduction="mean") * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x1 = log_probs.clone().requires_grad_(True)
    x2 = log_probs.clone().requires_grad_(True)
    f(x1).backward()
    compiled(x2).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    case = dict(t=50, c=30, blank=0, targets=[[1, 2, 2, 3] * 5] * 4, input_lengths=[50, 45, 41, 30], seed=9)
    log_probs, targets, il, tl = make_inputs(case, dtype=torch.float32, device=device)
    torch.use_deterministic_algorithms(True)
    # (torch's CUDA ctc backward refuses deterministic mode; ours has no atomics)
    grads = [both((targets, il, tl), "mean", False, 0, log_probs, fns=(ops.ctc_loss,))[0][1] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


_SCALAR_SCRIPT = """
import torch, torch.nn.functional as F, visionops
g = torch.Generator().manual_seed(15)
x = torch.randn(120, 6, 40, generator=g).log_softmax(2).requires_grad_(True)
targets = torch.randint(1, 40, (6, 33), generator=g)
targets[0, :10] = 3
il, tl = torch.tensor([120, 110, 99, 120, 80, 70]), torch.tensor([33, 20, 33, 5, 30, 33])
out = []
for fn in (visionops.ops.ctc_loss, F.ctc_loss):
    loss = fn(x, targets, il, tl, reduction="none")
    out.append((loss, torch.autograd.grad(loss.sum(), x)[0]))
(a, ga), (b, gb) = out
torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4, equal_nan=True)
"""


def test_scalar_cpu_path_matches_torch():
    # float32 recursions run 8-wide with AVX2 where the CPU has it; the scalar
    # fallback (forced by VISIONOPS_CPU_ISA=generic, read once per process) must agree too
    import os
    import subprocess
    import sys

    env = dict(os.environ, VISIONOPS_CPU_ISA="generic")
    result = subprocess.run([sys.executable, "-c", _SCALAR_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_degenerate_inputs(device):
    # batch 0
    out = ops.ctc_loss(torch.zeros(5, 0, 4, device=device), torch.zeros(0, 3, dtype=torch.long), [], [], reduction="none")
    assert out.shape == (0,)
    # T = 0: empty target costs nothing, a non-empty one is impossible
    x = torch.zeros(0, 2, 4, device=device, requires_grad=True)
    out = ops.ctc_loss(x, torch.tensor([[1], [0]], device=device), [0, 0], [1, 0], reduction="none")
    assert out[0].item() == math.inf and out[1].item() == 0
    out.sum().backward()
    assert x.grad.shape == x.shape
    # zero-length targets (all blank) against torch, padded and concatenated
    log_probs = torch.randn(6, 2, 3, dtype=torch.float64, device=device).log_softmax(2)
    for targets in (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)):
        torch.testing.assert_close(
            ops.ctc_loss(log_probs, targets.to(device), [6, 4], [0, 0], reduction="none").cpu(),
            F.ctc_loss(log_probs.cpu(), targets, [6, 4], [0, 0], reduction="none"),
        )
        # all-blank target: -log prod_t p_t(blank)
        expected = -log_probs[:4, 1, 0].sum()
        torch.testing.assert_close(ops.ctc_loss(log_probs, targets.to(device), [6, 4], [0, 0], reduction="none")[1],
                                   expected)


@pytest.mark.parametrize("device", DEVICES)
def test_feasible_alignment_is_finite_where_probabilities_underflow(device):
    # the target's labels are very unlikely everywhere: exp(-400 * T) underflows
    # in linear space, but a log-space recursion keeps the loss finite
    t, c = 200, 6
    logits = torch.zeros(t, 4, c, dtype=torch.float32, device=device)
    logits[:, :, 0] = 400.0
    log_probs = logits.log_softmax(2)
    targets = torch.randint(1, c, (4, 60), generator=torch.Generator().manual_seed(10)).to(device)
    loss = ops.ctc_loss(log_probs, targets, [t] * 4, [60] * 4, reduction="none")
    assert torch.isfinite(loss).all() and (loss > 1e4).all()
    torch.testing.assert_close(loss, F.ctc_loss(log_probs.double(), targets, [t] * 4, [60] * 4, reduction="none").float())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cudnn_eligible_inputs_with_thousands_of_classes_stay_finite():
    # the inputs torch sends to cuDNN (float32, CPU int32 targets, full input
    # lengths, blank 0), with a large peaked vocabulary: the linear-space cuDNN
    # kernel is known to return NaN there (pytorch #21680); ours stays in log space
    g = torch.Generator().manual_seed(13)
    t, n, c, s = 100, 4, 5000, 20
    log_probs = (torch.randn(t, n, c, generator=g) * 12).log_softmax(2).cuda()
    targets = torch.randint(1, c, (n, s), generator=g).int()
    il, tl = torch.full((n,), t, dtype=torch.int32), torch.full((n,), s, dtype=torch.int32)
    x = log_probs.clone().requires_grad_(True)
    loss = ops.ctc_loss(x, targets, il, tl, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    x64 = log_probs.double().requires_grad_(True)
    ref64 = F.ctc_loss(x64, targets.long().cuda(), il, tl, reduction="none")  # native float64 kernel
    ref64.sum().backward()
    torch.testing.assert_close(loss.double(), ref64, rtol=1e-5, atol=1e-3)
    # the gradient's exponent carries the loss (~3500) in float32: one ulp of it
    # (2.4e-4) is a relative error of the gradient; allow a few (CPU measures 1.8e-3)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=5e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_batch_first_log_probs(device):
    # CRNN code often produces [N, T, C] and transposes: a strided view
    case = dict(t=14, c=6, blank=0, targets=[[1, 2, 2], [5, 4]], input_lengths=[14, 11], seed=14)
    log_probs, targets, il, tl = make_inputs(case, device=device)
    view = log_probs.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
    assert not view.is_contiguous()
    loss = ops.ctc_loss(view, targets, il, tl)
    loss.backward()
    (loss_ref, grad_ref), _ = both((targets, il, tl), "mean", False, 0, log_probs)
    torch.testing.assert_close(loss.detach(), loss_ref, **FP64_TOL)
    torch.testing.assert_close(view.grad, grad_ref, **FP64_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_torch_module(device):
    case = dict(t=15, c=7, blank=3, targets=[[1, 2, 2], [4, 5, 6, 1]], input_lengths=[15, 12], seed=11)
    log_probs, targets, il, tl = make_inputs(case, device=device)
    for reduction in ("none", "mean", "sum"):
        ours = vnn.CTCLoss(blank=3, reduction=reduction, zero_infinity=True)
        theirs = torch.nn.CTCLoss(blank=3, reduction=reduction, zero_infinity=True)
        torch.testing.assert_close(ours(log_probs, targets, il, tl), theirs(log_probs, targets, il, tl))
    assert "blank=3" in repr(vnn.CTCLoss(blank=3))


# ---------------------------------------------------------------- bad input

_LP = torch.randn(6, 2, 5).log_softmax(2)
_TG = torch.tensor([[1, 2], [3, 0]])

BAD_INPUTS = [
    # (description, kwargs override, exception, message fragment)
    ("log_probs 4-D", dict(log_probs=torch.zeros(6, 2, 5, 1)), ValueError, "log_probs must be [T, N, C]"),
    ("log_probs 1-D", dict(log_probs=torch.zeros(6)), ValueError, "log_probs must be [T, N, C]"),
    ("log_probs integer", dict(log_probs=torch.zeros(6, 2, 5, dtype=torch.long)), TypeError, "floating-point"),
    ("log_probs not a tensor", dict(log_probs=[[0.0]]), TypeError, "log_probs must be a torch.Tensor"),
    ("targets 3-D", dict(targets=torch.zeros(2, 2, 1, dtype=torch.long)), ValueError, "targets must be padded"),
    ("targets float", dict(targets=_TG.float()), TypeError, "targets must hold integers"),
    ("targets wrong batch", dict(targets=torch.ones(3, 2, dtype=torch.long)), RuntimeError, "N = 2 rows"),
    ("input length > T", dict(input_lengths=[7, 6]), RuntimeError, "input_lengths[0] = 7 must lie in [0, T]"),
    ("input length negative", dict(input_lengths=[6, -1]), RuntimeError, "input_lengths[1] = -1"),
    ("target length > S", dict(target_lengths=[3, 1]), RuntimeError, "target_lengths[0] = 3 must lie in [0, S]"),
    ("target length negative", dict(target_lengths=[2, -1]), RuntimeError, "target_lengths[1] = -1"),
    ("label equal to blank", dict(targets=torch.tensor([[1, 0], [3, 0]])), RuntimeError, "other than blank"),
    ("label >= C", dict(targets=torch.tensor([[1, 5], [3, 0]])), RuntimeError, "got 5 at position 1"),
    ("label negative", dict(targets=torch.tensor([[1, 2], [-1, 0]])), RuntimeError, "got -1 at position 0"),
    ("concatenated too short", dict(targets=torch.tensor([1, 2])), RuntimeError, "fewer than sum"),
    ("too few lengths", dict(input_lengths=[6]), RuntimeError, "input_lengths must be a 1-D tensor of N = 2"),
    ("lengths float", dict(target_lengths=torch.tensor([2.0, 1.0])), TypeError, "target_lengths must hold integers"),
    ("lengths 2-D", dict(input_lengths=torch.ones(2, 1, dtype=torch.long)), ValueError, "0-D or 1-D"),
    ("lengths strings", dict(input_lengths="66"), TypeError, "input_lengths must be a tensor or a sequence"),
    ("blank >= C", dict(blank=5), RuntimeError, "blank must lie in [0, C)"),
    ("blank negative", dict(blank=-1), RuntimeError, "blank must lie in [0, C)"),
    ("reduction", dict(reduction="avg"), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("desc,override,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(desc, override, exc, message):
    kwargs = dict(log_probs=_LP, targets=_TG, input_lengths=[6, 5], target_lengths=[2, 1])
    kwargs.update(override)
    with pytest.raises(exc, match=re.escape(message)):
        ops.ctc_loss(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_bad_inputs():
    lp = _LP.cuda()
    # lengths on another device than log_probs (a GPU tensor for a CPU input)
    with pytest.raises(ValueError, match="input_lengths must be on the CPU or on the device"):
        ops.ctc_loss(_LP, _TG, torch.tensor([6, 5], device="cuda"), [2, 1])
    # host lengths are checked before the launch
    with pytest.raises(ValueError, match=r"input_lengths\[0\] = 7"):
        ops.ctc_loss(lp, _TG.cuda(), [7, 5], [2, 1])
    # device lengths and labels cannot be checked without a sync: NaN for that sample only
    out = ops.ctc_loss(lp, torch.tensor([[1, 9], [3, 0]], device="cuda"), [6, 5], [2, 1], reduction="none")
    assert out[0].isnan() and torch.isfinite(out[1])
    out = ops.ctc_loss(lp, _TG.cuda(), torch.tensor([6, 9], device="cuda"), torch.tensor([2, 1], device="cuda"),
                       reduction="none")
    assert torch.isfinite(out[0]) and out[1].isnan()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_matches_cpu_on_text_line_sizes():
    case = dict(t=200, c=37, blank=0, targets=[[(7 * i + j) % 36 + 1 for j in range(30)] for i in range(8)],
                input_lengths=[200 - 9 * i for i in range(8)], seed=12)
    cpu = make_inputs(case, dtype=torch.float32)
    gpu = make_inputs(case, dtype=torch.float32, device="cuda")
    (loss_c, grad_c), _ = both(cpu[1:], "mean", False, 0, cpu[0])
    (loss_g, grad_g), _ = both(gpu[1:], "mean", False, 0, gpu[0])
    torch.testing.assert_close(loss_g.cpu(), loss_c, **FP32_TOL)
    torch.testing.assert_close(grad_g.cpu(), grad_c, **FP32_TOL)


# ---------------------------------------------------------------- decoders


def _greedy_reference(log_probs, lengths, blank):
    best = log_probs.argmax(-1)
    return [ref.collapse(best[: lengths[i], i].tolist(), blank) for i in range(log_probs.shape[1])]


@pytest.mark.parametrize("device", DEVICES)
@given(case=ctc_cases(max_t=20, max_c=8, max_s=1))
def test_greedy_decode_matches_best_path(device, case):
    log_probs, _, il, _ = make_inputs(case, dtype=torch.float32, device=device)
    out = ops.ctc_greedy_decode(log_probs, il, blank=case["blank"])
    assert [tuple(o.tolist()) for o in out] == _greedy_reference(log_probs.cpu(), il.tolist(), case["blank"])
    assert all(o.device == log_probs.device and o.dtype == torch.long for o in out)


@given(
    t=st.integers(0, 5),
    c=st.integers(2, 3),
    blank=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
    sharp=st.sampled_from([0.5, 2.0, 4.0]),
)
def test_beam_search_matches_exhaustive_search(t, c, blank, seed, sharp):
    blank %= c
    g = torch.Generator().manual_seed(seed)
    log_probs = (torch.randn(max(t, 1), 2, c, generator=g, dtype=torch.float64) * sharp).log_softmax(2)
    lengths = [t, max(t - 1, 0)]
    # a beam wider than the number of prefixes (<= C^T) prunes nothing: exact
    seqs, scores = ops.ctc_beam_search_decode(log_probs, lengths, beam_width=300, blank=blank)
    for i in range(2):
        best, best_score, all_scores = ref.brute_force_best_labelling(log_probs[: lengths[i], i].numpy(), blank)
        assert math.isclose(scores[i].item(), best_score, rel_tol=1e-9, abs_tol=1e-12)
        # ties between labellings may pick either: the returned one must score the maximum
        assert math.isclose(all_scores[tuple(seqs[i].tolist())], best_score, rel_tol=1e-9, abs_tol=1e-12)


@given(case=ctc_cases(max_t=16, max_n=3, max_c=6, max_s=1), beam_width=st.integers(1, 6))
def test_beam_search_score_is_log_probability_of_its_labelling(case, beam_width):
    log_probs, _, il, _ = make_inputs(case)
    seqs, scores = ops.ctc_beam_search_decode(log_probs, il, beam_width=beam_width, blank=case["blank"])
    for i, seq in enumerate(seqs):
        exact = -ref.nll(log_probs[: il[i], i].numpy(), seq.tolist(), case["blank"])
        # pruning can only lose alignments of the returned labelling, never add
        assert scores[i].item() <= exact + 1e-9
        assert 0 <= len(seq) <= il[i]


@given(case=ctc_cases(max_t=14, max_n=2, max_c=7, max_s=1), beam_width=st.integers(1, 5))
def test_beam_search_matches_plain_prefix_beam_search(case, beam_width):
    # the kernel extends each entry by only beam_width + 1 classes per step;
    # the plain search extends by every class: the kept beams must agree
    log_probs, _, il, _ = make_inputs(case)
    seqs, scores = ops.ctc_beam_search_decode(log_probs, il, beam_width=beam_width, blank=case["blank"])
    for i in range(len(seqs)):
        best, score = ref.prefix_beam_search(log_probs[: il[i], i].numpy(), beam_width, case["blank"])
        assert tuple(seqs[i].tolist()) == best
        assert math.isclose(scores[i].item(), score, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_decoders_unbatched_and_devices(device):
    lp = torch.eye(4)[[1, 1, 0, 1, 2, 2, 0]].clamp_min(1e-3).log().to(device)
    assert ops.ctc_greedy_decode(lp, 7).tolist() == [1, 1, 2]
    seq, score = ops.ctc_beam_search_decode(lp, 7, beam_width=5)
    assert seq.tolist() == [1, 1, 2] and seq.device == lp.device and score.dim() == 0
    # empty: T = 0 and zero lengths decode to empty sequences
    assert [s.numel() for s in ops.ctc_greedy_decode(torch.zeros(0, 2, 4, device=device), [0, 0])] == [0, 0]
    seqs, scores = ops.ctc_beam_search_decode(torch.zeros(0, 2, 4, device=device), [0, 0])
    assert [s.numel() for s in seqs] == [0, 0] and scores.tolist() == [0.0, 0.0]


DECODE_BAD = [
    ("log_probs 4-D", dict(log_probs=torch.zeros(3, 1, 4, 1)), ValueError, "log_probs must be [T, N, C]"),
    ("log_probs integer", dict(log_probs=torch.zeros(3, 1, 4, dtype=torch.long)), TypeError, "floating-point"),
    ("blank >= C", dict(blank=4), (ValueError, RuntimeError), "blank must lie in [0, C)"),
    ("length > T", dict(input_lengths=[4]), (ValueError, RuntimeError), "input_lengths[0] = 4"),
    ("lengths count", dict(input_lengths=[3, 3]), (ValueError, RuntimeError), "N = 1"),
]


@pytest.mark.parametrize("decoder", ["ctc_greedy_decode", "ctc_beam_search_decode"])
@pytest.mark.parametrize("desc,override,exc,message", DECODE_BAD, ids=[b[0] for b in DECODE_BAD])
def test_decoder_bad_input(decoder, desc, override, exc, message):
    kwargs = dict(log_probs=torch.zeros(3, 1, 4), input_lengths=[3], blank=0)
    kwargs.update(override)
    with pytest.raises(exc, match=re.escape(message)):
        getattr(ops, decoder)(**kwargs)


def test_beam_width_must_be_positive():
    with pytest.raises(RuntimeError, match="beam_width must be >= 1"):
        ops.ctc_beam_search_decode(torch.zeros(3, 1, 4), [3], beam_width=0)
