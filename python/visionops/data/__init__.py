"""Synthetic data generators: no downloads, everything drawn from a seeded generator."""

from .boxes import random_boxes, random_rois
from .rotated import rotated_bars
from .text import ALPHABET, Alphabet, TextBatch, captchas, random_strings, text_lines

__all__ = ["random_boxes", "random_rois", "rotated_bars", "ALPHABET", "Alphabet", "TextBatch", "captchas",
           "random_strings", "text_lines"]
