"""Convolution layers the reference networks are built from.

TEMPORARY fallback: until the conv family (``visionops.nn.Conv2d`` /
``DepthwiseConv2d``) lands, plain torch layers with the same constructor and
state dict stand in, so that the models can be written and tested now. The conv
family's merge replaces this file with a plain re-export.
"""

from __future__ import annotations

import torch

try:
    from visionops.nn import Conv2d, DepthwiseConv2d  # type: ignore[attr-defined]
except ImportError:

    class Conv2d(torch.nn.Conv2d):  # type: ignore[no-redef]
        """Stand-in for ``visionops.nn.Conv2d`` (same signature as ``torch.nn.Conv2d``)."""

    class DepthwiseConv2d(torch.nn.Conv2d):  # type: ignore[no-redef]
        """Stand-in for ``visionops.nn.DepthwiseConv2d``: weight ``[C*m, 1, kh, kw]``,
        state dict of ``torch.nn.Conv2d(C, C*m, k, groups=C)``, optional fused activation."""

        def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1, bias: bool = True,
                     channel_multiplier: int = 1, activation: str | None = None) -> None:
            super().__init__(channels, channels * channel_multiplier, kernel_size, stride, padding, dilation,
                             groups=channels, bias=bias)
            if activation not in (None, "relu", "relu6"):
                raise ValueError(f"activation: expected None, 'relu' or 'relu6', got {activation!r}")
            self.activation = activation

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            out = super().forward(input)
            if self.activation == "relu":
                return torch.relu(out)
            if self.activation == "relu6":
                return torch.nn.functional.relu6(out)
            return out

__all__ = ["Conv2d", "DepthwiseConv2d"]
