"""``python -m visionops check``: every registered op once against a reference.

Each check returns the max abs error and the tolerance it must stay within.
References: the peer library when installed (torchvision), and an analytic
case that needs nothing (bilinear interpolation of a linear ramp is exact, so
RoIAlign of a ramp equals the ramp at each bin's sample centroid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import ops


@dataclass
class Check:
    op: str
    reference: str
    run: Callable[[str], float]  # device -> max abs error
    tolerance: float


def _ramp(device: str, h: int = 20, w: int = 24, dtype=torch.float64):
    ys = torch.arange(h, dtype=dtype, device=device).view(h, 1)
    xs = torch.arange(w, dtype=dtype, device=device).view(1, w)
    return (0.5 * xs + 2.0 * ys + 1.0).expand(h, w).reshape(1, 1, h, w).contiguous()


def _roi_align_ramp(device: str) -> float:
    x = _ramp(device)
    # boxes well inside the map: no border clamping, so the bilinear ramp is exact
    rois = torch.tensor([[0, 2.0, 3.0, 14.0, 11.0], [0, 5.5, 1.25, 9.5, 16.0]], dtype=torch.float64, device=device)
    out = ops.roi_align(x, rois, (2, 3), 1.0, 2, True)
    errs = []
    for k in range(rois.shape[0]):
        _, x1, y1, x2, y2 = rois[k].tolist()
        x1, y1, x2, y2 = x1 - 0.5, y1 - 0.5, x2 - 0.5, y2 - 0.5
        for ph in range(2):
            for pw in range(3):
                cy = y1 + (ph + 0.5) * (y2 - y1) / 2
                cx = x1 + (pw + 0.5) * (x2 - x1) / 3
                errs.append(abs(out[k, 0, ph, pw].item() - (0.5 * cx + 2.0 * cy + 1.0)))
    return max(errs)


def _roi_pool_ramp(device: str) -> float:
    x = _ramp(device)
    rois = torch.tensor([[0, 2.0, 3.0, 13.0, 11.0]], dtype=torch.float64, device=device)
    out = ops.roi_pool(x, rois, 2)
    # rounded box cells x 2..13, y 3..11 (+1 width): 12 x 9 cells; the ramp's max is each bin's last cell
    expected = []
    for ph in range(2):
        for pw in range(2):
            y_last = min(3 + int(-(-(ph + 1) * 9 // 2)) - 1, 19)
            x_last = min(2 + int(-(-(pw + 1) * 12 // 2)) - 1, 23)
            expected.append(0.5 * x_last + 2.0 * y_last + 1.0)
    return (out.flatten().cpu() - torch.tensor(expected, dtype=torch.float64)).abs().max().item()


def _vs_torchvision(op: str) -> Optional[Callable[[str], float]]:
    try:
        import torchvision
    except ImportError:
        return None

    def run(device: str) -> float:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 25, 34, generator=g).to(device)
        from .data import random_rois

        rois = random_rois(64, 2, (400, 544), generator=g).to(device)
        if op == "roi_align":
            ours = ops.roi_align(x, rois, 7, 1 / 16, 2, True)
            ref = torchvision.ops.roi_align(x, rois, 7, 1 / 16, 2, True)
        else:
            ours = ops.roi_pool(x, rois, 7, 1 / 16)
            ref = torchvision.ops.roi_pool(x, rois, 7, 1 / 16)
        return (ours - ref).abs().max().item()

    return run


def _ctc_loss_two_steps(device: str) -> float:
    # T=2, C=2 (blank 0), target [1]: alignments 11, 10, 01 -> p = 0.4*0.7 + 0.4*0.3 + 0.6*0.7 = 0.82
    lp = torch.tensor([[0.6, 0.4], [0.3, 0.7]], dtype=torch.float64, device=device).log().unsqueeze(1)
    loss = ops.ctc_loss(lp, torch.tensor([[1]], device=device), [2], [1], reduction="sum")
    return abs(loss.item() + torch.log(torch.tensor(0.82, dtype=torch.float64)).item())


def _ctc_loss_vs_torch(device: str) -> float:
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(50, 8, 37, generator=g).log_softmax(2).to(device).requires_grad_(True)
    targets = torch.randint(1, 37, (8, 12), generator=g).to(device)
    il, tl = torch.tensor([50, 48, 45, 50, 30, 20, 50, 41]), torch.tensor([12, 10, 12, 3, 7, 12, 1, 9])
    errs = []
    for fn in (ops.ctc_loss, torch.nn.functional.ctc_loss):
        loss = fn(lp, targets, il, tl, reduction="mean")
        errs.append((loss.detach(), torch.autograd.grad(loss, lp)[0]))
    (a, ga), (b, gb) = errs
    return max((a - b).abs().item(), (ga - gb).abs().max().item())


def _ctc_greedy_one_hot(device: str) -> float:
    lp = torch.eye(4, device=device)[[1, 1, 0, 1, 2, 2, 0, 3]].clamp_min(1e-4).log().unsqueeze(1)
    (out,) = ops.ctc_greedy_decode(lp, [8])
    return 0.0 if out.tolist() == [1, 1, 2, 3] else 1.0


def _ctc_beam_two_steps(device: str) -> float:
    # best labelling [1] by summing 11, 10, 01: 0.36 + 0.24 + 0.24 = 0.84 (best path "11" alone: 0.36)
    lp = torch.tensor([[0.4, 0.6], [0.4, 0.6]], dtype=torch.float64, device=device).log().unsqueeze(1)
    (seq,), scores = ops.ctc_beam_search_decode(lp, [2])
    return abs(scores.exp().item() - 0.84) + (0.0 if seq.tolist() == [1] else 1.0)
def _nms_worked_example(device: str) -> float:
    # three boxes: IoU(0, 1) = 81/100 > 0.5 suppresses box 1; box 2 is disjoint
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    keep = ops.nms(boxes, scores, 0.5).tolist()
    keep_fixed, count = ops.nms_fixed(boxes, scores, 0.5, 3)
    batched = ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0], device=device), 0.5).tolist()
    iou = ops.box_iou(boxes[:1], boxes).cpu()
    errors = [keep != [0, 2], keep_fixed.tolist() != [0, 2, -1], count.item() != 2, batched != [0, 1, 2]]
    return float(any(errors)) + (iou - torch.tensor([[1.0, 0.81, 0.0]])).abs().max().item()


def _nms_rotated_worked_example(device: str) -> float:
    # a 10x4 box, the same box turned by 10 degrees (IoU ~0.7: suppressed) and by
    # 90 degrees (4x4 overlap: IoU 16/64 = 0.25, kept); per class, box 1 survives
    boxes = torch.tensor([[5.0, 5, 10, 4, 0], [5, 5, 10, 4, 10], [5, 5, 10, 4, 90]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    keep = ops.nms_rotated(boxes, scores, 0.5).tolist()
    batched = ops.batched_nms_rotated(boxes, scores, torch.tensor([0, 1, 0], device=device), 0.5).tolist()
    return float(keep != [0, 2] or batched != [0, 1, 2])


def _boxes_vs_torchvision(op: str) -> Optional[Callable[[str], float]]:
    try:
        import torchvision
    except ImportError:
        return None

    def run(device: str) -> float:
        from .data import random_boxes

        g = torch.Generator().manual_seed(0)
        boxes = random_boxes(2000, (800, 1088), min_size=8, max_size=300, generator=g).to(device)
        scores = torch.rand(2000, generator=g).to(device)
        idxs = torch.randint(0, 80, (2000,), generator=g).to(device)
        if op == "box_iou":
            return (ops.box_iou(boxes, boxes[:500]) - torchvision.ops.box_iou(boxes, boxes[:500])).abs().max().item()
        if op == "nms":
            ours, ref = ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5)
        else:
            ours = ops.batched_nms(boxes, scores, idxs, 0.5)
            ref = torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5)
        # an index mismatch counts as an error of 1
        return 0.0 if torch.equal(ours.cpu(), ref.cpu()) else 1.0

    return run


# ---------------------------------------------------------------- rotated family


def _box_iou_rotated_analytic(device: str) -> float:
    # unit-free closed forms: a 2x2 square against itself shifted by 1 (1/3), rotated
    # by 45 degrees (octagon: 1/sqrt(2)), by 90 degrees (1), and a nested square (1/4)
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64, device=device)
    b = torch.tensor(
        [[1.0, 0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0, 45.0], [0.0, 0.0, 2.0, 2.0, 90.0], [0.0, 0.0, 1.0, 1.0, 30.0]],
        dtype=torch.float64,
        device=device,
    )
    expected = torch.tensor([[1 / 3, 2**-0.5, 1.0, 0.25]], dtype=torch.float64)
    return (ops.box_iou_rotated(a, b).cpu() - expected).abs().max().item()


def _roi_align_rotated_ramp(device: str) -> float:
    # bilinear interpolation of a ramp is exact, so each bin averages to the ramp at
    # its rotated centre (RoIs well inside the map, detectron2's aligned=True)
    x = _ramp(device)
    rois = torch.tensor([[0, 12.0, 10.0, 8.0, 5.0, 30.0], [0, 9.0, 9.5, 6.0, 9.0, -110.0]], dtype=torch.float64,
                        device=device)
    out = ops.roi_align_rotated(x, rois, (2, 3), 1.0, 2, True)
    errs = []
    for k in range(rois.shape[0]):
        _, cx, cy, w, h, a = rois[k].tolist()
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        for ph in range(2):
            for pw in range(3):
                u, v = -w / 2 + (pw + 0.5) * w / 3, -h / 2 + (ph + 0.5) * h / 2
                px, py = cx - 0.5 + c * u + s * v, cy - 0.5 - s * u + c * v
                errs.append(abs(out[k, 0, ph, pw].item() - (0.5 * px + 2.0 * py + 1.0)))
    return max(errs)


def _roi_pool_rotated_vs_roi_pool(device: str) -> float:
    # at angle 0 a rotated RoI with centre (x1 + x2) / 2 and size x2 - x1 + 1 over
    # integer corners visits exactly the cells of RoIPool's box (x1, y1, x2, y2)
    import torchvision

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 20, 24, generator=g).to(device)
    boxes = torch.tensor([[0, 2.0, 3.0, 13.0, 10.0], [0, 0.0, 0.0, 5.0, 7.0], [0, 10.0, 4.0, 21.0, 19.0]], device=device)
    b, x1, y1, x2, y2 = boxes.unbind(1)
    rot = torch.stack([b, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1 + 1, y2 - y1 + 1, torch.zeros_like(b)], 1)
    ours = ops.roi_pool_rotated(x, rot, 2)
    ref = torchvision.ops.roi_pool(x, boxes, 2)
    return (ours - ref).abs().max().item()


def all_checks() -> list[Check]:
    checks = [
        Check("roi_align", "linear ramp (exact)", _roi_align_ramp, 1e-10),
        Check("roi_pool", "linear ramp (exact)", _roi_pool_ramp, 0.0),
        Check("ctc_loss", "2-step enumeration", _ctc_loss_two_steps, 1e-12),
        Check("ctc_loss", "torch F.ctc_loss", _ctc_loss_vs_torch, 1e-4),
        Check("ctc_greedy_decode", "one-hot path (exact)", _ctc_greedy_one_hot, 0.0),
        Check("ctc_beam_search", "2-step enumeration", _ctc_beam_two_steps, 1e-12),
        Check("box_iou_rotated", "closed forms", _box_iou_rotated_analytic, 1e-12),
        Check("roi_align_rotated", "linear ramp (exact)", _roi_align_rotated_ramp, 1e-10),
    ]
    for op in ("roi_align", "roi_pool"):
        run = _vs_torchvision(op)
        if run is not None:
            checks.append(Check(op, "torchvision", run, 1e-5))
    checks += sampling_checks()
    checks += conv_checks()
    checks.append(Check("nms_fixed", "worked example, 4 ops", _nms_worked_example, 1e-6))
    checks.append(Check("nms_rotated", "worked example, 2 ops", _nms_rotated_worked_example, 0.0))
    for op in ("box_iou", "nms", "batched_nms"):
        run = _boxes_vs_torchvision(op)
        if run is not None:
            checks.append(Check(op, "torchvision", run, 0.0))
    if _vs_torchvision("roi_pool") is not None:  # torchvision installed
        checks.append(Check("roi_pool_rotated", "torchvision roi_pool, angle 0", _roi_pool_rotated_vs_roi_pool, 0.0))
    return checks


def run_checks(devices: list[str]) -> tuple[list[tuple[str, str, str, float, float, bool]], bool]:
    rows = []
    ok = True
    for check in all_checks():
        for device in devices:
            try:
                err = check.run(device)
                passed = err <= check.tolerance
            except Exception as exc:  # a crash is a failed check, reported in the table
                err, passed = float("nan"), False
                print(f"{check.op} on {device} raised {type(exc).__name__}: {exc}")
            ok &= passed
            rows.append((check.op, device, check.reference, err, check.tolerance, passed))
    return rows, ok


# ---------------------------------------------------------------- sampling


def _grid_sample_ramp(device: str) -> float:
    # bilinear interpolation of a linear ramp is exact at interior points
    x = _ramp(device)
    g = torch.Generator().manual_seed(0)
    grid = (torch.rand(1, 6, 7, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8).to(device)
    out = ops.grid_sample(x, grid, "bilinear", "zeros", True)
    px = (grid[..., 0] + 1) / 2 * 23
    py = (grid[..., 1] + 1) / 2 * 19
    return (out[0, 0] - (0.5 * px + 2.0 * py + 1.0)[0]).abs().max().item()


def _grid_sample_vs_torch(device: str) -> float:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 11, generator=g).to(device)
    grid = (torch.rand(2, 5, 6, 2, generator=g) * 3 - 1.5).to(device)
    err = 0.0
    for mode in ("bilinear", "nearest"):
        for padding in ("zeros", "border", "reflection"):
            for align in (False, True):
                ours = ops.grid_sample(x, grid, mode, padding, align)
                ref = F.grid_sample(x, grid, mode, padding, align)
                err = max(err, (ours - ref).abs().max().item())
    return err


def _affine_worked_example(device: str) -> float:
    # SEED_NOTES: bilinear read at pixel (1.2, 2.3) of the 4-pixel patch 1, 2 / 3, 4 gives 1.8
    img = torch.zeros(1, 1, 5, 5, dtype=torch.float64, device=device)
    img[0, 0, 2, 1], img[0, 0, 2, 2], img[0, 0, 3, 1], img[0, 0, 3, 2] = 1, 2, 3, 4
    theta = torch.tensor([[[0.0, 0.0, 1.2 / 2 - 1], [0.0, 0.0, 2.3 / 2 - 1]]], dtype=torch.float64, device=device)
    return abs(ops.affine_grid_sample(img, theta, (1, 1), align_corners=True).item() - 1.8)


def _affine_vs_torch(device: str) -> float:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, 12, 13, generator=g).to(device)
    theta = (torch.eye(2, 3) + 0.3 * torch.randn(4, 2, 3, generator=g)).to(device)
    ref = F.grid_sample(x, F.affine_grid(theta, [4, 2, 7, 9], align_corners=False), align_corners=False)
    grid_err = (ops.affine_grid(theta, (4, 2, 7, 9)) - F.affine_grid(theta, [4, 2, 7, 9], align_corners=False))
    return max((ops.affine_grid_sample(x, theta, (7, 9)) - ref).abs().max().item(), grid_err.abs().max().item())


def _tps_identity(device: str) -> float:
    target = ops.rare_fiducials(20, dtype=torch.float64, device=device)
    kw, aw = ops.tps_fit(target, target)
    grid = ops.tps_grid(kw, aw, target, (32, 100))
    eye = torch.eye(2, 3, dtype=torch.float64, device=device)[None]
    return (grid - ops.affine_grid(eye, (1, 1, 32, 100))).abs().max().item()


def _tps_interpolates(device: str) -> float:
    # control points on pixel centres (align_corners) must map exactly to the source points
    target = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.5, -0.5]],
                          dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(3)
    source = target + 0.2 * torch.randn(6, 2, generator=g, dtype=torch.float64).to(device)
    kw, aw = ops.tps_fit(source, target)
    grid = ops.tps_grid(kw, aw, target, (5, 5), align_corners=True)[0]  # pixel i at -1 + i / 2
    idx = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (1, 3)]
    return max((grid[r, c] - source[k]).abs().max().item() for k, (r, c) in enumerate(idx))


def _tps_fused_vs_unfused(device: str) -> float:
    g = torch.Generator().manual_seed(4)
    target = ops.rare_fiducials(20, device=device)
    source = target * 0.8 + 0.05 * torch.randn(20, 2, generator=g).to(device)
    kw, aw = ops.tps_fit(source, target)
    x = torch.randn(1, 3, 64, 200, generator=g).to(device)
    # same float32 coordinates on both paths (torch's own grid_sample rounds the
    # unnormalisation differently: ~1e-5 of a pixel, so it is not the reference here)
    ref = ops.grid_sample(x, ops.tps_grid(kw, aw, target, (32, 100)))
    return (ops.tps_grid_sample(x, kw, aw, target, (32, 100)) - ref).abs().max().item()


def sampling_checks() -> list[Check]:
    return [
        Check("grid_sample", "linear ramp (exact)", _grid_sample_ramp, 1e-10),
        Check("grid_sample", "torch F.grid_sample (all modes)", _grid_sample_vs_torch, 1e-5),
        Check("affine_grid_sample", "SEED_NOTES worked example 1.8", _affine_worked_example, 1e-12),
        # float32 base coordinates computed vs read from linspace: an ulp of a ~10-pixel coordinate
        Check("affine_grid_sample", "torch grid_sample(affine_grid)", _affine_vs_torch, 5e-5),
        Check("tps_grid", "identity when source == target", _tps_identity, 1e-9),
        Check("tps_fit", "control points interpolated", _tps_interpolates, 1e-10),
        Check("tps_grid_sample", "grid_sample(tps_grid) (unfused)", _tps_fused_vs_unfused, 1e-6),
    ]


# ---------------------------------------------------------------- conv


def _depthwise_ramp(device: str) -> float:
    # a 3x3 mean filter reproduces a linear ramp exactly away from the border
    x = _ramp(device)
    out = ops.depthwise_conv2d(x, torch.full((1, 1, 3, 3), 1 / 9, dtype=torch.float64, device=device))
    return (out - x[..., 1:-1, 1:-1]).abs().max().item()


def _conv_vs_torch(depthwise: bool) -> Callable[[str], float]:
    import torch.nn.functional as F

    def run(device: str) -> float:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(2, 16, 23, 29, generator=g).to(device)
        if depthwise:
            w, b = torch.randn(32, 1, 5, 5, generator=g).to(device) / 5, torch.randn(32, generator=g).to(device)
            ours = ops.depthwise_conv2d(x, w, b, 2, 2, activation="relu6")
            ref = F.relu6(F.conv2d(x, w, b, 2, 2, 1, 16))
        else:
            w, b = torch.randn(8, 8, 3, 3, generator=g).to(device) / 8, torch.randn(8, generator=g).to(device)
            ours = ops.conv2d(x, w, b, 1, "same", 2, 2)
            ref = F.conv2d(x, w, b, 1, "same", 2, 2)
        return (ours - ref).abs().max().item()

    return run


def conv_checks() -> list[Check]:
    return [
        Check("depthwise_conv2d", "linear ramp, mean filter (exact)", _depthwise_ramp, 1e-12),
        # float32, up to 25 / 72 products of O(1) values summed in another order
        Check("depthwise_conv2d", "torch F.conv2d (groups=C) + relu6", _conv_vs_torch(True), 1e-4),
        Check("conv2d", "torch F.conv2d (same, groups=2)", _conv_vs_torch(False), 1e-4),
    ]
