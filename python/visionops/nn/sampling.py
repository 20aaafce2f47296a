"""nn.Module wrappers of the sampling family: the samplers of spatial
transformer networks (affine, STN) and of RARE (thin-plate spline)."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.sampling import affine_grid_sample, rare_fiducials, tps_fit, tps_grid_sample

__all__ = ["AffineGridSampler", "TPSGridSampler"]


class AffineGridSampler(nn.Module):
    """STN sampler: warps ``input [N, C, H, W]`` by ``theta [N, 2, 3]`` into
    ``[N, C, *output_size]`` (:func:`visionops.ops.affine_grid_sample`).

    >>> import torch
    >>> sampler = AffineGridSampler((8, 16))
    >>> sampler(torch.randn(2, 3, 32, 32), torch.eye(2, 3).expand(2, 2, 3)).shape
    torch.Size([2, 3, 8, 16])
    """

    def __init__(self, output_size: int | tuple[int, int], mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False):
        super().__init__()
        self.output_size = output_size
        self.mode = mode
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    def forward(self, input: Tensor, theta: Tensor) -> Tensor:
        return affine_grid_sample(input, theta, self.output_size, self.mode, self.padding_mode, self.align_corners)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, mode={self.mode!r}, padding_mode={self.padding_mode!r}"


class TPSGridSampler(nn.Module):
    """RARE's rectifier: given the ``K`` source fiducials ``[B, K, 2]`` a
    localisation network predicts in the input image (normalised coordinates),
    fits the TPS that maps the base fiducials of the output (``K / 2`` evenly on
    the top edge, ``K / 2`` on the bottom, :func:`visionops.ops.rare_fiducials`)
    onto them and samples ``input`` into ``[B, C, *output_size]``.

    >>> import torch
    >>> rectify = TPSGridSampler((32, 100), num_fiducial=20)
    >>> out = rectify(torch.randn(2, 1, 64, 200), rectify.target_points.expand(2, 20, 2))
    >>> out.shape
    torch.Size([2, 1, 32, 100])
    """

    target_points: Tensor

    def __init__(
        self,
        output_size: int | tuple[int, int] = (32, 100),
        num_fiducial: int = 20,
        mode: str = "bilinear",
        padding_mode: str = "border",
        align_corners: bool = False,
        regularization: float = 0.0,
    ):
        super().__init__()
        self.output_size = output_size
        self.num_fiducial = num_fiducial
        self.mode = mode
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.regularization = regularization
        self.register_buffer("target_points", rare_fiducials(num_fiducial), persistent=False)

    def forward(self, input: Tensor, source_points: Tensor) -> Tensor:
        target = self.target_points.to(source_points.dtype)
        kernel_weights, affine_weights = tps_fit(source_points, target, self.regularization)
        b = input.shape[0]
        kernel_weights = kernel_weights.expand(b, -1, -1)
        affine_weights = affine_weights.expand(b, -1, -1)
        return tps_grid_sample(
            input,
            kernel_weights.to(input.dtype),
            affine_weights.to(input.dtype),
            target.to(input.dtype).expand(b, -1, -1),
            self.output_size,
            self.mode,
            self.padding_mode,
            self.align_corners,
        )

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, num_fiducial={self.num_fiducial}, padding_mode={self.padding_mode!r}"
