"""nn.Module wrappers of the roi family: drop-ins for ``torchvision.ops.RoIAlign``,
``RoIPool`` and ``MultiScaleRoIAlign``."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.roi import BoxesLike, convert_boxes_to_rois, roi_align, roi_pool

__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign"]


class RoIAlign(nn.Module):
    """Module form of :func:`visionops.ops.roi_align`.

    >>> pool = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    >>> pool(torch.randn(1, 8, 20, 20), torch.tensor([[0., 16., 16., 200., 120.]])).shape
    torch.Size([1, 8, 7, 7])
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """Module form of :func:`visionops.ops.roi_pool`.

    >>> RoIPool((2, 3), 0.5)(torch.randn(2, 4, 9, 9), [torch.tensor([[0., 0., 8., 8.]]), torch.zeros(0, 4)]).shape
    torch.Size([1, 4, 2, 3])
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid (FPN, Lin et al. 2017), drop-in for
    ``torchvision.ops.MultiScaleRoIAlign`` as used by torchvision's Faster/Mask
    R-CNN heads.

    Each box goes to pyramid level ``floor(canonical_level + log2(sqrt(area) /
    canonical_scale))`` clamped to the levels present; the scale of each level is
    inferred from its size relative to the largest image, rounded to a power of 2.

    Args:
        featmap_names: keys of the feature dict to pool from (finest first).
        output_size: ``int`` or ``(h, w)``.
        sampling_ratio: as :func:`visionops.ops.roi_align`.
        canonical_scale, canonical_level: FPN's ``224`` and ``4``.

    forward(x, boxes, image_shapes): ``x`` an ordered dict of ``[N, C, H_l, W_l]``
    maps, ``boxes`` a list of per-image ``Tensor[L_i, 4]`` in image coordinates,
    ``image_shapes`` the ``(height, width)`` of each image. Returns
    ``Tensor[sum L_i, C, h, w]``.

    >>> pool = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
    >>> feats = {"p2": torch.randn(1, 4, 32, 32), "p3": torch.randn(1, 4, 16, 16)}
    >>> pool(feats, [torch.tensor([[0., 0., 30., 30.], [0., 0., 120., 120.]])], [(128, 128)]).shape
    torch.Size([2, 4, 7, 7])
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = list(featmap_names)
        self.output_size = tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    @staticmethod
    def _level_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
        scales = [2.0 ** round(math.log2(float(f) / float(s))) for f, s in zip(feature.shape[-2:], image_size)]
        if scales[0] != scales[1]:
            raise ValueError(
                f"MultiScaleRoIAlign: feature map of size {tuple(feature.shape[-2:])} has different scales along "
                f"height and width for images of size {image_size}"
            )
        return scales[0]

    def _levels(self, boxes: list[Tensor], scales: list[float]) -> Tensor:
        first, last = -math.log2(scales[0]), -math.log2(scales[-1])
        b = torch.cat(boxes)
        size = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        return (torch.clamp(level, min=first, max=last) - first).to(torch.int64)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"MultiScaleRoIAlign: none of {self.featmap_names} is a key of the feature dict")
        image_size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [self._level_scale(f, image_size) for f in features]
        rois = convert_boxes_to_rois(boxes, "MultiScaleRoIAlign")
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, scales[0], self.sampling_ratio)

        levels = self._levels(boxes, scales)
        first = features[0]
        result = first.new_zeros((rois.size(0), first.size(1)) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio)
            result.index_put_((index,), pooled.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
