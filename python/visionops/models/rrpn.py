"""RRPN: Rotation Region Proposal Network (Ma et al., "Arbitrary-Oriented Scene
Text Detection via Rotation Proposals", 2018) on visionops' rotated ops.

Boxes everywhere are visionops' ``(cx, cy, w, h, angle)``, angle in degrees,
counter-clockwise (the box map of :mod:`visionops.ops.rotated`). The paper's
formulas work in radians with angles in ``[-pi/4, 3pi/4)``; the conversion
happens inside :func:`encode_rotated` / :func:`decode_rotated` only.

Pieces (each usable on its own):

* :func:`rotated_base_anchors` / :func:`rotated_anchors`: ``sizes x ratios x angles``
  anchors per feature-map position (the paper: 3 x 3 x 6 = 54).
* :func:`encode_rotated` / :func:`decode_rotated`: the paper's regression targets
  with the angle taken modulo pi.
* :func:`label_anchors`: positives / negatives by skew IoU (:func:`box_iou_rotated`)
  and angle difference, :func:`sample_labels`, :func:`rpn_loss`.
* :func:`rotated_proposals`: top-k, decode, clip, :func:`nms_rotated`.
* :class:`RRPN`: small conv backbone (:class:`visionops.models._layers.Conv2d`),
  RPN head, proposal layer and a rotated RoIAlign head (:class:`RRoIHead`)
  trained jointly with the RPN on detached proposals.

Importing this module registers the ``rrpn`` training task (see :func:`rrpn_task`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionops.ops import box_iou_rotated, nms_rotated, roi_align_rotated

from ._layers import Conv2d

__all__ = [
    "PAPER_SIZES",
    "PAPER_RATIOS",
    "PAPER_ANGLES",
    "rotated_base_anchors",
    "rotated_anchors",
    "encode_rotated",
    "decode_rotated",
    "angle_difference",
    "label_anchors",
    "sample_labels",
    "rpn_loss",
    "rotated_proposals",
    "proposal_recall",
    "RRoIHead",
    "RRPN",
    "rrpn_task",
]

#: The paper's anchor scales 8, 16, 32 on Faster R-CNN's 16-pixel base anchor
#: (square root of the anchor area, in image pixels, for a stride-16 VGG16 map).
PAPER_SIZES = (128.0, 256.0, 512.0)
#: Aspect ratios ``w : h`` (the paper's 1:2, 1:5, 1:8 for text, long side along ``w``).
PAPER_RATIOS = (2.0, 5.0, 8.0)
#: The paper's six orientations -pi/6, 0, pi/6, pi/3, pi/2, 2pi/3, in degrees.
PAPER_ANGLES = (-30.0, 0.0, 30.0, 60.0, 90.0, 120.0)

# Regression clamp for log-size deltas (as torchvision's RPN): exp() never overflows.
_LOG_SCALE_CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------- anchors


def rotated_base_anchors(
    sizes: Sequence[float] = PAPER_SIZES,
    ratios: Sequence[float] = PAPER_RATIOS,
    angles: Sequence[float] = PAPER_ANGLES,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The anchors of one feature-map position, centred at ``(0, 0)``.

    Anchor ``(s, r, a)`` has area ``s**2``, ``w = s * sqrt(r)``, ``h = s / sqrt(r)``
    and angle ``a`` (degrees, counter-clockwise). Order: size-major, then ratio,
    then angle (index ``(i_s * len(ratios) + i_r) * len(angles) + i_a``).

    Returns:
        ``Tensor[len(sizes) * len(ratios) * len(angles), 5]`` ``(0, 0, w, h, angle)``.

    Example:
        >>> rotated_base_anchors().shape  # the paper's 3 x 3 x 6
        torch.Size([54, 5])
        >>> rotated_base_anchors([4.0], [4.0], [0.0, 90.0])
        tensor([[ 0.,  0.,  8.,  2.,  0.],
                [ 0.,  0.,  8.,  2., 90.]])
    """
    s = torch.tensor(list(sizes), dtype=torch.float64)
    r = torch.tensor(list(ratios), dtype=torch.float64)
    a = torch.tensor(list(angles), dtype=torch.float64)
    if s.numel() == 0 or r.numel() == 0 or a.numel() == 0:
        raise ValueError("rotated_base_anchors: sizes, ratios and angles must be non-empty")
    if (s <= 0).any() or (r <= 0).any():
        raise ValueError("rotated_base_anchors: sizes and ratios must be positive")
    w = (s[:, None] * r.sqrt()[None, :]).reshape(-1, 1).expand(-1, a.numel()).reshape(-1)
    h = (s[:, None] / r.sqrt()[None, :]).reshape(-1, 1).expand(-1, a.numel()).reshape(-1)
    ang = a.repeat(s.numel() * r.numel())
    zeros = torch.zeros_like(w)
    return torch.stack([zeros, zeros, w, h, ang], dim=1).to(dtype=dtype, device=device)


def rotated_anchors(base: Tensor, feature_size: tuple[int, int], stride: float, offset: float = 0.5) -> Tensor:
    """Tile ``base`` (``Tensor[A, 5]`` from :func:`rotated_base_anchors`) over a
    feature map of ``(Hf, Wf)``: position ``(i, j)`` is centred at
    ``((j + offset) * stride, (i + offset) * stride)`` in image pixels.

    Returns:
        ``Tensor[Hf * Wf * A, 5]`` ordered ``(i, j, anchor)``, i.e. matching
        ``logits.permute(0, 2, 3, 1).reshape(N, -1)`` of an ``[N, A, Hf, Wf]`` head.

    Example:
        >>> a = rotated_anchors(rotated_base_anchors([8.0], [2.0], [0.0, 90.0]), (2, 3), 16)
        >>> a.shape, a[2, :2].tolist(), a[-1, :2].tolist()
        (torch.Size([12, 5]), [24.0, 8.0], [40.0, 24.0])
    """
    hf, wf = feature_size
    ys = (torch.arange(hf, dtype=base.dtype, device=base.device) + offset) * stride
    xs = (torch.arange(wf, dtype=base.dtype, device=base.device) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)
    out = base[None].expand(centres.size(0), -1, -1).clone()
    out[..., :2] = out[..., :2] + centres
    return out.reshape(-1, 5)


# ---------------------------------------------------------------- encoding


def _wrap_rrpn(t: Tensor) -> Tensor:
    """Angle (radians) modulo pi into the paper's ``[-pi/4, 3pi/4)``."""
    w = torch.remainder(t + math.pi / 4, math.pi) - math.pi / 4
    return torch.where(w >= 3 * math.pi / 4, w - math.pi, w)  # remainder may round up to pi


def angle_difference(a: Tensor, b: Tensor) -> Tensor:
    """``|a - b|`` of two angles in degrees taken modulo 180 (a rectangle is
    unchanged by a half turn), in ``[0, 90]``.

    >>> angle_difference(torch.tensor([170.0, 10.0]), torch.tensor([-5.0, 100.0]))
    tensor([ 5., 90.])
    """
    d = torch.remainder(a - b, 180.0)
    return torch.minimum(d, 180.0 - d)


def encode_rotated(boxes: Tensor, anchors: Tensor) -> Tensor:
    """The RRPN regression targets of ``boxes`` relative to ``anchors`` (same shape ``[..., 5]``):

    ``vx = (x - xa) / wa``, ``vy = (y - ya) / ha``, ``vw = log(w / wa)``,
    ``vh = log(h / ha)``, ``vtheta = theta - theta_a`` in radians wrapped modulo pi
    into ``[-pi/4, 3pi/4)`` (the paper's range; angles in degrees on input).

    Note the paper normalises ``vx`` by ``wa`` and ``vy`` by ``ha`` in image axes,
    whatever the anchor's angle; visionops keeps that.

    Example:
        >>> a = torch.tensor([[10., 10., 8., 2., 0.]])
        >>> encode_rotated(torch.tensor([[12., 9., 8., 4., 170.]]), a)  # 170 deg = -10 deg mod 180
        tensor([[ 0.2500, -0.5000,  0.0000,  0.6931, -0.1745]])
    """
    vx = (boxes[..., 0] - anchors[..., 0]) / anchors[..., 2]
    vy = (boxes[..., 1] - anchors[..., 1]) / anchors[..., 3]
    vw = torch.log(boxes[..., 2] / anchors[..., 2])
    vh = torch.log(boxes[..., 3] / anchors[..., 3])
    vt = _wrap_rrpn(torch.deg2rad(boxes[..., 4] - anchors[..., 4]))
    return torch.stack([vx, vy, vw, vh, vt], dim=-1)


def decode_rotated(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_rotated`: boxes ``[..., 5]`` from deltas and anchors.

    ``theta = theta_a + vtheta`` is wrapped modulo pi into ``[-pi/4, 3pi/4)``, so
    the decoded angle (degrees) is in ``[-45, 135)``; ``vw, vh`` are clamped to
    ``log(1000/16)`` so ``exp`` cannot overflow. ``decode(encode(b, a), a)``
    equals ``b`` up to rounding, with the angle modulo 180.

    Example:
        >>> a = torch.tensor([[10., 10., 8., 2., 0.]])
        >>> decode_rotated(torch.tensor([[0.25, -0.5, 0.0, math.log(2), -math.pi / 18]]), a)
        tensor([[ 12.0000,   9.0000,   8.0000,   4.0000, -10.0000]])
    """
    x = anchors[..., 0] + deltas[..., 0] * anchors[..., 2]
    y = anchors[..., 1] + deltas[..., 1] * anchors[..., 3]
    w = anchors[..., 2] * torch.exp(deltas[..., 2].clamp(max=_LOG_SCALE_CLAMP))
    h = anchors[..., 3] * torch.exp(deltas[..., 3].clamp(max=_LOG_SCALE_CLAMP))
    t = torch.rad2deg(_wrap_rrpn(torch.deg2rad(anchors[..., 4]) + deltas[..., 4]))
    return torch.stack([x, y, w, h, t], dim=-1)


# ---------------------------------------------------------------- labelling and loss


def label_anchors(
    anchors: Tensor,
    gt: Tensor,
    pos_iou: float = 0.7,
    neg_iou: float = 0.3,
    max_angle: float = 15.0,
) -> tuple[Tensor, Tensor]:
    """Label anchors against the ground truth of one image (the paper's rules).

    * positive: skew IoU ``> pos_iou`` with a GT box and angle difference
      (modulo 180, see :func:`angle_difference`) ``< max_angle`` degrees (pi/12);
      also, for each GT box that no anchor matches that way, the anchor(s) with
      its highest IoU (if ``> 0``), whatever the angle (Faster R-CNN's rule, so
      that every GT box has a positive);
    * negative: not positive, and against every GT either IoU ``< neg_iou`` or
      (IoU ``> pos_iou`` and angle difference ``>= max_angle``);
    * ignored: the rest.

    Args:
        anchors: ``Tensor[A, 5]``; gt: ``Tensor[G, 5]`` (``G`` may be 0).

    Returns:
        ``(labels, matched)``: int64 ``Tensor[A]`` with 1 / 0 / -1 (positive /
        negative / ignored) and int64 ``Tensor[A]`` the index of the matched GT
        box (meaningful for positives: the best-IoU GT among those that make it
        positive).

    Example:
        >>> gt = torch.tensor([[50., 50., 40., 8., 0.]])
        >>> anchors = torch.tensor([[50., 50., 40., 8., 0.], [50., 50., 40., 8., 90.], [70., 50., 40., 8., 0.]])
        >>> label_anchors(anchors, gt)[0]  # IoU 1 / 1/9 / 1/3
        tensor([ 1,  0, -1])
    """
    A = anchors.size(0)
    labels = torch.full((A,), -1, dtype=torch.int64, device=anchors.device)
    matched = torch.zeros(A, dtype=torch.int64, device=anchors.device)
    if gt.numel() == 0:
        labels.fill_(0)
        return labels, matched
    iou = box_iou_rotated(anchors.float(), gt.float())  # [A, G]
    angle_ok = angle_difference(anchors[:, None, 4].float(), gt[None, :, 4].float()) < max_angle
    pos_pair = (iou > pos_iou) & angle_ok
    neg_pair = (iou < neg_iou) | ((iou > pos_iou) & ~angle_ok)
    labels[neg_pair.all(dim=1)] = 0
    # best GT among the pairs that make an anchor positive (else the best IoU overall)
    score = torch.where(pos_pair, iou + 2.0, iou)
    matched = score.argmax(dim=1)
    labels[pos_pair.any(dim=1)] = 1
    # a GT box without a positive pair gets its best-IoU anchor(s) (ties: all of them)
    unmatched = ~pos_pair.any(dim=0)  # [G]
    best = iou.max(dim=0).values
    is_best = (iou == best[None, :]) & (best[None, :] > 0) & unmatched[None, :]  # [A, G]
    best_any = is_best.any(dim=1)
    forced = best_any & ~pos_pair.any(dim=1)
    matched = torch.where(forced, torch.where(is_best, iou, -1.0).argmax(dim=1), matched)
    labels[best_any] = 1
    return labels, matched


def sample_labels(labels: Tensor, num: int = 256, positive_fraction: float = 0.5,
                  generator: torch.Generator | None = None) -> Tensor:
    """Subsample a ``Tensor[A]`` of 1/0/-1 labels to at most ``num`` non-ignored
    ones, at most ``positive_fraction`` of them positive (the rest set to -1).

    >>> l = sample_labels(torch.tensor([1, 1, 1, 0, 0, 0, 0, -1]), 4, 0.5, torch.Generator().manual_seed(0))
    >>> int((l == 1).sum()), int((l == 0).sum())
    (2, 2)
    """
    out = labels.clone()
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(pos.numel(), int(num * positive_fraction))
    n_neg = min(neg.numel(), num - n_pos)
    drop_pos = pos[torch.randperm(pos.numel(), generator=generator).to(pos.device)[n_pos:]]
    drop_neg = neg[torch.randperm(neg.numel(), generator=generator).to(neg.device)[n_neg:]]
    out[drop_pos] = -1
    out[drop_neg] = -1
    return out


def rpn_loss(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt: Sequence[Tensor],
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    beta: float = 1.0 / 9,
) -> tuple[Tensor, Tensor]:
    """RPN loss of a batch: binary cross-entropy over the sampled anchors (mean)
    and smooth L1 (``beta``) on the 5 deltas of the sampled positives, summed over
    the 5 outputs and averaged over the positives.

    Args:
        logits: ``[N, A_total]`` objectness logits; deltas: ``[N, A_total, 5]``;
            anchors: ``[A_total, 5]``; gt: N ``Tensor[G_i, 5]``.

    Returns:
        ``(classification_loss, regression_loss)`` scalars.
    """
    cls_terms, reg_terms, n_cls, n_pos = [], [], 0, 0
    for i, g in enumerate(gt):
        labels, matched = label_anchors(anchors, g)
        labels = sample_labels(labels, num_samples, positive_fraction)
        keep = labels >= 0
        cls_terms.append(F.binary_cross_entropy_with_logits(logits[i][keep], labels[keep].to(logits.dtype),
                                                            reduction="sum"))
        n_cls += int(keep.sum())
        pos = labels == 1
        if pos.any():
            target = encode_rotated(g[matched[pos]].to(deltas.dtype), anchors[pos])
            reg_terms.append(F.smooth_l1_loss(deltas[i][pos], target, beta=beta, reduction="sum"))
            n_pos += int(pos.sum())
    cls = torch.stack(cls_terms).sum() / max(n_cls, 1)
    reg = torch.stack(reg_terms).sum() / max(n_pos, 1) if reg_terms else deltas.sum() * 0
    return cls, reg


# ---------------------------------------------------------------- proposals


def rotated_proposals(
    anchors: Tensor,
    logits: Tensor,
    deltas: Tensor,
    image_size: tuple[int, int],
    pre_nms_top_n: int = 2000,
    post_nms_top_n: int = 300,
    nms_threshold: float = 0.7,
    min_size: float = 1.0,
) -> list[tuple[Tensor, Tensor]]:
    """The proposal layer: per image, keep the ``pre_nms_top_n`` highest-scoring
    anchors, decode their deltas, clip, drop small boxes, :func:`nms_rotated`
    at ``nms_threshold``, keep the ``post_nms_top_n`` best.

    Clipping of a rotated box (no rectangle clips to a rectangle exactly): the
    centre is clamped into ``[0, W] x [0, H]`` and each side to at most the
    image diagonal; boxes with a side ``< min_size`` are removed.

    Args:
        anchors: ``[A_total, 5]``; logits: ``[N, A_total]``; deltas: ``[N, A_total, 5]``;
            image_size: ``(H, W)``.

    Returns:
        N tuples ``(boxes Tensor[K_i, 5], scores Tensor[K_i])`` (sigmoid scores,
        decreasing), ``K_i <= post_nms_top_n``; no gradient.
    """
    H, W = image_size
    diag = math.hypot(H, W)
    out = []
    with torch.no_grad():
        for i in range(logits.size(0)):
            k = min(pre_nms_top_n, logits.size(1))
            scores, idx = logits[i].float().topk(k)
            boxes = decode_rotated(deltas[i][idx].float(), anchors[idx].float())
            boxes = torch.stack([
                boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H),
                boxes[:, 2].clamp(max=diag), boxes[:, 3].clamp(max=diag), boxes[:, 4],
            ], dim=1)
            valid = (boxes[:, 2] >= min_size) & (boxes[:, 3] >= min_size) & torch.isfinite(boxes).all(dim=1)
            boxes, scores = boxes[valid], scores[valid]
            keep = nms_rotated(boxes, scores, nms_threshold)[:post_nms_top_n]
            out.append((boxes[keep], torch.sigmoid(scores[keep])))
    return out


def proposal_recall(proposals: Sequence[Tensor], gt: Sequence[Tensor], iou_threshold: float = 0.5) -> tuple[int, int]:
    """``(found, total)``: how many GT boxes have a proposal with skew IoU
    ``>= iou_threshold`` in their image (``proposals``, ``gt``: per-image ``[K, 5]``, ``[G, 5]``).

    >>> gt = torch.tensor([[5., 5., 4., 2., 180.], [20., 5., 4., 2., 0.]])
    >>> proposal_recall([torch.tensor([[5., 5., 4., 2., 0.]])], [gt])
    (1, 2)
    """
    found = total = 0
    for p, g in zip(proposals, gt):
        total += g.size(0)
        if g.numel() and p.numel():
            found += int((box_iou_rotated(g.float(), p.float()).max(dim=1).values >= iou_threshold).sum())
    return found, total


# ---------------------------------------------------------------- networks


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class RRoIHead(nn.Module):
    """Second stage on rotated proposals: :func:`roi_align_rotated` to a
    ``pooled`` grid (``(h, w)``, wide for text), two FC layers, ``num_classes``
    scores (class 0 = background) and 5 refinement deltas (:func:`encode_rotated`
    relative to the proposal, class-agnostic).

    ``forward(features, rois)``: features ``[N, C, Hf, Wf]``, rois ``[K, 6]``
    ``(batch_index, cx, cy, w, h, angle)`` in image pixels; returns
    ``(scores [K, num_classes], deltas [K, 5])``.
    """

    def __init__(self, in_channels: int, spatial_scale: float, pooled: tuple[int, int] = (3, 7),
                 hidden: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        self.spatial_scale = spatial_scale
        self.pooled = pooled
        self.fc1 = nn.Linear(in_channels * pooled[0] * pooled[1], hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cls = nn.Linear(hidden, num_classes)
        self.box = nn.Linear(hidden, 5)
        nn.init.normal_(self.box.weight, std=0.001)
        nn.init.zeros_(self.box.bias)

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        x = roi_align_rotated(features, rois.to(features.dtype), self.pooled, self.spatial_scale, sampling_ratio=2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls(x), self.box(x)


class RRPN(nn.Module):
    """Rotation Region Proposal Network with a rotated RoIAlign head.

    Backbone: 3x3 conv + BatchNorm + ReLU blocks (``Conv2d`` of
    :mod:`visionops.models._layers`), three stride-2 stages to a stride-8 map of
    ``4 * width`` channels; RPN head: 3x3 conv, then 1x1 convs to ``A`` objectness
    logits and ``5 A`` deltas per position (``A = len(sizes) * len(ratios) *
    len(angles)``, 54 for the paper's :data:`PAPER_SIZES` x :data:`PAPER_RATIOS` x
    :data:`PAPER_ANGLES`); proposals by :func:`rotated_proposals`; second stage
    :class:`RRoIHead`. The defaults are sized for the synthetic bars of
    :func:`visionops.data.rotated_bars` (96 x 96 images, bars 20-56 px long): the
    paper's ratios and angles with two sizes (36 anchors per position).

    ``forward(images)`` (``[N, in_channels, H, W]``) returns ``(logits [N, A_total],
    deltas [N, A_total, 5], features)``; :meth:`loss` and :meth:`proposals` build on it.

    Example:
        >>> model = RRPN(width=4).eval()
        >>> logits, deltas, _ = model(torch.zeros(2, 1, 32, 32))
        >>> logits.shape, deltas.shape  # 4 x 4 positions x 36 anchors
        (torch.Size([2, 576]), torch.Size([2, 576, 5]))
        >>> [b.shape[1] for b, s in model.proposals(torch.zeros(2, 1, 32, 32), 10)]
        [5, 5]
    """

    stride = 8

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        sizes: Sequence[float] = (14.0, 24.0),
        ratios: Sequence[float] = PAPER_RATIOS,
        angles: Sequence[float] = PAPER_ANGLES,
        head: bool = True,
    ) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.backbone = nn.Sequential(
            _conv_bn_relu(in_channels, c1),
            _conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c2),
            _conv_bn_relu(c2, c3, 2), _conv_bn_relu(c3, c3),
            _conv_bn_relu(c3, c3, 2), _conv_bn_relu(c3, c3), _conv_bn_relu(c3, c3),
        )
        self.register_buffer("base_anchors", rotated_base_anchors(sizes, ratios, angles), persistent=False)
        A = self.base_anchors.size(0)
        self.rpn_conv = Conv2d(c3, c3, 3, 1, 1)
        self.rpn_cls = Conv2d(c3, A, 1)
        self.rpn_box = Conv2d(c3, 5 * A, 1)
        for m in (self.rpn_cls, self.rpn_box):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        self.head = RRoIHead(c3, 1.0 / self.stride) if head else None

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map position."""
        return self.base_anchors.size(0)

    def anchors(self, feature_size: tuple[int, int]) -> Tensor:
        """``[Hf * Wf * A, 5]`` anchors of a feature map (see :func:`rotated_anchors`)."""
        return rotated_anchors(self.base_anchors, feature_size, self.stride)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.backbone(images)
        x = F.relu(self.rpn_conv(features))
        n, _, hf, wf = x.shape
        logits = self.rpn_cls(x).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.rpn_box(x).view(n, self.num_anchors, 5, hf, wf).permute(0, 3, 4, 1, 2).reshape(n, -1, 5)
        return logits, deltas, features

    def proposals(self, images: Tensor, post_nms_top_n: int = 300, **kwargs) -> list[tuple[Tensor, Tensor]]:
        """:func:`rotated_proposals` of ``images`` (keyword arguments go there)."""
        logits, deltas, features = self(images)
        return rotated_proposals(self.anchors(features.shape[-2:]), logits, deltas, tuple(images.shape[-2:]),
                                 post_nms_top_n=post_nms_top_n, **kwargs)

    def detect(self, images: Tensor, proposals: Sequence[Tensor] | None = None, post_nms_top_n: int = 300,
               nms_threshold: float = 0.3) -> list[tuple[Tensor, Tensor]]:
        """Proposals (given, a list of per-image ``[K_i, 5]``, or from :meth:`proposals`)
        rescored and refined by the head, then :func:`nms_rotated` at ``nms_threshold``:
        per image ``(boxes [K, 5], text scores [K])`` by decreasing score."""
        if self.head is None:
            raise RuntimeError("RRPN.detect: the model was built with head=False")
        logits, deltas, features = self(images)
        if proposals is None:
            proposals = [b for b, _ in rotated_proposals(self.anchors(features.shape[-2:]), logits, deltas,
                                                         tuple(images.shape[-2:]), post_nms_top_n=post_nms_top_n)]
        out = []
        with torch.no_grad():
            for i, boxes in enumerate(proposals):
                boxes = boxes.to(features.dtype)
                rois = torch.cat([torch.full_like(boxes[:, :1], i), boxes], dim=1)
                cls, reg = self.head(features, rois)
                scores = cls.softmax(dim=1)[:, 1]
                refined = decode_rotated(reg.float(), boxes.float())
                keep = nms_rotated(refined, scores.float(), nms_threshold)
                out.append((refined[keep], scores[keep]))
        return out

    def loss(self, images: Tensor, gt: Tensor | Sequence[Tensor], head_samples: int = 64) -> dict[str, Tensor]:
        """Training losses for ``images`` and their GT boxes (a list of ``[G_i, 5]`` or
        ``[K, 6]`` rotated RoIs ``(batch_index, ...)``): ``rpn_cls``, ``rpn_reg`` and,
        with a head, ``head_cls`` / ``head_reg``. The head is trained jointly on
        proposals detached from the RPN (plus the GT boxes), ``head_samples`` RoIs
        per image, a quarter of them foreground (skew IoU >= 0.5 and angle
        difference < 15 degrees with a GT box)."""
        if isinstance(gt, Tensor):
            gt = [gt[gt[:, 0] == i, 1:] for i in range(images.size(0))]
        logits, deltas, features = self(images)
        anchors = self.anchors(features.shape[-2:])
        cls, reg = rpn_loss(logits, deltas, anchors, gt)
        losses = {"rpn_cls": cls, "rpn_reg": reg}
        if self.head is None:
            return losses
        # a short proposal list keeps the NMS cost of a training step small
        props = rotated_proposals(anchors, logits, deltas, tuple(images.shape[-2:]), pre_nms_top_n=300,
                                  post_nms_top_n=100)
        rois, labels, targets = [], [], []
        for i, ((boxes, _), g) in enumerate(zip(props, gt)):
            boxes = torch.cat([boxes, g.to(boxes.dtype)])
            lab, matched = label_anchors(boxes, g, pos_iou=0.5, neg_iou=0.5, max_angle=15.0)
            lab = torch.where(lab == 1, lab, torch.zeros_like(lab))  # the head has no ignored RoIs
            lab = sample_labels(lab, head_samples, 0.25)
            keep = lab >= 0
            rois.append(torch.cat([torch.full_like(boxes[keep, :1], i), boxes[keep]], dim=1))
            labels.append(lab[keep])
            targets.append(encode_rotated(g[matched[keep]].to(boxes.dtype), boxes[keep]) if g.numel()
                           else torch.zeros_like(boxes[keep]))
        rois, labels, targets = torch.cat(rois), torch.cat(labels), torch.cat(targets)
        scores, reg = self.head(features, rois)
        losses["head_cls"] = F.cross_entropy(scores, labels)
        fg = labels == 1
        losses["head_reg"] = (F.smooth_l1_loss(reg[fg], targets[fg].to(reg.dtype), beta=1.0 / 9, reduction="sum")
                              / max(int(fg.sum()), 1))
        return losses


# ---------------------------------------------------------------- training task

#: Synthetic task setup (sized so that 2 CPU cores train it in minutes).
TASK_IMAGE_SIZE = 96
TASK_BARS = dict(length=(16.0, 60.0), thickness=(4.0, 10.0), max_bars=4)
# Proposals per image at which recall is measured. 300 is the usual count for a ~600 x 1000 image; on a
# 96 x 96 image it is one proposal per 30 pixels and nearly any trained RPN finds every bar, so the metric
# uses 50 (recall at 300 and 10 is reported beside it).
TASK_PROPOSALS = 50
TASK_PRE_NMS = 1000  # of the 5184 anchors of a 96 x 96 image; bounds the NMS cost (quadratic) of an evaluation
TASK_EVAL_IMAGES = 100
TASK_EVAL_SEED = 20261126
_EVAL_SET: dict[str, tuple[Tensor, list[Tensor]]] = {}


def _build_task_model() -> RRPN:
    return RRPN(in_channels=1, width=16, sizes=(10.0, 18.0))


def _task_batch(generator: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
    from visionops.data.rotated import rotated_bars

    images, boxes = rotated_bars(batch_size, TASK_IMAGE_SIZE, generator=generator, **TASK_BARS)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
    return images, rois


def _task_loss(model: RRPN, batch: tuple[Tensor, Tensor]) -> Tensor:
    images, rois = batch
    return sum(model.loss(images, rois).values())


@torch.no_grad()
def _task_evaluate(model: RRPN, device: torch.device) -> dict[str, float]:
    from visionops.data.rotated import rotated_bars

    if "eval" not in _EVAL_SET:
        _EVAL_SET["eval"] = rotated_bars(TASK_EVAL_IMAGES, TASK_IMAGE_SIZE,
                                         generator=torch.Generator().manual_seed(TASK_EVAL_SEED), **TASK_BARS)
    images, gt = _EVAL_SET["eval"]
    props, dets = [], []
    for k in range(0, images.size(0), 50):
        chunk = images[k:k + 50].to(device)
        boxes = [b for b, _ in model.proposals(chunk, 300, pre_nms_top_n=TASK_PRE_NMS)]
        props += [b.cpu() for b in boxes]
        if model.head is not None:
            dets += [b.cpu() for b, _ in model.detect(chunk, [b[:TASK_PROPOSALS] for b in boxes])]
    out = {}
    for n in (TASK_PROPOSALS, 300, 10):
        found, total = proposal_recall([p[:n] for p in props], gt)
        out[f"recall@{n}"] = found / max(total, 1)
    found, total = proposal_recall([p[:TASK_PROPOSALS] for p in props], gt, iou_threshold=0.7)
    out[f"recall@{TASK_PROPOSALS}_iou0.7"] = found / max(total, 1)
    if dets:
        found, total = proposal_recall([d[:10] for d in dets], gt)
        out["det_recall@10"] = found / max(total, 1)
    return out


def rrpn_task():
    """The ``rrpn`` :class:`visionops.training.Task`: :class:`RRPN` (width 16, anchors
    of sizes 10 and 18 px x the paper's 3 ratios x 6 angles = 36 per position, stride
    8) trained from scratch with its jointly trained RoI head on 96 x 96 grey
    :func:`visionops.data.rotated_bars` images (1-4 bars 16-60 px long, 4-10 px
    thick, clutter and noise), batches of 16 drawn fresh every step.

    Metric ``recall@50``: the fraction of ground-truth bars of a fixed held-out
    set (100 images, seed ``TASK_EVAL_SEED``) matched by one of the image's 50
    best proposals at skew IoU >= 0.5 (proposal layer: top 1000 of the 5184
    anchors, decode, clip, NMS 0.7). 50, not the 300 usual on ~600 x 1000 images:
    at this image size 300 proposals cover nearly every bar-sized box. Also
    reported: ``recall@300``, ``recall@10``, ``recall@50_iou0.7`` (stricter
    match) and ``det_recall@10`` (the 10 best boxes after the head rescored and
    refined the 50 proposals, NMS 0.3; skew IoU >= 0.5).
    """
    from visionops.training import Task

    return Task(
        name="rrpn",
        build_model=_build_task_model,
        make_batch=_task_batch,
        loss_fn=_task_loss,
        evaluate=_task_evaluate,
        metric=f"recall@{TASK_PROPOSALS}",
        batch_size=16,
        lr=2e-3,
        weight_decay=1e-4,
        eval_every=100,
        description="rotated region proposals on synthetic text-like bars (recall at skew-IoU 0.5)",
    )


def _register() -> None:
    from visionops.training import register_task

    register_task(rrpn_task())


_register()
