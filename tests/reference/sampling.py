"""float64 oracles for the sampling family, written from the formulas.

* Bilinear sampling as the STN paper writes it:
  ``V = sum_nm U_nm max(0, 1 - |x - m|) max(0, 1 - |y - n|)`` over every pixel
  (zeros padding: pixels outside the image do not exist), with normalised
  coordinates mapped to pixels as ``F.grid_sample`` does.
* Thin-plate splines (RARE, Bookstein): build the ``(K + 3) x (K + 3)`` system
  ``[[R + lambda I, P], [P^T, 0]] [w; a] = [s; 0]`` with ``R_ij = U(|c_i - c_j|)``,
  ``P = [1, x, y]`` and solve it in NumPy; evaluate the map at arbitrary points.
  A torch twin (same formulas, materialised basis, autograd) gives reference
  gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pixel_coordinate(c: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    if align_corners:
        return (c + 1) / 2 * (size - 1)
    return ((c + 1) * size - 1) / 2


def bilinear_zeros_reference(input: Tensor, grid: Tensor, align_corners: bool) -> Tensor:
    """grid_sample(bilinear, zeros) by the STN sum over every pixel."""
    x = input.detach().double().cpu().numpy()
    g = grid.detach().double().cpu().numpy()
    n, c, h, w = x.shape
    px = pixel_coordinate(g[..., 0], w, align_corners)  # [N, Ho, Wo]
    py = pixel_coordinate(g[..., 1], h, align_corners)
    kx = np.maximum(0.0, 1.0 - np.abs(px[..., None] - np.arange(w)))  # [N, Ho, Wo, W]
    ky = np.maximum(0.0, 1.0 - np.abs(py[..., None] - np.arange(h)))  # [N, Ho, Wo, H]
    out = np.einsum("nchw,nijh,nijw->ncij", x, ky, kx)
    return torch.from_numpy(out)


def radial_basis(d2: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 from d2 = r^2, U(0) = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d2 > 0, d2 * np.log(np.where(d2 > 0, d2, 1.0)), 0.0)


def tps_solve_reference(source: np.ndarray, target: np.ndarray, regularization: float = 0.0):
    """One TPS: source, target [K, 2] -> (w [K, 2], a [3, 2]) mapping target -> source."""
    k = target.shape[0]
    d2 = ((target[:, None, :] - target[None, :, :]) ** 2).sum(-1)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = radial_basis(d2) + regularization * np.eye(k)
    p = np.concatenate([np.ones((k, 1)), target], axis=1)
    system[:k, k:] = p
    system[k:, :k] = p.T
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = source
    solution = np.linalg.solve(system, rhs)
    return solution[:k], solution[k:]


def tps_map_reference(w: np.ndarray, a: np.ndarray, target: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Evaluates the TPS at points [M, 2]."""
    d2 = ((points[:, None, :] - target[None, :, :]) ** 2).sum(-1)
    return a[0] + points @ a[1:] + radial_basis(d2) @ w


def base_points(height: int, width: int, align_corners: bool) -> np.ndarray:
    """[H * W, 2] normalised (x, y) of each output pixel, row-major (as affine_grid places them)."""

    def coords(size):
        if size <= 1:
            return np.zeros(size)
        v = np.linspace(-1, 1, size)
        return v if align_corners else v * (size - 1) / size

    ys, xs = np.meshgrid(coords(height), coords(width), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def tps_grid_reference(source: Tensor, target: Tensor, output_size, align_corners: bool, regularization=0.0):
    """[B, H, W, 2] float64 grid of the TPS fitted per batch item with NumPy."""
    s = source.detach().double().cpu().numpy()
    t = target.detach().double().cpu().numpy()
    h, w = output_size
    pts = base_points(h, w, align_corners)
    out = []
    for b in range(s.shape[0]):
        kw, aw = tps_solve_reference(s[b], t[b], regularization)
        out.append(tps_map_reference(kw, aw, t[b], pts).reshape(h, w, 2))
    return torch.from_numpy(np.stack(out))


def tps_grid_torch(kernel_weights: Tensor, affine_weights: Tensor, target: Tensor, output_size, align_corners: bool):
    """The TPS grid from given weights with plain torch ops (materialises the
    B x H x W x K basis): the unfused path, differentiable by autograd."""
    h, w = output_size
    pts = torch.from_numpy(base_points(h, w, align_corners)).to(kernel_weights)  # [P, 2]
    d2 = (pts[None, :, None, :] - target[:, None, :, :]).pow(2).sum(-1)  # [B, P, K]
    positive = d2 > 0
    u = torch.where(positive, d2 * torch.log(torch.where(positive, d2, torch.ones_like(d2))), torch.zeros_like(d2))
    affine = affine_weights[:, :1, :] + pts @ affine_weights[:, 1:, :]  # [B, P, 2]
    return (affine + u @ kernel_weights).view(-1, h, w, 2)
