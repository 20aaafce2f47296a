"""Independent float64 / exact-rational oracles for the rotated family.

Rotated IoU: each box becomes its 4 corners (detectron2's map
``x = cx + cos(a) u + sin(a) v``, ``y = cy - sin(a) u + cos(a) v``, angle in
degrees counter-clockwise), placed relative to the second box's centre by an
exact shift, then the corner polygon of one box is
clipped by the four edge half-planes of the other in *exact rational
arithmetic* (``fractions.Fraction``), and the area follows from the shoelace
formula, also exact. The only rounding is therefore in cos/sin and in the
corner offsets (about 1e-16 relative to the box size), so the result is a trustworthy
reference even for nearly identical boxes. This works in world coordinates
with general half-planes: a different algorithm from the kernel's (which
works in the frame of the second box with axis-aligned clip lines, in double).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

Box = Sequence[float]

_DEG = 0.017453292519943295769  # pi / 180, as the kernels' literal


def cos_sin_degrees(angle: float) -> tuple[float, float]:
    """cos / sin of an angle in degrees, reduced modulo 360 first (exact, so that
    1e30 degrees means what it says); multiples of 90 degrees are exact."""
    r = math.fmod(angle, 360.0)
    if r > 180.0:
        r -= 360.0
    if r <= -180.0:
        r += 360.0
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), -90.0: (0.0, -1.0)}
    if r in exact:
        return exact[r]
    return math.cos(r * _DEG), math.sin(r * _DEG)



def corners(box: Box) -> list[tuple[float, float]]:
    """The 4 corners of (cx, cy, w, h, angle_deg_ccw) in float64, in the order
    (-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2) of the box frame."""
    cx, cy, w, h, a = (float(v) for v in box)
    c, s = cos_sin_degrees(a)
    out = []
    for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((cx + c * u + s * v, cy - s * u + c * v))
    return out


def _area(poly: list) -> Fraction | float:
    n = len(poly)
    if n < 3:
        return 0
    twice = 0
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        twice += x0 * y1 - x1 * y0
    return twice / 2


def _clip(poly: list, p: tuple, q: tuple, orientation: int) -> list:
    """Keep the part of poly on the inner side of the directed line p -> q."""

    def side(pt):  # > 0 left of p->q
        return orientation * ((q[0] - p[0]) * (pt[1] - p[1]) - (q[1] - p[1]) * (pt[0] - p[0]))

    out = []
    n = len(poly)
    for i in range(n):
        cur, prev = poly[i], poly[i - 1]
        dc, dp = side(cur), side(prev)
        if (dc >= 0) != (dp >= 0):
            t = dp / (dp - dc)
            out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
        if dc >= 0:
            out.append(cur)
    return out


def _exact_corners(box: Box, origin: tuple[float, float]) -> list[tuple[Fraction, Fraction]]:
    """Corners relative to `origin`, exact except for cos/sin and the products
    c * u, s * v (rounded relative to the box size, not to the coordinates)."""
    cx, cy, w, h, a = (float(v) for v in box)
    c, s = cos_sin_degrees(a)
    ox, oy = Fraction(cx) - Fraction(origin[0]), Fraction(cy) - Fraction(origin[1])
    out = []
    for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((ox + Fraction(c * u) + Fraction(s * v), oy - Fraction(s * u) + Fraction(c * v)))
    return out


def intersection_area(box1: Box, box2: Box, exact: bool = True) -> float:
    """Area of the intersection of two rotated boxes with positive sides.

    Both polygons are placed relative to box2's centre first (an exact shift), so
    that boxes far from the origin keep the precision of their size."""
    origin = (float(box2[0]), float(box2[1]))
    p1, p2 = _exact_corners(box1, origin), _exact_corners(box2, origin)
    if not exact:
        p1 = [(float(x), float(y)) for x, y in p1]
        p2 = [(float(x), float(y)) for x, y in p2]
    a2 = _area(p2)
    if a2 == 0:
        return 0.0
    orientation = 1 if a2 > 0 else -1
    poly = p1
    for i in range(4):
        poly = _clip(poly, p2[i], p2[(i + 1) % 4], orientation)
        if not poly:
            return 0.0
    return abs(float(_area(poly)))


def iou(box1: Box, box2: Box, mode: str = "iou", exact: bool = True) -> float:
    """Reference box_iou_rotated for one pair, with visionops' documented rules:
    non-finite values or a side <= 0 give 0, identical boxes give 1."""
    vals = [float(v) for v in list(box1) + list(box2)]
    if not all(math.isfinite(v) for v in vals):
        return 0.0
    w1, h1, w2, h2 = vals[2], vals[3], vals[7], vals[8]
    if not (w1 > 0 and h1 > 0):
        return 0.0
    if mode == "iof" and list(box1) == list(box2):
        return 1.0
    if not (w2 > 0 and h2 > 0):
        return 0.0
    a1, a2 = w1 * h1, w2 * h2
    inter = min(intersection_area(box1, box2, exact), a1, a2)
    if mode == "iof":
        return inter / a1
    union = a1 + a2 - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(boxes1, boxes2, mode: str = "iou", aligned: bool = False, exact: bool = True) -> list:
    """Pairwise [N][M] (or aligned [N]) reference; boxes as nested lists or tensors."""
    b1 = [[float(v) for v in b] for b in boxes1]
    b2 = [[float(v) for v in b] for b in boxes2]
    if aligned:
        return [iou(a, b, mode, exact) for a, b in zip(b1, b2)]
    return [[iou(a, b, mode, exact) for b in b2] for a in b1]


# ---------------------------------------------------------------- rotated RoI pooling
# Both oracles enumerate every sample of every bin (no pruning), in float64
# plain Python, from the formulas in the docstrings of visionops.ops.rotated.

def _bilinear(plane, y: float, x: float):
    """plane [C, H, W] float64 tensor sampled at (y, x) with RoIAlign's border rules."""
    _, height, width = plane.shape
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return None
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


def _roi_values(roi) -> tuple[int, float, float, float, float, float] | None:
    b, cx, cy, w, h, a = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (cx, cy, w, h, a)) or w < 0 or h < 0:
        return None
    return int(b), cx, cy, w, h, a


def roi_align_rotated_reference(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """detectron2 ROIAlignRotated semantics (with roi_align's aligned=False rule)."""
    import torch

    ph_n, pw_n = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    x = input.detach().to(torch.float64).cpu()
    k_n, c_n = rois.shape[0], x.shape[1]
    out = torch.zeros(k_n, c_n, ph_n, pw_n, dtype=torch.float64)
    if x.shape[2] == 0 or x.shape[3] == 0:
        return out
    for k in range(k_n):
        vals = _roi_values(rois[k])
        if vals is None:
            continue
        b, cx, cy, w, h, a = vals
        off = 0.5 if aligned else 0.0
        cx, cy = cx * spatial_scale - off, cy * spatial_scale - off
        w, h = min(w * spatial_scale, 2.0**24), min(h * spatial_scale, 2.0**24)
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        c, s = cos_sin_degrees(a)
        bin_w, bin_h = w / pw_n, h / ph_n
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
        count = max(gw * gh, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = torch.zeros(c_n, dtype=torch.float64)
                for iy in range(gh):
                    v = -h / 2 + ph * bin_h + (iy + 0.5) * bin_h / gh
                    for ix in range(gw):
                        u = -w / 2 + pw * bin_w + (ix + 0.5) * bin_w / gw
                        val = _bilinear(x[b], cy - s * u + c * v, cx + c * u + s * v)
                        if val is not None:
                            acc += val
                out[k, :, ph, pw] = acc / count
    return out


def roi_pool_rotated_reference(input, rois, output_size, spatial_scale=1.0):
    """RRPN Algorithm 2 as documented by visionops: returns (output, argmax)."""
    import torch

    ph_n, pw_n = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    x = input.detach().to(torch.float64).cpu()
    k_n, c_n, height, width = rois.shape[0], x.shape[1], x.shape[2], x.shape[3]
    out = torch.zeros(k_n, c_n, ph_n, pw_n, dtype=torch.float64)
    arg = torch.full((k_n, c_n, ph_n, pw_n), -1, dtype=torch.int64)
    for k in range(k_n):
        vals = _roi_values(rois[k])
        if vals is None:
            continue
        b, cx, cy, w, h, a = vals
        cx, cy = cx * spatial_scale, cy * spatial_scale
        w, h = min(w * spatial_scale, 2.0**24), min(h * spatial_scale, 2.0**24)
        c, s = cos_sin_degrees(a)
        bin_w, bin_h = w / pw_n, h / ph_n
        steps_w, steps_h = max(1, math.ceil(bin_w)), max(1, math.ceil(bin_h))
        for ph in range(ph_n):
            for pw in range(pw_n):
                cells = []
                for j in range(steps_h):
                    v = -h / 2 + ph * bin_h + j
                    for i in range(steps_w):
                        u = -w / 2 + pw * bin_w + i
                        col = math.floor(cx + c * u + s * v + 0.5)
                        row = math.floor(cy - s * u + c * v + 0.5)
                        if 0 <= col < width and 0 <= row < height:
                            cells.append(row * width + col)
                for ch in range(c_n):
                    best, best_cell = -math.inf, -1
                    for cell in cells:
                        val = float(x[b, ch].flatten()[cell])
                        if math.isnan(val):
                            best, best_cell = val, cell
                            break
                        if best_cell < 0 or val > best:
                            best, best_cell = val, cell
                    out[k, ch, ph, pw] = best if best_cell >= 0 else 0.0
                    arg[k, ch, ph, pw] = best_cell
    return out, arg
