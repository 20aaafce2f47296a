"""boxes family benchmarks: NMS on 1k-100k detector-like boxes (one class and
80 classes) and box_iou, against torchvision.ops."""

from __future__ import annotations

import torch

from . import Case
from ..data import random_boxes


def _inputs(n, device, seed=0):
    # proposals of an 800 x 1088 image, 16..300 px: about 30% survive NMS at 0.5
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, (800, 1088), min_size=16, max_size=300, generator=g)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 80, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def _nms_case(device, n, batched):
    def setup():
        import torchvision

        from .. import ops

        boxes, scores, idxs = _inputs(n, device)
        if batched:
            return {
                "visionops": lambda: ops.batched_nms(boxes, scores, idxs, 0.5),
                "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
            }
        return {
            "visionops": lambda: ops.nms(boxes, scores, 0.5),
            "torchvision": lambda: torchvision.ops.nms(boxes, scores, 0.5),
        }

    label = f"{n // 1000}k"
    name = f"batched_nms_80cls_{label}" if batched else f"nms_{label}"
    return Case("boxes", name, device, "torchvision", setup)


def _nms_fixed_case(device, n):
    # no peer has a fixed-size NMS: compared with torchvision.ops.nms (same work plus the host sync)
    def setup():
        import torchvision

        from .. import ops

        boxes, scores, _ = _inputs(n, device)
        return {
            "visionops": lambda: ops.nms_fixed(boxes, scores, 0.5, 1000),
            "torchvision": lambda: torchvision.ops.nms(boxes, scores, 0.5)[:1000],
        }

    return Case("boxes", f"nms_fixed_{n // 1000}k_top1000", device, "torchvision", setup)


def _box_iou_case(device, n, m):
    def setup():
        import torchvision

        from .. import ops

        a, _, _ = _inputs(n, device, seed=1)
        b, _, _ = _inputs(m, device, seed=2)
        return {"visionops": lambda: ops.box_iou(a, b), "torchvision": lambda: torchvision.ops.box_iou(a, b)}

    return Case("boxes", f"box_iou_{n}x{m}", device, "torchvision", setup, bytes_moved=4 * (n * m + 4 * (n + m)))


def _rotated_inputs(n, device, seed=0):
    boxes, scores, idxs = _inputs(n, "cpu", seed)
    g = torch.Generator().manual_seed(seed + 100)
    angle = (torch.rand(n, 1, generator=g) - 0.5) * 180
    rotated = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2], angle], dim=1)
    return rotated.to(device), scores.to(device), idxs.to(device)


def _shapely_nms(polygons, areas, scores, threshold):
    """Greedy NMS with shapely's exact polygon intersection (vectorised over the
    live boxes): the rotated peer, as no rotated NMS is installable here."""
    import numpy as np
    import shapely

    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for pos, i in enumerate(order):
        if not alive[pos]:
            continue
        keep.append(i)
        rest = pos + 1 + np.flatnonzero(alive[pos + 1 :])
        if len(rest) == 0:
            continue
        j = order[rest]
        inter = shapely.area(shapely.intersection(polygons[i], polygons[j]))
        alive[rest[inter / (areas[i] + areas[j] - inter) > threshold]] = False
    return keep


def _nms_rotated_case(device, n, batched, with_shapely):
    def setup():
        from .. import ops

        boxes, scores, idxs = _rotated_inputs(n, device)
        fns = {
            "visionops": (lambda: ops.batched_nms_rotated(boxes, scores, idxs, 0.5))
            if batched
            else (lambda: ops.nms_rotated(boxes, scores, 0.5))
        }
        if with_shapely:
            try:
                import shapely
            except ImportError:
                return fns
            corners = ops.convert_rotated_boxes(boxes.cpu().double(), "xywha", "poly").numpy()
            polygons = shapely.polygons(corners)
            areas = shapely.area(polygons)
            s = scores.cpu().numpy()
            fns["shapely"] = lambda: _shapely_nms(polygons, areas, s, 0.5)
        return fns

    name = ("batched_nms_rotated_80cls_" if batched else "nms_rotated_") + f"{n // 1000}k"
    return Case("boxes", name, device, "shapely" if with_shapely else "none", setup,
                notes="no rotated NMS peer is installable; shapely greedy NMS where listed")


def cases(device: str, quick: bool = False) -> list[Case]:
    sizes = [1000, 10000] if quick else [1000, 10000, 100000]
    out = []
    for batched in (False, True):
        out += [_nms_case(device, n, batched) for n in sizes]
    if device.startswith("cuda"):
        out.append(_nms_fixed_case(device, 10000))
    out.append(_nms_rotated_case(device, 1000, False, with_shapely=not device.startswith("cuda")))
    out.append(_nms_rotated_case(device, 10000, False, with_shapely=False))
    out.append(_nms_rotated_case(device, 10000, True, with_shapely=False))
    out.append(_box_iou_case(device, 1000, 1000))
    if not quick:
        out.append(_box_iou_case(device, 4000, 4000))
    return out
