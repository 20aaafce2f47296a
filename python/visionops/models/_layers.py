"""Convolution layers the reference networks are built from: the conv family's
modules (``torch.nn.Conv2d``-compatible state dicts)."""

from __future__ import annotations

from visionops.nn import Conv2d, DepthwiseConv2d

__all__ = ["Conv2d", "DepthwiseConv2d"]
