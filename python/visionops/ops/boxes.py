"""Axis-aligned box IoU and non-maximum suppression: drop-ins for
``torchvision.ops.box_iou`` / ``nms`` / ``batched_nms``, plus ``nms_fixed``
(fixed-size output, no host synchronisation, CUDA-graph capturable).

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/boxes_cpu.cpp`` and
``cuda/boxes_cuda.cu``; the NMS algorithm, generic over the overlap function
(shared with the rotated NMS): ``cpp/include/visionops/nms.h`` and
``nms_ops.h``. This module holds the public functions and the fake and
autocast registrations, and box_iou's autograd. The NMS ops return indices and
are not differentiable.

Conventions (torchvision's): boxes ``(x1, y1, x2, y2)`` without "+1"; kept
indices are int64 sorted by decreasing score, ties in score keep the lower index
first; a box is suppressed when its IoU with a kept box is > ``iou_threshold``
(strict). A box with a non-finite coordinate has a NaN or infinite area, so its
IoU with any box is NaN or 0: it neither suppresses nor is suppressed (it is
kept, at its score's place). Zero-area boxes have IoU 0/0 = NaN with each other
and never suppress anything either. Scores order as ``torch.sort`` does (NaN
first).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._registry import check_tensor, register_float32_autocast

__all__ = ["box_iou", "nms", "batched_nms", "nms_fixed"]


def _threshold(value: float, op: str) -> float:
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: iou_threshold must be a float in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{op}: iou_threshold must lie in [0, 1], got {value}")
    return value


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, float16/bfloat16/float32/float64.
        boxes2: ``Tensor[M, 4]``, same dtype and device.

    Returns:
        ``Tensor[N, M]`` of the boxes' dtype, computed in float32 for 16-bit
        inputs (rounded once). Same formula as torchvision, so float32/float64
        results equal torchvision's bit for bit; two zero-area boxes give NaN
        (0 / 0), as in torchvision. Differentiable with respect to both box
        sets (deterministic backward, ``visionops::_box_iou_backward``), with
        torch's conventions where the IoU has a kink: equal coordinates in a
        max/min split the gradient in halves and boxes that just touch pass none,
        so gradients equal autograd through ``torchvision.ops.box_iou``.

    Example:
        >>> box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.], [0., 0., 2., 2.]]))
        tensor([[0.1429, 1.0000]])
    """
    check_tensor(boxes1, "boxes1", "box_iou")
    check_tensor(boxes2, "boxes2", "box_iou")
    return torch.ops.visionops.box_iou(boxes1, boxes2)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (torchvision semantics).

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]``, same dtype and device.
        iou_threshold: in ``[0, 1]``; a box is dropped when its IoU with a kept,
            higher-scoring box is ``> iou_threshold``.

    Returns:
        int64 ``Tensor[K]`` of kept indices, by decreasing score (ties: lower
        index first). On CUDA the whole suppression runs on the device; the only
        host synchronisation is reading ``K``.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        tensor([0, 2])
    """
    check_tensor(boxes, "boxes", "nms")
    check_tensor(scores, "scores", "nms")
    return torch.ops.visionops.nms(boxes, scores, _threshold(iou_threshold, "nms"))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per class: only boxes with equal ``idxs`` are compared.

    One kernel call that groups boxes by class internally: no coordinate offset
    trick (exact for negative or huge coordinates) and no per-class Python loop.

    Args:
        boxes, scores, iou_threshold: as :func:`nms`.
        idxs: integer ``Tensor[N]``, the class (or image) of each box.

    Returns:
        int64 ``Tensor[K]`` of kept indices by decreasing score (ties: lower index first).

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [1., 1., 10., 10.]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
        tensor([0, 1])
    """
    for name, value in (("boxes", boxes), ("scores", scores), ("idxs", idxs)):
        check_tensor(value, name, "batched_nms")
    return torch.ops.visionops.batched_nms(boxes, scores, idxs, _threshold(iou_threshold, "batched_nms"))


def nms_fixed(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_output_size: int, idxs: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """NMS (or batched NMS when ``idxs`` is given) with a fixed-size result.

    Returns:
        ``(keep, num_kept)``: ``keep`` is an int64 ``Tensor[max_output_size]``
        holding the first ``num_kept`` kept indices (by decreasing score, as
        :func:`nms`) followed by ``-1``; ``num_kept`` is a 0-d int64 tensor on
        the boxes' device, ``min(K, max_output_size)``. On CUDA nothing is read
        back to the host, so the call can be captured in a CUDA graph and
        compiled by ``torch.compile(fullgraph=True)`` with static shapes.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        >>> nms_fixed(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5, 4)
        (tensor([ 0,  2, -1, -1]), tensor(2))
    """
    check_tensor(boxes, "boxes", "nms_fixed")
    check_tensor(scores, "scores", "nms_fixed")
    if idxs is not None:
        check_tensor(idxs, "idxs", "nms_fixed")
    if isinstance(max_output_size, bool) or not isinstance(max_output_size, int):
        raise TypeError(f"nms_fixed: max_output_size must be an int, got {type(max_output_size).__name__}")
    if max_output_size < 0:
        raise ValueError(f"nms_fixed: max_output_size must be non-negative, got {max_output_size}")
    return torch.ops.visionops.nms_fixed(boxes, scores, idxs, _threshold(iou_threshold, "nms_fixed"), max_output_size)


# ---------------------------------------------------------------- fake kernels


def _check_fake_nms(op: str, boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], dim: int = 4) -> None:
    torch._check(
        boxes.dim() == 2 and boxes.size(1) == dim, lambda: f"{op}: boxes must be a tensor [N, {dim}], got {tuple(boxes.shape)}"
    )
    torch._check(
        scores.dim() == 1 and scores.size(0) == boxes.size(0),
        lambda: f"{op}: scores must be a 1-D tensor with one score per box",
    )
    if idxs is not None:
        torch._check(
            idxs.dim() == 1 and idxs.size(0) == boxes.size(0),
            lambda: f"{op}: idxs must be a 1-D tensor with one class index per box",
        )


def _dynamic_keep(boxes: Tensor) -> Tensor:
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("visionops::box_iou")
def _box_iou_fake(boxes1, boxes2):
    torch._check(boxes1.dim() == 2 and boxes1.size(1) == 4, lambda: "box_iou: boxes1 must be a tensor [N, 4]")
    torch._check(boxes2.dim() == 2 and boxes2.size(1) == 4, lambda: "box_iou: boxes2 must be a tensor [M, 4]")
    return boxes1.new_empty((boxes1.size(0), boxes2.size(0)))


@torch.library.register_fake("visionops::_box_iou_backward")
def _box_iou_backward_fake(grad, boxes1, boxes2):
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


@torch.library.register_fake("visionops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    _check_fake_nms("nms", boxes, scores, None)
    return _dynamic_keep(boxes)


@torch.library.register_fake("visionops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_fake_nms("batched_nms", boxes, scores, idxs)
    return _dynamic_keep(boxes)


@torch.library.register_fake("visionops::nms_fixed")
def _nms_fixed_fake(boxes, scores, idxs, iou_threshold, max_output_size):
    _check_fake_nms("nms_fixed", boxes, scores, idxs)
    return boxes.new_empty((max_output_size,), dtype=torch.int64), boxes.new_empty((), dtype=torch.int64)


# Autograd of box_iou: cpp/boxes_autograd.cpp.

# ---------------------------------------------------------------- autocast
# Boxes are never rounded to 16 bits by autocast: the ops run in float32 and
# box_iou's result is cast back to the input dtype (torchvision's rule for nms).

for _name in ("box_iou", "nms", "batched_nms", "nms_fixed"):
    register_float32_autocast(_name)
