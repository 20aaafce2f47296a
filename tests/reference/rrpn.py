"""Float64 oracle of the RRPN paper's box parametrisation (Ma et al. 2018), in
plain Python scalars, written from the formulas (not from visionops' code).

Boxes here are ``(x, y, w, h, angle_degrees_ccw)`` (visionops' convention); the
paper works in radians with theta in ``[-pi/4, 3pi/4)``:

    vx = (x - xa) / wa      vy = (y - ya) / ha
    vw = log(w / wa)        vh = log(h / ha)
    vtheta = theta - theta_a + k pi,  k chosen so vtheta is in [-pi/4, 3pi/4)
"""

from __future__ import annotations

import math
from typing import Sequence


def wrap_paper(t: float) -> float:
    """An angle in radians, shifted by whole multiples of pi into [-pi/4, 3pi/4)."""
    k = math.floor((t + math.pi / 4) / math.pi)
    t = t - k * math.pi
    # float rounding of the division can land one step off at the ends of the interval
    while t >= 3 * math.pi / 4:
        t -= math.pi
    while t < -math.pi / 4:
        t += math.pi
    return t


def encode(box: Sequence[float], anchor: Sequence[float]) -> list[float]:
    x, y, w, h, a = box
    xa, ya, wa, ha, aa = anchor
    return [(x - xa) / wa, (y - ya) / ha, math.log(w / wa), math.log(h / ha),
            wrap_paper(math.radians(a) - math.radians(aa))]


def decode(deltas: Sequence[float], anchor: Sequence[float]) -> list[float]:
    vx, vy, vw, vh, vt = deltas
    xa, ya, wa, ha, aa = anchor
    theta = wrap_paper(math.radians(aa) + vt)
    return [xa + vx * wa, ya + vy * ha, wa * math.exp(vw), ha * math.exp(vh), math.degrees(theta)]


def same_angle_mod_180(a: float, b: float) -> float:
    """Distance between two angles in degrees, modulo 180 (rectangle symmetry)."""
    d = math.fmod(abs(a - b), 180.0)
    return min(d, 180.0 - d)
