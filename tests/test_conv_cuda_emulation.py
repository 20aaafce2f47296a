"""The CUDA depthwise fast paths (cuda/conv_cuda.cu), run on the CPU.

Their kernels and launch shapes are compiled with a C++ compiler against
tests/emulated_cuda/depthwise_fast.cpp, which runs each block as threads with a
barrier for __syncthreads. This checks on any machine what a GPU run checks
for them: tiling, grid-stride loops over capped grids, 32-bit indexing within a
plane, the gather-form input gradient and the two-stage weight-gradient
reduction, against torch's float64 convolution. (The tests in test_conv.py run
the real kernels where a GPU is present.)
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from emulated_cuda.build import build


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    lib = build(tmp_path_factory.mktemp("emulated_cuda"), "conv_cuda.cu", "depthwise fast paths", "depthwise_fast")
    lib.depthwise_fast_emulated.restype = ctypes.c_int
    return lib


def _run(lib, x, w, b, grad, geom, channels_last, activation, grid_limit, dtype):
    def prepared(t):
        t = t.to(dtype)
        t = t.permute(0, 2, 3, 1) if channels_last and t.dim() == 4 and t is not w else t
        return np.ascontiguousarray(t.numpy())

    n, c, h, wd = x.shape
    oc, kh, kw, oh, ow = geom[4], geom[5], geom[6], geom[7], geom[8]
    arrays = [prepared(x), np.ascontiguousarray(w.to(dtype).numpy()), np.ascontiguousarray(b.to(dtype).numpy()),
              prepared(grad)]
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    out_shape = (n, oh, ow, oc) if channels_last else (n, oc, oh, ow)
    in_shape = (n, h, wd, c) if channels_last else (n, c, h, wd)
    out, gi, gw = np.zeros(out_shape, np_dtype), np.zeros(in_shape, np_dtype), np.zeros((oc, 1, kh, kw), np_dtype)
    geom_arr = (ctypes.c_int64 * 19)(*geom)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    ok = lib.depthwise_fast_emulated(int(dtype == torch.float64), geom_arr, int(channels_last), activation,
                                     grid_limit[0], grid_limit[1], *[ptr(a) for a in arrays], ptr(out), ptr(gi), ptr(gw))
    assert ok & 1
    back = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2) if channels_last else torch.from_numpy(a)  # noqa: E731
    return back(out), back(gi), torch.from_numpy(gw), ok


# (N, C, m, H, W, KH, KW, stride, dilation, padding (top, bottom, left, right), channels_last, grid limit)
CASES = [
    (2, 3, 1, 19, 37, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), False, (0, 0)),  # 3x3 path, natural grid, 2x3 tiles
    (2, 3, 1, 19, 37, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), True, (0, 0)),
    (2, 5, 2, 17, 21, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1), False, (3, 2)),  # multiplier 2, stride 2, capped grid
    (2, 5, 2, 17, 21, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1), True, (3, 2)),
    (1, 37, 1, 9, 11, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), True, (2, 1)),  # channels_last: a partial second group
    (3, 4, 1, 23, 40, 5, 5, (1, 1), (1, 1), (2, 2, 2, 2), False, (2, 1)),  # runtime taps, 3 tap batches (25)
    (2, 4, 1, 14, 13, 2, 3, (3, 2), (2, 1), (0, 2, 1, 0), False, (1, 1)),  # asymmetric: even kernel, uneven padding
    (2, 4, 1, 14, 13, 2, 3, (3, 2), (2, 1), (0, 2, 1, 0), True, (1, 1)),
    (2, 6, 1, 12, 600, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), False, (4, 3)),  # wide rows: several weight bands
    (1, 3, 3, 70, 9, 7, 7, (1, 2), (2, 1), (3, 3, 3, 3), True, (3, 2)),  # channels_last bands of 56 rows, dilation
    (1, 2, 1, 5, 5, 1, 1, (3, 3), (1, 1), (0, 0, 0, 0), False, (0, 0)),  # 1x1 taps, outputs reading no padding
    (3, 5, 1, 7, 7, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), False, (0, 0)),  # small planes: 5 per block, last one partial
    (2, 3, 2, 11, 10, 5, 5, (2, 2), (1, 1), (2, 2, 2, 2), False, (1, 1)),  # small input and output planes, grid of 1
    (4, 9, 1, 12, 10, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), False, (2, 1)),  # 120-position planes: 2 per block
    (2, 40, 1, 7, 7, 13, 13, (1, 1), (1, 1), (6, 6, 6, 6), True, (0, 0)),  # 13x13 on 7x7, channels_last
    # the strip kernels (square 3x3 / 5x5 / 7x7, stride 1 or 2, no dilation): rows or
    # columns not a multiple of the strip, multiplier 2 (forward only), capped grids
    (2, 3, 1, 19, 37, 3, 3, (1, 1), (2, 2), (2, 2, 2, 2), False, (0, 0)),  # dilated 3x3: the tiled kernels
    (2, 3, 1, 19, 37, 3, 3, (1, 1), (2, 2), (2, 2, 2, 2), True, (0, 0)),
    (2, 5, 1, 14, 14, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1), False, (3, 1)),  # stride 2, 7 outputs: a partial strip
    (2, 5, 1, 14, 14, 3, 3, (2, 2), (1, 1), (0, 1, 0, 1), True, (3, 1)),  # TF-style "same": pad bottom/right only
    (3, 6, 1, 7, 7, 7, 7, (1, 1), (1, 1), (3, 3, 3, 3), False, (0, 0)),  # 7x7 on 7x7
    (3, 6, 1, 7, 7, 7, 7, (1, 1), (1, 1), (3, 3, 3, 3), True, (0, 0)),
    (1, 34, 1, 13, 11, 5, 5, (1, 1), (1, 1), (2, 2, 2, 2), True, (2, 1)),  # 34 channels: warps straddle pixels
    (2, 4, 1, 15, 9, 5, 5, (2, 2), (1, 1), (2, 2, 2, 2), False, (0, 0)),
    (2, 4, 1, 15, 9, 5, 5, (2, 2), (1, 1), (2, 2, 2, 2), True, (0, 0)),
    (1, 3, 2, 10, 9, 7, 7, (2, 2), (1, 1), (3, 3, 3, 3), False, (1, 1)),  # multiplier 2, 7x7 stride 2, grid of 1
    (1, 3, 2, 10, 9, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), True, (2, 1)),  # multiplier 2 at stride 1: tiled input grad
    (2, 3, 1, 9, 10, 5, 5, (1, 1), (1, 1), (0, 4, 4, 0), False, (0, 0)),  # padding 0 and K - 1 on opposite sides
    (2, 3, 1, 6, 6, 3, 3, (1, 1), (1, 1), (3, 3, 3, 3), True, (0, 0)),  # padding > K - 1: outputs reading only padding
]


_STRIPS_ON = os.environ.get("VISIONOPS_DW_CUDA_KERNELS") != "tiled"  # conv_cuda.cu's switch


def _strip_paths(case) -> int:
    """The path bits the emulation harness reports: 2 when the forward takes the
    strip kernels, 4 when the input gradient does (stride 1, no multiplier)."""
    _, _, m, _, _, kh, kw, stride, dilation, _, _, _ = case
    if not _STRIPS_ON:
        return 0
    strips = kh == kw and kh in (3, 5, 7) and stride[0] == stride[1] and stride[0] in (1, 2) and dilation == (1, 1)
    return (2 if strips else 0) | (4 if strips and stride == (1, 1) and m == 1 else 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}c{c[1]}m{c[2]}_{c[3]}x{c[4]}_k{c[5]}x{c[6]}_s{c[7][0]}{c[7][1]}"
                         f"_d{c[8][0]}{c[8][1]}_{'cl' if c[10] else 'nchw'}_grid{c[11][0]}x{c[11][1]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_fast_paths_match_torch(emulated, case, dtype):
    n, c, m, h, w, kh, kw, stride, dilation, pad, channels_last, grid_limit = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c * m, 1, kh, kw, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c * m, generator=gen, dtype=torch.float64)
    pt, pb, pl, pr = pad
    ref = F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, stride, 0, dilation, c)
    oh, ow = ref.shape[2:]
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_gx, ref_gw = torch.autograd.grad(ref, [x, weight], grad)
    geom = [n, c, h, w, c * m, kh, kw, oh, ow, *stride, pt, pb, pl, pr, *dilation, c, m]
    x_in = x.detach().to(dtype).double()  # the values the kernel sees
    out, gx, gw, paths = _run(emulated, x.detach(), weight.detach(), bias, grad, geom, channels_last, 0, grid_limit,
                              dtype)
    assert paths & 6 == _strip_paths(case)
    if dtype == torch.float64:
        tol = dict(rtol=1e-12, atol=1e-12)
    else:  # float32 sums of at most a few thousand products of unit-scale values
        tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, (n * oh * ow) ** 0.5))
        ref = F.conv2d(F.pad(x_in, (pl, pr, pt, pb)), weight.detach().to(dtype).double(),
                       bias.to(dtype).double(), stride, 0, dilation, c)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(gx.double(), ref_gx, **tol)
    torch.testing.assert_close(gw.double(), ref_gw, **tol)


@pytest.mark.parametrize("activation,clamp", [(1, (0.0, None)), (2, (0.0, 6.0))])
def test_emulated_forward_epilogue(emulated, activation, clamp):
    gen = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(2, 4, 10, 35, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    for dilation, strips in ((1, True), (2, False)):  # the strip kernels' epilogue and the tiled kernels'
        ref = F.conv2d(x, weight, bias, 1, dilation, dilation, 4).clamp(*clamp)
        geom = [2, 4, 10, 35, 4, 3, 3, 10, 35, 1, 1, *[dilation] * 4, dilation, dilation, 4, 1]
        for channels_last in (False, True):
            out, _, _, paths = _run(emulated, x, weight, bias, torch.zeros_like(ref), geom, channels_last, activation,
                                    (0, 0), torch.float64)
            assert bool(paths & 2) == (strips and _STRIPS_ON)
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
