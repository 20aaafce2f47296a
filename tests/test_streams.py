"""Device and stream discipline of the CUDA kernels (what DDP, multi-GPU and
CUDA-graph users rely on). Every test needs CUDA and skips without it; the
multi-device ones need two GPUs.

Each CUDA entry point (cuda/*.cu, cpp/include/visionops/nms_ops.h) sets a
``CUDAGuard`` to the device of its inputs, launches on
``at::cuda::getCurrentCUDAStream()`` and allocates with ``at::empty`` (the caching
allocator); these tests check the consequences:

* inputs on a GPU that is not the current one: the results land on the inputs'
  GPU, nothing is allocated on the current one, and they equal the results
  computed with that GPU current;
* under ``torch.cuda.stream(side)``: the op runs on ``side``, ordered after the
  side-stream work that produced its inputs (a delayed copy over NaN-poisoned
  buffers would be read too early by a kernel on another stream) and before
  the work that consumes its outputs; results equal the default stream's;
* inputs spread over two devices are rejected with an error naming the device;
* ``nms_fixed``, ``roi_align`` and ``grid_sample`` forwards can be captured in a
  CUDA graph, and replaying it on new inputs equals eager calls.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from conftest import HAS_CUDA

from visionops import ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]
TWO_GPUS = pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")

# float atomics in some backward kernels (roi_align, grid_sample) may add in another order
# from one call to the next: ~1 ulp of float32 per addition, far below these tolerances
RTOL, ATOL = 1e-5, 1e-6


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, g: torch.Generator, size: float = 32.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size * 0.7
    wh = torch.rand(n, 2, generator=g) * size * 0.3 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def _rotated(n: int, g: torch.Generator) -> torch.Tensor:
    c = torch.rand(n, 2, generator=g) * 24 + 4
    wh = torch.rand(n, 2, generator=g) * 8 + 2
    a = torch.rand(n, 1, generator=g) * 180 - 90
    return torch.cat([c, wh, a], dim=1)


def _image(g: torch.Generator, n: int = 2, c: int = 3, h: int = 16, w: int = 20) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=g)


def _rois(k: int, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), _boxes(k, g, 16.0)], dim=1)


def _rotated_rois(k: int, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), _rotated(k, g) * 0.5], dim=1)


def _grad_of(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    weight = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weight).sum(), inputs)


def _ctc_inputs(g: torch.Generator) -> list[torch.Tensor]:
    T, N, C, S = 20, 3, 6, 5
    log_probs = torch.randn(T, N, C, generator=g).log_softmax(2)
    targets = torch.randint(1, C, (N, S), generator=g)
    return [log_probs, targets]


_CTC_LENGTHS = (torch.tensor([20, 18, 15]), torch.tensor([5, 3, 4]))


def _tps_inputs(g: torch.Generator) -> list[torch.Tensor]:
    target = ops.rare_fiducials(10).unsqueeze(0).expand(2, -1, -1)
    source = target + 0.1 * torch.randn(2, 10, 2, generator=g)
    kernel_weights, affine_weights = ops.tps_fit(source, target)
    return [_image(g), kernel_weights, affine_weights, target.contiguous()]


def _requires_grad(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().requires_grad_() for t in ts]


def _roi_align_grad(x: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, ...]:
    (x,) = _requires_grad(x)
    return _grad_of(ops.roi_align(x, rois, 5, 0.5, 2, True), [x])


def _ctc_grad(log_probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    (log_probs,) = _requires_grad(log_probs)
    return _grad_of(ops.ctc_loss(log_probs, targets, *_CTC_LENGTHS, reduction="none"), [log_probs])


def _grid_sample_grad(x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, grid = _requires_grad(x, grid)
    return _grad_of(ops.grid_sample(x, grid), [x, grid])



def _depthwise_grad(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, w = _requires_grad(x, w)
    return _grad_of(ops.depthwise_conv2d(x, w, padding=2), [x, w])


# name -> (CPU inputs, function of the inputs moved to the device)
Case = tuple[Callable[[torch.Generator], list[torch.Tensor]], Callable[..., object]]
CASES: dict[str, Case] = {
    "roi_align": (lambda g: [_image(g), _rois(7, 2, g)], lambda x, r: ops.roi_align(x, r, 5, 0.5, 2, True)),
    "roi_align_backward": (lambda g: [_image(g), _rois(7, 2, g)], _roi_align_grad),
    "roi_pool": (lambda g: [_image(g), _rois(7, 2, g)], lambda x, r: ops.roi_pool(x, r, 4, 0.5)),
    "box_iou": (lambda g: [_boxes(9, g), _boxes(11, g)], lambda a, b: ops.box_iou(a, b)),
    "nms": (lambda g: [_boxes(60, g, 12.0), torch.rand(60, generator=g)], lambda b, s: ops.nms(b, s, 0.4)),
    "batched_nms": (
        lambda g: [_boxes(60, g, 12.0), torch.rand(60, generator=g), torch.randint(0, 3, (60,), generator=g)],
        lambda b, s, i: ops.batched_nms(b, s, i, 0.4),
    ),
    "nms_fixed": (
        lambda g: [_boxes(60, g, 12.0), torch.rand(60, generator=g)],
        lambda b, s: ops.nms_fixed(b, s, 0.4, 32),
    ),
    "box_iou_rotated": (lambda g: [_rotated(9, g), _rotated(11, g)], lambda a, b: ops.box_iou_rotated(a, b)),
    "nms_rotated": (lambda g: [_rotated(40, g), torch.rand(40, generator=g)], lambda b, s: ops.nms_rotated(b, s, 0.3)),
    "roi_align_rotated": (
        lambda g: [_image(g), _rotated_rois(6, 2, g)],
        lambda x, r: ops.roi_align_rotated(x, r, 4, 0.5, 2),
    ),
    "ctc_loss": (_ctc_inputs, lambda lp, t: ops.ctc_loss(lp, t, *_CTC_LENGTHS, reduction="none")),
    "ctc_loss_backward": (_ctc_inputs, lambda lp, t: _ctc_grad(lp, t)),
    "grid_sample": (
        lambda g: [_image(g), torch.rand(2, 7, 9, 2, generator=g) * 2.4 - 1.2],
        lambda x, grid: ops.grid_sample(x, grid, align_corners=False),
    ),
    "grid_sample_backward": (
        lambda g: [_image(g), torch.rand(2, 7, 9, 2, generator=g) * 2.4 - 1.2],
        lambda x, grid: _grid_sample_grad(x, grid),
    ),
    "affine_grid_sample": (
        lambda g: [_image(g), torch.eye(2, 3).expand(2, 2, 3) + 0.1 * torch.randn(2, 2, 3, generator=g)],
        lambda x, theta: ops.affine_grid_sample(x, theta, (8, 10)),
    ),
    "tps_grid_sample": (_tps_inputs, lambda x, kw, aw, tp: ops.tps_grid_sample(x, kw, aw, tp, (8, 10))),
    "depthwise_conv2d": (
        lambda g: [_image(g), torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, generator=g)],
        lambda x, w, b: ops.depthwise_conv2d(x, w, b, 2, 1, activation="relu6"),
    ),
    "depthwise_conv2d_backward": (
        lambda g: [_image(g), torch.randn(3, 1, 5, 5, generator=g)],
        lambda x, w: _depthwise_grad(x, w),
    ),
    "conv2d": (
        lambda g: [_image(g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)],
        lambda x, w, b: ops.conv2d(x, w, b, padding=1),
    ),
}




def _flat(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]  # type: ignore[list-item]


def _assert_same(actual: object, expected: object) -> None:
    for a, e in zip(_flat(actual), _flat(expected), strict=True):
        assert a.device == e.device
        if a.is_floating_point():
            torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
        else:
            assert torch.equal(a, e)


@pytest.mark.parametrize("name", sorted(CASES))
def test_side_stream_matches_default_stream_and_stays_ordered(name):
    make, fn = CASES[name]
    inputs = make(_gen())
    expected = fn(*[t.cuda() for t in inputs])
    sources = [t.cuda() for t in inputs]
    # float inputs start as NaN: a kernel that read them before the side stream's copy ran would return NaN
    buffers = [torch.full_like(s, float("nan")) if s.is_floating_point() else s.clone() for s in sources]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(20_000_000)  # keeps the side stream busy (~10 ms): a wrong stream would run first
        for b, s in zip(buffers, sources):
            b.copy_(s)
        out = fn(*buffers)
        consumed = [o.clone() for o in _flat(out)]  # produced and read on the side stream
    torch.cuda.current_stream().wait_stream(side)
    _assert_same(consumed, expected)


@TWO_GPUS
@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_on_a_non_current_device(name):
    make, fn = CASES[name]
    inputs = make(_gen())
    with torch.cuda.device(1):
        expected = fn(*[t.to("cuda:1") for t in inputs])
    moved = [t.to("cuda:1") for t in inputs]
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    def allocations_on_0() -> int:  # cumulative count: unaffected by frees (garbage collection) meanwhile
        return torch.cuda.memory_stats(0).get("allocation.all.allocated", 0)

    with torch.cuda.device(0):
        before = allocations_on_0()
        out = fn(*moved)
        assert allocations_on_0() == before, "allocated on the current device, not the inputs' device"
    for o in _flat(out):
        assert o.device == torch.device("cuda", 1)
    _assert_same(out, expected)


# every op names the device(s) involved: "... must be on the same device as input (cuda:0), got cpu",
# "... must be on cuda:0, got cpu" (TPS parameters)
MISPLACED = r"device|must be on"

# op, first tensor, the others (a call must refuse the others on another device)
MIXES: dict[str, Callable[[str, str], object]] = {
    "roi_align": lambda a, b: ops.roi_align(_image(_gen()).to(a), _rois(3, 2, _gen()).to(b), 2),
    "roi_pool": lambda a, b: ops.roi_pool(_image(_gen()).to(a), _rois(3, 2, _gen()).to(b), 2),
    "box_iou": lambda a, b: ops.box_iou(_boxes(3, _gen()).to(a), _boxes(4, _gen()).to(b)),
    "nms": lambda a, b: ops.nms(_boxes(5, _gen()).to(a), torch.rand(5).to(b), 0.5),
    "nms_fixed": lambda a, b: ops.nms_fixed(_boxes(5, _gen()).to(a), torch.rand(5).to(b), 0.5, 4),
    "box_iou_rotated": lambda a, b: ops.box_iou_rotated(_rotated(3, _gen()).to(a), _rotated(4, _gen()).to(b)),
    "nms_rotated": lambda a, b: ops.nms_rotated(_rotated(5, _gen()).to(a), torch.rand(5).to(b), 0.5),
    "roi_align_rotated": lambda a, b: ops.roi_align_rotated(_image(_gen()).to(a), _rotated_rois(3, 2, _gen()).to(b), 2),
    "grid_sample": lambda a, b: ops.grid_sample(_image(_gen()).to(a), torch.zeros(2, 3, 3, 2).to(b)),
    "affine_grid_sample": lambda a, b: ops.affine_grid_sample(_image(_gen()).to(a),
                                                              torch.eye(2, 3).expand(2, 2, 3).to(b), 4),
    "tps_grid_sample": lambda a, b: ops.tps_grid_sample(*[t.to(a if i == 0 else b)
                                                          for i, t in enumerate(_tps_inputs(_gen()))], 4),
    "depthwise_conv2d": lambda a, b: ops.depthwise_conv2d(_image(_gen()).to(a), torch.randn(3, 1, 3, 3).to(b)),
    "conv2d": lambda a, b: ops.conv2d(_image(_gen()).to(a), torch.randn(4, 3, 3, 3).to(b)),
}


@pytest.mark.parametrize("name", sorted(MIXES))
def test_cuda_input_with_cpu_tensors_rejected(name):
    with pytest.raises((RuntimeError, ValueError), match=MISPLACED):
        MIXES[name]("cuda", "cpu")


@TWO_GPUS
@pytest.mark.parametrize("name", sorted(MIXES) + ["ctc_loss"])
def test_inputs_on_two_gpus_rejected(name):
    if name == "ctc_loss":  # CPU targets are accepted (as torch does), another GPU's are not
        lp, t = _ctc_inputs(_gen())
        with pytest.raises((RuntimeError, ValueError), match=MISPLACED):
            ops.ctc_loss(lp.to("cuda:0"), t.to("cuda:1"), *_CTC_LENGTHS)
        return
    with pytest.raises((RuntimeError, ValueError), match=MISPLACED):
        MIXES[name]("cuda:0", "cuda:1")


GRAPHED = ["nms_fixed", "roi_align", "grid_sample", "depthwise_conv2d"]


@pytest.mark.parametrize("name", GRAPHED)
def test_cuda_graph_capture_and_replay_equal_eager(name):
    make, fn = CASES[name]
    static = [t.cuda() for t in make(_gen(0))]
    side = torch.cuda.Stream()  # warm up off the default stream, as torch.cuda.graphs asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(*static)
    for seed in (1, 2):  # new values in the captured input buffers, then replay
        fresh = [t.cuda() for t in make(_gen(seed))]
        for s, f in zip(static, fresh):
            s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        _assert_same([t.clone() for t in _flat(captured)], fn(*fresh))
