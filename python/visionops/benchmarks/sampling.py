"""sampling family benchmarks against torch (kornia is not a dependency; its TPS
materialises the grid and the B x H x W x K basis exactly like the unfused
torch pipeline timed here).

* grid_sample: 8 x 3 x 256 x 256, the STN shape 64 x 1 x 60 x 60 and a tiny
  1 x 1 x 4 x 4 (the per-call cost), forward and forward + backward, vs
  ``F.grid_sample``.
* affine_grid_sample vs ``F.grid_sample(F.affine_grid(...))`` (STN).
* tps_grid_sample vs the unfused torch pipeline (basis matrix + matmul +
  ``F.grid_sample``): RARE (batch 64, 1 x 64 x 200 -> 1 x 32 x 100, K = 20) and a
  2048 x 2048 RGB warp (batch 1, K = 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Case


def _with_grad(fn, leaves, grad):
    def run():
        return torch.autograd.grad(fn(*leaves), leaves, grad)

    return run


def _grid_sample_case(device, name, n, c, h, w, backward, quick):
    def setup():
        from .. import ops

        g = torch.Generator().manual_seed(0)
        nn_, hh, ww = (max(1, n // 4), h // 2, w // 2) if quick else (n, h, w)
        x = torch.randn(nn_, c, hh, ww, generator=g).to(device)
        theta = torch.eye(2, 3) + 0.1 * torch.randn(nn_, 2, 3, generator=g)
        grid = F.affine_grid(theta, [nn_, c, hh, ww], align_corners=False).to(device)
        if not backward:
            return {
                "visionops": lambda: ops.grid_sample(x, grid),
                "torch": lambda: F.grid_sample(x, grid, align_corners=False),
            }
        leaves = [x.requires_grad_(True), grid.requires_grad_(True)]
        grad = torch.randn(nn_, c, hh, ww, generator=g).to(device)
        return {
            "visionops": _with_grad(lambda a, b: ops.grid_sample(a, b), leaves, grad),
            "torch": _with_grad(lambda a, b: F.grid_sample(a, b, align_corners=False), leaves, grad),
        }

    moved = n * c * h * w * 4 * 2 + n * h * w * 8  # read input + grid, write output (fwd)
    return Case("sampling", f"grid_sample_{name}" + ("_fwd_bwd" if backward else "_fwd"), device, "torch", setup,
                None if backward else moved)


def _affine_case(device, backward, quick):
    def setup():
        from .. import ops

        g = torch.Generator().manual_seed(1)
        n = 16 if quick else 64
        x = torch.randn(n, 1, 60, 60, generator=g).to(device)
        theta = (torch.eye(2, 3) + 0.1 * torch.randn(n, 2, 3, generator=g)).to(device)

        def ours(a, t):
            return ops.affine_grid_sample(a, t, (60, 60))

        def peer(a, t):
            return F.grid_sample(a, F.affine_grid(t, [n, 1, 60, 60], align_corners=False), align_corners=False)

        if not backward:
            return {"visionops": lambda: ours(x, theta), "torch": lambda: peer(x, theta)}
        leaves = [x.requires_grad_(True), theta.requires_grad_(True)]
        grad = torch.randn(n, 1, 60, 60, generator=g).to(device)
        return {"visionops": _with_grad(ours, leaves, grad), "torch": _with_grad(peer, leaves, grad)}

    return Case("sampling", "affine_grid_sample_stn_64x1x60x60" + ("_fwd_bwd" if backward else "_fwd"), device,
                "torch", setup)


def _tps_torch(x, kernel_weights, affine_weights, target, out_h, out_w):
    """The unfused pipeline (as kornia's warp_image_tps): materialise the
    [B, H*W, K] basis and the grid, then F.grid_sample."""
    b = x.shape[0]
    ys = torch.linspace(-1, 1, out_h, device=x.device) * ((out_h - 1) / out_h)
    xs = torch.linspace(-1, 1, out_w, device=x.device) * ((out_w - 1) / out_w)
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(1, -1, 2).to(x.dtype)
    d2 = torch.cdist(pts.expand(b, -1, -1), target).pow(2)
    basis = d2 * torch.log(d2.clamp_min(1e-30))
    grid = affine_weights[:, :1] + pts @ affine_weights[:, 1:] + basis @ kernel_weights
    return F.grid_sample(x, grid.view(b, out_h, out_w, 2), align_corners=False)


def _tps_case(device, name, b, c, h, w, out_h, out_w, backward, quick):
    def setup():
        from .. import ops

        g = torch.Generator().manual_seed(2)
        bb = max(1, b // 8) if quick else b
        ih, iw, oh, ow = (h // 4, w // 4, out_h // 4, out_w // 4) if quick and h > 512 else (h, w, out_h, out_w)
        x = torch.randn(bb, c, ih, iw, generator=g).to(device)
        target = ops.rare_fiducials(20).expand(bb, 20, 2).contiguous()
        source = target * 0.8 + 0.05 * torch.randn(bb, 20, 2, generator=g)
        kw, aw = ops.tps_fit(source, target)
        kw, aw, target = kw.to(device), aw.to(device), target.to(device)

        def ours(a, k, af, t):
            return ops.tps_grid_sample(a, k, af, t, (oh, ow))

        def peer(a, k, af, t):
            return _tps_torch(a, k, af, t, oh, ow)

        if not backward:
            return {"visionops": lambda: ours(x, kw, aw, target), "torch": lambda: peer(x, kw, aw, target)}
        leaves = [t.requires_grad_(True) for t in (x, kw, aw, target)]
        grad = torch.randn(bb, c, oh, ow, generator=g).to(device)
        return {"visionops": _with_grad(ours, leaves, grad), "torch": _with_grad(peer, leaves, grad)}

    return Case("sampling", f"tps_grid_sample_{name}" + ("_fwd_bwd" if backward else "_fwd"), device,
                "torch", setup, notes="peer: unfused torch (basis + grid materialised, as kornia)")


def cases(device: str, quick: bool = False) -> list[Case]:
    out = []
    for backward in (False, True):
        out.append(_grid_sample_case(device, "8x3x256x256", 8, 3, 256, 256, backward, quick))
        out.append(_grid_sample_case(device, "stn_64x1x60x60", 64, 1, 60, 60, backward, quick))
        # per-call cost (dispatch + autograd layer + launch), not the kernel
        out.append(_grid_sample_case(device, "tiny_1x1x4x4", 1, 1, 4, 4, backward, quick))
    for backward in (False, True):
        out.append(_affine_case(device, backward, quick))
    for backward in (False, True):
        out.append(_tps_case(device, "rare_64x1x32x100_k20", 64, 1, 64, 200, 32, 100, backward, quick))
    out.append(_tps_case(device, "2048x2048_rgb_k20", 1, 3, 2048, 2048, 2048, 2048, False, quick))
    return out
