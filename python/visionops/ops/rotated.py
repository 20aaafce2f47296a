"""Rotated boxes (RRPN, detectron2's rotated detection): box conversion, rotated
IoU, rotated RoIAlign and rotated RoI max pooling.

Boxes are ``(cx, cy, w, h, angle)`` with the angle in degrees, counter-clockwise
(detectron2 / torchvision); the local point ``(u, v)`` of a box (``u`` along
``w``, ``v`` along ``h``, origin at the centre) sits at
``x = cx + cos(a) u + sin(a) v``, ``y = cy - sin(a) u + cos(a) v`` (image
coordinates, y down). Rotated RoIs are ``Tensor[K, 6]``
``(batch_index, cx, cy, w, h, angle)``.

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/rotated_cpu.cpp`` and
``cuda/rotated_cuda.cu``; geometry shared by both (and by ``nms_rotated``):
``cpp/include/visionops/rotated.h``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from ._pooling import register_pooling_ops
from ._registry import check_tensor, pair, register_float32_autocast

__all__ = [
    "box_iou_rotated",
    "convert_rotated_boxes",
    "roi_align_rotated",
    "roi_pool_rotated",
    "convert_rotated_boxes_to_rois",
    "ROTATED_BOX_FORMATS",
]

RotatedBoxesLike = Union[Tensor, Sequence[Tensor]]

#: Formats understood by :func:`convert_rotated_boxes` (aliases map to these).
ROTATED_BOX_FORMATS = ("xywha", "xywhr", "xywhr_cw", "rrpn", "poly")
_ALIASES = {"detectron2": "xywha", "torchvision": "xywha", "mmcv": "xywhr_cw"}
_MODES = {"iou": 0, "iof": 1}


def _format(name: str, arg: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"convert_rotated_boxes: {arg} must be a string, got {type(name).__name__}")
    fmt = _ALIASES.get(name.lower(), name.lower())
    if fmt not in ROTATED_BOX_FORMATS:
        known = ", ".join(ROTATED_BOX_FORMATS + tuple(_ALIASES))
        raise ValueError(f"convert_rotated_boxes: {arg} must be one of {known}; got {name!r}")
    return fmt


def _poly_to_xywha(poly: Tensor) -> Tensor:
    p0, p1, p2, p3 = poly.unbind(-2)
    centre = (p0 + p1 + p2 + p3) / 4
    along_w = (p1 - p0 + p2 - p3) / 2  # = (w cos a, -w sin a)
    along_h = (p3 - p0 + p2 - p1) / 2  # = (h sin a, h cos a)
    w = torch.linalg.vector_norm(along_w, dim=-1)
    h = torch.linalg.vector_norm(along_h, dim=-1)
    angle = torch.rad2deg(torch.atan2(-along_w[..., 1], along_w[..., 0]))
    return torch.stack([centre[..., 0], centre[..., 1], w, h, angle], dim=-1)


def _xywha_to_poly(boxes: Tensor) -> Tensor:
    cx, cy, w, h, a = boxes.unbind(-1)
    t = torch.deg2rad(a)
    c, s = torch.cos(t), torch.sin(t)
    corners = []
    for su, sv in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
        u, v = su * w, sv * h
        corners.append(torch.stack([cx + c * u + s * v, cy - s * u + c * v], dim=-1))
    return torch.stack(corners, dim=-2)


def convert_rotated_boxes(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert rotated boxes between conventions.

    Formats (``in_fmt`` / ``out_fmt``):

    * ``"xywha"`` (alias ``"detectron2"``, ``"torchvision"``): ``[..., 5]``
      ``(cx, cy, w, h, angle)``, degrees, counter-clockwise. visionops' own.
    * ``"xywhr"``: the same with the angle in radians.
    * ``"xywhr_cw"`` (alias ``"mmcv"``): radians, clockwise (mmcv's
      ``box_iou_rotated(..., clockwise=True)``): ``r = -radians(angle)``.
    * ``"rrpn"``: radians, counter-clockwise, wrapped into the RRPN paper's
      ``[-pi/4, 3pi/4)``. A rectangle is unchanged by a half turn, so wrapping
      modulo ``pi`` describes the same box (w and h are not swapped).
    * ``"poly"``: ``[..., 4, 2]`` corners ``(x, y)`` in the order of the box
      frame's ``(-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2)``. From a
      polygon, the centre is the mean of the corners, ``w`` / ``h`` the mean
      lengths of the edges 0-1, 3-2 / 0-3, 1-2, and the angle that of edge 0-1
      (a rectangle in that order converts back exactly, to rounding; the angle
      comes back in ``(-180, 180]``).

    Computed with differentiable torch ops in the input's dtype and device
    (works under ``torch.compile``).

    Example:
        >>> b = torch.tensor([[10., 20., 4., 2., 90.]])
        >>> convert_rotated_boxes(b, "xywha", "mmcv")
        tensor([[10.0000, 20.0000,  4.0000,  2.0000, -1.5708]])
        >>> convert_rotated_boxes(b, "xywha", "poly").round()
        tensor([[[ 9., 22.],
                 [ 9., 18.],
                 [11., 18.],
                 [11., 22.]]])
    """
    check_tensor(boxes, "boxes", "convert_rotated_boxes")
    src, dst = _format(in_fmt, "in_fmt"), _format(out_fmt, "out_fmt")
    if not boxes.is_floating_point():
        raise TypeError(f"convert_rotated_boxes: boxes must be a floating-point tensor, got {boxes.dtype}")
    if src == "poly":
        if boxes.dim() < 2 or boxes.shape[-2:] != (4, 2):
            raise ValueError(f"convert_rotated_boxes: 'poly' boxes must have shape [..., 4, 2], got {tuple(boxes.shape)}")
    elif boxes.dim() < 1 or boxes.shape[-1] != 5:
        raise ValueError(
            f"convert_rotated_boxes: {src!r} boxes must have shape [..., 5] (cx, cy, w, h, angle), "
            f"got {tuple(boxes.shape)}"
        )
    if src == dst:
        return boxes.clone()

    if src == "poly":
        xywha = _poly_to_xywha(boxes)
    else:
        angle = boxes[..., 4]
        if src == "xywhr" or src == "rrpn":
            angle = torch.rad2deg(angle)
        elif src == "xywhr_cw":
            angle = -torch.rad2deg(angle)
        xywha = torch.cat([boxes[..., :4], angle.unsqueeze(-1)], dim=-1)

    if dst == "poly":
        return _xywha_to_poly(xywha)
    angle = xywha[..., 4]
    if dst == "xywhr":
        angle = torch.deg2rad(angle)
    elif dst == "xywhr_cw":
        angle = -torch.deg2rad(angle)
    elif dst == "rrpn":
        t = torch.remainder(torch.deg2rad(angle) + math.pi / 4, math.pi) - math.pi / 4
        angle = torch.where(t >= 3 * math.pi / 4, t - math.pi, t)  # remainder may round up to pi
    return torch.cat([xywha[..., :4], angle.unsqueeze(-1)], dim=-1)


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", aligned: bool = False) -> Tensor:
    """IoU (or IoF) of rotated boxes: the exact area of the intersection of two
    rotated rectangles (skew IoU of the RRPN paper) by convex polygon clipping.

    Args:
        boxes1: ``Tensor[N, 5]`` ``(cx, cy, w, h, angle_degrees_ccw)``, float16,
            bfloat16, float32 or float64.
        boxes2: ``Tensor[M, 5]``, same dtype and device.
        mode: ``"iou"`` (intersection over union) or ``"iof"`` (intersection over
            the area of ``boxes1``, mmcv's "iof").
        aligned: ``False``: all pairs, ``Tensor[N, M]``; ``True``: row i against
            row i, ``Tensor[N]`` (needs ``N == M``).

    Returns:
        Tensor of ``boxes1``'s dtype, every value in ``[0, 1]``. Computed in
        float64 whatever the input dtype: identical boxes give exactly 1, nearly
        identical boxes differ from the exact value by < 1e-4 (by ~1e-12 in
        practice), tiny (1e-3) and huge (1e6) boxes are exact to rounding.
        Documented edge cases (never NaN, never an error): a box with a side
        ``<= 0`` or any non-finite value has IoU 0 with everything.
        No gradient. No size limit on ``N x M`` (int64 indexing on both devices).

    Example:
        >>> a = torch.tensor([[0., 0., 2., 2., 0.]])
        >>> box_iou_rotated(a, torch.tensor([[1., 0., 2., 2., 0.], [0., 0., 2., 2., 90.]]))
        tensor([[0.3333, 1.0000]])
    """
    check_tensor(boxes1, "boxes1", "box_iou_rotated")
    check_tensor(boxes2, "boxes2", "box_iou_rotated")
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"box_iou_rotated: mode must be 'iou' or 'iof', got {mode!r}")
    return torch.ops.visionops.box_iou_rotated(boxes1, boxes2, _MODES[mode], bool(aligned))


def convert_rotated_boxes_to_rois(boxes: RotatedBoxesLike, op: str = "roi_align_rotated") -> Tensor:
    """``Tensor[K, 6]`` ``(batch_index, cx, cy, w, h, angle)`` from either that or
    a list of per-image ``Tensor[L_i, 5]`` ``(cx, cy, w, h, angle)``.

    >>> convert_rotated_boxes_to_rois([torch.tensor([[5., 5., 4., 2., 30.]]), torch.zeros(0, 5)])
    tensor([[ 0.,  5.,  5.,  4.,  2., 30.]])
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 6:
            raise ValueError(
                f"{op}: rois must be a Tensor[K, 6] (batch_index, cx, cy, w, h, angle) or a list of "
                f"Tensor[L, 5], got a tensor of shape {tuple(boxes.shape)}"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{op}: rois must be a Tensor[K, 6] or a list of Tensor[L, 5], got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError(f"{op}: rois is an empty list; pass one Tensor[L, 5] per image (L may be 0)")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor):
            raise TypeError(f"{op}: rois[{i}] must be a Tensor[L, 5], got {type(b).__name__}")
        if b.dim() != 2 or b.size(1) != 5:
            raise ValueError(f"{op}: rois[{i}] must be a Tensor[L, 5] (cx, cy, w, h, angle), got shape {tuple(b.shape)}")
    for i, b in enumerate(boxes[1:], 1):
        if b.device != boxes[0].device:
            raise RuntimeError(f"{op}: rois[{i}] is on {b.device} but rois[0] is on {boxes[0].device}; "
                               "all rois must be on one device")
    coords = torch.cat(list(boxes), dim=0)
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([index, coords], dim=1)


def roi_align_rotated(
    input: Tensor,
    rois: RotatedBoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Rotated RoIAlign with detectron2's ``ROIAlignRotated`` semantics.

    Bin ``(i, j)`` of a RoI averages ``grid_h x grid_w`` bilinear samples at the
    local points ``u = -w/2 + (j + (ix + .5) / grid_w) * w / out_w`` (same for
    ``v`` with ``h``), mapped to the feature map around the centre
    ``(cx, cy) * spatial_scale - offset`` by the box map of this module's
    docstring, with ``w, h`` scaled by ``spatial_scale``. ``grid`` is
    ``sampling_ratio`` or, when ``<= 0``, ``ceil(size / out_size)`` per RoI.
    Sample rules are RoIAlign's (zero beyond one cell outside the map).

    Args:
        input: ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or
            channels_last (kept in the output).
        rois: ``Tensor[K, 6]`` ``(batch_index, cx, cy, w, h, angle_degrees_ccw)``
            or a list of N ``Tensor[L_i, 5]``; same dtype and device as ``input``.
        output_size: ``int`` or ``(out_h, out_w)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: samples per bin and axis, ``<= 0`` for adaptive.
        aligned: ``True`` (detectron2, the default): ``offset = 0.5`` (pixel
            centres). ``False``: ``offset = 0`` and ``w, h`` at least 1, as
            ``roi_align(aligned=False)``. At angle 0 the result equals
            :func:`visionops.ops.roi_align` on ``(cx - w/2, cy - h/2, cx + w/2,
            cy + h/2)`` with the same ``aligned`` (to rounding; for
            ``aligned=False`` when ``w, h * spatial_scale >= 1``).

    Returns:
        ``Tensor[K, C, out_h, out_w]``. Scaled sizes above ``2**24`` cells are
        clamped to it (bounds the work for absurd boxes; no map is that large).
        RoIs with a negative size or a non-finite value pool to 0 (on CPU a batch index outside ``[0, N)``
        raises; on CUDA such RoIs pool to 0). Gradient flows to ``input``;
        backward is deterministic on CPU and under
        ``torch.use_deterministic_algorithms(True)`` on CUDA.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> roi_align_rotated(x, torch.tensor([[0., 2., 2., 4., 4., 90.]]), 2)
        tensor([[[[10.5000,  2.5000],
                  [12.5000,  4.5000]]]])
    """
    check_tensor(input, "input", "roi_align_rotated")
    r = convert_rotated_boxes_to_rois(rois, "roi_align_rotated")
    ph, pw = pair(output_size, "output_size", "roi_align_rotated")
    return torch.ops.visionops.roi_align_rotated(
        input, r, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned)
    )


def roi_pool_rotated(
    input: Tensor,
    rois: RotatedBoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Rotated RoI max pooling (RRPN, Ma et al. 2018, Algorithm 2).

    The RoI is scaled by ``spatial_scale`` (``w' = w * scale``, centre
    ``(cx, cy) * scale``, no half-pixel offset: cell ``(r, c)`` is at ``(x, y) =
    (c, r)``). Bin ``(i, j)`` is the sub-rectangle of size ``w'/out_w x
    h'/out_h`` whose local top-left corner is ``(-w'/2 + j w'/out_w, -h'/2 + i
    h'/out_h)``; it is walked along the rotated axes in unit steps
    (``max(1, ceil(w'/out_w))`` x ``max(1, ceil(h'/out_h))`` points), each point
    read at its nearest cell ``(floor(x + .5), floor(y + .5))``; points off the
    map are skipped. The output is the maximum (running max from ``-inf``, NaN
    propagates); a bin with no point on the map gives 0.

    Args and layout as :func:`roi_align_rotated`. Backward: each output
    gradient goes to the cell that held the maximum.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> roi_pool_rotated(x, torch.tensor([[0., 1.5, 1.5, 4., 4., 0.]]), 2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    check_tensor(input, "input", "roi_pool_rotated")
    r = convert_rotated_boxes_to_rois(rois, "roi_pool_rotated")
    ph, pw = pair(output_size, "output_size", "roi_pool_rotated")
    output, _ = torch.ops.visionops.roi_pool_rotated(input, r, float(spatial_scale), ph, pw)
    return output


# ---------------------------------------------------------------- fake kernels


@torch.library.register_fake("visionops::box_iou_rotated")
def _box_iou_rotated_fake(boxes1, boxes2, mode, aligned):
    torch._check(boxes1.dim() == 2 and boxes1.size(1) == 5, lambda: "box_iou_rotated: boxes1 must be [N, 5]")
    torch._check(boxes2.dim() == 2 and boxes2.size(1) == 5, lambda: "box_iou_rotated: boxes2 must be [M, 5]")
    torch._check(boxes1.dtype == boxes2.dtype, lambda: "box_iou_rotated: boxes2 must have the same dtype as boxes1")
    if aligned:
        torch._check(boxes1.size(0) == boxes2.size(0), lambda: "box_iou_rotated: aligned needs N == M")
        return boxes1.new_empty((boxes1.size(0),))
    return boxes1.new_empty((boxes1.size(0), boxes2.size(0)))


# fake kernels, autograd and autocast of the pooling ops: shared with the roi family
register_pooling_ops("roi_align_rotated", "roi_pool_rotated", roi_columns=6)


# ---------------------------------------------------------------- autocast
# RoI coordinates must not be rounded to 16 bits: the pooling ops run in float32
# under autocast (registered with the pooling ops above). box_iou_rotated runs
# natively in any dtype (float64 inside).


# ---------------------------------------------------------------- rotated NMS
# The generic NMS of the boxes family (cpp/include/visionops/nms.h) with the
# rotated IoU above; kernels in cpp/nms_rotated_cpu.cpp, cuda/nms_rotated_cuda.cu.

__all__ += ["nms_rotated", "batched_nms_rotated"]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of rotated boxes (RRPN's skew-NMS), exactly as :func:`visionops.ops.nms`
    with :func:`box_iou_rotated` as the overlap.

    Args:
        boxes: ``Tensor[N, 5]`` ``(cx, cy, w, h, angle)``, angle in degrees
            counter-clockwise, floating point (the IoU is computed in float64).
        scores: ``Tensor[N]``, same dtype and device.
        iou_threshold: in ``[0, 1]``; a box is dropped when its rotated IoU with
            a kept, higher-scoring box is ``> iou_threshold``.

    Returns:
        int64 ``Tensor[K]`` of kept indices by decreasing score (ties: lower
        index first). Boxes with a side <= 0 or a non-finite value have IoU 0
        with everything: they are kept and suppress nothing. On CUDA only the
        count ``K`` is read back to the host.

    Example:
        >>> boxes = torch.tensor([[5., 5., 10., 4., 0.], [5., 5., 10., 4., 10.], [5., 5., 10., 4., 90.]])
        >>> nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        tensor([0, 2])
    """
    from .boxes import _threshold

    check_tensor(boxes, "boxes", "nms_rotated")
    check_tensor(scores, "scores", "nms_rotated")
    return torch.ops.visionops.nms_rotated(boxes, scores, _threshold(iou_threshold, "nms_rotated"))


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Rotated NMS per class (only boxes with equal ``idxs`` are compared), in one
    kernel call; arguments and result as :func:`nms_rotated` and
    :func:`visionops.ops.batched_nms`.

    Example:
        >>> boxes = torch.tensor([[5., 5., 10., 4., 0.], [5., 5., 10., 4., 10.], [5., 5., 10., 4., 10.]])
        >>> batched_nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
        tensor([0, 1])
    """
    from .boxes import _threshold

    for name, value in (("boxes", boxes), ("scores", scores), ("idxs", idxs)):
        check_tensor(value, name, "batched_nms_rotated")
    return torch.ops.visionops.batched_nms_rotated(
        boxes, scores, idxs, _threshold(iou_threshold, "batched_nms_rotated")
    )


@torch.library.register_fake("visionops::nms_rotated")
def _nms_rotated_fake(boxes, scores, iou_threshold):
    from .boxes import _check_fake_nms, _dynamic_keep

    _check_fake_nms("nms_rotated", boxes, scores, None, dim=5)
    return _dynamic_keep(boxes)


@torch.library.register_fake("visionops::batched_nms_rotated")
def _batched_nms_rotated_fake(boxes, scores, idxs, iou_threshold):
    from .boxes import _check_fake_nms, _dynamic_keep

    _check_fake_nms("batched_nms_rotated", boxes, scores, idxs, dim=5)
    return _dynamic_keep(boxes)


register_float32_autocast("nms_rotated")
register_float32_autocast("batched_nms_rotated")
