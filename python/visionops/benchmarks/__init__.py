"""Benchmark cases: every case times visionops and its peer (torchvision, torch,
kornia) on the same inputs in the same run. ``python -m visionops bench`` and the
pytest-benchmark files in ``bench/`` both draw their cases from here.

A family module ``visionops.benchmarks.<family>`` defines
``cases(device: str, quick: bool) -> list[Case]``; register it in ``FAMILIES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

FAMILIES = ["roi", "boxes", "rotated", "ctc", "sampling", "conv"]


@dataclass
class Case:
    """One benchmark: ``setup()`` builds the inputs once and returns
    ``{"visionops": fn, "<peer name>": fn}``; each fn runs the op once."""

    family: str
    name: str
    device: str
    peer: str
    setup: Callable[[], dict[str, Callable[[], Any]]]
    # bytes a perfect kernel must move (read + write), for the roofline column
    bytes_moved: Optional[int] = None
    notes: str = field(default="")

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}/{self.device}"


def family_cases(family: str, device: str, quick: bool = False) -> list[Case]:
    module = importlib.import_module(f"{__name__}.{family}")
    return module.cases(device, quick)
