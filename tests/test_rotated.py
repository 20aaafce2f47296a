"""rotated family: box_iou_rotated, convert_rotated_boxes, roi_align_rotated and
roi_pool_rotated against independent oracles (tests/reference/rotated.py),
shapely, and visionops' roi_align at angle 0."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, HAS_CUDA
from hypothesis import assume, given
from hypothesis import strategies as st
from reference.rotated import (
    corners,
    iou as ref_iou,
    iou_matrix,
    roi_align_rotated_reference,
    roi_pool_rotated_reference,
)

from visionops import nn as vnn
from visionops import ops

# ================================================================ box_iou_rotated

# The kernel computes in float64 from the given values and the oracle is exact
# up to the rounding of the corner coordinates (~1e-16 relative), so the two
# agree to ~1e-13 in IoU; 1e-9 leaves room for cancellation with extreme aspect
# ratios (1e4) without hiding any real error (peers' bugs are > 1e-2).
IOU_TOL = 1e-9

scales = st.sampled_from([1e-3, 1e-1, 1.0, 30.0, 1e3, 1e6])


@st.composite
def box_pairs(draw):
    """Two boxes of comparable size at the same scale, overlapping or not."""
    s = draw(scales)
    w1 = s * draw(st.floats(0.05, 20))
    h1 = w1 / draw(st.sampled_from([1.0, 2.0, 5.0, 8.0, 0.1, 1e-2, 1e3]))
    w2 = s * draw(st.floats(0.05, 20))
    h2 = w2 / draw(st.sampled_from([1.0, 0.5, 3.0, 1e-2, 1e3]))
    cx, cy = draw(st.sampled_from([0.0, 1e3, -5e5])), draw(st.sampled_from([0.0, 250.0, 1e6]))
    d = max(w1, h1, w2, h2)
    dx, dy = d * draw(st.floats(-1.2, 1.2)), d * draw(st.floats(-1.2, 1.2))
    angle = st.one_of(st.floats(-720, 720), st.sampled_from([0.0, 90.0, -90.0, 180.0, 45.0, 359.999]))
    return [cx, cy, w1, h1, draw(angle)], [cx + dx, cy + dy, w2, h2, draw(angle)]


def t(rows, dtype=torch.float64, device="cpu"):
    return torch.tensor(rows, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@given(pair=box_pairs(), mode=st.sampled_from(["iou", "iof"]))
def test_iou_matches_exact_polygon_oracle(device, pair, mode):
    a, b = pair
    out = ops.box_iou_rotated(t([a], device=device), t([b], device=device), mode=mode)
    assert out.shape == (1, 1)
    assert abs(out.item() - ref_iou(a, b, mode)) <= IOU_TOL


@pytest.mark.parametrize("device", DEVICES)
@given(pair=box_pairs())
def test_iou_float32_inputs_match_oracle_on_the_same_values(device, pair):
    a32, b32 = t([pair[0]], torch.float32, device), t([pair[1]], torch.float32, device)
    out = ops.box_iou_rotated(a32, b32)
    assert out.dtype == torch.float32
    # same float64 computation as above, rounded once to float32 (2^-24 relative)
    assert abs(out.item() - ref_iou(a32[0].tolist(), b32[0].tolist())) <= 1e-7


@given(pair=box_pairs())
def test_iou_matches_shapely(pair):
    shapely = pytest.importorskip("shapely", reason="shapely is the second rotated-IoU oracle")
    from shapely.geometry import Polygon

    a, b = pair
    pa, pb = Polygon(corners(a)), Polygon(corners(b))
    inter = pa.intersection(pb).area
    expected = inter / (pa.area + pb.area - inter)
    # shapely clips in float64 too, but in world coordinates (1e6 offsets): its
    # own rounding is ~1e-16 * (coordinate / size)^2 relative in area
    tol = 1e-6 + 1e-15 * (max(abs(v) for v in a[:2] + b[:2]) / min(a[2], a[3], b[2], b[3])) ** 2
    assert abs(ops.box_iou_rotated(t([a]), t([b])).item() - expected) <= tol
    assert shapely.__version__


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@given(box=box_pairs())
def test_identical_boxes_give_exactly_one(device, dtype, box):
    b = t([box[0]], dtype, device)
    assume(torch.isfinite(b).all() and (b[:, 2:4] > 0).all())  # fp16 overflows at 1e6
    assert ops.box_iou_rotated(b, b).item() == 1.0
    assert ops.box_iou_rotated(b, b, mode="iof").item() == 1.0
    assert ops.box_iou_rotated(b, b, aligned=True).item() == 1.0


@pytest.mark.parametrize("device", DEVICES)
@given(pair=box_pairs(), rel=st.sampled_from([1e-9, 1e-7, 1e-5, 1e-3]), seed=st.integers(0, 2**16))
def test_nearly_identical_boxes_within_1e4_of_exact(device, pair, rel, seed):
    a = pair[0]
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(5, generator=g, dtype=torch.float64) * 2 - 1) * rel
    size = max(a[2], a[3])
    b = [a[0] + noise[0].item() * size, a[1] + noise[1].item() * size, a[2] * (1 + noise[2].item()),
         a[3] * (1 + noise[3].item()), a[4] + noise[4].item() * 10]
    got = ops.box_iou_rotated(t([a], device=device), t([b], device=device)).item()
    exact = ref_iou(a, b)
    assert abs(got - exact) < 1e-4
    assert abs(got - exact) <= IOU_TOL * max(1.0, max(a[2], a[3]) / min(a[2], a[3]))


@pytest.mark.parametrize("device", DEVICES)
@given(pair=box_pairs())
def test_geometrically_identical_descriptions_give_one(device, pair):
    cx, cy, w, h, a = pair[0]
    same = [[cx, cy, w, h, a + 180], [cx, cy, w, h, a - 360], [cx, cy, h, w, a + 90], [cx, cy, h, w, a - 270]]
    out = ops.box_iou_rotated(t([pair[0]], device=device), t(same, device=device))
    # rotation by a multiple of 90 degrees of the relative angle is exact in the
    # kernel; what is left is the rounding of a + 180 etc. (~1e-14 degrees)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@given(w=st.floats(1e-3, 1e6), h=st.floats(1e-3, 1e6), angle=st.floats(-360, 360))
def test_touching_boxes_give_zero(device, w, h, angle):
    # b is a shifted by exactly its width along its own u axis: they share an edge
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    a = [0.0, 0.0, w, h, angle]
    b = [c * w, -s * w, w, h, angle]
    got = ops.box_iou_rotated(t([a], device=device), t([b], device=device)).item()
    assert 0.0 <= got <= 1e-9 and got == pytest.approx(ref_iou(a, b), abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@given(pair=box_pairs(), shrink=st.floats(0.01, 0.9), angle=st.floats(-360, 360))
def test_nested_boxes(device, pair, shrink, angle):
    outer = pair[0]
    r = min(outer[2], outer[3]) * shrink / 2  # a square of half-diagonal <= r fits inside
    inner = [outer[0], outer[1], r * math.sqrt(2), r * math.sqrt(2), angle]
    ti, to = t([inner], device=device), t([outer], device=device)
    area_ratio = inner[2] * inner[3] / (outer[2] * outer[3])
    assert ops.box_iou_rotated(ti, to).item() == pytest.approx(area_ratio, rel=1e-9)
    assert ops.box_iou_rotated(ti, to, mode="iof").item() == pytest.approx(1.0, abs=1e-12)
    assert ops.box_iou_rotated(to, ti, mode="iof").item() == pytest.approx(area_ratio, rel=1e-9)


special = st.sampled_from([0.0, -0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(pair=box_pairs(), i=st.integers(0, 9), v=special)
def test_never_nan_or_out_of_range_and_documented_degenerate_results(device, dtype, pair, i, v):
    rows = [list(pair[0]), list(pair[1])]
    rows[i // 5][i % 5] = v
    a, b = t([rows[0]], dtype, device), t([rows[1]], dtype, device)
    for mode in ("iou", "iof"):
        out = ops.box_iou_rotated(a, b, mode=mode).item()
        assert 0.0 <= out <= 1.0
        bad = not math.isfinite(v) or (i % 5 in (2, 3) and v <= 0)
        if bad and (mode == "iou" or i < 5):
            assert out == 0.0  # documented: non-finite values, sides <= 0 -> 0
        elif not bad and dtype == torch.float64 and abs(v) != 1e30:
            # (a 1e30-long side next to 1e-3 ones is beyond double clipping: there
            # only the range guarantee holds, see rotated.h)
            assert abs(out - ref_iou(rows[0], rows[1], mode)) <= 1e-6


# ---- regression cases from the peers' issue trackers (box values as reported)


def _check_case(a, b, dtype=torch.float32, expect=None):
    ta, tb = t([a], dtype), t([b], dtype)
    got = ops.box_iou_rotated(ta, tb).item()
    exact = ref_iou(ta[0].tolist(), tb[0].tolist())  # on the values after rounding to dtype
    assert 0.0 <= got <= 1.0 and math.isfinite(got)
    assert abs(got - exact) <= 1e-6
    if expect is not None:
        assert got == pytest.approx(expect, abs=1e-4)
    return got


def test_regression_detectron2_2167_nearly_identical_large_boxes():
    # detectron2 gave 0.5848
    a = [2563.74462890625, 1436.7901611328125, 2174.703369140625, 214.09500122070312, 115.11834716796875]
    b = [2563.74462890625, 1436.790283203125, 2174.702880859375, 214.09495544433594, 115.11835479736328]
    _check_case(a, b, expect=1.0)


def test_regression_detectron2_2154_nearly_identical_boxes():
    # detectron2 gave 0.600224 for the first pair, 1.0 for the second
    dt = [296.6620178222656, 458.73883056640625, 23.515729904174805, 47.677001953125, 0.08795166015625]
    _check_case(dt, [296.66201, 458.73882000000003, 23.51573, 47.67702, 0.087951], expect=1.0)
    _check_case(dt, [296.66201, 458.73882000000003, 23.51573, 47.6770, 0.087951], expect=1.0)


def test_regression_detectron2_1266_iou_never_negative():
    # detectron2 #1266 / #350: negative IoU broke the matcher's `>= 0` assertion.
    # The issue has no box values; these are the shapes that trigger it in
    # vertex-sorting implementations: thin, far, nearly collinear edges.
    g = torch.Generator().manual_seed(1266)
    n = 400
    base = torch.rand(n, 5, generator=g, dtype=torch.float64)
    boxes1 = torch.stack([base[:, 0] * 2000, base[:, 1] * 2000, base[:, 2] * 500 + 1e-3, base[:, 3] * 2 + 1e-3,
                          base[:, 4] * 360 - 180], 1)
    boxes2 = boxes1 + torch.randn(n, 5, generator=g, dtype=torch.float64) * torch.tensor([1e-3, 1e-3, 1e-4, 1e-5, 1e-4])
    iou = ops.box_iou_rotated(boxes1.float(), boxes2.float())
    assert (iou >= 0).all() and (iou <= 1).all() and not iou.isnan().any()
    diag = ops.box_iou_rotated(boxes1, boxes2, aligned=True)
    exact = iou_matrix(boxes1[:20], boxes2[:20], aligned=True)
    torch.testing.assert_close(diag[:20], torch.tensor(exact, dtype=torch.float64), rtol=0, atol=IOU_TOL)


def test_regression_mmcv_2621_identical_box_is_one():
    # mmcv gave 0.3333 for a box against itself (radians, clockwise in mmcv)
    box = ops.convert_rotated_boxes(torch.tensor([[0.0, 0.0, 180.6422271729, 136.3633728027, 0.9559648633]]),
                                    "mmcv", "xywha")
    assert ops.box_iou_rotated(box, box).item() == 1.0
    # and the w +- 1 deviation reported in the thread stays smooth
    for dw in (1.0, 2.0):
        other = box.clone()
        other[0, 2] += dw
        _check_case(box[0].tolist(), other[0].tolist())


def test_regression_rrpn_44_iou_above_one():
    # RRPN's rbbox_overlaps gave 1.35 (small boxes, angle in radians)
    a = [46.83, 44.03, 3.9, 1.63, 0.0]
    b = [46.83, 44.03, 1.63, 3.9, math.degrees(1.45)]
    got = _check_case(a, b)
    assert got < 1.0


def test_regression_mmrotate_26_tiny_boxes_gave_inf():
    # mmrotate's rbbox_overlaps returned 3.7e5, 9.9e6 and inf for a 1e-7 box
    predict = [[903.34, 1034.4, 1.81e-7, 1e-7, math.degrees(-0.312)]]
    gt = [[2.1525e02, 7.5750e01, 3.3204e01, 1.2649e01, math.degrees(3.2175e-01)],
          [3.0013e02, 7.7144e02, 4.9222e02, 3.1368e02, math.degrees(-1.3978e00)],
          [8.4887e02, 6.9989e02, 4.6854e02, 3.0743e02, math.degrees(-1.4008e00)],
          [8.5250e02, 7.0250e02, 7.6181e02, 3.8200e02, math.degrees(-1.3984e00)]]
    out = ops.box_iou_rotated(t(predict, torch.float32), t(gt, torch.float32))
    expected = iou_matrix(t(predict, torch.float32), t(gt, torch.float32))
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-7)
    assert (out < 1e-10).all()  # a 1e-14 px^2 box against >= 400 px^2 boxes


def test_regression_more_peer_reports():
    # detectron2 #1207 and #4961 (reported as wrong overlaps), mmcv #2952 (-1.2e7)
    _check_case([160.0, 153.0, 230.0, 23.0, -37.0], [190.0, 127.0, 80.0, 21.0, -46.0])
    _check_case([1010.5, 860.00012207, 12.20655537, 48.82622528, 55.00798035],
                [1022, 870.49993896, 10.81665134, 43.26660919, 56.30992889])
    _check_case([1.3507e02, 4.0672e02, 7.9445e-7, 1.9711e3, -math.degrees(1.7708)],
                [151.0080, 436.2173, 302.0159, 313.7347, -math.degrees(3.1184)])


# ---- shapes, layout, dtypes


@pytest.mark.parametrize("device", DEVICES)
@given(n=st.integers(0, 6), m=st.integers(0, 6), seed=st.integers(0, 2**16), mode=st.sampled_from(["iou", "iof"]))
def test_pairwise_and_aligned_match_oracle(device, n, m, seed, mode):
    g = torch.Generator().manual_seed(seed)

    def rand(k):
        b = torch.rand(k, 5, generator=g, dtype=torch.float64)
        return torch.stack([b[:, 0] * 20, b[:, 1] * 20, b[:, 2] * 15 + 0.5, b[:, 3] * 15 + 0.5, b[:, 4] * 360], 1)

    b1, b2 = rand(n), rand(m)
    out = ops.box_iou_rotated(b1.to(device), b2.to(device), mode=mode)
    assert out.shape == (n, m)
    expected = torch.tensor(iou_matrix(b1, b2, mode), dtype=torch.float64).reshape(n, m)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=IOU_TOL)
    al = ops.box_iou_rotated(b1.to(device), b1.flip(0).to(device), mode=mode, aligned=True)
    assert al.shape == (n,)
    ref = torch.tensor(iou_matrix(b1, b1.flip(0), mode, aligned=True), dtype=torch.float64).reshape(n)
    torch.testing.assert_close(al.cpu(), ref, rtol=0, atol=IOU_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_large_n_times_m_has_no_grid_cap(device):
    # 70000 x 2 breaks implementations launching a 2-D grid capped at 65535 x 16
    g = torch.Generator().manual_seed(0)
    b1 = torch.rand(70000, 5, generator=g) * torch.tensor([100, 100, 20, 20, 360]) + torch.tensor([0, 0, 1, 1, 0])
    b2 = torch.tensor([[50.0, 50.0, 30.0, 10.0, 30.0], [10.0, 90.0, 5.0, 40.0, -60.0]])
    out = ops.box_iou_rotated(b1.to(device), b2.to(device)).cpu()
    assert out.shape == (70000, 2)
    for j in range(2):  # each column equals the aligned op against a repeated box
        col = ops.box_iou_rotated(b1, b2[j].expand(70000, 5).contiguous(), aligned=True)
        torch.testing.assert_close(out[:, j], col, rtol=0, atol=1e-7)
    rows = [0, 1, 65535, 65536, 69999]
    expected = torch.tensor(iou_matrix(b1[rows], b2), dtype=torch.float32)
    torch.testing.assert_close(out[rows], expected, rtol=0, atol=1e-7)
    assert out.max() > 0.1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_is_float64_result_rounded_once(device, dtype, tol):
    g = torch.Generator().manual_seed(5)
    b = torch.rand(30, 5, generator=g) * torch.tensor([40, 40, 20, 20, 360]) + torch.tensor([0, 0, 2, 2, 0])
    low = b.to(dtype)
    out = ops.box_iou_rotated(low.to(device), low.flip(0).to(device))
    assert out.dtype == dtype
    ref = ops.box_iou_rotated(low.double(), low.flip(0).double())
    # only the final rounding to 16 bits: 2^-11 (fp16) / 2^-8 (bf16) relative on values <= 1
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_rotated_empty_and_non_contiguous(device):
    b = torch.rand(4, 5, device=device) + 1
    assert ops.box_iou_rotated(b[:0], b).shape == (0, 4)
    assert ops.box_iou_rotated(b, b[:0]).shape == (4, 0)
    assert ops.box_iou_rotated(b[:0], b[:0], aligned=True).shape == (0,)
    wide = torch.rand(4, 10, device=device) + 1
    torch.testing.assert_close(ops.box_iou_rotated(wide[:, ::2], b), ops.box_iou_rotated(wide[:, ::2].contiguous(), b))


BAD_IOU = [
    ("boxes1 [N, 4]", dict(boxes1=torch.zeros(2, 4)), RuntimeError, "boxes1 must be a tensor [N, 5]"),
    ("boxes2 [M, 4]", dict(boxes2=torch.zeros(2, 4)), RuntimeError, "boxes2 must be a tensor [M, 5]"),
    ("boxes1 1-D", dict(boxes1=torch.zeros(5)), RuntimeError, "boxes1 must be a tensor [N, 5]"),
    ("boxes1 integer", dict(boxes1=torch.zeros(2, 5, dtype=torch.int64)), RuntimeError, "floating-point"),
    ("dtype mismatch", dict(boxes2=torch.zeros(2, 5, dtype=torch.float64)), RuntimeError, "same dtype as boxes1"),
    ("mode", dict(mode="giou"), ValueError, "mode must be 'iou' or 'iof'"),
    ("aligned lengths", dict(boxes2=torch.zeros(3, 5), aligned=True), RuntimeError, "aligned=True needs as many"),
    ("boxes1 not a tensor", dict(boxes1=[[0.0] * 5]), TypeError, "boxes1 must be a torch.Tensor"),
]


@pytest.mark.parametrize("desc,override,exc,message", BAD_IOU, ids=[b[0] for b in BAD_IOU])
def test_box_iou_rotated_bad_input(desc, override, exc, message):
    kwargs = dict(boxes1=torch.ones(2, 5), boxes2=torch.ones(2, 5))
    kwargs.update(override)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.box_iou_rotated(**kwargs)


# ================================================================ convert_rotated_boxes

FORMATS = ["xywha", "xywhr", "xywhr_cw", "rrpn", "poly"]


@given(fmt_in=st.sampled_from(FORMATS), fmt_out=st.sampled_from(FORMATS), seed=st.integers(0, 2**16))
def test_convert_roundtrip_preserves_the_rectangle(fmt_in, fmt_out, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(6, 5, generator=g, dtype=torch.float64) * torch.tensor([100, 100, 30, 30, 1080]) + torch.tensor(
        [0, 0, 1, 1, -540]
    )
    src = ops.convert_rotated_boxes(b, "xywha", fmt_in)
    there = ops.convert_rotated_boxes(src, fmt_in, fmt_out)
    back = ops.convert_rotated_boxes(there, fmt_out, "xywha")
    # the same point set: corners equal up to a cyclic relabelling (angle + 180 swaps them)
    torch.testing.assert_close(ops.box_iou_rotated(b, back, aligned=True), torch.ones(6, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    if fmt_out == "rrpn":
        assert ((there[:, 4] >= -math.pi / 4) & (there[:, 4] < 3 * math.pi / 4)).all()


def test_convert_known_values():
    b = torch.tensor([[10.0, 20.0, 4.0, 2.0, 30.0]], dtype=torch.float64)
    torch.testing.assert_close(ops.convert_rotated_boxes(b, "xywha", "xywhr")[0, 4].item(), math.radians(30))
    torch.testing.assert_close(ops.convert_rotated_boxes(b, "detectron2", "mmcv")[0, 4].item(), -math.radians(30))
    b170 = torch.tensor([[0.0, 0.0, 4.0, 2.0, 170.0]], dtype=torch.float64)
    torch.testing.assert_close(ops.convert_rotated_boxes(b170, "xywha", "rrpn")[0, 4].item(), math.radians(170 - 180))
    poly = ops.convert_rotated_boxes(b, "xywha", "poly")
    assert poly.shape == (1, 4, 2)
    torch.testing.assert_close(poly[0], torch.tensor(corners(b[0].tolist()), dtype=torch.float64))
    axis = ops.convert_rotated_boxes(torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.0]]), "xywha", "poly")
    torch.testing.assert_close(axis[0], torch.tensor([[3.0, 4.0], [7.0, 4.0], [7.0, 6.0], [3.0, 6.0]]))
    # polygon -> box on a batch with leading dimensions
    many = torch.rand(2, 3, 5, dtype=torch.float64) * 10 + 1
    again = ops.convert_rotated_boxes(ops.convert_rotated_boxes(many, "xywha", "poly"), "poly", "xywha")
    torch.testing.assert_close(again[..., :4], many[..., :4])


def test_convert_bad_input():
    b = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        ops.convert_rotated_boxes(b, "xyxy", "poly")
    with pytest.raises(ValueError, match="out_fmt must be one of"):
        ops.convert_rotated_boxes(b, "xywha", "cxcywh")
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 5\]"):
        ops.convert_rotated_boxes(torch.zeros(2, 4), "xywha", "poly")
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4, 2\]"):
        ops.convert_rotated_boxes(torch.zeros(2, 5), "poly", "xywha")
    with pytest.raises(TypeError, match="floating-point"):
        ops.convert_rotated_boxes(torch.zeros(2, 5, dtype=torch.int64), "xywha", "poly")


def test_convert_under_compile_and_autograd():
    b = torch.rand(3, 5, dtype=torch.float64, requires_grad=True) + 1
    assert torch.autograd.gradcheck(lambda x: ops.convert_rotated_boxes(x, "xywha", "poly"), (b,))
    f = torch.compile(lambda x: ops.convert_rotated_boxes(x, "xywha", "rrpn"), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(b), ops.convert_rotated_boxes(b, "xywha", "rrpn"))


# ================================================================ rotated RoI pooling


def make_case(seed, n, c, h, w, k, scale, angles, dtype=torch.float32, device="cpu", channels_last=False,
              degenerate=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    img_h, img_w = h / scale, w / scale
    r = torch.rand(k, 5, generator=g, dtype=torch.float64)
    cx = -0.2 * img_w + 1.4 * img_w * r[:, 0]
    cy = -0.2 * img_h + 1.4 * img_h * r[:, 1]
    bw = 0.05 * img_w + 0.9 * img_w * r[:, 2]
    bh = 0.05 * img_h + 0.9 * img_h * r[:, 3]
    if angles == "zero":
        a = torch.zeros(k, dtype=torch.float64)
    elif angles == "right":
        a = (r[:, 4] * 8).floor() * 90 - 360
    else:
        a = r[:, 4] * 720 - 360
    boxes = torch.stack([cx, cy, bw, bh, a], 1)
    if degenerate and k:
        boxes[0, 2] = 0.0  # zero width
        boxes[-1, 3] = 0.0  # zero height
    index = torch.randint(0, n, (k, 1), generator=g).to(torch.float64)
    rois = torch.cat([index, boxes], 1)
    x = x.to(dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, rois.to(dtype=dtype, device=device)


def axis_aligned(rois):
    """(b, cx, cy, w, h, 0) -> (b, x1, y1, x2, y2)."""
    b, cx, cy, w, h = rois[:, :5].unbind(1)
    return torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


case_args = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    k=st.integers(0, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    out_h=st.integers(1, 3),
    out_w=st.integers(1, 3),
    channels_last=st.booleans(),
)

# fp32: same samples, sums in another order: ~1e-6 with O(1) inputs.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@given(sampling_ratio=st.integers(-1, 3), aligned=st.booleans(), **case_args)
def test_roi_align_rotated_at_angle_zero_equals_roi_align(
    device, seed, n, c, h, w, k, scale, out_h, out_w, channels_last, sampling_ratio, aligned
):
    x, rois = make_case(seed, n, c, h, w, k, scale, "zero", device=device, channels_last=channels_last)
    if not aligned:  # roi_align(aligned=False) forces sizes >= 1 from x1, the rotated op around the centre
        rois[:, 3:5] = rois[:, 3:5].clamp(min=1.0 / scale)
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = ops.roi_align_rotated(x, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    ref = ops.roi_align(x_ref, axis_aligned(rois), (out_h, out_w), scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    if k > 0 and not x.is_contiguous():  # channels_last that differs from NCHW is kept
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, **FP32_TOL)


@pytest.mark.parametrize("device", DEVICES)
@given(sampling_ratio=st.integers(-1, 3), aligned=st.booleans(), angles=st.sampled_from(["any", "right"]),
       degenerate=st.booleans(), **case_args)
def test_roi_align_rotated_matches_float64_oracle(
    device, seed, n, c, h, w, k, scale, out_h, out_w, channels_last, sampling_ratio, aligned, angles, degenerate
):
    x, rois = make_case(seed, n, c, h, w, k, scale, angles, torch.float64, device, channels_last, degenerate)
    out = ops.roi_align_rotated(x, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    ref = roi_align_rotated_reference(x, rois.cpu(), (out_h, out_w), scale, sampling_ratio, aligned)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_align_rotated_large_roi_equals_full_enumeration(device):
    # 200 px RoI on an 8x8 map: 10^4 samples per bin, most of them off the map; the
    # kernels only visit those that can reach it, the oracle visits all of them
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, device=device)
    rois = torch.tensor([[0, 4.0, 4.0, 200.0, 120.0, 33.0], [0, 30.0, -20.0, 90.0, 70.0, -121.0]],
                        dtype=torch.float64, device=device)
    out = ops.roi_align_rotated(x, rois, 2, 1.0, -1, True)
    ref = roi_align_rotated_reference(x, rois.cpu(), 2, 1.0, -1, True)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-12)
    assert (ref != 0).any()


@pytest.mark.parametrize("device", DEVICES)
@given(angles=st.sampled_from(["any", "right", "zero"]), degenerate=st.booleans(), **case_args)
def test_roi_pool_rotated_matches_float64_oracle(
    device, seed, n, c, h, w, k, scale, out_h, out_w, channels_last, angles, degenerate
):
    x, rois = make_case(seed, n, c, h, w, k, scale, angles, torch.float64, device, channels_last, degenerate)
    out, arg = torch.ops.visionops.roi_pool_rotated(x, rois, scale, out_h, out_w)
    ref, ref_arg = roi_pool_rotated_reference(x, rois.cpu(), (out_h, out_w), scale)
    # every value is an exact copy of an input value (or 0 for an empty bin)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
    torch.testing.assert_close(arg.cpu(), ref_arg, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_align_rotated_off_map_roi_with_a_huge_sampling_ratio(device):
    """A RoI entirely off the map gives zeros without visiting its samples,
    even with sampling_ratio = 2^32 (2^64 samples per bin: the count of the
    lattice must not overflow into "small enough to visit whole")."""
    x = torch.randn(1, 2, 8, 8, device=device)
    rois = torch.tensor([[0, 100.0, 100.0, 4.0, 4.0, 30.0]], device=device)
    out = ops.roi_align_rotated(x, rois, 2, 1.0, 2**32, False)
    assert out.shape == (1, 2, 2, 2) and not out.any()


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_rotated_rules(device):
    x = torch.full((1, 1, 4, 4), -5.0, device=device)
    x[0, 0, 1, 2] = 7.0
    rois = torch.tensor([[0, 1.5, 1.5, 4.0, 4.0, 0.0]], device=device)
    # running max from -inf: negative features are pooled as they are (the
    # paper's 0 initialisation would clip them)
    out = ops.roi_pool_rotated(x, rois, 2)
    torch.testing.assert_close(out, torch.tensor([[[[-5.0, 7.0], [-5.0, -5.0]]]], device=device))
    # a RoI entirely off the map has empty bins: 0
    far = torch.tensor([[0, 100.0, 100.0, 4.0, 4.0, 30.0]], device=device)
    assert (ops.roi_pool_rotated(x, far, 2) == 0).all()
    # NaN propagates, as the bin's first point or after a larger value
    x[0, 0, 0, 0] = float("nan")
    assert math.isnan(ops.roi_pool_rotated(x, rois, 2)[0, 0, 0, 0].item())
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 9.0, float("nan")
    assert math.isnan(ops.roi_pool_rotated(x, rois, 2)[0, 0, 0, 0].item())
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = -5.0
    # backward routes each gradient to its argmax
    y = torch.zeros(1, 1, 4, 4, device=device)
    y[0, 0, 1, 2] = 5.0
    y.requires_grad_(True)
    ops.roi_pool_rotated(y, torch.tensor([[0, 1.5, 1.5, 4.0, 4.0, 90.0]], device=device), 1).sum().backward()
    expected = torch.zeros(1, 1, 4, 4, device=device)
    expected[0, 0, 1, 2] = 1.0
    torch.testing.assert_close(y.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_rotated_gradcheck(device, aligned):
    x, rois = make_case(7, 2, 2, 6, 7, 4, 0.5, "any", torch.float64, device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t_: ops.roi_align_rotated(t_, rois, (2, 3), 0.5, -1, aligned), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_rotated_gradcheck(device):
    x, rois = make_case(8, 2, 2, 6, 7, 4, 0.5, "any", torch.float64, device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t_: ops.roi_pool_rotated(t_, rois, (2, 3), 0.5), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, channels_last):
    x, rois = make_case(9, 2, 3, 8, 9, 5, 0.5, "any", device=device, channels_last=channels_last, degenerate=True)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.visionops.roi_align_rotated.default, (x, rois, 0.5, 2, 3, 2, True))
    torch.library.opcheck(torch.ops.visionops.roi_pool_rotated.default, (x, rois, 0.5, 2, 3))
    grad = torch.randn(5, 3, 2, 3, device=device)
    torch.library.opcheck(
        torch.ops.visionops._roi_align_rotated_backward.default, (grad, rois, 0.5, 2, 3, 2, 3, 8, 9, 2, True)
    )
    _, argmax = torch.ops.visionops.roi_pool_rotated(x.detach(), rois, 0.5, 2, 3)
    fmt = torch.channels_last if not argmax.is_contiguous() else torch.contiguous_format
    torch.library.opcheck(
        torch.ops.visionops._roi_pool_rotated_backward.default,
        (grad.contiguous(memory_format=fmt), rois, argmax, 0.5, 2, 3, 2, 3, 8, 9),
    )
    b = rois[:, 1:].contiguous()
    torch.library.opcheck(torch.ops.visionops.box_iou_rotated.default, (b, b.flip(0).contiguous(), 0, False))
    torch.library.opcheck(torch.ops.visionops.box_iou_rotated.default, (b, b, 1, True))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, rois = make_case(10, 2, 4, 10, 11, 6, 0.5, "any", device=device)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]

    def f(t_, boxes, rois):
        a = ops.roi_align_rotated(t_, boxes, 3, 0.5, 2)
        b = ops.roi_pool_rotated(t_, boxes, (2, 3), 0.5)
        iou = ops.box_iou_rotated(rois[:, 1:], rois[:, 1:])
        return a.sum() + b.sum() + iou.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    r1, r2 = f(x1, boxes, rois), compiled(x2, boxes, rois)
    torch.testing.assert_close(r1, r2)
    r1.backward()
    r2.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
def test_deterministic_backward_is_bit_identical(device, channels_last, op):
    # many overlapping RoIs on one image: atomics would reorder the sums
    x, rois = make_case(12, 1, 4, 16, 16, 120, 1.0, "any", device=device, channels_last=channels_last)
    fn = getattr(ops, op)
    args = ((3, 3), 1.0) + ((2, True) if op == "roi_align_rotated" else ())
    grad = torch.randn(120, 4, 3, 3, device=device)

    def grad_input():
        t_ = x.clone().requires_grad_(True)
        fn(t_, rois, *args).backward(grad)
        return t_.grad

    free = grad_input()
    torch.use_deterministic_algorithms(True)
    first, second = grad_input(), grad_input()
    assert torch.equal(first, second)
    torch.testing.assert_close(first, free, **FP32_TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
def test_half_precision_matches_float32(device, dtype, tol, op):
    # inputs and RoIs are rounded to the low precision first and the float32
    # reference runs on those values: float32 accumulation leaves one rounding of
    # each output (2^-11 fp16, 2^-8 bf16 relative), covered with margin
    x, rois = make_case(3, 2, 8, 20, 24, 20, 0.5, "any", dtype=dtype, device=device)
    x.requires_grad_(True)
    x32 = x.detach().float().requires_grad_(True)
    fn = getattr(ops, op)
    args = ((4, 3), 0.5) + ((2, True) if op == "roi_align_rotated" else ())
    out, ref = fn(x, rois, *args), fn(x32, rois.float(), *args)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.randn(ref.shape, device=device).to(dtype)
    out.backward(grad)
    ref.backward(grad.float())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
def test_autocast_runs_float32_and_keeps_input_dtype(device, op):
    x, rois = make_case(13, 2, 4, 9, 9, 5, 1.0, "any", device=device)
    fn = getattr(ops, op)
    low = torch.bfloat16
    with torch.autocast(device_type=device, dtype=low):
        out = fn(x, rois, 3, 1.0)
        out_low = fn(x.to(low), rois, 3, 1.0)
    assert out.dtype == torch.float32 and out_low.dtype == low
    torch.testing.assert_close(out, fn(x, rois, 3, 1.0))
    torch.testing.assert_close(out_low, fn(x.to(low).float(), rois, 3, 1.0).to(low))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
def test_empty_inputs(device, op):
    fn = getattr(ops, op)
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    out = fn(x, torch.zeros(0, 6, device=device), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert fn(torch.randn(0, 3, 5, 5, device=device), torch.zeros(0, 6, device=device), 2).shape == (0, 3, 2, 2)
    rois = torch.tensor([[0.0, 2, 2, 3, 3, 30]], device=device)
    assert fn(torch.randn(1, 0, 5, 5, device=device), rois, 2).shape == (1, 0, 2, 2)
    out = fn(torch.randn(1, 2, 0, 5, device=device), rois, 2)
    assert out.shape == (1, 2, 2, 2) and (out == 0).all()
    out = fn(x, [torch.zeros(0, 5, device=device), torch.tensor([[2.0, 2, 4, 4, 45]], device=device)], 2)
    assert out.shape == (1, 3, 2, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
def test_huge_and_non_finite_rois_do_not_hang_or_crash(device, op):
    # 1e7-pixel RoIs ask for ~1e6 x 1e6 samples (align) or steps (pool) per bin;
    # only those that can reach the map are visited
    x = torch.randn(1, 2, 6, 6, device=device, requires_grad=True)
    nan, inf = float("nan"), float("inf")
    rois = torch.tensor(
        [[0, 3.0, 3.0, 1e7, 1e7, 17.0], [0, 3.0, 3.0, 1e9, 3.0, -71.0], [0, 3.0, 3.0, 1e12, 1e12, 45.0],
         [0, nan, 0, 3, 3, 0], [0, 0, 0, inf, 3, 0], [0, 2, 2, 3, 3, nan], [0, 2, 2, -3, 3, 0]], device=device)
    out = getattr(ops, op)(x, rois, 2)
    assert torch.isfinite(out).all() and (out[3:] == 0).all() and (out[0] != 0).any()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_rois_list_equals_tensor_form(device):
    x, rois = make_case(14, 3, 2, 8, 8, 9, 1.0, "any", device=device)
    rois[:, 0] = torch.arange(9, device=device) % 3
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    order = torch.cat([torch.where(rois[:, 0] == i)[0] for i in range(3)])
    for fn in (ops.roi_align_rotated, ops.roi_pool_rotated):
        torch.testing.assert_close(fn(x, boxes, (1, 4)), fn(x, rois, (1, 4))[order])


BAD_POOL = [
    ("input 3-D", dict(input=torch.randn(3, 5, 5)), RuntimeError, "input must be a 4-D"),
    ("input integer", dict(input=torch.ones(1, 3, 5, 5, dtype=torch.int64)), RuntimeError, "floating-point"),
    ("input not a tensor", dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
    ("rois [K, 5] tensor", dict(rois=torch.zeros(2, 5)), ValueError, "rois must be a Tensor[K, 6]"),
    ("rois list of [L, 4]", dict(rois=[torch.zeros(2, 4)]), ValueError, "rois[0] must be a Tensor[L, 5]"),
    ("rois not a tensor", dict(rois="rois"), TypeError, "rois must be a Tensor[K, 6]"),
    ("rois float64", dict(rois=torch.zeros(1, 6, dtype=torch.float64)), RuntimeError, "rois must have the same dtype"),
    ("batch index too large", dict(rois=torch.tensor([[1.0, 2, 2, 2, 2, 0]])), RuntimeError, "batch index"),
    ("batch index NaN", dict(rois=torch.tensor([[float("nan"), 2, 2, 2, 2, 0]])), RuntimeError, "batch index"),
    ("output_size 0", dict(output_size=0), ValueError, "output_size must be positive"),
    ("output_size triple", dict(output_size=(2, 2, 2)), ValueError, "output_size must be an int or a pair"),
    ("spatial_scale 0", dict(spatial_scale=0.0), RuntimeError, "spatial_scale must be a positive"),
    ("spatial_scale inf", dict(spatial_scale=float("inf")), RuntimeError, "spatial_scale must be a positive"),
]


@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
@pytest.mark.parametrize("desc,override,exc,message", BAD_POOL, ids=[b[0] for b in BAD_POOL])
def test_pooling_bad_input(op, desc, override, exc, message):
    kwargs = dict(input=torch.randn(1, 3, 5, 5), rois=torch.tensor([[0.0, 2, 2, 2, 2, 30]]), output_size=2)
    kwargs.update(override)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]")):
        getattr(ops, op)(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_modules(device):
    x, rois = make_case(16, 2, 3, 12, 12, 7, 0.5, "any", device=device)
    torch.testing.assert_close(vnn.RoIAlignRotated((3, 2), 0.5, 2)(x, rois),
                               ops.roi_align_rotated(x, rois, (3, 2), 0.5, 2, True))
    torch.testing.assert_close(vnn.RoIPoolRotated(3, 0.5)(x, rois), ops.roi_pool_rotated(x, rois, 3, 0.5))
    assert "aligned=True" in repr(vnn.RoIAlignRotated(3, 0.5, 2))
    assert "spatial_scale=0.5" in repr(vnn.RoIPoolRotated(3, 0.5))


# ================================================================ CUDA against CPU


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_box_iou_rotated_matches_cpu_1k():
    g = torch.Generator().manual_seed(17)
    b = torch.rand(1000, 5, generator=g, dtype=torch.float64) * torch.tensor([500, 500, 80, 80, 360]) + torch.tensor(
        [0, 0, 1, 1, -180])
    cpu = ops.box_iou_rotated(b, b.flip(0))
    gpu = ops.box_iou_rotated(b.cuda(), b.flip(0).cuda()).cpu()
    # same float64 formulas; only FMA contraction differs
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-12)
    assert (gpu.diagonal().flip(0)[:10] >= 0).all()
    assert ops.box_iou_rotated(b.cuda(), b.cuda()).diagonal().eq(1).all()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_out_of_range_batch_index_pools_to_zero():
    x = torch.randn(1, 2, 4, 4, device="cuda", requires_grad=True)
    rois = torch.tensor([[3.0, 2, 2, 2, 2, 30], [0, 2, 2, 2, 2, 30]], device="cuda")
    for fn in (ops.roi_align_rotated, ops.roi_pool_rotated):
        out = fn(x, rois, 2)
        assert (out[0] == 0).all() and (out[1] != 0).any()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("op", ["roi_align_rotated", "roi_pool_rotated"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_matches_cpu_on_detector_sizes(op, deterministic):
    x, rois = make_case(15, 2, 64, 50, 68, 512, 1 / 16, "any")
    fn = getattr(ops, op)
    args = (7, 1 / 16) + ((2, True) if op == "roi_align_rotated" else ())
    xc = x.clone().requires_grad_(True)
    xg = x.cuda().requires_grad_(True)
    out_c, out_g = fn(xc, rois, *args), fn(xg, rois.cuda(), *args)
    torch.testing.assert_close(out_g.cpu(), out_c, **FP32_TOL)
    grad = torch.randn_like(out_c)
    torch.use_deterministic_algorithms(deterministic)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)
