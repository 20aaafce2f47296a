"""RRPN (visionops.models.rrpn) and its synthetic data (visionops.data.rotated):
anchors, the paper's box encoding against a float64 oracle (tests/reference/rrpn.py),
anchor labelling on hand-built geometry, the proposal layer against a plain greedy
NMS, a few training steps, and the bar generator."""

from __future__ import annotations

import math

import pytest
import torch
from reference.rrpn import decode as ref_decode
from reference.rrpn import encode as ref_encode
from reference.rrpn import same_angle_mod_180

from visionops.data import rotated_bars
from visionops.models import rrpn as R
from visionops.ops import box_iou_rotated, convert_rotated_boxes

# ================================================================ anchors


def test_paper_anchor_config_has_54_anchors_with_the_papers_angles_areas_and_ratios():
    base = R.rotated_base_anchors().double()
    assert base.shape == (54, 5)
    assert (base[:, :2] == 0).all()
    # the six orientations -pi/6 .. 2pi/3, each used by the 3 x 3 size/ratio pairs
    radians = torch.deg2rad(base[:, 4])
    expected = torch.tensor([-math.pi / 6, 0, math.pi / 6, math.pi / 3, math.pi / 2, 2 * math.pi / 3],
                            dtype=torch.float64)
    for t in expected:
        assert int(torch.isclose(radians, t, atol=1e-6).sum()) == 9
    # float32 anchors: relative error ~1e-7 on w and h, so 1e-5 on area and ratio
    areas = base[:, 2] * base[:, 3]
    ratios = base[:, 2] / base[:, 3]
    for s in R.PAPER_SIZES:
        assert int(torch.isclose(areas, torch.tensor(s * s, dtype=torch.float64), rtol=1e-5).sum()) == 18
    for r in (2.0, 5.0, 8.0):  # the paper's 1:2, 1:5, 1:8, long side along w
        assert int(torch.isclose(ratios, torch.tensor(r, dtype=torch.float64), rtol=1e-5).sum()) == 18
    # every (size, ratio, angle) combination exactly once
    combos = {(round(a.item()), round(r.item()), round(t.item())) for a, r, t in zip(areas, ratios, base[:, 4])}
    assert len(combos) == 54


def test_anchor_tiling_and_head_layout_agree():
    stride, hf, wf = 8, 3, 5
    base = R.rotated_base_anchors([10.0], [2.0, 5.0], [0.0, 60.0])
    anchors = R.rotated_anchors(base, (hf, wf), stride)
    assert anchors.shape == (hf * wf * 4, 5)
    a = anchors.view(hf, wf, 4, 5)
    for i in range(hf):
        for j in range(wf):
            assert torch.equal(a[i, j, :, 0], torch.full((4,), (j + 0.5) * stride))
            assert torch.equal(a[i, j, :, 1], torch.full((4,), (i + 0.5) * stride))
            assert torch.equal(a[i, j, :, 2:], base[:, 2:])
    # the model's flattened outputs follow the same (i, j, anchor) order as its anchors
    model = R.RRPN(width=4, sizes=[10.0], ratios=[2.0, 5.0], angles=[0.0, 60.0], head=False).eval()
    images = torch.rand(2, 1, hf * 8, wf * 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, deltas, features = model(images)
        x = torch.relu(model.rpn_conv(features))
        cls, box = model.rpn_cls(x), model.rpn_box(x)
    assert model.anchors(features.shape[-2:]).shape == anchors.shape
    for n, i, j, k in [(0, 0, 0, 0), (1, 2, 4, 3), (0, 1, 3, 2)]:
        flat = (i * wf + j) * 4 + k
        assert logits[n, flat] == cls[n, k, i, j]
        assert torch.equal(deltas[n, flat], box[n, 5 * k:5 * k + 5, i, j])


# ================================================================ encoding


def _random_boxes(n, generator):
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    return torch.stack([u[:, 0] * 100, u[:, 1] * 100, 2 + u[:, 2] * 60, 2 + u[:, 3] * 20, u[:, 4] * 720 - 360], 1)


def test_encode_decode_match_the_paper_formulas_in_float64():
    g = torch.Generator().manual_seed(1)
    boxes, anchors = _random_boxes(200, g), _random_boxes(200, g)
    # angles straddling the wrap points of [-pi/4, 3pi/4) = [-45, 135) degrees
    boxes[:6, 4] = torch.tensor([134.999, 135.0, -45.0, -45.001, 179.0, -179.0], dtype=torch.float64)
    anchors[:6, 4] = torch.tensor([0.0, 0.0, 0.0, 0.0, -30.0, 120.0], dtype=torch.float64)
    enc = R.encode_rotated(boxes, anchors)
    ref = torch.tensor([ref_encode(b.tolist(), a.tolist()) for b, a in zip(boxes, anchors)], dtype=torch.float64)
    # both are float64 evaluations of the same closed forms: ~1e-15 relative; 1e-9 is far below any
    # real error (a wrong wrap is off by pi, a wrong normaliser by a factor of 2..30)
    torch.testing.assert_close(enc, ref, rtol=1e-9, atol=1e-9)
    assert (enc[:, 4] >= -math.pi / 4).all() and (enc[:, 4] < 3 * math.pi / 4).all()
    deltas = torch.randn(200, 5, generator=g, dtype=torch.float64)
    dec = R.decode_rotated(deltas, anchors)
    ref = torch.tensor([ref_decode(d.tolist(), a.tolist()) for d, a in zip(deltas, anchors)], dtype=torch.float64)
    torch.testing.assert_close(dec, ref, rtol=1e-9, atol=1e-9)
    assert (dec[:, 4] >= -45).all() and (dec[:, 4] < 135).all()


def test_decode_inverts_encode_up_to_a_half_turn():
    g = torch.Generator().manual_seed(2)
    boxes, anchors = _random_boxes(300, g), _random_boxes(300, g)
    back = R.decode_rotated(R.encode_rotated(boxes, anchors), anchors)
    # float64 round trip through log/exp and deg/rad: ~1e-13
    torch.testing.assert_close(back[:, :4], boxes[:, :4], rtol=1e-10, atol=1e-10)
    for a, b in zip(back[:, 4].tolist(), boxes[:, 4].tolist()):
        assert same_angle_mod_180(a, b) < 1e-9
    # a half turn of the box is the same rectangle: the same targets (angle periodicity)
    turned = boxes.clone()
    turned[:, 4] += 180
    torch.testing.assert_close(R.encode_rotated(turned, anchors), R.encode_rotated(boxes, anchors),
                               rtol=1e-9, atol=1e-9)


def test_angle_difference_is_modulo_180():
    a = torch.tensor([0.0, 10.0, 170.0, -80.0, 45.0, 720.5])
    b = torch.tensor([180.0, -10.0, -5.0, 100.0, -45.0, 0.0])
    torch.testing.assert_close(R.angle_difference(a, b), torch.tensor([0.0, 20.0, 5.0, 0.0, 90.0, 0.5]))


# ================================================================ labelling

# Two GT boxes; the anchors' IoUs follow from rectangle overlaps along one axis:
# GT0 = 40 x 8 at (50, 50), angle 0 (area 320); GT1 = 20 x 10 at (150, 50) (area 200).
_GT = torch.tensor([[50.0, 50.0, 40.0, 8.0, 0.0], [150.0, 50.0, 20.0, 10.0, 0.0]])
_ANCHORS = torch.tensor([
    [50.0, 50.0, 40.0, 8.0, 0.0],  # 0: GT0 itself: IoU 1 -> positive (GT0)
    [54.0, 50.0, 40.0, 8.0, 0.0],  # 1: overlap 36 x 8 = 288, IoU 288 / 352 = 0.818 -> positive (GT0)
    [50.0, 50.0, 8.0, 40.0, 90.0],  # 2: the same rectangle as GT0, but angle 90 vs 0: IoU 1 > 0.7 with
    #                                   angle difference >= pi/12 -> negative (the paper's rule)
    [70.0, 50.0, 40.0, 8.0, 0.0],  # 3: overlap 20 x 8 = 160, IoU 160 / 480 = 1/3 -> ignored
    [60.0, 50.0, 40.0, 8.0, 0.0],  # 4: overlap 30 x 8 = 240, IoU 240 / 400 = 0.6 -> ignored
    [50.0, 50.0, 40.0, 8.0, 90.0],  # 5: crossing at right angles, 8 x 8 = 64, IoU 64 / 576 = 0.11 -> negative
    [100.0, 100.0, 20.0, 4.0, 30.0],  # 6: far from both -> negative
    [155.0, 50.0, 20.0, 10.0, 0.0],  # 7: overlap 15 x 10 = 150, IoU 150 / 250 = 0.6 < 0.7, but GT1's best
    #                                   anchor and GT1 has no positive -> positive (GT1)
    [160.0, 50.0, 20.0, 10.0, 0.0],  # 8: overlap 10 x 10 = 100, IoU 100 / 300 = 1/3 -> ignored
])


def test_label_anchors_on_hand_built_geometry():
    labels, matched = R.label_anchors(_ANCHORS, _GT)
    assert labels.tolist() == [1, 1, 0, -1, -1, 0, 0, 1, -1]
    assert matched[[0, 1, 7]].tolist() == [0, 0, 1]
    # without GT every anchor is negative
    labels, _ = R.label_anchors(_ANCHORS, torch.zeros(0, 5))
    assert labels.tolist() == [0] * 9
    # a stricter positive threshold (0.85): anchor 1 (IoU 0.818) is no longer positive but GT0 still
    # has anchor 0; anchor 1 is between the thresholds -> ignored
    labels, _ = R.label_anchors(_ANCHORS, _GT, pos_iou=0.85)
    assert labels.tolist()[:2] == [1, -1]


def test_sample_labels_respects_budget_and_fraction():
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 10)
    out = R.sample_labels(labels, 64, 0.25, torch.Generator().manual_seed(0))
    assert int((out == 1).sum()) == 16 and int((out == 0).sum()) == 48
    assert ((out == labels) | (out == -1)).all()  # only drops, never flips
    few = torch.tensor([1, 1, 0, 0, 0, -1])
    assert R.sample_labels(few, 256, 0.5).tolist() == few.tolist()


# ================================================================ proposals


def _greedy_nms(boxes, scores, threshold):
    """Plain greedy NMS on the full IoU matrix (independent of nms_rotated's kernel)."""
    iou = box_iou_rotated(boxes.double(), boxes.double())
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        removed |= {j for j in order if iou[i, j] > threshold}
    return keep


def test_proposals_sorted_valid_and_match_a_plain_greedy_nms():
    g = torch.Generator().manual_seed(3)
    size = (48, 64)
    anchors = R.rotated_anchors(R.rotated_base_anchors([8.0, 14.0], [2.0, 5.0], R.PAPER_ANGLES), (6, 8), 8)
    logits = torch.randn(2, anchors.size(0), generator=g)
    deltas = 0.3 * torch.randn(2, anchors.size(0), 5, generator=g)
    out = R.rotated_proposals(anchors, logits, deltas, size, pre_nms_top_n=400, post_nms_top_n=10_000,
                              nms_threshold=0.5, min_size=2.0)
    limited = R.rotated_proposals(anchors, logits, deltas, size, pre_nms_top_n=400, post_nms_top_n=20,
                                  nms_threshold=0.5, min_size=2.0)
    for i, ((boxes, scores), (b20, s20)) in enumerate(zip(out, limited)):
        assert boxes.size(0) > 20
        assert (scores[1:] <= scores[:-1]).all()
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] <= 64).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] <= 48).all()
        assert (boxes[:, 2:4] >= 2.0).all() and (boxes[:, 2:4] <= math.hypot(48, 64)).all()
        iou = box_iou_rotated(boxes, boxes)
        iou.fill_diagonal_(0)
        assert iou.max() <= 0.5
        # the same set as a plain greedy NMS over the decoded, clipped top-400
        top, idx = logits[i].topk(400)
        dec = R.decode_rotated(deltas[i][idx], anchors[idx])
        dec[:, 0].clamp_(0, 64)
        dec[:, 1].clamp_(0, 48)
        dec[:, 2:4].clamp_(max=math.hypot(48, 64))
        ok = (dec[:, 2] >= 2.0) & (dec[:, 3] >= 2.0)
        keep = _greedy_nms(dec[ok], top[ok], 0.5)
        torch.testing.assert_close(boxes, dec[ok][keep])
        torch.testing.assert_close(scores, torch.sigmoid(top[ok][keep]))
        # post_nms_top_n keeps the best ones
        assert torch.equal(b20, boxes[:20]) and torch.equal(s20, scores[:20])


def test_proposal_recall_counts_matches_at_skew_iou():
    gt = [torch.tensor([[20.0, 20.0, 40.0, 8.0, 30.0], [60.0, 60.0, 20.0, 4.0, -60.0]]), torch.zeros(0, 5)]
    # the first GT turned by 180 degrees is itself (IoU 1); the second shifted by half its length along
    # its axis: overlap 10 x 4 = 40 of union 120, IoU 1/3 < 0.5 -> not found
    t = math.radians(-60.0)
    shifted = [60.0 + 10 * math.cos(t), 60.0 - 10 * math.sin(t), 20.0, 4.0, -60.0]
    props = [torch.tensor([[20.0, 20.0, 40.0, 8.0, 210.0], shifted]), torch.zeros(0, 5)]
    assert R.proposal_recall(props, gt) == (1, 2)
    assert R.proposal_recall(props, gt, iou_threshold=0.3) == (2, 2)


# ================================================================ model


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    images, boxes = rotated_bars(8, 48, length=(14.0, 30.0), thickness=(4.0, 7.0),
                                 generator=torch.Generator().manual_seed(4))
    model = R.RRPN(width=8, sizes=[8.0, 14.0])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(12):
        losses = model.loss(images, boxes)
        assert set(losses) == {"rpn_cls", "rpn_reg", "head_cls", "head_reg"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    # random anchor sampling makes single steps noisy; the last steps must be clearly below the first
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals


def test_detect_and_head_shapes():
    model = R.RRPN(width=4).eval()
    images = torch.rand(2, 1, 32, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        props = model.proposals(images, 20)
        dets = model.detect(images, [b for b, _ in props])
    for (pb, ps), (db, ds) in zip(props, dets):
        assert pb.shape[1] == 5 and pb.shape[0] <= 20 and ps.shape == pb.shape[:1]
        assert db.shape[1] == 5 and db.shape[0] <= pb.shape[0]
        assert ((ds >= 0) & (ds <= 1)).all() and (ds[1:] <= ds[:-1]).all()


def test_rrpn_task_is_registered():
    import visionops.models  # noqa: F401
    from visionops.training import TASKS

    task = TASKS["rrpn"]
    assert task.metric == "recall@50"
    images, rois = task.make_batch(torch.Generator().manual_seed(0), 3)
    assert images.shape == (3, 1, R.TASK_IMAGE_SIZE, R.TASK_IMAGE_SIZE)
    assert rois.shape[1] == 6 and set(rois[:, 0].long().tolist()) == {0, 1, 2}


# ================================================================ data


def test_rotated_bars_is_deterministic_and_seed_dependent():
    a = rotated_bars(4, 48, generator=torch.Generator().manual_seed(7), length=(12.0, 30.0), thickness=(3.0, 6.0))
    b = rotated_bars(4, 48, generator=torch.Generator().manual_seed(7), length=(12.0, 30.0), thickness=(3.0, 6.0))
    c = rotated_bars(4, 48, generator=torch.Generator().manual_seed(8), length=(12.0, 30.0), thickness=(3.0, 6.0))
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("channels", [1, 3])
def test_rotated_bars_boxes_inside_disjoint_and_on_the_bars(channels):
    H, W = 56, 72
    images, boxes = rotated_bars(12, (H, W), channels=channels, clutter=0, noise=0.0, length=(14.0, 40.0),
                                 generator=torch.Generator().manual_seed(9))
    assert images.shape == (12, channels, H, W) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    design = torch.stack([torch.ones_like(xs), xs, ys], -1).reshape(-1, 3).double()
    for img, b in zip(images, boxes):
        assert b.ndim == 2 and b.size(1) == 5 and 1 <= b.size(0) <= 3
        assert (b[:, 2] >= b[:, 3]).all() and (b[:, 4] >= -90).all() and (b[:, 4] < 90).all()
        poly = convert_rotated_boxes(b.double(), "xywha", "poly")
        assert (poly[..., 0] >= 0).all() and (poly[..., 0] <= W).all()
        assert (poly[..., 1] >= 0).all() and (poly[..., 1] <= H).all()
        iou = box_iou_rotated(b, b).fill_diagonal_(0)
        assert (iou == 0).all()
        # geometry of the pixels relative to the boxes (local coordinates, as the box map)
        t = torch.deg2rad(b[:, 4].double())[:, None, None]
        dx, dy = xs.double() - b[:, 0, None, None], ys.double() - b[:, 1, None, None]
        u = torch.cos(t) * dx - torch.sin(t) * dy
        v = torch.sin(t) * dx + torch.cos(t) * dy
        half_w, half_h = b[:, 2, None, None] / 2, b[:, 3, None, None] / 2
        outside = ((u.abs() > half_w + 1) | (v.abs() > half_h + 1)).all(0)
        # with no noise and no clutter, the image away from the boxes is the background plane
        # a + b x + c y (clamping to [0, 1] cannot bite: levels stay in 0.15..0.85 +- 0.125)
        plane = img[0].double().reshape(-1)
        sol = torch.linalg.lstsq(design[outside.reshape(-1)], plane[outside.reshape(-1)][:, None]).solution
        residual = plane - (design @ sol)[:, 0]
        assert residual[outside.reshape(-1)].abs().max() < 1e-5  # float32 images
        # every box really holds a bar: most of its inner pixels (glyph gaps of 22% aside) differ from
        # the plane by the bar contrast, at least 0.3 x tint 0.7 = 0.21 by construction; any other
        # placement of the box would catch background pixels (residual 0)
        for k in range(b.size(0)):
            inner = ((u[k].abs() < half_w[k] - 1) & (v[k].abs() < half_h[k] - 1)).reshape(-1)
            assert inner.sum() > 0
            assert (residual[inner].abs() > 0.2).float().mean() > 0.6
