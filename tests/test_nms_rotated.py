"""Rotated NMS (the generic NMS of the boxes family with the rotated IoU) against a
greedy oracle over the float64 reference rotated IoU of tests/reference/rotated.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES, HAS_CUDA
from hypothesis import assume, given
from hypothesis import strategies as st
from reference.boxes import greedy_nms_from_iou
from reference.rotated import iou_matrix

from visionops import ops
from visionops.data import random_boxes


def make_rotated(seed, n, grid, degenerate, ties, scale, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4
    wh = 0.5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 2
    angle = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 360
    if grid:  # shared centres, sizes and right angles: duplicates and exact IoUs
        c, wh, angle = c.round(), (wh * 2).round() / 2, (angle / 90).round() * 90
    if n >= 4:
        dup = torch.randint(0, n, (n // 4,), generator=g)
        c[: n // 4], wh[: n // 4], angle[: n // 4] = c[dup], wh[dup], angle[dup]
    if degenerate and n:
        wh[torch.rand(n, generator=g) < 0.2, 0] = 0.0
    boxes = torch.cat([c * scale, wh * scale, angle[:, None]], dim=1)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 4).floor() / 4
    return boxes.to(device=device, dtype=dtype), scores.to(device=device, dtype=dtype)


def _oracle(boxes, scores, threshold, idxs=None):
    """Greedy NMS over the reference IoU; examples where the kernel's IoU (within
    ~1e-12 of the reference) lands on the other side of the threshold are
    ambiguous, and hypothesis discards them."""
    n = len(boxes)
    ref = np.array(iou_matrix(boxes.cpu().double(), boxes.cpu().double()), dtype=np.float64).reshape(n, n)
    ours = ops.box_iou_rotated(boxes.cpu().double(), boxes.cpu().double()).numpy()
    assume(not ((ref > threshold) != (ours > threshold)).any())
    return greedy_nms_from_iou(ref, scores, threshold, idxs)


rotated_args = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 16),
    grid=st.booleans(),
    degenerate=st.booleans(),
    ties=st.booleans(),
    scale=st.sampled_from([1.0, 1e-3, 1e4]),
    threshold=st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25]), st.floats(0.0, 1.0)),
)


@pytest.mark.parametrize("device", DEVICES)
@given(**rotated_args)
def test_nms_rotated_matches_oracle(device, seed, n, grid, degenerate, ties, scale, threshold):
    boxes, scores = make_rotated(seed, n, grid, degenerate, ties, scale, device=device)
    keep = ops.nms_rotated(boxes, scores, threshold)
    assert keep.dtype == torch.int64 and keep.device == boxes.device
    assert keep.tolist() == _oracle(boxes, scores, threshold).tolist()


@pytest.mark.parametrize("device", DEVICES)
@given(classes=st.integers(1, 4), **rotated_args)
def test_batched_nms_rotated_matches_oracle(device, seed, n, grid, degenerate, ties, scale, threshold, classes):
    boxes, scores = make_rotated(seed, n, grid, degenerate, ties, scale, device=device)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed)).to(device)
    keep = ops.batched_nms_rotated(boxes, scores, idxs, threshold)
    assert keep.tolist() == _oracle(boxes, scores, threshold, idxs).tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("angle", [0.0, 90.0, -180.0])
def test_right_angles_match_axis_aligned_nms(device, angle):
    # integer boxes: every area and IoU is exact in both formulas, so the
    # decisions agree even at thresholds hit exactly (torchvision as the peer)
    g = torch.Generator().manual_seed(7)
    xy = torch.randint(0, 20, (200, 2), generator=g).double()
    wh = torch.randint(1, 8, (200, 2), generator=g).double()
    scores = torch.randint(0, 10, (200,), generator=g).double()  # ties
    axis = torch.cat([xy, xy + wh], dim=1)
    side = wh.flip(1) if angle == 90.0 else wh
    rotated = torch.cat([xy + wh / 2, side, torch.full((200, 1), angle, dtype=torch.float64)], dim=1)
    tv = pytest.importorskip("torchvision", reason="torchvision is the axis-aligned peer")
    for threshold in (0.0, 0.25, 0.5, 1.0):
        want = tv.ops.nms(axis, scores, threshold)
        assert ops.nms_rotated(rotated.to(device), scores.to(device), threshold).tolist() == want.tolist()
        idxs = torch.arange(200) % 5
        want = ops.batched_nms(axis, scores, idxs, threshold)
        got = ops.batched_nms_rotated(rotated.to(device), scores.to(device), idxs.to(device), threshold)
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_half_boxes(device):
    # the IoU is evaluated in float64 from the stored values: a float32 box set
    # gives the NMS of the same values in float64
    boxes, scores = make_rotated(3, 300, False, True, True, 10.0, dtype=torch.float32, device=device)
    want = ops.nms_rotated(boxes.double(), scores.double(), 0.3)
    assert ops.nms_rotated(boxes, scores, 0.3).tolist() == want.tolist()
    half, hs = boxes.half(), scores.half()
    assert ops.nms_rotated(half, hs, 0.3).tolist() == ops.nms_rotated(half.double(), hs.double(), 0.3).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_odd_boxes_are_kept_and_suppress_nothing(device):
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor(
        [[5, 5, 4, 4, 0], [5, 5, 4, 4, nan], [5, 5, inf, 4, 0], [5, 5, 0, 4, 0], [5, 5, 4, 4, 5], [5, 5, -4, 4, 0]],
        device=device,
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7, 0.4, 0.6], device=device)
    assert ops.nms_rotated(boxes, scores, 0.5).tolist() == [1, 2, 3, 5, 0]
    idxs = torch.zeros(6, dtype=torch.int64, device=device)
    assert ops.batched_nms_rotated(boxes, scores, idxs, 0.5).tolist() == [1, 2, 3, 5, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    boxes, scores = torch.zeros(0, 5, device=device), torch.zeros(0, device=device)
    assert ops.nms_rotated(boxes, scores, 0.5).shape == (0,)
    idxs = torch.zeros(0, dtype=torch.int64, device=device)
    assert ops.batched_nms_rotated(boxes, scores, idxs, 0.5).shape == (0,)


BAD = [
    ("boxes [N, 4]", dict(boxes=torch.zeros(2, 4)), RuntimeError, "boxes must be a tensor [N, 5]"),
    ("scores too long", dict(scores=torch.zeros(3)), RuntimeError, "scores must be a 1-D tensor with one score per box"),
    ("idxs too short", dict(idxs=torch.zeros(1, dtype=torch.int64)), RuntimeError,
     "idxs must be a 1-D tensor with one class index per box"),
    ("threshold > 1", dict(iou_threshold=1.01), ValueError, "iou_threshold must lie in [0, 1]"),
    ("threshold < 0", dict(iou_threshold=-1.0), ValueError, "iou_threshold must lie in [0, 1]"),
    ("scores float64", dict(scores=torch.zeros(2, dtype=torch.float64)), RuntimeError, "scores must have the same dtype"),
]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("desc,override,exc,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(batched, desc, override, exc, message):
    kw = dict(boxes=torch.ones(2, 5), scores=torch.ones(2), idxs=torch.zeros(2, dtype=torch.int64), iou_threshold=0.5)
    kw.update(override)
    if not batched and desc.startswith("idxs"):
        pytest.skip("nms_rotated has no idxs")
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]")):
        if batched:
            ops.batched_nms_rotated(kw["boxes"], kw["scores"], kw["idxs"], kw["iou_threshold"])
        else:
            ops.nms_rotated(kw["boxes"], kw["scores"], kw["iou_threshold"])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    boxes, scores = make_rotated(4, 20, False, False, True, 1.0, dtype=torch.float32, device=device)
    idxs = torch.arange(20, device=device) % 3
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")  # data-dependent output size
    torch.library.opcheck(torch.ops.visionops.nms_rotated.default, (boxes, scores, 0.5), test_utils=utils)
    torch.library.opcheck(
        torch.ops.visionops.batched_nms_rotated.default, (boxes, scores, idxs, 0.5), test_utils=utils
    )
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    try:
        fn = torch.compile(lambda b, s, i: ops.batched_nms_rotated(b, s, i, 0.5) * 1, fullgraph=True, backend="aot_eager")
        assert torch.equal(fn(boxes, scores, idxs), ops.batched_nms_rotated(boxes, scores, idxs, 0.5))
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = False


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("batched", [False, True])
def test_cuda_matches_cpu_on_many_boxes(batched):
    g = torch.Generator().manual_seed(21)
    axis = random_boxes(3000, (400, 400), min_size=4, max_size=80, generator=g, dtype=torch.float64)
    centre, size = (axis[:, :2] + axis[:, 2:]) / 2, axis[:, 2:] - axis[:, :2]
    boxes = torch.cat([centre, size, (torch.rand(3000, 1, generator=g, dtype=torch.float64) - 0.5) * 180], dim=1)
    boxes = boxes.float()
    scores = torch.rand(3000, generator=g)
    idxs = torch.randint(0, 20, (3000,), generator=g)
    if batched:
        cpu = ops.batched_nms_rotated(boxes, scores, idxs, 0.4)
        gpu = ops.batched_nms_rotated(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.4)
    else:
        cpu, gpu = ops.nms_rotated(boxes, scores, 0.4), ops.nms_rotated(boxes.cuda(), scores.cuda(), 0.4)
    assert torch.equal(gpu.cpu(), cpu)
