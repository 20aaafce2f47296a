"""Convolution modules: :class:`Conv2d` (drop-in for ``torch.nn.Conv2d``) and
:class:`DepthwiseConv2d` (MobileNet's depthwise layer with a fused activation).
Both keep ``torch.nn.Conv2d``'s parameters and state dict, so weights trained
with torch load unchanged."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ..ops.conv import conv2d, depthwise_conv2d

__all__ = ["Conv2d", "DepthwiseConv2d"]

_size_2_t = Union[int, tuple[int, int]]


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward runs :func:`visionops.ops.conv2d`.

    Same constructor arguments (``padding_mode`` is always ``"zeros"``), same
    parameters (``weight [out, in / groups, kH, kW]``, ``bias [out]``) and state dict.

    >>> conv = Conv2d(4, 8, 3, padding="same", groups=2)
    >>> conv(torch.randn(1, 4, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    >>> sorted(conv.state_dict()) == sorted(torch.nn.Conv2d(4, 8, 3, groups=2).state_dict())
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: Union[str, _size_2_t] = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            raise NotImplementedError(f"visionops Conv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class DepthwiseConv2d(torch.nn.Conv2d):
    """Depthwise convolution layer: one ``kernel_size`` filter per channel and
    output (``channel_multiplier`` outputs per input channel), then an optional
    fused ``"relu"`` / ``"relu6"``; runs :func:`visionops.ops.depthwise_conv2d`.

    Parameters: ``weight [channels * m, 1, kH, kW]``, ``bias [channels * m]``; the
    state dict is that of ``torch.nn.Conv2d(channels, channels * m, kernel_size,
    groups=channels)``.

    >>> dw = DepthwiseConv2d(8, 3, padding=1, channel_multiplier=2, activation="relu6")
    >>> dw.weight.shape, dw(torch.randn(2, 8, 6, 6)).shape
    (torch.Size([16, 1, 3, 3]), torch.Size([2, 16, 6, 6]))
    """

    def __init__(
        self,
        channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: Union[str, _size_2_t] = 0,
        dilation: _size_2_t = 1,
        bias: bool = True,
        channel_multiplier: int = 1,
        activation: Optional[str] = None,
    ) -> None:
        if activation not in (None, "relu", "relu6"):
            raise ValueError(f"DepthwiseConv2d: activation must be None, 'relu' or 'relu6', got {activation!r}")
        if isinstance(channel_multiplier, bool) or not isinstance(channel_multiplier, int) or channel_multiplier < 1:
            raise ValueError(f"DepthwiseConv2d: channel_multiplier must be a positive int, got {channel_multiplier!r}")
        super().__init__(
            channels, channels * channel_multiplier, kernel_size, stride, padding, dilation, groups=channels, bias=bias
        )
        self.channel_multiplier = channel_multiplier
        self.activation = activation

    def forward(self, input: Tensor) -> Tensor:
        return depthwise_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.channel_multiplier != 1:
            extra += f", channel_multiplier={self.channel_multiplier}"
        if self.activation is not None:
            extra += f", activation={self.activation!r}"
        return extra
