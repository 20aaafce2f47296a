"""nn.Module wrappers of the rotated family (detectron2's ``ROIAlignRotated``
and the RRPN paper's rotated RoI max pooling)."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.rotated import RotatedBoxesLike, roi_align_rotated, roi_pool_rotated

__all__ = ["RoIAlignRotated", "RoIPoolRotated"]


class RoIAlignRotated(nn.Module):
    """Module form of :func:`visionops.ops.roi_align_rotated` (detectron2's
    ``ROIAlignRotated(output_size, spatial_scale, sampling_ratio)`` is this with
    ``aligned=True``).

    >>> import torch
    >>> pool = RoIAlignRotated(7, spatial_scale=1 / 16, sampling_ratio=2)
    >>> pool(torch.randn(1, 8, 20, 20), torch.tensor([[0., 100., 80., 120., 40., 30.]])).shape
    torch.Size([1, 8, 7, 7])
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool = True):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: RotatedBoxesLike) -> Tensor:
        return roi_align_rotated(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPoolRotated(nn.Module):
    """Module form of :func:`visionops.ops.roi_pool_rotated` (RRPN's RRoI pooling).

    >>> import torch
    >>> RoIPoolRotated((2, 3), 0.5)(torch.randn(2, 4, 9, 9), [torch.tensor([[8., 8., 12., 6., 45.]]), torch.zeros(0, 5)]).shape
    torch.Size([1, 4, 2, 3])
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: RotatedBoxesLike) -> Tensor:
        return roi_pool_rotated(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
