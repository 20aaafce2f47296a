"""RoIAlign (Mask R-CNN) and RoIPool (Fast R-CNN): drop-ins for
``torchvision.ops.roi_align`` / ``roi_pool``.

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/roi_cpu.cpp`` and ``cuda/roi_cuda.cu``;
geometry shared by both: ``cpp/include/visionops/roi.h``. This module holds the
public functions and the fake, autograd and autocast registrations.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from ._pooling import register_pooling_ops
from ._registry import check_tensor, pair

__all__ = ["roi_align", "roi_pool", "convert_boxes_to_rois"]

BoxesLike = Union[Tensor, Sequence[Tensor]]


def convert_boxes_to_rois(boxes: BoxesLike, op: str = "roi_align") -> Tensor:
    """``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` from either that or a
    list of per-image ``Tensor[L_i, 4]`` ``(x1, y1, x2, y2)``.

    >>> convert_boxes_to_rois([torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[1., 1., 2., 2.]])])
    tensor([[0., 0., 0., 4., 4.],
            [1., 1., 1., 2., 2.]])
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(
                f"{op}: boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of "
                f"Tensor[L, 4], got a tensor of shape {tuple(boxes.shape)}"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError(f"{op}: boxes is an empty list; pass one Tensor[L, 4] per image (L may be 0)")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor):
            raise TypeError(f"{op}: boxes[{i}] must be a Tensor[L, 4], got {type(b).__name__}")
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError(f"{op}: boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got shape {tuple(b.shape)}")
    for i, b in enumerate(boxes[1:], 1):
        if b.device != boxes[0].device:
            raise RuntimeError(f"{op}: boxes[{i}] is on {b.device} but boxes[0] is on {boxes[0].device}; "
                               "all boxes must be on one device")
    coords = torch.cat(list(boxes), dim=0)
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([index, coords], dim=1)


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (He et al., Mask R-CNN): average of bilinear samples on a regular
    grid in each output bin, no rounding of the box.

    Args:
        input: ``[N, C, H, W]`` feature map, float16/bfloat16/float32/float64,
            NCHW or channels_last (kept in the output).
        boxes: ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` or a list of N
            ``Tensor[L_i, 4]``, in input-image coordinates, same dtype and device
            as ``input``.
        output_size: ``int`` or ``(height, width)`` of each pooled output.
        spatial_scale: feature-map size / image size (1/16 for a stride-16 map).
        sampling_ratio: samples per bin and axis; ``<= 0`` picks
            ``ceil(box_size / output_size)`` per RoI (adaptive).
        aligned: shift boxes by -0.5 cell (pixel centres) as Detectron2 does.

    Returns:
        ``Tensor[K, C, output_h, output_w]`` of ``input``'s dtype. Gradient flows
        to ``input`` (not to ``boxes``); backward is deterministic on CPU and under
        ``torch.use_deterministic_algorithms(True)`` on CUDA.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> roi_align(x, torch.tensor([[0., 0., 0., 4., 4.]]), 2, aligned=True)
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
    """
    check_tensor(input, "input", "roi_align")
    rois = convert_boxes_to_rois(boxes, "roi_align")
    ph, pw = pair(output_size, "output_size", "roi_align")
    return torch.ops.visionops.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned))


def roi_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Girshick, Fast R-CNN): the box is rounded to feature cells and
    each output bin is the max over its cells (torchvision's ``+1`` convention).

    Args and layout as :func:`roi_align`. Empty bins give 0. The backward routes
    each output gradient to the cell that held the maximum (argmax saved in the
    forward). NaN in a bin propagates to its output.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> roi_pool(x, torch.tensor([[0., 0., 0., 3., 3.]]), 2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    check_tensor(input, "input", "roi_pool")
    rois = convert_boxes_to_rois(boxes, "roi_pool")
    ph, pw = pair(output_size, "output_size", "roi_pool")
    output, _ = torch.ops.visionops.roi_pool(input, rois, float(spatial_scale), ph, pw)
    return output


# fake kernels, autograd and autocast: shared with the rotated family
register_pooling_ops("roi_align", "roi_pool", roi_columns=5)
