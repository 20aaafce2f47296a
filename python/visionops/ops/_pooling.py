"""Fake kernels and autocast of the RoI pooling ops (their autograd is C++:
``cpp/roi_autograd.cpp``), shared by the
axis-aligned (``roi``) and rotated (``rotated``) families: both pairs have the
same schemas apart from the width of a RoI row (5 or 6 values)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import memory_format_of, register_float32_autocast


def register_pooling_ops(align: str, pool: str, roi_columns: int) -> None:
    """Registers the fake kernels and autocast rules for ``visionops::<align>`` (bilinear
    average, backward ``_<align>_backward``) and ``visionops::<pool>`` (max,
    returns ``(output, argmax)``, backward ``_<pool>_backward``)."""

    def check(op: str, input: Tensor, rois: Tensor) -> None:
        torch._check(input.dim() == 4, lambda: f"{op}: input must be a 4-D tensor [N, C, H, W], got {input.dim()}-D")
        torch._check(
            rois.dim() == 2 and rois.size(1) == roi_columns,
            lambda: f"{op}: rois must be a tensor [K, {roi_columns}], got {tuple(rois.shape)}",
        )
        torch._check(rois.dtype == input.dtype, lambda: f"{op}: rois must have the same dtype as input")

    def pooled_like(input: Tensor, rois: Tensor, pooled_height, pooled_width, dtype=None) -> Tensor:
        shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
        return torch.empty(
            shape, dtype=dtype or input.dtype, device=input.device, memory_format=memory_format_of(input)
        )

    def grad_input_like(grad: Tensor, layout: Tensor, batch_size, channels, height, width) -> Tensor:
        shape = (batch_size, channels, height, width)
        return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format_of(layout))

    @torch.library.register_fake(f"visionops::{align}")
    def _align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
        check(align, input, rois)
        return pooled_like(input, rois, pooled_height, pooled_width)

    @torch.library.register_fake(f"visionops::_{align}_backward")
    def _align_backward_fake(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio,
        aligned,
    ):
        return grad_input_like(grad, grad, batch_size, channels, height, width)

    @torch.library.register_fake(f"visionops::{pool}")
    def _pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
        check(pool, input, rois)
        output = pooled_like(input, rois, pooled_height, pooled_width)
        return output, pooled_like(input, rois, pooled_height, pooled_width, torch.int64)

    @torch.library.register_fake(f"visionops::_{pool}_backward")
    def _pool_backward_fake(
        grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
    ):
        return grad_input_like(grad, argmax, batch_size, channels, height, width)

    register_float32_autocast(align)
    register_float32_autocast(pool)
