"""Convolution: :func:`conv2d` (drop-in for ``torch.nn.functional.conv2d``) and
:func:`depthwise_conv2d` (MobileNet's depthwise convolution with an optional
fused bias + ReLU/ReLU6 epilogue).

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/conv_cpu.cpp`` (+ ``conv_cpu_kernels.inc``)
and ``cuda/conv_cuda.cu``; index math shared by both: ``cpp/include/visionops/conv.h``.
This module holds the public functions and the fake, autograd and autocast
registrations.

What runs underneath:

* ``depthwise_conv2d``: hand-written direct kernels. CPU: zero-padded,
  stride-phase-split copies of each input plane so that every tap is a
  contiguous vector read, outputs register-blocked along the row (NCHW), or
  vectorised over channels and blocked over 4 pixels (channels_last); AVX2+FMA
  chosen at run time. CUDA: one thread per output / input element (gather, no
  atomics) and a per-(channel, tap) block reduction for the weight gradient.
* ``conv2d``: our own im2col / col2im (CPU loops, CUDA kernels) and ``at::mm``
  (the CPU BLAS, cuBLAS on CUDA), one GEMM per image and group; 1x1 stride-1
  convolutions skip im2col. ``groups == in_channels > 1`` with weight
  ``[C * m, 1, kH, kW]`` is routed to ``depthwise_conv2d``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ._registry import check_tensor, memory_format_of, pair

__all__ = ["conv2d", "depthwise_conv2d"]

IntOrPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int], str]

_ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}


def _padding(padding: Padding, weight: Tensor, stride: list[int], dilation: list[int], op: str) -> list[int]:
    """(top, bottom, left, right) from F.conv2d's padding argument."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride={stride})")
        if weight.dim() != 4:
            return [0, 0, 0, 0]  # the kernel reports the bad weight
        out = []
        for k, d in zip(weight.shape[2:], dilation):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]  # the odd cell goes bottom/right, as in torch
        return out
    ph, pw = pair(padding, "padding", op, 0)
    return [ph, ph, pw, pw]


def _batched(input: Tensor, op: str) -> tuple[Tensor, bool]:
    check_tensor(input, "input", op)
    if input.dim() == 3:  # unbatched [C, H, W], as F.conv2d
        return input.unsqueeze(0), True
    return input, False


def depthwise_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    activation: Optional[str] = None,
) -> Tensor:
    """Depthwise convolution (one filter per channel, channel multiplier ``m``),
    optionally followed by a fused ``"relu"`` or ``"relu6"``.

    Equals ``act(F.conv2d(input, weight, bias, stride, padding, dilation, groups=C))``.

    Args:
        input: ``[N, C, H, W]`` (or unbatched ``[C, H, W]``), float16/bfloat16/
            float32/float64, NCHW or channels_last (kept in the output).
        weight: ``[C * m, 1, kH, kW]``: output channel ``c * m + k`` filters input
            channel ``c``. Same dtype and device as ``input``.
        bias: ``[C * m]`` or ``None``.
        stride, dilation: int or ``(h, w)``, positive.
        padding: int, ``(h, w)``, ``"valid"`` or ``"same"`` (stride 1 only).
        activation: ``None``, ``"relu"`` or ``"relu6"`` (MobileNet's depthwise ->
            BN -> ReLU6 after folding BN into weight and bias).

    Returns:
        ``[N, C * m, OH, OW]``. Differentiable w.r.t. input, weight and bias
        (the backward masks by the activation). Accumulation is in float32 for
        16-bit inputs; backward is deterministic on both devices.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> depthwise_conv2d(x, torch.ones(1, 1, 2, 2), torch.tensor([-20.]), stride=2, activation="relu")
        tensor([[[[ 0.,  0.],
                  [22., 30.]]]])
    """
    op = "depthwise_conv2d"
    input, unbatched = _batched(input, op)
    check_tensor(weight, "weight", op)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None, 'relu' or 'relu6', got {activation!r}")
    stride_ = list(pair(stride, "stride", op))
    dilation_ = list(pair(dilation, "dilation", op))
    pad = _padding(padding, weight, stride_, dilation_, op)
    out = torch.ops.visionops.depthwise_conv2d(input, weight, bias, stride_, pad, dilation_, _ACTIVATIONS[activation])
    return out.squeeze(0) if unbatched else out


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution with ``torch.nn.functional.conv2d`` semantics.

    Args:
        input: ``[N, C, H, W]`` (or unbatched ``[C, H, W]``), float16/bfloat16/
            float32/float64, NCHW or channels_last (kept in the output).
        weight: ``[OC, C / groups, kH, kW]``, same dtype and device.
        bias: ``[OC]`` or ``None``.
        stride, dilation: int or ``(h, w)``, positive.
        padding: int, ``(h, w)``, ``"valid"`` or ``"same"`` (stride 1; an odd total
            padding puts the extra cell at the bottom/right, as torch does).
        groups: divides both C and OC.

    Returns:
        ``[N, OC, OH, OW]``; differentiable w.r.t. input, weight and bias.

    Implementation: ``groups == C > 1`` with ``weight.size(1) == 1`` runs
    :func:`depthwise_conv2d`; everything else is our im2col (CPU loops / CUDA
    kernel) + ``at::mm`` (CPU BLAS / cuBLAS) per image and group, backward by
    ``at::mm`` + col2im (input) and ``at::mm`` (weight), bias by a sum.

    Example:
        >>> x = torch.arange(9.).view(1, 1, 3, 3)
        >>> conv2d(x, torch.ones(2, 1, 2, 2), torch.tensor([0., 100.]))
        tensor([[[[  8.,  12.],
                  [ 20.,  24.]],
        <BLANKLINE>
                 [[108., 112.],
                  [120., 124.]]]])
    """
    op = "conv2d"
    input, unbatched = _batched(input, op)
    check_tensor(weight, "weight", op)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    stride_ = list(pair(stride, "stride", op))
    dilation_ = list(pair(dilation, "dilation", op))
    pad = _padding(padding, weight, stride_, dilation_, op)
    if input.dim() == 4 and weight.dim() == 4 and groups > 1 and groups == input.size(1) and weight.size(1) == 1:
        out = torch.ops.visionops.depthwise_conv2d(input, weight, bias, stride_, pad, dilation_, 0)
    else:
        out = torch.ops.visionops.conv2d(input, weight, bias, stride_, pad, dilation_, groups)
    return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------- fake kernels


def _output_shape(input: Tensor, weight: Tensor, stride, padding, dilation) -> tuple:
    torch._check(input.dim() == 4, lambda: f"input must be a 4-D tensor [N, C, H, W], got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"weight must be a 4-D tensor, got {weight.dim()}-D")
    sizes = []
    for size, k, s, p0, p1, d in zip(
        input.shape[2:], weight.shape[2:], stride, padding[0::2], padding[1::2], dilation
    ):
        torch._check(
            size + p0 + p1 >= d * (k - 1) + 1,
            lambda: "weight: the kernel (with dilation) is larger than the padded input",
        )
        sizes.append((size + p0 + p1 - d * (k - 1) - 1) // s + 1)
    return (input.size(0), weight.size(0), *sizes)


def _output_like(input, weight, stride, padding, dilation):
    shape = _output_shape(input, weight, stride, padding, dilation)
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=memory_format_of(input))


@torch.library.register_fake("visionops::depthwise_conv2d")
def _depthwise_fake(input, weight, bias, stride, padding, dilation, activation):
    return _output_like(input, weight, stride, padding, dilation)


@torch.library.register_fake("visionops::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return _output_like(input, weight, stride, padding, dilation)


def _grads_like(grad, input, weight, output_mask):
    gi = torch.empty_like(input, memory_format=memory_format_of(input)) if output_mask[0] else input.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else weight.new_empty(0)
    gb = weight.new_empty(weight.size(0)) if output_mask[2] else weight.new_empty(0)
    return gi, gw, gb


@torch.library.register_fake("visionops::_depthwise_conv2d_backward")
def _depthwise_backward_fake(grad, input, weight, output, stride, padding, dilation, activation, output_mask):
    return _grads_like(grad, input, weight, output_mask)


@torch.library.register_fake("visionops::_conv2d_backward")
def _conv2d_backward_fake(grad, input, weight, stride, padding, dilation, groups, output_mask):
    return _grads_like(grad, input, weight, output_mask)


# Autograd: cpp/conv_autograd.cpp.

# ---------------------------------------------------------------- autocast

# Convolutions are on torch's autocast "lower precision" list: under autocast,
# F.conv2d runs in the autocast dtype. Ours do the same (accumulating in float32).
_autocast_lib = torch.library.Library("visionops", "IMPL")


def _register_lower_precision_autocast(name: str) -> None:
    op = getattr(torch.ops.visionops, name).default
    for key, device_type in (("AutocastCPU", "cpu"), ("AutocastCUDA", "cuda")):
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args: Any, _keyset: Any = keyset, _device: str = device_type) -> Any:
            dtype = torch.get_autocast_dtype(_device)
            # torch's autocast leaves float64 tensors alone (is_eligible excludes kDouble)
            cast = [
                a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64 else a
                for a in args
            ]
            with torch._C._ExcludeDispatchKeyGuard(_keyset):
                return op(*cast)

        _autocast_lib.impl(name, kernel, key)


_register_lower_precision_autocast("depthwise_conv2d")
_register_lower_precision_autocast("conv2d")
