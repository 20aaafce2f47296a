"""Reliability of every op (issue 10): deterministic mode, autograd edge cases,
thread safety.

One table, ``CALLS``: a realistic call of each op, built from a seed, sized so
that backward contributions collide (many RoIs over one small map, many grid
points per input pixel: where CUDA kernels would race with atomics). Adding an
op family means adding its entries here.

CUDA backward kernels that use atomics unless deterministic mode is on (read
from cuda/*.cu): roi_align, roi_pool, roi_align_rotated, roi_pool_rotated, and
the input gradient of grid_sample / affine_grid_sample / tps_grid_sample. Every
other kernel (and every CPU kernel) is deterministic by construction.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from conftest import DEVICES

from visionops import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rois(g, k, n, extent, rotated=False):
    index = torch.randint(0, n, (k, 1), generator=g).float()
    if rotated:
        centre = torch.rand(k, 2, generator=g) * extent
        size = 1 + torch.rand(k, 2, generator=g) * extent / 2
        return torch.cat([index, centre, size, torch.rand(k, 1, generator=g) * 360 - 180], 1)
    p = torch.rand(k, 2, generator=g) * extent * 0.7
    return torch.cat([index, p, p + 1 + torch.rand(k, 2, generator=g) * extent * 0.5], 1)


def _boxes(g, n, rotated=False):
    if rotated:
        return torch.cat([torch.rand(n, 2, generator=g) * 20, 2 + torch.rand(n, 2, generator=g) * 8,
                          torch.rand(n, 1, generator=g) * 180], 1)
    p = torch.rand(n, 2, generator=g) * 20
    return torch.cat([p, p + 1 + torch.rand(n, 2, generator=g) * 8], 1)


def _tps(g, b=2, k=6):
    target = ops.rare_fiducials(k).expand(b, k, 2)
    source = target + 0.1 * torch.randn(b, k, 2, generator=g)
    return source, target


@dataclass(frozen=True)
class Call:
    """name: the function of visionops.ops; make: generator -> positional args
    (CPU, float32); grad: indices of the args to differentiate;
    double_backward: the op is plain torch code and supports it (checked with
    gradgradcheck); otherwise a second derivative must raise a clear error."""

    name: str
    make: Callable[[torch.Generator], list]
    grad: tuple = ()
    double_backward: bool = False

    @property
    def fn(self):
        return getattr(ops, self.name)


CALLS = [
    Call("roi_align", lambda g: [torch.randn(2, 8, 12, 12, generator=g), _rois(g, 96, 2, 12), 4, 1.0, 2, True], (0,)),
    Call("roi_pool", lambda g: [torch.randn(2, 8, 12, 12, generator=g), _rois(g, 96, 2, 12), 4, 1.0], (0,)),
    Call(
        "roi_align_rotated",
        lambda g: [torch.randn(2, 8, 12, 12, generator=g), _rois(g, 64, 2, 12, True), 4, 1.0, 2, True],
        (0,),
    ),
    Call("roi_pool_rotated", lambda g: [torch.randn(2, 8, 12, 12, generator=g), _rois(g, 64, 2, 12, True), 4, 1.0], (0,)),
    Call("box_iou", lambda g: [_boxes(g, 40), _boxes(g, 30)], (0, 1)),
    Call("nms", lambda g: [_boxes(g, 200), torch.rand(200, generator=g), 0.5]),
    Call("batched_nms", lambda g: [_boxes(g, 200), torch.rand(200, generator=g), torch.randint(0, 4, (200,), generator=g), 0.5]),
    Call("nms_fixed", lambda g: [_boxes(g, 200), torch.rand(200, generator=g), 0.5, 50]),
    Call("box_iou_rotated", lambda g: [_boxes(g, 40, True), _boxes(g, 30, True)]),
    Call("nms_rotated", lambda g: [_boxes(g, 120, True), torch.rand(120, generator=g), 0.3]),
    Call(
        "batched_nms_rotated",
        lambda g: [_boxes(g, 120, True), torch.rand(120, generator=g), torch.randint(0, 3, (120,), generator=g), 0.3],
    ),
    Call("convert_rotated_boxes", lambda g: [_boxes(g, 20, True).double(), "xywha", "poly"], (0,), True),
    Call(
        "ctc_loss",
        lambda g: [torch.randn(30, 4, 9, generator=g).log_softmax(2), torch.randint(1, 9, (4, 8), generator=g),
                   [30, 28, 25, 30], [8, 5, 8, 1]],
        (0,),
    ),
    Call("ctc_greedy_decode", lambda g: [torch.randn(30, 4, 9, generator=g).log_softmax(2), [30, 28, 25, 30]]),
    Call("ctc_beam_search_decode", lambda g: [torch.randn(12, 3, 6, generator=g).log_softmax(2), [12, 10, 7], 4]),
    Call("grid_sample", lambda g: [torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 24, 24, 2, generator=g) * 2.2 - 1.1], (0, 1)),
    Call("affine_grid", lambda g: [torch.eye(2, 3).repeat(3, 1, 1).double() + 0.1 * torch.randn(3, 2, 3, generator=g).double(),
                                   (3, 1, 5, 6)], (0,), True),
    Call(
        "affine_grid_sample",
        lambda g: [torch.randn(2, 4, 8, 8, generator=g), torch.eye(2, 3).repeat(2, 1, 1) + 0.2 * torch.randn(2, 2, 3, generator=g),
                   (24, 24)],
        (0, 1),
    ),
    Call("tps_fit", lambda g: [t.double() for t in _tps(g)], (0,), True),
    Call("tps_grid", lambda g: [*ops.tps_fit(*_tps(g)), ops.rare_fiducials(6), (16, 16)], (0, 1)),
    Call(
        "tps_grid_sample",
        lambda g: [torch.randn(2, 4, 8, 8, generator=g), *ops.tps_fit(*_tps(g)), ops.rare_fiducials(6), (24, 24)],
        (0, 1, 2),
    ),
]

if hasattr(ops, "conv2d"):  # the conv family (merged separately)
    CALLS += [
        Call("conv2d", lambda g: [torch.randn(2, 6, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g),
                                  torch.randn(4, generator=g), 1, 1, 1, 2], (0, 1, 2)),
        Call("depthwise_conv2d", lambda g: [torch.randn(2, 6, 9, 9, generator=g), torch.randn(12, 1, 3, 3, generator=g),
                                            torch.randn(12, generator=g), 2, 1], (0, 1, 2)),
    ]

IDS = [c.name for c in CALLS]
DIFFERENTIABLE = [c for c in CALLS if c.grad]


def _flat(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return []


def _to(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def run(call: Call, device: str, seed: int = 0, grad_layout: str = "contiguous", materialise: bool = False):
    """Forward and (when differentiable) backward with a fixed random
    grad_output in ``grad_layout`` (its values made contiguous when
    ``materialise``); returns every output and gradient, detached on the CPU."""
    args = _to(call.make(_gen(seed)), device)
    leaves = []
    for i in call.grad:
        args[i] = args[i].detach().requires_grad_(True)
        leaves.append(args[i])
    out = call.fn(*args)
    results = [t.detach() for t in _flat(out)]
    outs = [o for o in _flat(out) if o.requires_grad]
    if leaves and outs:
        g = _gen(seed + 1)
        grads = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(device) for o in outs]
        grads = [_relayout(x, grad_layout) for x in grads]
        grads = [x.contiguous() for x in grads] if materialise else grads
        results += [x for x in torch.autograd.grad(outs, leaves, grads, allow_unused=True) if x is not None]
    return [r.cpu() for r in results]


def _relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "expanded":  # what out.sum().backward() passes: one value, stride 0
        return t.reshape(-1)[:1].expand(t.shape) if t.numel() and t.dim() else t
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided" and t.dim() >= 1:
        return torch.stack([t, torch.full_like(t, float("nan"))], -1)[..., 0]
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def assert_bitwise(a: list, b: list, what: str):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}[{i}]"
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}[{i}]: {m}")


# ---------------------------------------------------------------- deterministic mode


def test_every_public_op_has_a_call():
    public = {n for n in ops.__all__ if callable(getattr(ops, n))}
    helpers = {"convert_boxes_to_rois", "convert_rotated_boxes_to_rois", "rare_fiducials"}  # argument plumbing only
    assert public - helpers - set(IDS) == set()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_deterministic_mode_is_bit_identical(call, device):
    """Under torch.use_deterministic_algorithms(True), forward and backward run
    twice give the same bits. Every op has a deterministic path, so none may raise
    torch's "does not have a deterministic implementation" error (conv2d on CUDA
    uses cuBLAS, which needs CUBLAS_WORKSPACE_CONFIG: set in conftest)."""
    torch.use_deterministic_algorithms(True)
    first = run(call, device)
    assert_bitwise(run(call, device), first, f"{call.name} under deterministic mode")


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_cpu_results_do_not_depend_on_thread_count(call):
    """The CPU kernels promise bit-identical results whatever the number of
    threads (no atomics, fixed reduction order), deterministic mode or not."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(call, "cpu")
        torch.set_num_threads(max(before, 4))
        many = run(call, "cpu")
    finally:
        torch.set_num_threads(before)
    assert_bitwise(many, one, f"{call.name} with 1 vs {max(before, 4)} threads")


# ---------------------------------------------------------------- autograd edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["expanded", "transposed", "strided", "channels_last"])
@pytest.mark.parametrize("call", DIFFERENTIABLE, ids=[c.name for c in DIFFERENTIABLE])
def test_backward_with_non_contiguous_grad_output(call, layout, device):
    """The same gradient whatever the memory layout of grad_output (bit for bit:
    the kernels take a contiguous copy; a channels_last grad_output of an NCHW
    output may select the channels_last backward, which sums in another order).
    On CUDA in deterministic mode: otherwise the roi and sampling backward
    kernels add with atomics, in any order."""
    if device == "cuda":
        torch.use_deterministic_algorithms(True)
    expected = run(call, device, grad_layout=layout, materialise=True)
    got = run(call, device, grad_layout=layout)
    if layout == "channels_last":
        for x, y in zip(got, expected):
            # float32 sums of at most a few hundred O(1) terms in another order
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, equal_nan=True)
    else:
        assert_bitwise(got, expected, f"{call.name} with a {layout} grad_output")


@pytest.mark.parametrize("call", DIFFERENTIABLE, ids=[c.name for c in DIFFERENTIABLE])
def test_double_backward(call):
    """Plain-torch ops support a second derivative (gradgradcheck in float64);
    for the kernels it raises a clear error instead of torch's fallback, which
    only warned and returned a zero second derivative."""
    args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in call.make(_gen(0))]
    inputs = [args[i].detach().requires_grad_(True) for i in call.grad]

    def fn(*xs):
        a = list(args)
        for i, x in zip(call.grad, xs):
            a[i] = x
        return tuple(o for o in _flat(call.fn(*a)) if o.is_floating_point())

    if call.double_backward:
        assert torch.autograd.gradgradcheck(fn, inputs)
        return
    outs = fn(*inputs)
    first = torch.autograd.grad(sum(o.pow(2).sum() for o in outs), inputs, create_graph=True, allow_unused=True)
    penalty = sum(g.pow(2).sum() for g in first if g is not None)
    with pytest.raises(RuntimeError, match=rf"double backward .*{call.name.split('_')[0]}"):
        torch.autograd.grad(penalty, inputs, allow_unused=True)


def _with_grad_args(call, args, xs):
    a = list(args)
    for i, x in zip(call.grad, xs):
        a[i] = x
    return a


def _float_outputs(value):
    return tuple(o for o in _flat(value) if o.is_floating_point())


@pytest.mark.parametrize("call", DIFFERENTIABLE, ids=[c.name for c in DIFFERENTIABLE])
def test_torch_func_vjp_matches_autograd(call):
    """torch.func.vjp (what torch.func.grad and jacrev are built on) over each
    op gives torch.autograd's outputs and gradients bit for bit: the C++
    autograd kernels also work inside functorch transforms."""
    args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in call.make(_gen(0))]
    primals = [args[i] for i in call.grad]

    def fn(*xs):
        return _float_outputs(call.fn(*_with_grad_args(call, args, xs)))

    outs, vjp_fn = torch.func.vjp(fn, *primals)
    g = _gen(1)
    cotangents = tuple(torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs)
    got = vjp_fn(cotangents)
    leaves = [p.detach().requires_grad_(True) for p in primals]
    plain_outs = fn(*leaves)
    expected = torch.autograd.grad(plain_outs, leaves, cotangents, allow_unused=True)
    expected = [torch.zeros_like(p) if e is None else e for p, e in zip(primals, expected)]
    assert_bitwise(list(outs), [o.detach() for o in plain_outs], f"{call.name} outputs under torch.func.vjp")
    if call.double_backward:
        # plain torch code: functorch may batch linalg's backward differently (float64 rounding only)
        for x, y in zip(got, expected):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    else:
        assert_bitwise(list(got), list(expected), f"{call.name} gradients under torch.func.vjp")


@pytest.mark.parametrize("name", ["grid_sample", "roi_align", "ctc_loss"])
def test_torch_func_per_sample_gradients(name):
    """vmap(grad(f)), the per-sample-gradient recipe: the ops have no batching
    rules, so vmap runs them through torch's per-sample fallback; the result
    must equal one gradient per sample computed separately."""
    g = _gen(0)
    if name == "grid_sample":
        batch = (torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64),
                 torch.rand(3, 5, 5, 2, generator=g, dtype=torch.float64) * 2.2 - 1.1)

        def loss(x, grid):
            return ops.grid_sample(x[None], grid[None]).pow(2).sum()
    elif name == "roi_align":
        rois = _rois(g, 7, 1, 6).double()
        batch = (torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64),)

        def loss(x):
            return ops.roi_align(x[None], rois, 2, 1.0, 2, True).pow(2).sum()
    else:
        batch = (torch.randn(3, 12, 5, generator=g, dtype=torch.float64).log_softmax(2),
                 torch.randint(1, 5, (3, 4), generator=g))

        def loss(log_probs, target):  # unbatched (T, C) call
            return ops.ctc_loss(log_probs, target, (12,), (4,))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        per_sample = torch.func.vmap(torch.func.grad(loss))(*batch)
    for i in range(3):
        x = batch[0][i].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(loss(x, *[b[i] for b in batch[1:]]), x)
        torch.testing.assert_close(per_sample[i], expected, rtol=0, atol=0)


def test_torch_func_outer_transform_sees_the_forward():
    """An outer transform differentiating a value computed inside an inner one
    (grad of the primal output of a vjp) gets the gradient, not a silent zero:
    the forward is recorded at every level."""
    g = _gen(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    grid = torch.rand(2, 4, 4, 2, generator=g, dtype=torch.float64) * 2 - 1

    def outer(x):
        out, _ = torch.func.vjp(lambda y: ops.grid_sample(y, grid), x)
        return out.pow(2).sum()

    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ops.grid_sample(leaf, grid).pow(2).sum(), leaf)
    torch.testing.assert_close(torch.func.grad(outer)(x), expected, rtol=0, atol=0)
    assert expected.abs().sum() > 0


def test_torch_compile_of_torch_func_grad():
    """torch.compile(torch.func.grad(f), fullgraph=True) traces the op's autograd
    inside the transform (on fake tensors) and gives the eager gradient."""
    g = _gen(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    grid = torch.rand(2, 4, 4, 2, generator=g, dtype=torch.float64) * 2 - 1

    def loss(x):
        return ops.grid_sample(x, grid).pow(2).sum()

    eager = torch.func.grad(loss)(x)
    torch._dynamo.reset()
    compiled = torch.compile(torch.func.grad(loss), fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


def test_torch_func_double_backward_raises():
    """Inside torch.func too, a gradient of a kernel's gradient raises the
    clear double-backward error (not a zero)."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 4.5]], dtype=torch.float64)

    def first(x):
        return torch.func.grad(lambda y: ops.roi_align(y, rois, 2).pow(2).sum())(x).pow(2).sum()

    with pytest.raises(RuntimeError, match="double backward .*roi_align"):
        torch.func.grad(first)(x)


def test_every_backward_op_has_an_autograd_kernel():
    """Each visionops::_*_backward op has an autograd kernel (the one that
    raises on double backward, ops/_registry.py), so torch's warn-and-return-zero
    fallback can never run, for any family, conv included."""
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("visionops::_") and n.endswith("_backward")]
    assert names
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd")]
    assert not missing


def test_create_graph_first_order_still_works():
    """create_graph=True alone (as gradient-penalty code calls it) is fine: only
    differentiating the gradient raises."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 5.0]], dtype=torch.float64)
    (g,) = torch.autograd.grad(ops.roi_align(x, rois, 2).sum(), x, create_graph=True)
    (g_plain,) = torch.autograd.grad(ops.roi_align(x, rois, 2).sum(), x)
    torch.testing.assert_close(g.detach(), g_plain, rtol=0, atol=0)


def test_integer_tensors_cannot_require_grad():
    """Integer arguments (labels, lengths, class indices) can never carry
    requires_grad: torch rejects it when the flag is set, with a clear message."""
    for dtype in (torch.int64, torch.int32, torch.uint8):
        with pytest.raises(RuntimeError, match="floating point"):
            torch.zeros(3, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize(
    "name, make, differentiable, frozen",
    [
        # float arguments that are not differentiated (RoIs, scores, boxes of NMS): requires_grad
        # on them is accepted, gives no gradient, and leaves the real gradient unchanged
        ("roi_align", lambda g: [torch.randn(1, 2, 8, 8, generator=g), _rois(g, 5, 1, 8), 2], 0, 1),
        ("roi_pool_rotated", lambda g: [torch.randn(1, 2, 8, 8, generator=g), _rois(g, 5, 1, 8, True), 2], 0, 1),
    ],
)
def test_non_differentiable_float_arguments_get_no_gradient(name, make, differentiable, frozen):
    args = make(_gen(0))
    x = args[differentiable].requires_grad_(True)
    expected = torch.autograd.grad(getattr(ops, name)(*args).sum(), x)[0]
    args[frozen] = args[frozen].clone().requires_grad_(True)
    out = getattr(ops, name)(*args)
    got, frozen_grad = torch.autograd.grad(out.sum(), [x, args[frozen]], allow_unused=True)
    assert frozen_grad is None
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("call", [c for c in CALLS if "nms" in c.name or "decode" in c.name], ids=lambda c: c.name)
def test_index_outputs_do_not_require_grad(call):
    """NMS keep indices and decoded labels are integers: never part of a graph,
    even when the boxes/scores/log-probs require grad."""
    args = [a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in call.make(_gen(0))]
    outs = _flat(call.fn(*args))
    assert all(not o.requires_grad for o in outs if not o.is_floating_point())


# ---------------------------------------------------------------- thread safety


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_concurrent_threads_match_serial(call):
    """Ops called from several Python threads at once (each using intra-op
    threads too) give the serial results, bit for bit."""
    seeds = list(range(6))
    serial = [run(call, "cpu", seed) for seed in seeds]
    barrier = threading.Barrier(3)

    def work(seed):
        if seed < 3:
            barrier.wait(timeout=30)  # start the first three together
        return run(call, "cpu", seed)

    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(work, seeds))
    for seed, (a, b) in enumerate(zip(parallel, serial)):
        assert_bitwise(a, b, f"{call.name} seed {seed} in a thread")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a CUDA device")
@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_concurrent_cuda_streams_match_serial(call):
    """Each thread runs on its own CUDA stream: same results as serial calls on
    the default stream (deterministic mode, so atomics cannot differ)."""
    torch.use_deterministic_algorithms(True)
    seeds = list(range(4))
    serial = [run(call, "cuda", seed) for seed in seeds]

    def work(seed):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            out = run(call, "cuda", seed)
        stream.synchronize()
        return out

    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(work, seeds))
    for seed, (a, b) in enumerate(zip(parallel, serial)):
        assert_bitwise(a, b, f"{call.name} seed {seed} on a side stream")
