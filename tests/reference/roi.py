"""float64 RoIAlign / RoIPool written directly from the formulas.

RoIAlign (Mask R-CNN): each output bin is the mean of a regular grid of bilinear
samples; the boundary rules (samples beyond one cell outside the map are zero,
samples in [-1, 0] clamp to the border) are torchvision's. RoIPool (Fast R-CNN):
round the box to cells, split into bins, max over each bin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _bilinear(plane: Tensor, y: float, x: float) -> Tensor:
    """plane [C, H, W] float64 sampled at (y, x)."""
    _, height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * plane[:, y0, x0]
        + (1 - ly) * lx * plane[:, y0, x1]
        + ly * (1 - lx) * plane[:, y1, x0]
        + ly * lx * plane[:, y1, x1]
    )


def roi_align_reference(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    x = input.detach().to(torch.float64).cpu()
    r = rois.detach().to(torch.float64).cpu()
    ph_n, pw_n = output_size
    out = torch.zeros(r.shape[0], x.shape[1], ph_n, pw_n, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k in range(r.shape[0]):
        b, x1, y1, x2, y2 = r[k].tolist()
        start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        width, height = x2 * spatial_scale - offset - start_x, y2 * spatial_scale - offset - start_y
        if not aligned:
            width, height = max(width, 1.0), max(height, 1.0)
        bin_h, bin_w = height / ph_n, width / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(height / ph_n), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(width / pw_n), 0)
        count = max(grid_h * grid_w, 1)
        plane = x[int(b)]
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = torch.zeros(x.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    yy = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += _bilinear(plane, yy, xx)
                out[k, :, ph, pw] = acc / count
    return out


def _roi_pool_bins(roi: list, spatial_scale: float, output_size: tuple[int, int], height: int, width: int):
    """(ph, pw, h0, h1, w0, w1) of every non-empty bin of one RoI (batch, x1, y1,
    x2, y2): corners rounded half away from zero, at least one cell per side,
    bin edges floor/ceil, clamped to the map (torchvision's rules)."""
    ph_n, pw_n = output_size

    def round_half_away(v: float) -> int:
        return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))

    _, x1, y1, x2, y2 = roi
    sx, sy = round_half_away(x1 * spatial_scale), round_half_away(y1 * spatial_scale)
    ex, ey = round_half_away(x2 * spatial_scale), round_half_away(y2 * spatial_scale)
    bin_h, bin_w = max(ey - sy + 1, 1) / ph_n, max(ex - sx + 1, 1) / pw_n
    for ph in range(ph_n):
        h0 = min(max(math.floor(ph * bin_h) + sy, 0), height)
        h1 = min(max(math.ceil((ph + 1) * bin_h) + sy, 0), height)
        for pw in range(pw_n):
            w0 = min(max(math.floor(pw * bin_w) + sx, 0), width)
            w1 = min(max(math.ceil((pw + 1) * bin_w) + sx, 0), width)
            if h1 > h0 and w1 > w0:
                yield ph, pw, h0, h1, w0, w1


def roi_pool_reference(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
    x = input.detach().to(torch.float64).cpu()
    r = rois.detach().to(torch.float64).cpu()
    _, channels, height, width = x.shape
    out = torch.zeros(r.shape[0], channels, *output_size, dtype=torch.float64)
    for k in range(r.shape[0]):
        b = int(r[k, 0])
        for ph, pw, h0, h1, w0, w1 in _roi_pool_bins(r[k].tolist(), spatial_scale, output_size, height, width):
            out[k, :, ph, pw] = x[b, :, h0:h1, w0:w1].amax(dim=(1, 2))
    return out


def roi_pool_argmax_reference(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float):
    """(values, argmax) of RoIPool with visionops' rules, on the given dtype:
    cells scanned row by row, the first maximum wins (as torchvision), a NaN
    wins over any number and the first NaN over later ones (as torch.max);
    argmax is h * W + w, -1 (value 0) for an empty bin."""
    x = input.detach().cpu()
    r = rois.detach().to(torch.float64).cpu()
    _, channels, height, width = x.shape
    out = torch.zeros(r.shape[0], channels, *output_size, dtype=x.dtype)
    arg = torch.full((r.shape[0], channels, *output_size), -1, dtype=torch.int64)
    cell = torch.arange(height * width).view(height, width)
    for k in range(r.shape[0]):
        if not 0 <= r[k, 0].item() < x.shape[0]:
            continue
        b = int(r[k, 0])
        for ph, pw, h0, h1, w0, w1 in _roi_pool_bins(r[k].tolist(), spatial_scale, output_size, height, width):
            window = x[b, :, h0:h1, w0:w1].reshape(channels, -1)
            cells = cell[h0:h1, w0:w1].reshape(-1)
            nan = window.isnan()
            # argmax returns the first of equal maxima (documented)
            first_max = window.to(torch.float64).masked_fill(nan, -math.inf).argmax(1)
            first_nan = nan.to(torch.int8).argmax(1)
            pick = torch.where(nan.any(1), first_nan, first_max)
            arg[k, :, ph, pw] = cells[pick]
            out[k, :, ph, pw] = window.gather(1, pick[:, None])[:, 0]
    return out, arg
