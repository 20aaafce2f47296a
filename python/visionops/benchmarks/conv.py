"""conv family benchmarks: MobileNetV2's depthwise layers and large-kernel
depthwise convolutions, visionops.ops.depthwise_conv2d against F.conv2d, and
MobileNetV2's pointwise (1x1) layers, visionops.ops.conv2d against F.conv2d.

The peer is "torch's best layout": setup() times F.conv2d on the NCHW and the
channels_last copy of the input and keeps the faster one, so every ratio is
against the best torch can do on that layer; visionops runs in the layout the
case names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Case
from .timing import median_time

PEER = "torch-best-layout"

# MobileNetV2 (Sandler et al. 2018) depthwise layers: (channels, size) at 224x224
MOBILENET_V2 = [(32, 112), (144, 56), (192, 28), (576, 14), (960, 7)]
LARGE_KERNEL = [(144, 56), (384, 28)]
# its pointwise layers: (in channels, out channels, size), expansions and projections
POINTWISE = [(24, 144, 56), (144, 24, 56), (96, 576, 14), (960, 160, 7)]


def _setup_fn(device, n, c, size, k, stride, backward, channels_last, out_channels=None):
    """Depthwise (out_channels None) or pointwise (k 1, one group) convolution."""
    depthwise = out_channels is None
    oc = c if depthwise else out_channels

    def setup():
        from .. import ops

        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, size, size, generator=g).to(device)
        w = (torch.randn(oc, 1 if depthwise else c, k, k, generator=g) / (k if depthwise else c**0.5)).to(device)
        b = torch.randn(oc, generator=g).to(device)
        pad = k // 2
        layouts = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
        out_size = (size + 2 * pad - k) // stride + 1
        grad = torch.randn(n, oc, out_size, out_size, generator=g).to(device)

        def make(fn, t):
            if not backward:
                return lambda: fn(t, w, b)
            tg = t.detach().requires_grad_(True)
            wg, bg = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
            gl = grad.contiguous(memory_format=torch.channels_last) if t is layouts[True] else grad
            return lambda: torch.autograd.grad(fn(tg, wg, bg), (tg, wg, bg), gl)

        def ours_fn(t, w, b):
            if depthwise:
                return ops.depthwise_conv2d(t, w, b, stride, pad)
            return ops.conv2d(t, w, b, stride, pad)

        def torch_fn(t, w, b):
            return F.conv2d(t, w, b, stride, pad, 1, c if depthwise else 1)

        peers = [make(torch_fn, layouts[False]), make(torch_fn, layouts[True])]
        times = [median_time(p, device, min_runs=3, min_seconds=0.05) for p in peers]
        return {"visionops": make(ours_fn, layouts[channels_last]), PEER: peers[times.index(min(times))]}

    return setup


def _case(device, n, c, size, k, stride, backward, channels_last):
    element = 4
    out = (size + 2 * (k // 2) - k) // stride + 1
    x_bytes, y_bytes = n * c * size * size * element, n * c * out * out * element
    # forward reads x, writes y; the backward also reads grad and x, writes grad_input
    moved = x_bytes + y_bytes if not backward else 3 * x_bytes + 2 * y_bytes
    name = (
        f"dw{k}x{k}_s{stride}_n{n}_c{c}_{size}x{size}"
        + ("_fwd_bwd" if backward else "_fwd")
        + ("_channels_last" if channels_last else "")
    )
    return Case("conv", name, device, PEER, _setup_fn(device, n, c, size, k, stride, backward, channels_last), moved)


def _pointwise_case(device, n, c, oc, size, backward, channels_last):
    # a GEMM: no bandwidth roofline
    name = (
        f"pw1x1_n{n}_{c}to{oc}_{size}x{size}"
        + ("_fwd_bwd" if backward else "_fwd")
        + ("_channels_last" if channels_last else "")
    )
    setup = _setup_fn(device, n, c, size, 1, 1, backward, channels_last, out_channels=oc)
    return Case("conv", name, device, PEER, setup)


def cases(device: str, quick: bool = False) -> list[Case]:
    out = []
    if quick:
        # one small MobileNet layer and one large kernel, both layouts, forward and backward
        for backward in (False, True):
            for cl in (False, True):
                out.append(_case(device, 2, 144, 28, 3, 1, backward, cl))
                out.append(_case(device, 2, 144, 28, 7, 1, backward, cl))
        return out
    for backward in (False, True):
        for cl in (False, True):
            for n in (8, 64):
                for c, size in MOBILENET_V2:
                    for stride in (1, 2):
                        out.append(_case(device, n, c, size, 3, stride, backward, cl))
            for c, size in LARGE_KERNEL:
                for k in (5, 7, 13):
                    out.append(_case(device, 8, c, size, k, 1, backward, cl))
            for c, oc, size in POINTWISE:
                out.append(_pointwise_case(device, 32, c, oc, size, backward, cl))
    return out
