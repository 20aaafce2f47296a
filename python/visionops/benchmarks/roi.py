"""roi family benchmarks: the Faster R-CNN box head and Mask R-CNN mask head,
against torchvision.ops.roi_align / roi_pool."""

from __future__ import annotations

import torch

from . import Case
from ..data import random_rois


def _inputs(device, dtype, n, c, h, w, k, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # boxes in image coordinates of a stride-16 map (800 x 1088 image for 50 x 68)
    rois = random_rois(k, n, (h * 16, w * 16), min_size=16, max_size=h * 16 / 2, generator=g)
    return x, rois.to(device=device, dtype=dtype)


def _roi_align_case(device, dtype, name, size, backward, quick, channels_last=False):
    def setup():
        import torchvision

        from .. import ops

        n, c, h, w, k = (2, 64, 25, 34, 128) if quick else (2, 256, 50, 68, 512)
        x, rois = _inputs(device, dtype, n, c, h, w, k, channels_last=channels_last)
        args = (size, 1 / 16, 2, True)
        if not backward:
            return {
                "visionops": lambda: ops.roi_align(x, rois, *args),
                "torchvision": lambda: torchvision.ops.roi_align(x, rois, *args),
            }
        xg = x.detach().requires_grad_(True)
        grad = torch.randn(k, c, size, size, device=device, dtype=dtype)

        def ours():
            return torch.autograd.grad(ops.roi_align(xg, rois, *args), xg, grad)

        def peer():
            return torch.autograd.grad(torchvision.ops.roi_align(xg, rois, *args), xg, grad)

        return {"visionops": ours, "torchvision": peer}

    c, k = (64, 128) if quick else (256, 512)
    element = torch.finfo(dtype).bits // 8
    # a perfect forward reads each output's samples once from cache and writes the output
    moved = k * c * size * size * element * (1 if not backward else 2)
    suffix = ("_fwd_bwd" if backward else "_fwd") + ("_channels_last" if channels_last else "")
    return Case("roi", f"roi_align_{size}x{size}_{str(dtype)[6:]}{suffix}", device, "torchvision", setup, moved)


def _roi_pool_case(device, dtype, backward, quick):
    def setup():
        import torchvision

        from .. import ops

        n, c, h, w, k = (2, 64, 25, 34, 128) if quick else (2, 256, 50, 68, 512)
        x, rois = _inputs(device, dtype, n, c, h, w, k)
        if not backward:
            return {
                "visionops": lambda: ops.roi_pool(x, rois, 7, 1 / 16),
                "torchvision": lambda: torchvision.ops.roi_pool(x, rois, 7, 1 / 16),
            }
        xg = x.detach().requires_grad_(True)
        grad = torch.randn(k, c, 7, 7, device=device, dtype=dtype)
        return {
            "visionops": lambda: torch.autograd.grad(ops.roi_pool(xg, rois, 7, 1 / 16), xg, grad),
            "torchvision": lambda: torch.autograd.grad(torchvision.ops.roi_pool(xg, rois, 7, 1 / 16), xg, grad),
        }

    return Case("roi", f"roi_pool_7x7_{str(dtype)[6:]}" + ("_fwd_bwd" if backward else "_fwd"), device, "torchvision", setup)


def cases(device: str, quick: bool = False) -> list[Case]:
    out = []
    dtypes = [torch.float32] + ([torch.float16] if device.startswith("cuda") else [])
    for dtype in dtypes:
        for backward in (False, True):
            out.append(_roi_align_case(device, dtype, "faster_rcnn", 7, backward, quick))
        out.append(_roi_align_case(device, dtype, "mask_rcnn", 14, False, quick))
    out.append(_roi_align_case(device, torch.float32, "faster_rcnn", 7, False, quick, channels_last=True))
    for backward in (False, True):
        out.append(_roi_pool_case(device, torch.float32, backward, quick))
    return out
