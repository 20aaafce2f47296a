"""Grid sampling: bilinear / nearest ``grid_sample`` (drop-in for
``torch.nn.functional.grid_sample`` on 4-D input), the affine grid of spatial
transformer networks, and thin-plate-spline warps (RARE), with fused
``affine_grid_sample`` / ``tps_grid_sample`` that compute each sampling
coordinate in the kernel instead of reading a materialised grid.

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/sampling_cpu.cpp`` and
``cuda/sampling_cuda.cu``; per-point math shared by both:
``cpp/include/visionops/sampling.h``. This module holds the public functions
and the fake, autograd and autocast registrations. ``affine_grid`` and
``tps_fit`` are plain torch code (a matmul and a small batched solve).

Conventions: coordinates are normalised to [-1, 1] over the input (x = -1 is
the left edge, y = -1 the top), ``align_corners`` as in ``F.grid_sample``. A
TPS maps each output-image (target-plane) point to the input-image
(source-plane) point it samples:
``p_s = a_0 + a_1 x_t + a_2 y_t + sum_k w_k U(|p_t - c_k|)``, ``U(r) = r^2 log r^2``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._registry import check_tensor, memory_format_of, pair, register_float32_autocast

__all__ = [
    "grid_sample",
    "affine_grid",
    "affine_grid_sample",
    "tps_fit",
    "tps_grid",
    "tps_grid_sample",
    "rare_fiducials",
]

_MODES = {"bilinear": 0, "nearest": 1}
_PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}


def _mode(mode: str, op: str) -> int:
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be one of {sorted(_MODES)}, got {mode!r}")
    return _MODES[mode]


def _padding(padding_mode: str, op: str) -> int:
    if padding_mode not in _PADDINGS:
        raise ValueError(f"{op}: padding_mode must be one of {sorted(_PADDINGS)}, got {padding_mode!r}")
    return _PADDINGS[padding_mode]


def grid_sample(
    input: Tensor,
    grid: Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> Tensor:
    """Samples ``input`` at the normalised coordinates of ``grid``: the results
    of ``torch.nn.functional.grid_sample`` for 4-D input.

    Args:
        input: ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or
            channels_last (kept in the output).
        grid: ``[N, H_out, W_out, 2]`` of ``input``'s dtype and device;
            ``grid[..., 0]`` is x (width), ``grid[..., 1]`` is y, in [-1, 1]
            (values outside are handled by ``padding_mode``; NaN reads as
            outside the image).
        mode: ``"bilinear"`` or ``"nearest"`` (ties round to even, as torch).
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
        align_corners: -1 and 1 are the centres of the corner pixels (True) or
            their outer edges (False).

    Returns:
        ``[N, C, H_out, W_out]``. Gradients flow to ``input`` and ``grid``
        (the grid gradient of nearest mode is 0). The input gradient is
        deterministic on CPU, and on CUDA under
        ``torch.use_deterministic_algorithms(True)``.

    Example:
        >>> x = torch.arange(4.).view(1, 1, 2, 2)
        >>> grid_sample(x, torch.tensor([[[[0., 0.], [-0.5, -0.5]]]]))
        tensor([[[[1.5000, 0.0000]]]])
    """
    check_tensor(input, "input", "grid_sample")
    check_tensor(grid, "grid", "grid_sample")
    return torch.ops.visionops.grid_sample(
        input, grid, _mode(mode, "grid_sample"), _padding(padding_mode, "grid_sample"), bool(align_corners)
    )


def _base_coordinates(size: int, align_corners: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    # as F.affine_grid: linspace(-1, 1), shrunk to the pixel centres unless align_corners; 0 for size 1
    if size <= 1:
        return torch.zeros(size, dtype=dtype, device=device)
    v = torch.linspace(-1, 1, size, dtype=dtype, device=device)
    return v if align_corners else v * ((size - 1) / size)


def _base_grid(height: int, width: int, align_corners: bool, dtype, device) -> Tensor:
    """``[H * W, 3]`` rows ``(x_t, y_t, 1)`` (also built in C++, for the CUDA affine backward and the TPS backward: `sampling_base_grid` in cpp/sampling_cpu.cpp)."""
    xs = _base_coordinates(width, align_corners, dtype, device).view(1, width).expand(height, width)
    ys = _base_coordinates(height, align_corners, dtype, device).view(height, 1).expand(height, width)
    ones = torch.ones(height, width, dtype=dtype, device=device)
    return torch.stack((xs, ys, ones), dim=-1).reshape(height * width, 3)


def affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """The sampling grid of an affine spatial transformer: ``F.affine_grid`` for
    2-D (``size = (N, C, H, W)``).

    Args:
        theta: ``[N, 2, 3]`` floating point; output point ``(x_t, y_t)`` samples
            ``theta @ (x_t, y_t, 1)``.
        size: ``(N, C, H_out, W_out)`` of the output image.
        align_corners: as in :func:`grid_sample`.

    Returns:
        ``[N, H_out, W_out, 2]`` grid of ``theta``'s dtype (differentiable).

    Example:
        >>> affine_grid(torch.tensor([[[1., 0., 0.], [0., 1., 0.]]]), (1, 1, 1, 2))
        tensor([[[[-0.5000,  0.0000],
                  [ 0.5000,  0.0000]]]])
    """
    check_tensor(theta, "theta", "affine_grid")
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"affine_grid: theta must be a tensor [N, 2, 3], got shape {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise TypeError(f"affine_grid: theta must be floating point, got {theta.dtype}")
    if len(size) != 4:
        raise ValueError(f"affine_grid: size must be (N, C, H, W) (2-D only), got {tuple(size)}")
    n, _, h, w = size
    if n != theta.shape[0]:
        raise ValueError(f"affine_grid: size[0] ({n}) must equal the batch size of theta ({theta.shape[0]})")
    base = _base_grid(h, w, align_corners, theta.dtype, theta.device)
    return torch.matmul(base, theta.transpose(1, 2)).view(n, h, w, 2)


def affine_grid_sample(
    input: Tensor,
    theta: Tensor,
    output_size: int | tuple[int, int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> Tensor:
    """``grid_sample(input, affine_grid(theta, (N, C, *output_size)))`` in one
    kernel: the STN sampler, without materialising the grid.

    Args:
        input: ``[N, C, H, W]`` as in :func:`grid_sample`.
        theta: ``[N, 2, 3]`` of ``input``'s dtype and device.
        output_size: ``int`` or ``(H_out, W_out)``.
        mode, padding_mode, align_corners: as in :func:`grid_sample`.

    Returns:
        ``[N, C, H_out, W_out]``; gradients flow to ``input`` and ``theta``
        (the backward rebuilds the grid once to chain the grid gradient).

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> shift = torch.tensor([[[1., 0., 0.5], [0., 1., 0.]]])  # 0.5 = a quarter of the width: 1 pixel
        >>> # one output row at y = 0: halfway between input rows 1 and 2
        >>> affine_grid_sample(x, shift, (1, 4), padding_mode="border")
        tensor([[[[7., 8., 9., 9.]]]])
    """
    check_tensor(input, "input", "affine_grid_sample")
    check_tensor(theta, "theta", "affine_grid_sample")
    h, w = pair(output_size, "output_size", "affine_grid_sample")
    return torch.ops.visionops.affine_grid_sample(
        input,
        theta,
        h,
        w,
        _mode(mode, "affine_grid_sample"),
        _padding(padding_mode, "affine_grid_sample"),
        bool(align_corners),
    )


# ---------------------------------------------------------------- thin-plate splines


def _batched_points(points: Tensor, name: str, op: str) -> Tensor:
    check_tensor(points, name, op)
    if points.dim() == 2:
        points = points.unsqueeze(0)
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"{op}: {name} must be a tensor [B, K, 2] or [K, 2], got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {points.dtype}")
    return points


def _radial(d2: Tensor) -> Tensor:
    """U = d2 log d2 with U(0) = 0 and a finite gradient there."""
    positive = d2 > 0
    safe = torch.where(positive, d2, torch.ones_like(d2))
    return torch.where(positive, d2 * torch.log(safe), torch.zeros_like(d2))


def _check_tps_points(target: Tensor) -> None:
    """Fewer than 3, collinear or repeated control points make the TPS system
    singular: raise instead of returning NaN (skipped under torch.compile)."""
    k = target.shape[1]
    if k < 3:
        raise ValueError(f"tps_fit: need at least 3 control points, got {k}")
    if torch.compiler.is_compiling() or target.numel() == 0:
        return
    t = target.detach().double()
    if not bool(t.isfinite().all()):
        raise ValueError("tps_fit: target_points must be finite (NaN or infinite control points)")
    centred = t - t.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    scale = (cov[:, 0, 0] + cov[:, 1, 1]) ** 2
    if bool((det <= 1e-12 * scale).any()):
        raise ValueError("tps_fit: target_points are collinear (or all equal); a TPS needs 3 non-collinear points")
    d2 = torch.cdist(t, t).pow(2) + torch.eye(k, dtype=t.dtype, device=t.device)
    if bool((d2 == 0).any()):
        raise ValueError("tps_fit: target_points contains repeated points")


def tps_fit(source_points: Tensor, target_points: Tensor, regularization: float = 0.0) -> tuple[Tensor, Tensor]:
    """Fits the thin-plate spline that maps each target point to its source
    point (RARE): ``f(c_k) = s_k`` with
    ``f(p) = a_0 + a_1 x + a_2 y + sum_k w_k U(|p - c_k|)``, ``U(r) = r^2 log r^2``,
    and ``sum_k w_k = sum_k w_k c_k = 0``.

    The ``(K + 3) x (K + 3)`` system is solved in float64 with
    ``torch.linalg.solve`` (batched, differentiable to both point sets) and the
    weights are cast back to the points' dtype.

    Args:
        source_points: ``[B, K, 2]`` or ``[K, 2]``, points in the input image
            (normalised coordinates), e.g. the fiducials a localisation network
            predicts.
        target_points: ``[B, K, 2]`` or ``[K, 2]``, the matching points in the
            output image (e.g. :func:`rare_fiducials`); at least 3, not
            collinear, no repeats (a clear ``ValueError`` otherwise).
        regularization: ``lambda >= 0`` added to the kernel diagonal
            (smoothing TPS; 0 interpolates exactly).

    Returns:
        ``(kernel_weights [B, K, 2], affine_weights [B, 3, 2])``; rows of
        ``affine_weights`` are ``(a_0, a_1, a_2)``.

    Example:
        >>> c = torch.tensor([[-1., -1.], [1., -1.], [-1., 1.], [1., 1.]])
        >>> w, a = tps_fit(c, c)  # the identity map: no bending, a = [0; I]
        >>> torch.allclose(w, torch.zeros(1, 4, 2), atol=1e-6)
        True
        >>> torch.allclose(a[0], torch.tensor([[0., 0.], [1., 0.], [0., 1.]]), atol=1e-6)
        True
    """
    source = _batched_points(source_points, "source_points", "tps_fit")
    target = _batched_points(target_points, "target_points", "tps_fit")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"tps_fit: source_points and target_points must have the same number of points, "
            f"got {source.shape[1]} and {target.shape[1]}"
        )
    if source.shape[0] != target.shape[0] and 1 not in (source.shape[0], target.shape[0]):
        raise ValueError(
            f"tps_fit: batch sizes of source_points ({source.shape[0]}) and target_points "
            f"({target.shape[0]}) do not match"
        )
    if source.device != target.device:
        raise RuntimeError(
            f"tps_fit: source_points is on {source.device} but target_points is on {target.device}; "
            "both must be on one device"
        )
    if regularization < 0:
        raise ValueError(f"tps_fit: regularization must be >= 0, got {regularization}")
    _check_tps_points(target)
    dtype = torch.promote_types(source.dtype, target.dtype)
    b = max(source.shape[0], target.shape[0])
    k = target.shape[1]
    s = source.double().expand(b, k, 2)
    c = target.double().expand(b, k, 2)
    d2 = (c.unsqueeze(2) - c.unsqueeze(1)).pow(2).sum(-1)
    kernel = _radial(d2) + regularization * torch.eye(k, dtype=torch.float64, device=c.device)
    p = torch.cat([torch.ones(b, k, 1, dtype=torch.float64, device=c.device), c], dim=2)
    top = torch.cat([kernel, p], dim=2)
    bottom = torch.cat([p.transpose(1, 2), torch.zeros(b, 3, 3, dtype=torch.float64, device=c.device)], dim=2)
    system = torch.cat([top, bottom], dim=1)
    rhs = torch.cat([s, torch.zeros(b, 3, 2, dtype=torch.float64, device=c.device)], dim=1)
    try:
        solution = torch.linalg.solve(system, rhs)
    except torch.linalg.LinAlgError as err:  # passed the checks above, singular in floating point all the same
        raise ValueError(f"tps_fit: the TPS system of target_points is singular ({err})") from err
    return solution[:, :k].to(dtype), solution[:, k:].to(dtype)


def rare_fiducials(num_fiducial: int = 20, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """RARE's base fiducials: ``K / 2`` points evenly spaced along the top edge
    (y = -1) and ``K / 2`` along the bottom edge (y = 1) of the output, x from
    -1 to 1. Returns ``[K, 2]``.

    >>> rare_fiducials(4)
    tensor([[-1., -1.],
            [ 1., -1.],
            [-1.,  1.],
            [ 1.,  1.]])
    """
    if isinstance(num_fiducial, bool) or not isinstance(num_fiducial, int) or num_fiducial < 4 or num_fiducial % 2:
        raise ValueError(f"rare_fiducials: num_fiducial must be an even int >= 4, got {num_fiducial!r}")
    xs = torch.linspace(-1, 1, num_fiducial // 2, dtype=dtype, device=device)
    top = torch.stack([xs, -torch.ones_like(xs)], dim=1)
    bottom = torch.stack([xs, torch.ones_like(xs)], dim=1)
    return torch.cat([top, bottom], dim=0)


def _tps_args(kernel_weights, affine_weights, target_points, op):
    check_tensor(kernel_weights, "kernel_weights", op)
    check_tensor(affine_weights, "affine_weights", op)
    target = _batched_points(target_points, "target_points", op)
    if kernel_weights.dim() == 3 and target.shape[0] == 1 and kernel_weights.shape[0] != 1:
        target = target.expand(kernel_weights.shape[0], -1, -1)
    return target


def tps_grid(
    kernel_weights: Tensor,
    affine_weights: Tensor,
    target_points: Tensor,
    output_size: int | tuple[int, int],
    align_corners: bool = False,
) -> Tensor:
    """The sampling grid of a thin-plate spline (from :func:`tps_fit`): output
    pixel ``(x_t, y_t)`` (normalised, as :func:`affine_grid` places it) samples
    ``a_0 + a_1 x_t + a_2 y_t + sum_k w_k U(|p_t - c_k|)``.

    Args:
        kernel_weights: ``[B, K, 2]``.
        affine_weights: ``[B, 3, 2]``.
        target_points: ``[B, K, 2]`` or ``[K, 2]`` control points ``c_k`` in the
            output plane; all three of one floating dtype and device.
        output_size: ``int`` or ``(H_out, W_out)``.

    Returns:
        ``[B, H_out, W_out, 2]``, differentiable to all three tensors. The
        ``B x H x W x K`` basis is never materialised.

    Example:
        >>> c = rare_fiducials(4)
        >>> w, a = tps_fit(c, c)
        >>> torch.allclose(tps_grid(w, a, c, (3, 5)), affine_grid(torch.eye(2, 3)[None], (1, 1, 3, 5)), atol=1e-6)
        True
    """
    target = _tps_args(kernel_weights, affine_weights, target_points, "tps_grid")
    h, w = pair(output_size, "output_size", "tps_grid")
    return torch.ops.visionops.tps_grid(kernel_weights, affine_weights, target, h, w, bool(align_corners))


def tps_grid_sample(
    input: Tensor,
    kernel_weights: Tensor,
    affine_weights: Tensor,
    target_points: Tensor,
    output_size: int | tuple[int, int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> Tensor:
    """``grid_sample(input, tps_grid(...))`` in one kernel: the RARE rectifier.
    Neither the grid nor the ``B x H x W x K`` basis is materialised in the
    forward.

    Args:
        input: ``[B, C, H, W]`` as in :func:`grid_sample`.
        kernel_weights, affine_weights, target_points, output_size: as in
            :func:`tps_grid` (``input``'s dtype and device).
        mode, padding_mode, align_corners: as in :func:`grid_sample`.

    Returns:
        ``[B, C, H_out, W_out]``; gradients flow to ``input``, both weight
        tensors and ``target_points`` (the backward builds the ``[B, H_out,
        W_out, 2]`` grid and its gradient, never the basis).

    Example:
        >>> c = rare_fiducials(4)
        >>> w, a = tps_fit(c, c)  # identity
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(tps_grid_sample(x, w, a, c, (8, 8)), x, atol=1e-5)
        True
    """
    check_tensor(input, "input", "tps_grid_sample")
    target = _tps_args(kernel_weights, affine_weights, target_points, "tps_grid_sample")
    h, w = pair(output_size, "output_size", "tps_grid_sample")
    return torch.ops.visionops.tps_grid_sample(
        input,
        kernel_weights,
        affine_weights,
        target,
        h,
        w,
        _mode(mode, "tps_grid_sample"),
        _padding(padding_mode, "tps_grid_sample"),
        bool(align_corners),
    )


# ---------------------------------------------------------------- fake kernels


def _image_fake(input: Tensor, height, width) -> Tensor:
    torch._check(input.dim() == 4, lambda: f"input must be a 4-D tensor [N, C, H, W], got {input.dim()}-D")
    shape = (input.size(0), input.size(1), height, width)
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=memory_format_of(input))


@torch.library.register_fake("visionops::grid_sample")
def _grid_sample_fake(input, grid, interpolation_mode, padding_mode, align_corners):
    torch._check(grid.dim() == 4 and grid.size(3) == 2, lambda: "grid_sample: grid must be [N, H_out, W_out, 2]")
    torch._check(grid.dtype == input.dtype, lambda: "grid_sample: grid must have the same dtype as input")
    return _image_fake(input, grid.size(1), grid.size(2))


@torch.library.register_fake("visionops::_grid_sample_backward")
def _grid_sample_backward_fake(grad, input, grid, interpolation_mode, padding_mode, align_corners, output_mask):
    grad_input = (
        torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=memory_format_of(input))
        if output_mask[0]
        else input.new_empty((0,))
    )
    grad_grid = torch.empty(grid.shape, dtype=grid.dtype, device=grid.device) if output_mask[1] else grid.new_empty((0,))
    return grad_input, grad_grid


@torch.library.register_fake("visionops::affine_grid_sample")
def _affine_grid_sample_fake(input, theta, height, width, interpolation_mode, padding_mode, align_corners):
    torch._check(theta.dtype == input.dtype, lambda: "affine_grid_sample: theta must have the same dtype as input")
    return _image_fake(input, height, width)


@torch.library.register_fake("visionops::_affine_grid_sample_backward")
def _affine_grid_sample_backward_fake(grad, input, theta, interpolation_mode, padding_mode, align_corners, output_mask):
    grad_input = (
        torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=memory_format_of(input))
        if output_mask[0]
        else input.new_empty((0,))
    )
    grad_theta = torch.empty(theta.shape, dtype=theta.dtype, device=theta.device) if output_mask[1] else theta.new_empty((0,))
    return grad_input, grad_theta


@torch.library.register_fake("visionops::_tps_grid_sample_backward")
def _tps_grid_sample_backward_fake(grad, input, kernel_weights, affine_weights, target_points, interpolation_mode,
                                   padding_mode, align_corners, output_mask):
    grad_input = (
        torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=memory_format_of(input))
        if output_mask[0]
        else input.new_empty((0,))
    )
    if not output_mask[1]:
        return grad_input, *(kernel_weights.new_empty((0,)) for _ in range(3))
    return grad_input, *(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                         for t in (kernel_weights, affine_weights, target_points))


@torch.library.register_fake("visionops::tps_grid")
def _tps_grid_fake(kernel_weights, affine_weights, target_points, height, width, align_corners):
    return kernel_weights.new_empty((kernel_weights.size(0), height, width, 2))


@torch.library.register_fake("visionops::_tps_grid_backward")
def _tps_grid_backward_fake(grad_grid, kernel_weights, target_points, align_corners):
    return kernel_weights.new_empty(kernel_weights.shape), target_points.new_empty(target_points.shape)


@torch.library.register_fake("visionops::tps_grid_sample")
def _tps_grid_sample_fake(
    input, kernel_weights, affine_weights, target_points, height, width, interpolation_mode, padding_mode, align_corners
):
    torch._check(kernel_weights.dtype == input.dtype, lambda: "tps_grid_sample: weights must have input's dtype")
    return _image_fake(input, height, width)


# Autograd: cpp/sampling_autograd.cpp.

# ---------------------------------------------------------------- autocast

for _name in ("grid_sample", "affine_grid_sample", "tps_grid", "tps_grid_sample"):
    register_float32_autocast(_name)
