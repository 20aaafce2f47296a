"""rotated family benchmarks.

No rotated peer is installable here (detectron2 / mmcv are not on the package
index), so:

* ``box_iou_rotated`` 1k x 1k is reported as an absolute time (peer column
  empty), and a 100 x 100 case is timed against shapely 2 (vectorised GEOS
  polygon intersection on the CPU, including building the polygons from the
  boxes), the second oracle of the tests: same inputs, same outputs.
* ``roi_align_rotated`` on the Faster R-CNN box head (512 RoIs x 256 channels,
  7x7, 50x68 map, stride 16): with every angle 0 the op computes exactly
  ``torchvision.ops.roi_align(aligned=True)`` on the same boxes, which is the
  peer; with random angles torchvision's axis-aligned op on the enclosing
  boxes' sizes is only a reference point (case name ``..._any_angle_ref``).
* ``roi_pool_rotated`` (random angles) against ``torchvision.ops.roi_pool`` on
  the axis-aligned boxes: a reference point, not the same computation.
"""

from __future__ import annotations

import torch

from . import Case
from ..data import random_rois


def _rotated_rois(device, dtype, n, h, w, k, angles, seed=0):
    g = torch.Generator().manual_seed(seed)
    rois = random_rois(k, n, (h * 16, w * 16), min_size=16, max_size=h * 16 / 2, generator=g, dtype=torch.float64)
    b, x1, y1, x2, y2 = rois.unbind(1)
    angle = torch.zeros(k, dtype=torch.float64) if not angles else torch.rand(k, generator=g, dtype=torch.float64) * 360 - 180
    rotated = torch.stack([b, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle], 1)
    return rotated.to(device=device, dtype=dtype), rois.to(device=device, dtype=dtype)


def _feature_map(device, dtype, n, c, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype)


def _roi_align_case(device, dtype, angles, backward, quick):
    def setup():
        import torchvision

        from .. import ops

        n, c, h, w, k = (2, 64, 25, 34, 128) if quick else (2, 256, 50, 68, 512)
        x = _feature_map(device, dtype, n, c, h, w)
        rotated, axis = _rotated_rois(device, dtype, n, h, w, k, angles)
        if not backward:
            return {
                "visionops": lambda: ops.roi_align_rotated(x, rotated, 7, 1 / 16, 2, True),
                "torchvision": lambda: torchvision.ops.roi_align(x, axis, 7, 1 / 16, 2, True),
            }
        xg = x.detach().requires_grad_(True)
        grad = torch.randn(k, c, 7, 7, device=device, dtype=dtype)
        return {
            "visionops": lambda: torch.autograd.grad(ops.roi_align_rotated(xg, rotated, 7, 1 / 16, 2, True), xg, grad),
            "torchvision": lambda: torch.autograd.grad(torchvision.ops.roi_align(xg, axis, 7, 1 / 16, 2, True), xg, grad),
        }

    c, k = (64, 128) if quick else (256, 512)
    moved = k * c * 49 * (torch.finfo(dtype).bits // 8) * (2 if backward else 1)
    name = f"roi_align_rotated_7x7_{str(dtype)[6:]}_" + ("fwd_bwd" if backward else "fwd")
    name += "_any_angle_ref" if angles else "_angle0"
    return Case("rotated", name, device, "torchvision", setup, moved)


def _roi_pool_case(device, backward, quick):
    def setup():
        import torchvision

        from .. import ops

        n, c, h, w, k = (2, 64, 25, 34, 128) if quick else (2, 256, 50, 68, 512)
        x = _feature_map(device, torch.float32, n, c, h, w)
        rotated, axis = _rotated_rois(device, torch.float32, n, h, w, k, True)
        if not backward:
            return {
                "visionops": lambda: ops.roi_pool_rotated(x, rotated, 7, 1 / 16),
                "torchvision": lambda: torchvision.ops.roi_pool(x, axis, 7, 1 / 16),
            }
        xg = x.detach().requires_grad_(True)
        grad = torch.randn(k, c, 7, 7, device=device)
        return {
            "visionops": lambda: torch.autograd.grad(ops.roi_pool_rotated(xg, rotated, 7, 1 / 16), xg, grad),
            "torchvision": lambda: torch.autograd.grad(torchvision.ops.roi_pool(xg, axis, 7, 1 / 16), xg, grad),
        }

    name = "roi_pool_rotated_7x7_float32_" + ("fwd_bwd" if backward else "fwd") + "_any_angle_ref"
    return Case("rotated", name, device, "torchvision", setup)


def _boxes(n, seed, device, dtype=torch.float32, extent=1024.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 5, generator=g, dtype=torch.float64)
    # text-like boxes on a 1024 x 1024 image: sizes 8..200, aspect 1:1..1:8
    w = 8 + 192 * u[:, 2]
    h = w / (1 + 7 * u[:, 3])
    b = torch.stack([u[:, 0] * extent, u[:, 1] * extent, w, h, u[:, 4] * 180 - 90], 1)
    return b.to(device=device, dtype=dtype)


def _iou_case(device, n, with_shapely, dense=False):
    # dense: centres within 64 px, so nearly every pair overlaps and is clipped
    # (the sparse case is mostly decided by the bounding-circle rejection)
    extent = 64.0 if dense else 1024.0

    def setup():
        from .. import ops

        a, b = _boxes(n, 0, device, extent=extent), _boxes(n, 1, device, extent=extent)
        fns = {"visionops": lambda: ops.box_iou_rotated(a, b)}
        if with_shapely:
            try:
                import numpy as np
                import shapely
            except ImportError:
                return fns
            pa = ops.convert_rotated_boxes(a.double().cpu(), "xywha", "poly").numpy()
            pb = ops.convert_rotated_boxes(b.double().cpu(), "xywha", "poly").numpy()
            ia, ib = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")

            def peer():
                ga, gb = shapely.polygons(pa), shapely.polygons(pb)
                inter = shapely.area(shapely.intersection(ga[ia], gb[ib]))
                area_a, area_b = shapely.area(ga)[ia], shapely.area(gb)[ib]
                return inter / (area_a + area_b - inter)

            fns["shapely"] = peer
        return fns

    peer = "shapely" if with_shapely else "none"
    return Case("rotated", f"box_iou_rotated_{n}x{n}{'_dense' if dense else ''}_float32", device, peer, setup)


def cases(device: str, quick: bool = False) -> list[Case]:
    out = [
        _iou_case(device, 300 if quick else 1000, False),
        _iou_case(device, 300 if quick else 1000, False, dense=True),
        _iou_case(device, 100, not device.startswith("cuda")),
        _iou_case(device, 100, not device.startswith("cuda"), dense=True),
    ]
    dtypes = [torch.float32] + ([torch.float16] if device.startswith("cuda") else [])
    for dtype in dtypes:
        for backward in (False, True):
            out.append(_roi_align_case(device, dtype, False, backward, quick))
    out.append(_roi_align_case(device, torch.float32, True, False, quick))
    out.append(_roi_align_case(device, torch.float32, True, True, quick))
    for backward in (False, True):
        out.append(_roi_pool_case(device, backward, quick))
    return out
