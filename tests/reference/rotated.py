"""Independent float64 / exact-rational oracles for the rotated family.

Rotated IoU: each box becomes its 4 corners in image coordinates (float64,
detectron2's map ``x = cx + cos(a) u + sin(a) v``, ``y = cy - sin(a) u + cos(a) v``,
angle in degrees counter-clockwise), then the corner polygon of one box is
clipped by the four edge half-planes of the other in *exact rational
arithmetic* (``fractions.Fraction``), and the area follows from the shoelace
formula, also exact. The only rounding is therefore in cos/sin and in the
corner coordinates (about 1e-16 relative), so the result is a trustworthy
reference even for nearly identical boxes. This works in world coordinates
with general half-planes: a different algorithm from the kernel's (which
works in the frame of the second box with axis-aligned clip lines, in double).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

Box = Sequence[float]


def corners(box: Box) -> list[tuple[float, float]]:
    """The 4 corners of (cx, cy, w, h, angle_deg_ccw) in float64, in the order
    (-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2) of the box frame."""
    cx, cy, w, h, a = (float(v) for v in box)
    t = math.radians(a)
    c, s = math.cos(t), math.sin(t)
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


def intersection_area(box1: Box, box2: Box, exact: bool = True) -> float:
    """Area of the intersection of two rotated boxes with positive sides."""
    conv = Fraction if exact else float
    p1 = [(conv(x), conv(y)) for x, y in corners(box1)]
    p2 = [(conv(x), conv(y)) for x, y in corners(box2)]
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
