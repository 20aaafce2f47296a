"""The CUDA CTC kernels (cuda/ctc_cuda.cu), run on the CPU.

The kernel section and its launch choices are compiled with a C++ compiler
against tests/emulated_cuda/ctc.cpp (blocks as threads, barriers for
__syncthreads and warp shuffles; see emulation.h): the shared-memory recursions
with one thread per extended-label position (targets up to 511 labels) and the
per-element fallback beyond, checked against the CPU op in float64, whose
results test_ctc.py holds to torch and to a brute-force oracle. (test_ctc.py
runs the real kernels where a GPU is present.)
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from emulated_cuda.build import build

from visionops import ops


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    lib = build(tmp_path_factory.mktemp("emulated_cuda"), "ctc_cuda.cu", "ctc kernels", "ctc")
    lib.ctc_emulated.restype = ctypes.c_int
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ctc_emulated.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr, i64, ptr, ptr, ptr, i64, i64, ctypes.c_int,
                                 ptr, ptr, ptr, ptr]
    return lib


def _case(seed, T, N, C, S, blank, repeats, concatenated, dtype):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(T, N, C, generator=g, dtype=torch.float64).log_softmax(-1)
    labels = [c for c in range(C) if c != blank]
    target_lengths = torch.randint(max(0, S - 3), S + 1, (N,), generator=g)
    target_lengths[0] = S
    targets = torch.tensor(labels)[torch.randint(0, len(labels), (N, S), generator=g)]
    if repeats:  # runs of equal labels: the label chains of the backward
        targets[:, 1::3] = targets[:, 0::3][:, : targets[:, 1::3].shape[1]]
    input_lengths = torch.randint(max(1, T - 4), T + 1, (N,), generator=g)
    input_lengths[0] = T
    if concatenated:
        targets = torch.cat([targets[i, : target_lengths[i]] for i in range(N)])
        offsets = torch.cumsum(target_lengths, 0) - target_lengths
    else:
        offsets = torch.arange(N) * S
    return log_probs.to(dtype), targets, input_lengths, target_lengths, offsets


def _emulate(lib, log_probs, targets, input_lengths, target_lengths, offsets, blank, zero_infinity, grad):
    T, N, C = log_probs.shape
    S = int(target_lengths.max()) if targets.dim() == 1 else targets.shape[1]
    np_dtype = np.float64 if log_probs.dtype == torch.float64 else np.float32
    lp = np.ascontiguousarray(log_probs.numpy())
    tg, off, il, tl = (np.ascontiguousarray(t.to(torch.int64).numpy()) for t in (targets, offsets, input_lengths,
                                                                                  target_lengths))
    log_alpha = np.full((N, T, 2 * S + 1), -np.inf, np_dtype)
    nll, out = np.zeros(N, np_dtype), np.zeros((T, N, C), np_dtype)
    g = np.ascontiguousarray(grad.to(log_probs.dtype).numpy())
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    fast = lib.ctc_emulated(int(np_dtype == np.float64), ptr(lp), T, N, C, ptr(tg), tg.size, ptr(off), ptr(il),
                            ptr(tl), S, blank, int(zero_infinity), ptr(log_alpha), ptr(nll), ptr(g), ptr(out))
    return bool(fast), torch.from_numpy(nll), torch.from_numpy(out)


# (T, N, C, S, blank, repeats, concatenated targets, zero_infinity, fast path expected)
CASES = [
    (12, 3, 6, 4, 0, False, False, False, True),
    (20, 2, 5, 7, 2, True, False, False, True),  # blank in the middle, repeated labels
    (16, 3, 7, 5, 6, True, True, False, True),  # concatenated targets, last class blank
    (60, 2, 9, 40, 0, True, False, False, True),  # 81 positions: three warps reduce the blank occupancy
    (8, 3, 5, 6, 0, False, False, True, True),  # infeasible alignments zeroed (zero_infinity)
    (1030, 1, 4, 512, 0, False, False, False, False),  # 1025 positions: the per-element fallback
]


def _case_id(c):
    return (f"T{c[0]}_N{c[1]}_C{c[2]}_S{c[3]}_blank{c[4]}" + ("_rep" if c[5] else "") + ("_concat" if c[6] else "")
            + ("_zeroinf" if c[7] else ""))


# the fallback once, in float64: 512 emulated threads for each of 1030 steps are slow
PARAMS = [pytest.param(c, d, id=f"{_case_id(c)}-{str(d)[6:]}") for c in CASES
          for d in ([torch.float64, torch.float32] if c[-1] else [torch.float64])]


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_emulated_kernels_match_the_cpu_op(emulated, case, dtype):
    T, N, C, S, blank, repeats, concatenated, zero_infinity, fast_expected = case
    log_probs, targets, input_lengths, target_lengths, offsets = _case(sum(case[:5]), T, N, C, S, blank, repeats,
                                                                       concatenated, dtype)
    grad = torch.randn(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast, nll, grad_lp = _emulate(emulated, log_probs, targets, input_lengths, target_lengths, offsets, blank,
                                  zero_infinity, grad)
    assert fast == fast_expected
    lp = log_probs.double().requires_grad_(True)
    ref = ops.ctc_loss(lp, targets, input_lengths, target_lengths, blank, "none", zero_infinity)
    (ref_grad,) = torch.autograd.grad((ref * grad).sum(), lp)
    # float32: log-space sums over <= 1030 steps of values of order 1..100
    tol = dict(rtol=1e-11, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(nll.double(), ref.detach(), **tol)
    torch.testing.assert_close(grad_lp.double(), ref_grad, **tol)


def test_emulated_kernels_on_edge_lengths_and_invalid_samples(emulated):
    """Empty inputs (T_b = 0), one step, empty targets, and a sample whose label
    equals blank: the CPU op raises for that one, the CUDA kernels cannot check it
    without a sync and give it a NaN loss and NaN gradient rows; the other
    samples are unaffected."""
    T, N, C = 6, 6, 5
    g = torch.Generator().manual_seed(7)
    log_probs = torch.randn(T, N, C, generator=g, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 4, 4], [2, 1, 1], [3, 4, 1], [1, 0, 2]])
    input_lengths = torch.tensor([6, 0, 1, 3, 0, 6])
    target_lengths = torch.tensor([3, 0, 0, 1, 2, 3])  # sample 4: no input, a target (inf); sample 5: label 0 = blank
    offsets = torch.arange(N) * 3
    grad = torch.randn(N, generator=g, dtype=torch.float64)
    for zero_infinity in (False, True):
        fast, nll, grad_lp = _emulate(emulated, log_probs, targets, input_lengths, target_lengths, offsets, 0,
                                      zero_infinity, grad)
        assert fast
        assert torch.isnan(nll[5]) and torch.isnan(grad_lp[:, 5]).all()
        lp = log_probs[:, :5].clone().requires_grad_(True)
        ref = ops.ctc_loss(lp, targets[:5], input_lengths[:5], target_lengths[:5], 0, "none", zero_infinity)
        (ref_grad,) = torch.autograd.grad((ref * grad[:5]).nan_to_num().sum(), lp)
        torch.testing.assert_close(nll[:5], ref.detach(), rtol=1e-11, atol=1e-9)
        assert torch.isinf(nll[4]) != zero_infinity
        assert (grad_lp[:, 4] == 0).all()  # no input steps: nothing to differentiate, finite loss or not
        finite = torch.isfinite(ref).tolist()
        for b in range(5):
            if finite[b]:  # an infinite loss has NaN gradient rows on both, torch's convention
                torch.testing.assert_close(grad_lp[:, b], ref_grad[:, b], rtol=1e-11, atol=1e-9)
