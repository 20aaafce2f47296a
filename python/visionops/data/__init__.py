"""Synthetic data generators: no downloads, everything drawn from a seeded generator."""

from .boxes import random_boxes, random_rois
from .rotated import rotated_bars

__all__ = ["random_boxes", "random_rois", "rotated_bars"]
