"""Synthetic images of rotated text-like bars for rotated detection (RRPN).

Each image holds a few bars: rows of rectangular "glyphs" separated by thin
gaps (a line of text seen from afar), of varied length, thickness, angle and
contrast, over a noisy background with a gradient and clutter (small rotated
blobs, bright or dark, that are *not* objects). The ground truth is one rotated box per bar in visionops'
convention ``(cx, cy, w, h, angle)``: ``w`` along the bar, ``h`` across it,
``angle`` in degrees counter-clockwise (the box map of
:mod:`visionops.ops.rotated`), always ``w >= h`` and ``angle`` in ``[-90, 90)``.
Pixel ``(row r, column c)`` covers ``[c, c + 1] x [r, r + 1]`` in box
coordinates (centre ``(c + .5, r + .5)``, as ``roi_align_rotated(aligned=True)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["rotated_bars"]


def _paint(img: Tensor, box: tuple[float, float, float, float, float], value: float, pitch: float = 0.0) -> None:
    """Add ``value`` times the anti-aliased indicator (~fraction of each pixel inside)
    of a rotated rectangle to ``img`` (``[H, W]``), only over its bounding window.
    ``pitch > 0`` cuts the rectangle into glyphs: cells of ``pitch`` along ``w``
    with a gap of 22% of the pitch, the ends kept solid."""
    cx, cy, w, h, a = box
    t = math.radians(a)
    c, s = math.cos(t), math.sin(t)
    ex = abs(c) * w / 2 + abs(s) * h / 2 + 1
    ey = abs(s) * w / 2 + abs(c) * h / 2 + 1
    H, W = img.shape
    c0, c1 = max(0, int(cx - ex)), min(W, int(math.ceil(cx + ex)))
    r0, r1 = max(0, int(cy - ey)), min(H, int(math.ceil(cy + ey)))
    if c0 >= c1 or r0 >= r1:
        return
    dy = (torch.arange(r0, r1, dtype=img.dtype) + 0.5 - cy)[:, None]
    dx = (torch.arange(c0, c1, dtype=img.dtype) + 0.5 - cx)[None, :]
    u = c * dx - s * dy  # inverse of x = cx + c u + s v, y = cy - s u + c v
    v = s * dx + c * dy
    inside = (w / 2 - u.abs() + 0.5).clamp(0, 1) * (h / 2 - v.abs() + 0.5).clamp(0, 1)
    if pitch > 0:
        phase = (u + w / 2) / pitch
        glyph = ((phase - phase.floor()) < 0.78) | (u.abs() > w / 2 - 0.6 * h)
        inside = inside * glyph
    img[r0:r1, c0:c1] += value * inside


def rotated_bars(
    n: int,
    size: int | tuple[int, int] = 96,
    *,
    channels: int = 1,
    max_bars: int = 3,
    min_bars: int = 1,
    length: tuple[float, float] = (20.0, 56.0),
    thickness: tuple[float, float] = (5.0, 10.0),
    clutter: int = 4,
    noise: float = 0.08,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, list[Tensor]]:
    """Draw ``n`` images of randomly rotated text-like bars and their rotated boxes.

    Args:
        n: number of images.
        size: ``H = W`` or ``(H, W)`` in pixels.
        channels: 1 (grey) or 3 (the grey image times a random tint in ``[0.7, 1]`` per channel).
        min_bars, max_bars: bars per image, uniform in ``[min_bars, max_bars]``.
        length, thickness: ranges (pixels) of a bar's ``w`` and ``h``; the aspect
            ratio ``w / h`` therefore varies from about 2 to 11 (text-like; the
            RRPN paper's anchors use 2, 5 and 8).
        clutter: at most this many distractors per image (rotated blobs 2-7 px
            across, aspect ratio 0.6-1.4, anywhere, also over bars).
        noise: standard deviation of the additive Gaussian pixel noise.
        generator: every random number is drawn from it: the same seed gives the
            same images and boxes.
        dtype: floating dtype of the images and boxes.

    Returns:
        ``(images, boxes)``: ``images`` ``Tensor[n, channels, H, W]`` with values
        in ``[0, 1]``; ``boxes`` a list of ``n`` ``Tensor[G_i, 5]``
        ``(cx, cy, w, h, angle_degrees_ccw)``. All four corners of every box lie
        inside ``[0, W] x [0, H]``, and bars of one image do not overlap (their
        rotated IoU is 0 - rejection sampling with a bounded number of tries, so
        an image may get fewer bars than drawn but always at least one).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> images, boxes = rotated_bars(2, 64, generator=g)
        >>> images.shape, len(boxes), boxes[0].shape[1]
        (torch.Size([2, 1, 64, 64]), 2, 5)
    """
    from visionops.ops import box_iou_rotated

    H, W = (size, size) if isinstance(size, int) else size
    if channels not in (1, 3):
        raise ValueError(f"rotated_bars: channels must be 1 or 3, got {channels}")
    if not 1 <= min_bars <= max_bars:
        raise ValueError(f"rotated_bars: need 1 <= min_bars <= max_bars, got {min_bars}, {max_bars}")
    if length[1] >= min(H, W) or thickness[0] <= 0 or thickness[1] > length[0]:
        raise ValueError("rotated_bars: need 0 < thickness <= length < image size")

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij"
    )
    images = torch.empty(n, channels, H, W, dtype=torch.float64)
    all_boxes: list[Tensor] = []
    for i in range(n):
        # background: a random level with a gentle gradient
        bg = 0.15 + 0.7 * rand(1).item()
        gx, gy = (rand(2) - 0.5).tolist()
        img = bg + 0.25 * (gx * (xs / W - 0.5) + gy * (ys / H - 0.5))
        count = min_bars + int(rand(1).item() * (max_bars - min_bars + 1))
        boxes: list[Tensor] = []
        for _ in range(8 * count):  # rejection sampling: bounded, deterministic
            if len(boxes) == count:
                break
            u = rand(6)
            w = length[0] + u[0].item() * (length[1] - length[0])
            h = thickness[0] + u[1].item() * max(0.0, min(thickness[1], w / 2) - thickness[0])
            a = -90.0 + 180.0 * u[2].item()
            t = math.radians(a)
            ex = abs(math.cos(t)) * w / 2 + abs(math.sin(t)) * h / 2  # half extents of the bounding box
            ey = abs(math.sin(t)) * w / 2 + abs(math.cos(t)) * h / 2
            if 2 * ex + 2 > W or 2 * ey + 2 > H:
                continue
            cx = ex + 1 + u[3].item() * (W - 2 * ex - 2)
            cy = ey + 1 + u[4].item() * (H - 2 * ey - 2)
            box = torch.tensor([cx, cy, w, h, a], dtype=torch.float64)
            if boxes:
                # no overlap, with a margin of 2 px (inflate both sides)
                grown = box + torch.tensor([0, 0, 4, 4, 0], dtype=torch.float64)
                others = torch.stack(boxes) + torch.tensor([0, 0, 4, 4, 0], dtype=torch.float64)
                if box_iou_rotated(grown[None], others).max().item() > 0:
                    continue
            boxes.append(box)
            # glyphs ~0.7-1.2 h wide, full height; polarity and contrast vary per bar
            # (the contrast is cut to the room left by the background, so bars never saturate; when
            # the drawn polarity has less than 0.3 of room, the other one - with at least 0.375 - is used)
            up, down = 1.0 - bg - 0.125, bg - 0.125
            contrast = 0.35 + 0.45 * rand(1).item()
            if rand(1).item() < 0.5:
                contrast = min(contrast, up) if up >= 0.3 else -min(contrast, down)
            else:
                contrast = -min(contrast, down) if down >= 0.3 else min(contrast, up)
            _paint(img, (cx, cy, w, h, a), contrast, pitch=h * (0.7 + 0.5 * u[5].item()))
        if not boxes:  # cannot happen with valid ranges; keep the contract anyway
            raise RuntimeError("rotated_bars: could not place a bar; make the image larger or the bars smaller")
        n_clutter = int(rand(1).item() * (clutter + 1))
        for _ in range(n_clutter):
            u = rand(5)
            d = 2 + 5 * u[0].item()
            e = d * (0.6 + 0.8 * u[1].item())  # aspect ratio in (0.6, 1.4): not bar-like
            value = (0.3 + 0.3 * rand(1).item()) * (1 if rand(1).item() < 0.5 else -1)
            _paint(img, (u[2].item() * W, u[3].item() * H, d, e, 180 * u[4].item()), value)
        img = img + noise * torch.randn(H, W, generator=generator, dtype=torch.float64)
        if channels == 3:
            tint = 0.7 + 0.3 * rand(3)
            images[i] = img[None] * tint[:, None, None]
        else:
            images[i] = img[None]
        all_boxes.append(torch.stack(boxes).to(dtype))
    return images.clamp_(0, 1).to(dtype), all_boxes
