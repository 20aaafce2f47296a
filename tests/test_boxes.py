"""boxes family: box_iou, nms, batched_nms, nms_fixed against torchvision and the NumPy oracle."""

from __future__ import annotations

import warnings

import pytest
import torch

TORCH_VERSION = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
from conftest import DEVICES, HAS_CUDA
from hypothesis import assume, given
from hypothesis import strategies as st
from reference.boxes import box_iou_reference, nms_reference

from visionops import ops
from visionops.data import random_boxes

tv = pytest.importorskip("torchvision", reason="torchvision is the reference for the boxes family")

cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]


def make_boxes(seed, n, grid, zero_area, scale, offset, ties, dtype=torch.float32, device="cpu"):
    """Boxes with the degenerate cases the issue names: coordinates on a coarse
    grid (duplicate boxes and IoUs exactly at simple fractions), zero-area boxes,
    negative and large coordinates, ties in score."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 2, generator=g, dtype=torch.float64)
    size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5
    if grid:
        p, size = (p * 4).round() / 4, (size * 8).round() / 8
    if n >= 4:  # exact duplicates of earlier boxes
        dup = torch.randint(0, n, (n // 4,), generator=g)
        p[: n // 4], size[: n // 4] = p[dup], size[dup]
    if zero_area and n:
        size[torch.rand(n, generator=g) < 0.2, torch.randint(0, 2, (1,), generator=g).item()] = 0
    boxes = torch.cat([p, p + size], dim=1) * scale + offset
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 4).floor() / 4
    return boxes.to(device=device, dtype=dtype), scores.to(device=device, dtype=dtype)


box_args = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 40),
    grid=st.booleans(),
    zero_area=st.booleans(),
    scale=st.sampled_from([1.0, 100.0, 1e6]),
    offset=st.sampled_from([0.0, -50.0, -1e6, 3e5]),
    ties=st.booleans(),
    threshold=st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25]), st.floats(0.0, 1.0)),
)


# ---------------------------------------------------------------- nms


@pytest.mark.parametrize("device", DEVICES)
@given(**box_args)
def test_nms_matches_torchvision_and_oracle(device, seed, n, grid, zero_area, scale, offset, ties, threshold):
    boxes, scores = make_boxes(seed, n, grid, zero_area, scale, offset, ties, device=device)
    keep = ops.nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64 and keep.device == boxes.device
    # exact: same float32 IoUs compared with the same threshold; torchvision's CPU
    # kernel also breaks score ties by index (stable sort)
    assert keep.tolist() == tv.ops.nms(boxes.cpu(), scores.cpu(), threshold).tolist()
    assert keep.tolist() == nms_reference(boxes, scores, threshold).tolist()


@pytest.mark.parametrize("device", DEVICES)
@given(classes=st.integers(1, 5), **box_args)
def test_batched_nms_matches_oracle_and_torchvision(
    device, seed, n, grid, zero_area, scale, offset, ties, threshold, classes
):
    boxes, scores = make_boxes(seed, n, grid, zero_area, scale, offset, ties, device=device)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed)).to(device)
    keep = ops.batched_nms(boxes, scores, idxs, threshold)
    assert keep.tolist() == nms_reference(boxes, scores, threshold, idxs).tolist()
    # torchvision's per-class loop keeps the same set; its final score sort is not
    # stable, so the order of tied scores may differ
    ref = tv.ops.boxes._batched_nms_vanilla(boxes.cpu(), scores.cpu(), idxs.cpu(), threshold)
    assert sorted(keep.tolist()) == sorted(ref.tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_exact_where_coordinate_offset_trick_fails(device):
    # torchvision's batched_nms shifts class c by c * (max coordinate + 1): with
    # all coordinates <= -1 the shift is 0 and different classes suppress each
    # other; with huge coordinates the shifted floats lose precision.
    boxes = torch.tensor([[-3.0, -3, -1, -1], [-3.0, -3, -1, -1], [-3.0, -3, -1.5, -1]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    idxs = torch.tensor([0, 1, 1], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1]
    big = torch.tensor([[1e8, 1e8, 1e8 + 64, 1e8 + 64], [1e8 + 32, 1e8, 1e8 + 96, 1e8 + 64]], device=device)
    s2, i2 = torch.tensor([0.9, 0.8], device=device), torch.tensor([0, 1], device=device)
    assert ops.batched_nms(big, s2, i2, 0.1).tolist() == [0, 1]
    assert ops.batched_nms(big, s2, torch.zeros_like(i2), 0.1).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_equal_float_computation(device, dtype):
    # 16-bit boxes are compared in float32: same result as float32 NMS of the
    # rounded values. float64 against the oracle in float64.
    boxes, scores = make_boxes(5, 300, False, True, 100.0, -20.0, True, dtype=dtype, device=device)
    keep = ops.nms(boxes, scores, 0.4)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    assert keep.tolist() == ops.nms(boxes.to(wide), scores.to(wide), 0.4).tolist()
    assert keep.tolist() == nms_reference(boxes, scores, 0.4).tolist()
    idxs = torch.arange(300, device=device) % 7
    assert ops.batched_nms(boxes, scores, idxs, 0.4).tolist() == nms_reference(boxes, scores, 0.4, idxs).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_detector_sized_inputs_match_torchvision(device):
    # thousands of boxes: many CUDA mask blocks and reduction rounds, 80 classes
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(5000, (800, 1088), min_size=8, max_size=300, generator=g).to(device)
    scores = torch.rand(5000, generator=g).to(device)
    idxs = torch.randint(0, 80, (5000,), generator=g).to(device)
    assert torch.equal(ops.nms(boxes, scores, 0.5).cpu(), tv.ops.nms(boxes.cpu(), scores.cpu(), 0.5))
    ref = tv.ops.boxes._batched_nms_vanilla(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5).cpu(), ref)  # distinct scores: order is defined


# ---------------------------------------------------------------- nms_fixed


@pytest.mark.parametrize("device", DEVICES)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 40), extra=st.integers(-3, 3), batched=st.booleans())
def test_nms_fixed_is_padded_nms(device, seed, n, extra, batched):
    boxes, scores = make_boxes(seed, n, True, False, 10.0, 0.0, True, device=device)
    idxs = (torch.arange(n, device=device) % 3) if batched else None
    full = ops.batched_nms(boxes, scores, idxs, 0.3) if batched else ops.nms(boxes, scores, 0.3)
    size = max(0, full.numel() + extra)
    keep, count = ops.nms_fixed(boxes, scores, 0.3, size, idxs=idxs)
    assert keep.shape == (size,) and keep.dtype == torch.int64 and keep.device == boxes.device
    assert count.shape == () and count.dtype == torch.int64 and count.device == boxes.device
    k = min(size, full.numel())
    assert count.item() == k
    assert keep[:k].tolist() == full[:k].tolist()
    assert (keep[k:] == -1).all()


# ---------------------------------------------------------------- box_iou


@pytest.mark.parametrize("device", DEVICES)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 12), m=st.integers(0, 12), zero_area=st.booleans(),
       scale=st.sampled_from([1.0, 1e3, 1e6]), offset=st.sampled_from([0.0, -7.0, 1e5]))
def test_box_iou_matches_torchvision_and_oracle(device, seed, n, m, zero_area, scale, offset):
    a, _ = make_boxes(seed, n, True, zero_area, scale, offset, False, device=device)
    b, _ = make_boxes(seed + 1, m, False, zero_area, scale, offset, False, device=device)
    out = ops.box_iou(a, b)
    # same float32 formula, operation by operation: bit-identical (NaN for two zero-area boxes)
    torch.testing.assert_close(out, tv.ops.box_iou(a, b), rtol=0, atol=0, equal_nan=True)
    ref = box_iou_reference(a.double(), b.double())
    # float32 rounding of coordinates at |offset| ~ 1e5 with boxes ~1 wide gives
    # IoU errors ~1e-2 * 2^-24 * 1e5 / size: compare float64 inputs to the oracle instead
    torch.testing.assert_close(ops.box_iou(a.double(), b.double()).cpu(), ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    valid = ~torch.isnan(out)
    assert ((out[valid] >= 0) & (out[valid] <= 1)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_box_iou_half_precision(device, dtype, tol):
    # computed in float32 from the rounded inputs and rounded once: error <= half an ulp of an IoU <= 1
    a = random_boxes(20, (100, 100), generator=torch.Generator().manual_seed(1)).to(device, dtype)
    b = random_boxes(30, (100, 100), generator=torch.Generator().manual_seed(2)).to(device, dtype)
    out = ops.box_iou(a, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ops.box_iou(a.float(), b.float()), rtol=0, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_gradcheck(device):
    # generic boxes (no equal coordinates, no exact touching): the IoU is smooth there
    a = random_boxes(5, (50, 50), min_size=5, max_size=30, generator=torch.Generator().manual_seed(3),
                     dtype=torch.float64, device=device).requires_grad_(True)
    b = random_boxes(4, (50, 50), min_size=5, max_size=30, generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64, device=device).requires_grad_(True)
    assert torch.autograd.gradcheck(ops.box_iou, (a, b))


@pytest.mark.parametrize("device", DEVICES)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 8), m=st.integers(0, 8), grid=st.booleans())
def test_box_iou_gradient_matches_torchvision_autograd(device, seed, n, m, grid):
    # grid boxes share coordinates and touch: torch's subgradient conventions
    # (ties split in halves, clamp passes at 0) must be reproduced exactly
    # torch 2.11 (the GPU machine) splits the gradient of tied min/max differently
    # from 2.14, which these kernels follow: ties are compared on 2.14+ only
    assume(not grid or TORCH_VERSION >= (2, 14))
    a, _ = make_boxes(seed, n, grid, False, 10.0, -2.0, False, dtype=torch.float64, device=device)
    b, _ = make_boxes(seed + 7, m, grid, False, 10.0, -2.0, False, dtype=torch.float64, device=device)
    # positive areas: two zero-area boxes have IoU 0/0 and NaN gradients in both
    a[:, 2:], b[:, 2:] = torch.maximum(a[:, 2:], a[:, :2] + 1.25), torch.maximum(b[:, 2:], b[:, :2] + 1.25)
    if grid and n and m:
        b[: min(n, m) // 2] = a[: min(n, m) // 2]  # identical pairs
    grad = torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ops.box_iou(a1, b1).backward(grad)
    tv.ops.box_iou(a2, b2).backward(grad)
    # float64, sums of <= 8 terms in another order
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- odd input


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_boxes_neither_suppress_nor_are_suppressed(device):
    # documented: a box with a NaN/inf coordinate has IoU NaN or 0 with every box
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor(
        [[0, 0, 10, 10], [nan, 0, 10, 10], [0, 0, inf, 10], [1, 1, 10, 10], [-inf, 0, inf, 10], [0, 0, 10, 10]],
        device=device,
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.4, 0.7, 0.3], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 2, 4, 0]
    assert ops.batched_nms(boxes, scores, torch.zeros(6, dtype=torch.int64, device=device), 0.5).tolist() == [1, 2, 4, 0]
    keep, count = ops.nms_fixed(boxes, scores, 0.5, 6)
    assert keep.tolist() == [1, 2, 4, 0, -1, -1] and count.item() == 4
    assert ops.nms(boxes, scores, 0.5).tolist() == nms_reference(boxes, scores, 0.5).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_thresholds_zero_and_one(device):
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6], [2, 0, 4, 2]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    # 1: only IoU > 1 suppresses, i.e. nothing (duplicates have IoU exactly 1)
    assert ops.nms(boxes, scores, 1.0).tolist() == [0, 1, 2, 3, 4]
    # 0: any positive overlap suppresses; touching boxes (IoU 0) do not
    assert ops.nms(boxes, scores, 0.0).tolist() == [0, 3, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    boxes, scores = torch.zeros(0, 4, device=device), torch.zeros(0, device=device)
    idxs = torch.zeros(0, dtype=torch.int64, device=device)
    assert ops.nms(boxes, scores, 0.5).shape == (0,)
    assert ops.batched_nms(boxes, scores, idxs, 0.5).shape == (0,)
    keep, count = ops.nms_fixed(boxes, scores, 0.5, 3)
    assert keep.tolist() == [-1, -1, -1] and count.item() == 0
    keep, count = ops.nms_fixed(boxes, scores, 0.5, 0, idxs=idxs)
    assert keep.shape == (0,) and count.item() == 0
    assert ops.box_iou(boxes, torch.ones(3, 4, device=device)).shape == (0, 3)
    assert ops.box_iou(torch.ones(2, 4, device=device), boxes).shape == (2, 0)


def _bad(op, **kw):
    return (op, kw)


GOOD = dict(
    boxes=torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]]),
    scores=torch.tensor([0.5, 0.4]),
    idxs=torch.tensor([0, 1]),
    iou_threshold=0.5,
)
BAD_INPUTS = [
    # (description, ops, override, exception, message fragment)
    ("boxes [N, 5]", ("nms", "batched_nms", "nms_fixed"), dict(boxes=torch.zeros(2, 5)), RuntimeError,
     "boxes must be a tensor [N, 4]"),
    ("boxes 1-D", ("nms", "batched_nms", "nms_fixed"), dict(boxes=torch.zeros(4)), RuntimeError,
     "boxes must be a tensor [N, 4]"),
    ("boxes integer", ("nms", "batched_nms", "nms_fixed"), dict(boxes=torch.zeros(2, 4, dtype=torch.int64)),
     RuntimeError, "boxes must be a floating-point"),
    ("boxes not a tensor", ("nms", "batched_nms", "nms_fixed"), dict(boxes=[[0.0, 0, 1, 1]]), TypeError,
     "boxes must be a torch.Tensor"),
    ("scores too short", ("nms", "batched_nms", "nms_fixed"), dict(scores=torch.tensor([0.5])), RuntimeError,
     "scores must be a 1-D tensor with one score per box (2)"),
    ("scores 2-D", ("nms", "batched_nms", "nms_fixed"), dict(scores=torch.zeros(2, 1)), RuntimeError,
     "scores must be a 1-D tensor"),
    ("scores float64", ("nms", "batched_nms", "nms_fixed"), dict(scores=torch.zeros(2, dtype=torch.float64)),
     RuntimeError, "scores must have the same dtype as boxes"),
    ("idxs too long", ("batched_nms", "nms_fixed"), dict(idxs=torch.tensor([0, 1, 2])), RuntimeError,
     "idxs must be a 1-D tensor with one class index per box (2)"),
    ("idxs float", ("batched_nms", "nms_fixed"), dict(idxs=torch.tensor([0.0, 1.0])), RuntimeError,
     "idxs must be an integer tensor"),
    ("threshold > 1", ("nms", "batched_nms", "nms_fixed"), dict(iou_threshold=1.5), ValueError,
     "iou_threshold must lie in [0, 1]"),
    ("threshold < 0", ("nms", "batched_nms", "nms_fixed"), dict(iou_threshold=-0.1), ValueError,
     "iou_threshold must lie in [0, 1]"),
    ("threshold NaN", ("nms", "batched_nms", "nms_fixed"), dict(iou_threshold=float("nan")), ValueError,
     "iou_threshold must lie in [0, 1]"),
    ("threshold string", ("nms",), dict(iou_threshold="0.5"), TypeError, "iou_threshold must be a float"),
    ("max_output_size negative", ("nms_fixed",), dict(max_output_size=-1), ValueError,
     "max_output_size must be non-negative"),
    ("max_output_size float", ("nms_fixed",), dict(max_output_size=2.0), TypeError, "max_output_size must be an int"),
]


def _call(op, kw):
    if op == "nms":
        return ops.nms(kw["boxes"], kw["scores"], kw["iou_threshold"])
    if op == "batched_nms":
        return ops.batched_nms(kw["boxes"], kw["scores"], kw["idxs"], kw["iou_threshold"])
    return ops.nms_fixed(kw["boxes"], kw["scores"], kw["iou_threshold"], kw.get("max_output_size", 4), idxs=kw["idxs"])


@pytest.mark.parametrize(
    "desc,op,override,exc,message",
    [(d, op, o, e, m) for d, names, o, e, m in BAD_INPUTS for op in names],
    ids=[f"{op}-{d}" for d, names, *_ in BAD_INPUTS for op in names],
)
def test_bad_input_raises_clear_error(desc, op, override, exc, message):
    kw = dict(GOOD)
    kw.update(override)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        _call(op, kw)


BAD_IOU = [
    (dict(boxes1=torch.zeros(2, 5)), "boxes1 must be a tensor [N, 4]"),
    (dict(boxes2=torch.zeros(3)), "boxes2 must be a tensor [M, 4]"),
    (dict(boxes1=torch.zeros(2, 4, dtype=torch.int32)), "boxes1 must be a floating-point"),
    (dict(boxes2=torch.zeros(2, 4, dtype=torch.float64)), "boxes2 must have the same dtype as boxes1"),
]


@pytest.mark.parametrize("override,message", BAD_IOU)
def test_box_iou_bad_input(override, message):
    kw = dict(boxes1=torch.zeros(2, 4), boxes2=torch.zeros(3, 4))
    kw.update(override)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.box_iou(**kw)
    with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor"):
        ops.box_iou(None, torch.zeros(1, 4))


# ---------------------------------------------------------------- opcheck, compile, autocast


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    # no zero-area boxes: opcheck compares outputs without equal_nan (box_iou gives NaN for two of them)
    boxes, scores = make_boxes(4, 30, False, False, 10.0, -3.0, True, device=device)
    idxs = torch.arange(30, device=device) % 4
    torch.library.opcheck(torch.ops.visionops.box_iou.default, (boxes, boxes[:7]))
    torch.library.opcheck(
        torch.ops.visionops.box_iou.default, (boxes.clone().requires_grad_(True), boxes[:7].clone().requires_grad_(True))
    )
    grad = torch.randn(30, 7, device=device)
    torch.library.opcheck(torch.ops.visionops._box_iou_backward.default, (grad, boxes, boxes[:7]))
    torch.library.opcheck(torch.ops.visionops.nms_fixed.default, (boxes, scores, None, 0.5, 12))
    torch.library.opcheck(torch.ops.visionops.nms_fixed.default, (boxes, scores, idxs, 0.5, 40))
    # data-dependent output size: the dynamic-shape AOT test does not apply
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.visionops.nms.default, (boxes, scores, 0.5), test_utils=utils)
    torch.library.opcheck(torch.ops.visionops.batched_nms.default, (boxes, scores, idxs, 0.5), test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    boxes, scores = make_boxes(6, 50, False, False, 100.0, 0.0, False, device=device)
    idxs = torch.arange(50, device=device) % 3

    def fixed(b, s, i):
        keep, count = ops.nms_fixed(b, s, 0.5, 20, idxs=i)
        return keep, count, ops.box_iou(b, b[:5]).sum()

    compiled = torch.compile(fixed, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    for got, want in zip(compiled(boxes, scores, idxs), fixed(boxes, scores, idxs)):
        torch.testing.assert_close(got, want)

    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    try:
        dyn = torch.compile(lambda b, s, i: ops.batched_nms(b, s, i, 0.5) + 0, fullgraph=True, backend="aot_eager")
        assert torch.equal(dyn(boxes, scores, idxs), ops.batched_nms(boxes, scores, idxs, 0.5))
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = False


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_float32(device):
    boxes, scores = make_boxes(8, 40, False, False, 100.0, 0.0, False, device=device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device_type=device, dtype=dtype):
        keep = ops.nms(boxes, scores, 0.5)
        iou = ops.box_iou(boxes, boxes)
        mixed = ops.nms(boxes, scores.to(dtype), 0.5)  # mixed dtypes are upcast, not rejected
    assert torch.equal(keep, ops.nms(boxes, scores, 0.5))
    assert iou.dtype == torch.float32 and torch.equal(iou, ops.box_iou(boxes, boxes))
    assert mixed.dtype == torch.int64


# ---------------------------------------------------------------- CUDA only


@pytest.mark.parametrize("batched", [False, True], ids=["nms", "batched"])
@pytest.mark.parametrize("mark", [pytest.param(None, marks=cuda_only)])
def test_cuda_large_inputs_match_cpu(batched, mark):
    # 20k boxes: 313 mask words per box, the single-block reduction's long walk
    g = torch.Generator().manual_seed(11)
    boxes = random_boxes(20000, (800, 1088), min_size=4, max_size=200, generator=g)
    scores = (torch.rand(20000, generator=g) * 50).round() / 50  # many ties
    idxs = torch.randint(0, 80, (20000,), generator=g) if batched else None
    fn = (lambda b, s, i: ops.batched_nms(b, s, i, 0.6)) if batched else (lambda b, s, i: ops.nms(b, s, 0.6))
    cpu = fn(boxes, scores, idxs)
    gpu = fn(boxes.cuda(), scores.cuda(), idxs.cuda() if batched else None)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("mark", [pytest.param(None, marks=cuda_only)])
def test_cuda_nms_fixed_does_not_synchronize(mark):
    boxes, scores = make_boxes(9, 3000, False, False, 800.0, 0.0, False, device="cuda")
    idxs = torch.arange(3000, device="cuda") % 80
    ops.nms_fixed(boxes, scores, 0.5, 100)  # warm up (lazy initialisation may sync)
    ops.nms_fixed(boxes, scores, 0.5, 100, idxs=idxs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.nms_fixed(boxes, scores, 0.5, 100)
        ops.nms_fixed(boxes, scores, 0.5, 100, idxs=idxs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mark", [pytest.param(None, marks=cuda_only)])
def test_cuda_nms_synchronizes_only_for_the_count(mark):
    boxes, scores = make_boxes(9, 3000, False, False, 800.0, 0.0, False, device="cuda")
    idxs = torch.arange(3000, device="cuda") % 80
    ops.nms(boxes, scores, 0.5)  # warm up (lazy initialisation may sync)
    ops.batched_nms(boxes, scores, idxs, 0.5)
    torch.cuda.synchronize()
    for call in (lambda: ops.nms(boxes, scores, 0.5), lambda: ops.batched_nms(boxes, scores, idxs, 0.5)):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        # reading the count is the only sync allowed (torch 2.11 did not report it)
        assert len(syncs) <= 1, [str(w.message) for w in syncs]


@pytest.mark.parametrize("batched", [False, True], ids=["nms", "batched"])
@pytest.mark.parametrize("mark", [pytest.param(None, marks=cuda_only)])
def test_cuda_graph_capture_of_nms_fixed(batched, mark):
    g = torch.Generator().manual_seed(12)
    n = 2000
    boxes = random_boxes(n, (800, 1088), min_size=8, max_size=300, generator=g).cuda()
    scores = torch.rand(n, generator=g).cuda()
    idxs = torch.randint(0, 80, (n,), generator=g).cuda() if batched else None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            ops.nms_fixed(boxes, scores, 0.5, 300, idxs=idxs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        keep, count = ops.nms_fixed(boxes, scores, 0.5, 300, idxs=idxs)
    for seed in (13, 14):  # new inputs copied into the captured buffers
        g = torch.Generator().manual_seed(seed)
        boxes.copy_(random_boxes(n, (800, 1088), min_size=8, max_size=300, generator=g))
        scores.copy_(torch.rand(n, generator=g))
        graph.replay()
        want, want_count = ops.nms_fixed(boxes, scores, 0.5, 300, idxs=idxs)
        torch.cuda.synchronize()
        assert torch.equal(keep, want) and torch.equal(count, want_count)
        full = ops.batched_nms(boxes, scores, idxs, 0.5) if batched else ops.nms(boxes, scores, 0.5)
        assert torch.equal(keep[: count.item()], full[:300])
