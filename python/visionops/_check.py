"""``python -m visionops check``: every registered op once against a reference.

Each check returns the max abs error and the tolerance it must stay within.
References: the peer library when installed (torchvision), and an analytic
case that needs nothing (bilinear interpolation of a linear ramp is exact, so
RoIAlign of a ramp equals the ramp at each bin's sample centroid).
"""

from __future__ import annotations

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


def all_checks() -> list[Check]:
    checks = [
        Check("roi_align", "linear ramp (exact)", _roi_align_ramp, 1e-10),
        Check("roi_pool", "linear ramp (exact)", _roi_pool_ramp, 0.0),
    ]
    for op in ("roi_align", "roi_pool"):
        run = _vs_torchvision(op)
        if run is not None:
            checks.append(Check(op, "torchvision", run, 1e-5))
    checks.append(Check("nms_fixed", "worked example, 4 ops", _nms_worked_example, 1e-6))
    for op in ("box_iou", "nms", "batched_nms"):
        run = _boxes_vs_torchvision(op)
        if run is not None:
            checks.append(Check(op, "torchvision", run, 0.0))
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
