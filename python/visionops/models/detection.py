"""Detection on visionops ops: torchvision's R-CNN models with their ops swapped
(:func:`use_visionops`), the Fast R-CNN RoIPool head (:class:`FastRCNNHead`) and
the R-CNN box utilities (:func:`encode_boxes`, :func:`decode_boxes`,
:func:`generate_anchors`, :func:`grid_anchors`).

Boxes are ``(x1, y1, x2, y2)`` in continuous image coordinates, no "+1"
(torchvision's convention).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import nn as vnn
from ..ops import batched_nms, box_iou, nms, roi_align

__all__ = [
    "use_visionops",
    "use_torchvision",
    "encode_boxes",
    "decode_boxes",
    "generate_anchors",
    "grid_anchors",
    "match_proposals",
    "FastRCNNHead",
]

# ---------------------------------------------------------------- torchvision R-CNN models on visionops ops
#
# torchvision's RPN and RoI heads call their ops in two ways: through modules and
# attributes of the instance (``roi_heads.box_roi_pool``/``mask_roi_pool``, and
# ``box_similarity`` used by the RPN's anchor matching), which are simply replaced,
# and through module-level names (``box_ops.batched_nms`` in the proposal filter and
# the detection post-processing, ``box_ops.box_iou`` in the RoI heads' proposal
# matching, ``roi_align`` in the mask-target projection of ``maskrcnn_loss``).
# For the latter the model's ``rpn`` / ``roi_heads`` get a subclass of their class
# whose methods are the very same code objects, run against a private copy of
# their module's globals in which those names point to visionops. Nothing global
# is patched: other models (and torchvision itself) keep torchvision's ops, and
# :func:`use_torchvision` undoes the swap by restoring the class.

_SWAPPED_CLASSES: dict[type, type] = {}


def _box_ops_namespace() -> types.SimpleNamespace:
    from torchvision.ops import boxes as tv_boxes

    public = {k: v for k, v in vars(tv_boxes).items() if not k.startswith("__")}
    return types.SimpleNamespace(**{**public, "box_iou": box_iou, "nms": nms, "batched_nms": batched_nms})


def _copy_function(fn: types.FunctionType, namespace: dict) -> types.FunctionType:
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update(fn.__dict__)
    copy.__qualname__, copy.__doc__, copy.__annotations__ = fn.__qualname__, fn.__doc__, dict(fn.__annotations__)
    return copy


def _swapped_class(cls: type) -> type:
    """``cls`` (an RPN or RoIHeads class) with the torchvision methods that it does not
    override re-bound to its module's globals with the ops replaced by visionops'."""
    if cls in _SWAPPED_CLASSES:
        return _SWAPPED_CLASSES[cls]
    from torchvision.models.detection import roi_heads, rpn

    base = next(b for b in cls.__mro__ if b in (rpn.RegionProposalNetwork, roi_heads.RoIHeads))
    module = sys.modules[base.__module__]
    overrides = {"box_ops": _box_ops_namespace(), "roi_align": roi_align}
    if "box_ops" not in vars(module):
        raise RuntimeError(f"use_visionops: {module.__name__} no longer calls its ops through 'box_ops'; "
                           "this torchvision version is not supported")
    namespace = dict(vars(module))
    namespace.update({k: v for k, v in overrides.items() if k in namespace})
    # module-level helpers must see the swapped names too (maskrcnn_loss -> project_masks_on_boxes -> roi_align)
    for name, value in vars(module).items():
        if isinstance(value, types.FunctionType) and value.__globals__ is vars(module):
            namespace[name] = _copy_function(value, namespace)
    methods = {
        name: _copy_function(fn, namespace)
        for name, fn in vars(base).items()
        if isinstance(fn, types.FunctionType) and fn.__globals__ is vars(module) and getattr(cls, name) is fn
    }
    name = f"Visionops{cls.__name__}"
    swapped = type(name, (cls,), {**methods, "__module__": __name__, "__qualname__": name, "_visionops_base": cls})
    _SWAPPED_CLASSES[cls] = swapped
    return swapped


def _check_rcnn(model: nn.Module, fn: str):
    from torchvision.models.detection import roi_heads, rpn

    rpn_module, heads = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if not isinstance(rpn_module, rpn.RegionProposalNetwork) or not isinstance(heads, roi_heads.RoIHeads):
        raise TypeError(
            f"{fn}: expected a torchvision R-CNN model (Faster/Mask/Keypoint R-CNN, with .rpn and .roi_heads), "
            f"got {type(model).__name__}"
        )
    return rpn_module, heads


_POOLS = ("box_roi_pool", "mask_roi_pool", "keypoint_roi_pool")


def use_visionops(model: nn.Module) -> nn.Module:
    """Run a torchvision R-CNN model (``fasterrcnn_*``, ``maskrcnn_*``,
    ``keypointrcnn_*``) on visionops ops, in place; returns ``model``.

    Swapped: the RoI heads' ``MultiScaleRoIAlign`` poolers (box, mask, keypoint)
    for :class:`visionops.nn.MultiScaleRoIAlign`; the NMS of the RPN's proposal
    filter and of the detection post-processing for
    :func:`visionops.ops.batched_nms`; the box IoU of the RPN's anchor matching
    and the RoI heads' proposal matching for :func:`visionops.ops.box_iou`; and
    the ``roi_align`` that crops mask targets in training for
    :func:`visionops.ops.roi_align`. Weights, state dict keys and every other
    computation are untouched, so detections and losses equal the original
    model's (up to float rounding in RoIAlign, where torchvision's and visionops'
    kernels may sum the bilinear samples in a different order).

    Only this model changes: ``model.rpn`` and ``model.roi_heads`` become
    instances of subclasses (``VisionopsRegionProposalNetwork``,
    ``VisionopsRoIHeads``) that run torchvision's own methods with those names
    bound to visionops; no global state of torchvision is modified.
    :func:`use_torchvision` reverts. Save such a model through its
    ``state_dict`` (unchanged) rather than by pickling the module.

    Example (not run: building the model takes seconds)::

        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
        use_visionops(model).eval()
        detections = model([image])
    """
    rpn_module, heads = _check_rcnn(model, "use_visionops")
    for module in (rpn_module, heads):
        if not hasattr(type(module), "_visionops_base"):
            module.__class__ = _swapped_class(type(module))
        module.box_similarity = box_iou
    from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

    for name in _POOLS:
        pool = getattr(heads, name, None)
        if isinstance(pool, TVMultiScaleRoIAlign):
            setattr(heads, name, vnn.MultiScaleRoIAlign(
                pool.featmap_names, pool.output_size, pool.sampling_ratio,
                canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
            ))
    return model


def use_torchvision(model: nn.Module) -> nn.Module:
    """Undo :func:`use_visionops`: the model runs on torchvision's ops again (in place; returns ``model``)."""
    rpn_module, heads = _check_rcnn(model, "use_torchvision")
    from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign
    from torchvision.ops import boxes as tv_boxes

    for module in (rpn_module, heads):
        module.__class__ = getattr(type(module), "_visionops_base", type(module))
        module.box_similarity = tv_boxes.box_iou
    for name in _POOLS:
        pool = getattr(heads, name, None)
        if isinstance(pool, vnn.MultiScaleRoIAlign):
            setattr(heads, name, TVMultiScaleRoIAlign(
                pool.featmap_names, pool.output_size, pool.sampling_ratio,
                canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
            ))
    return model


def __getattr__(name: str):
    # lets pickle find the swapped classes of torchvision's own RPN / RoIHeads
    if name in ("VisionopsRegionProposalNetwork", "VisionopsRoIHeads"):
        from torchvision.models.detection import roi_heads, rpn

        base = rpn.RegionProposalNetwork if name == "VisionopsRegionProposalNetwork" else roi_heads.RoIHeads
        return _swapped_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- R-CNN box parametrisation and anchors

_DEFAULT_CLAMP = math.log(1000.0 / 16)  # torchvision's BoxCoder limit on dw, dh: no box grows more than 62.5x


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def _check_boxes(t: Tensor, name: str, fn: str) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() < 1 or t.size(-1) % 4:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{fn}: {name} must be a floating-point tensor [..., 4k], got {shape}")


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """R-CNN regression targets of ``boxes`` with respect to ``anchors`` (row by row):
    ``(wx (x - xa) / wa, wy (y - ya) / ha, ww log(w / wa), wh log(h / ha))`` on box
    centres and sizes. torchvision's ``BoxCoder(weights).encode_single(boxes, anchors)``.

    Args:
        boxes, anchors: ``Tensor[..., 4]`` of the same shape, ``(x1, y1, x2, y2)``,
            positive widths and heights.
        weights: ``(wx, wy, ww, wh)``; Faster R-CNN's RoI heads use ``(10, 10, 5, 5)``.

    Returns: ``Tensor[..., 4]`` of deltas, the boxes' dtype.

    >>> encode_boxes(torch.tensor([[2., 2., 6., 10.]]), torch.tensor([[0., 0., 4., 4.]]))
    tensor([[0.5000, 1.0000, 0.0000, 0.6931]])
    """
    _check_boxes(boxes, "boxes", "encode_boxes")
    _check_boxes(anchors, "anchors", "encode_boxes")
    if boxes.shape != anchors.shape or boxes.size(-1) != 4:
        raise ValueError(f"encode_boxes: boxes {tuple(boxes.shape)} and anchors {tuple(anchors.shape)} must both "
                         "be [..., 4] of the same shape")
    wx, wy, ww, wh = weights
    x, y, w, h = _centres(boxes)
    xa, ya, wa, ha = _centres(anchors)
    return torch.stack([wx * (x - xa) / wa, wy * (y - ya) / ha, ww * torch.log(w / wa), wh * torch.log(h / ha)], -1)


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = _DEFAULT_CLAMP,
) -> Tensor:
    """Inverse of :func:`encode_boxes`: apply deltas to anchors. ``dw`` and ``dh``
    (after dividing by their weights) are clamped to ``clamp`` so that ``exp``
    cannot overflow on an untrained network, as torchvision's ``BoxCoder``.

    Args:
        deltas: ``Tensor[N, 4 * k]`` (``k`` deltas per anchor, e.g. one per class)
            or ``Tensor[..., 4]`` of the anchors' shape.
        anchors: ``Tensor[N, 4]`` (or ``[..., 4]``).
        weights, clamp: as above.

    Returns: boxes ``(x1, y1, x2, y2)`` of the deltas' shape and dtype.

    >>> decode_boxes(torch.tensor([[0.5, 1., 0., math.log(2.)]]), torch.tensor([[0., 0., 4., 4.]]))
    tensor([[ 2.,  2.,  6., 10.]])
    """
    _check_boxes(deltas, "deltas", "decode_boxes")
    _check_boxes(anchors, "anchors", "decode_boxes")
    if anchors.size(-1) != 4 or deltas.shape[:-1] != anchors.shape[:-1]:
        raise ValueError(f"decode_boxes: deltas {tuple(deltas.shape)} must be [..., 4k] over anchors "
                         f"{tuple(anchors.shape)} [..., 4]")
    wx, wy, ww, wh = weights
    d = deltas.unflatten(-1, (-1, 4))
    xa, ya, wa, ha = (t.unsqueeze(-1).to(deltas.dtype) for t in _centres(anchors))
    x = d[..., 0] / wx * wa + xa
    y = d[..., 1] / wy * ha + ya
    half_w = 0.5 * torch.exp((d[..., 2] / ww).clamp(max=clamp)) * wa
    half_h = 0.5 * torch.exp((d[..., 3] / wh).clamp(max=clamp)) * ha
    return torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], -1).flatten(-2)


def generate_anchors(
    base_size: float,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (8.0, 16.0, 32.0),
    *,
    rounded: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Faster R-CNN's reference anchors, centred on the origin.

    For each aspect ratio ``r = h / w`` (outer loop) and each scale ``s`` (inner
    loop), an anchor of area ``(base_size * s)^2``: ``w = base_size * s / sqrt(r)``,
    ``h = base_size * s * sqrt(r)``, as ``(-w/2, -h/2, w/2, h/2)``, rounded to
    integers when ``rounded`` (torchvision's ``AnchorGenerator`` does; the
    defaults give Faster R-CNN's 9 anchors of 128, 256, 512 px on a stride-16 map).

    Returns: ``Tensor[len(ratios) * len(scales), 4]``.

    >>> generate_anchors(16, ratios=(1.0,), scales=(2.0, 4.0))
    tensor([[-16., -16.,  16.,  16.],
            [-32., -32.,  32.,  32.]])
    """
    if base_size <= 0 or not ratios or not scales or min(ratios) <= 0 or min(scales) <= 0:
        raise ValueError(f"generate_anchors: base_size, ratios and scales must be positive and non-empty, got "
                         f"{base_size}, {ratios}, {scales}")
    r = torch.as_tensor(ratios, dtype=torch.float64).sqrt()
    sizes = base_size * torch.as_tensor(scales, dtype=torch.float64)
    half_w = (sizes[None, :] / r[:, None]).flatten() / 2
    half_h = (sizes[None, :] * r[:, None]).flatten() / 2
    anchors = torch.stack([-half_w, -half_h, half_w, half_h], 1)
    if rounded:
        anchors = anchors.round()
    return anchors.to(dtype=dtype, device=device)


def grid_anchors(
    base_anchors: Tensor,
    feature_size: tuple[int, int],
    stride: int | tuple[int, int],
    offset: float = 0.0,
) -> Tensor:
    """Shift reference anchors to every cell of a feature map.

    Cell ``(i, j)`` is at image point ``((j + offset) * stride_x, (i + offset) * stride_y)``;
    ``offset=0`` is torchvision's ``AnchorGenerator`` (anchors centred on the top-left
    corner of each cell), ``0.5`` centres them in the cell.

    Args:
        base_anchors: ``Tensor[A, 4]`` from :func:`generate_anchors`.
        feature_size: ``(H, W)`` of the feature map.
        stride: image pixels per feature cell, ``int`` or ``(stride_y, stride_x)``.

    Returns: ``Tensor[H * W * A, 4]``, cells in row-major order, the ``A`` anchors of a cell together.

    >>> grid_anchors(torch.tensor([[-1., -1., 1., 1.]]), (1, 2), 16)
    tensor([[-1., -1.,  1.,  1.],
            [15., -1., 17.,  1.]])
    """
    _check_boxes(base_anchors, "base_anchors", "grid_anchors")
    sy, sx = (stride, stride) if isinstance(stride, (int, float)) else stride
    h, w = feature_size
    opts = dict(dtype=base_anchors.dtype, device=base_anchors.device)
    ys = (torch.arange(h, **opts) + offset) * sy
    xs = (torch.arange(w, **opts) + offset) * sx
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([x, y, x, y], -1).reshape(-1, 1, 4)
    return (shifts + base_anchors.reshape(1, -1, 4)).reshape(-1, 4)


def match_proposals(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    fg_iou: float = 0.5,
    bg_iou: tuple[float, float] = (0.1, 0.5),
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
) -> tuple[Tensor, Tensor]:
    """Fast R-CNN training targets of one image's proposals.

    Each proposal takes the ground-truth box it overlaps most
    (:func:`visionops.ops.box_iou`): its class when the IoU is ``>= fg_iou``,
    background (0) when the IoU lies in ``[bg_iou[0], bg_iou[1])``, and ``-1``
    (ignored by :meth:`FastRCNNHead.loss`) otherwise. Without ground truth every
    proposal is background.

    Args:
        proposals: ``Tensor[K, 4]``; gt_boxes: ``Tensor[G, 4]``; gt_labels: int64 ``Tensor[G]`` in ``1..C-1``.

    Returns:
        ``(labels, targets)``: int64 ``Tensor[K]`` and ``Tensor[K, 4]``, the
        :func:`encode_boxes` deltas (with ``weights``) of the matched box.

    >>> match_proposals(torch.tensor([[0., 0., 10., 10.], [6., 0., 16., 10.], [50., 50., 60., 60.]]),
    ...                 torch.tensor([[1., 0., 11., 10.]]), torch.tensor([3]))[0]  # IoU 0.82, 0.33, 0
    tensor([ 3,  0, -1])
    """
    k = proposals.size(0)
    if gt_boxes.numel() == 0:
        return torch.zeros(k, dtype=torch.int64, device=proposals.device), torch.zeros_like(proposals)
    iou, best = box_iou(gt_boxes, proposals).max(0)
    labels = gt_labels[best].clone()
    labels[iou < fg_iou] = 0
    labels[(iou < fg_iou) & ((iou < bg_iou[0]) | (iou >= bg_iou[1]))] = -1
    return labels, encode_boxes(gt_boxes[best], proposals, weights)


# ---------------------------------------------------------------- Fast R-CNN head


class FastRCNNHead(nn.Module):
    """The Fast R-CNN detection head (Girshick 2015): RoIPool to ``pool_size``
    bins (7x7) on a ``spatial_scale`` (1/16) feature map, two fully connected
    layers with ReLU (VGG16's fc6/fc7, here ``hidden`` wide), then a classifier
    over ``num_classes`` (index 0 = background) and per-class box deltas.

    forward(features, rois): ``features [N, C, H, W]`` (C = ``in_channels``),
    ``rois`` ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` in image pixels or
    a list of per-image ``Tensor[L_i, 4]``. Returns ``(class_logits [K, num_classes],
    box_deltas [K, 4 * num_classes])``; deltas are :func:`encode_boxes` deltas with
    ``box_weights`` relative to the RoI.

    >>> head = FastRCNNHead(8, num_classes=3, hidden=32)
    >>> logits, deltas = head(torch.randn(1, 8, 10, 10), torch.tensor([[0., 16., 16., 96., 64.]]))
    >>> logits.shape, deltas.shape
    (torch.Size([1, 3]), torch.Size([1, 12]))
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool_size: int = 7,
        spatial_scale: float = 1.0 / 16,
        hidden: int = 1024,
        dropout: float = 0.0,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"FastRCNNHead: num_classes counts the background and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.box_weights = tuple(float(w) for w in box_weights)
        self.roi_pool = vnn.RoIPool(pool_size, spatial_scale)
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        # the paper's initialisation of the two output layers
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: Tensor, rois) -> tuple[Tensor, Tensor]:
        x = self.roi_pool(features, rois).flatten(1)
        x = self.dropout(torch.relu(self.fc6(x)))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.cls_score(x), self.bbox_pred(x)

    def loss(self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Fast R-CNN's multi-task loss: cross-entropy over the RoIs with ``labels >= 0``
        and smooth L1 (beta 1) on the deltas of the true class of the foreground ones
        (``labels >= 1``), summed over the 4 coordinates and averaged over the same RoIs
        as the cross-entropy. ``labels``: int64 ``[K]``; ``targets``: ``[K, 4]`` (see
        :func:`match_proposals`). Returns ``{"loss_cls", "loss_box"}``."""
        used = labels >= 0
        count = used.sum().clamp(min=1)
        loss_cls = nn.functional.cross_entropy(class_logits[used], labels[used], reduction="sum") / count
        fg = torch.where(labels > 0)[0]
        pred = box_deltas.unflatten(1, (self.num_classes, 4))[fg, labels[fg]]
        loss_box = nn.functional.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / count
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def predict(self, class_logits: Tensor, box_deltas: Tensor, rois: Tensor,
                image_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Class probabilities ``[K, num_classes]`` and decoded per-class boxes
        ``[K, num_classes, 4]`` of ``rois`` (``[K, 5]`` or ``[K, 4]``), clipped to
        ``image_size = (height, width)`` when given."""
        boxes = decode_boxes(box_deltas, rois[:, -4:], self.box_weights).unflatten(1, (self.num_classes, 4))
        if image_size is not None:
            h, w = image_size
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1)
        return class_logits.softmax(-1), boxes
