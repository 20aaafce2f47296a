"""Every CPU kernel variant against torch on one machine.

The SIMD kernels of `conv`, `sampling` and `roi` (RoIPool) are compiled for generic x86-64, AVX2
and AVX-512 and the best one for the CPU runs (cpp/include/visionops/cpu_isa.h).
The normal test run only reaches the best; ``VISIONOPS_CPU_ISA=generic|avx2``
(read once per process) caps the choice, so each variant is checked here in a
subprocess: depthwise convolution, bilinear grid sampling and thin-plate-spline
grids, forward and gradients, RoIPool's values and argmax, and the CTC loss'
gradient (SLEEF exp in 16 or 8 lanes), on shapes whose rows end in partial vectors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

_SCRIPT = r"""
import itertools
import torch
import torch.nn.functional as F
from visionops import ops

torch.manual_seed(0)
threads_default = torch.get_num_threads()
failures = []


def check(what, a, b, tol):
    if not torch.allclose(a, b, rtol=tol, atol=tol):
        failures.append(f"{what}: max abs diff {(a - b).abs().max().item():.3g}")


# bilinear grid sampling: widths 1..37 cover whole and partial 8- and 16-point vectors
for (n, c, h, w, ow), pad, ac, cl in itertools.product(
        [(2, 1, 9, 13, 37), (3, 3, 7, 5, 1), (1, 5, 12, 16, 20), (2, 2, 6, 6, 16)],
        ["zeros", "border"], [False, True], [False, True]):
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    grid = torch.rand(n, 3, ow, 2, dtype=torch.float64) * 2.6 - 1.3
    x32, g32 = x.float().requires_grad_(), grid.float().requires_grad_()
    out = ops.grid_sample(x32, g32, "bilinear", pad, ac)
    ref = F.grid_sample(x, grid, "bilinear", pad, ac)
    check(f"grid_sample fwd {n, c, h, w, ow, pad, ac, cl}", out.double(), ref, 1e-5)
    go = torch.randn_like(ref)
    gx, gg = torch.autograd.grad(out, (x32, g32), go.float())
    xr, gr = x.clone().requires_grad_(), grid.clone().requires_grad_()
    rx, rg = torch.autograd.grad(F.grid_sample(xr, gr, "bilinear", pad, ac), (xr, gr), go)
    check(f"grid_sample grad input {n, c, h, w, ow, pad, ac, cl}", gx.double(), rx, 1e-4)
    check(f"grid_sample grad grid {n, c, h, w, ow, pad, ac, cl}", gg.double(), rg, 1e-4)
    # one gradient alone takes its own pass
    (only_grid,) = torch.autograd.grad(ops.grid_sample(x32.detach(), g32, "bilinear", pad, ac), (g32,), go.float())
    check(f"grid_sample grid grad alone {n, c, h, w, ow, pad, ac, cl}", only_grid.double(), rg, 1e-4)

# both gradients of bilinear sampling in one pass (a task per image, taken when
# there are at least twice as many images as threads) or in two (grid rows,
# then (image, channel block) tasks): the same sums in the same order, so
# bit-identical; checked against float64 too, in both layouts
for pad, cl in itertools.product(["zeros", "border"], [False, True]):
    x = torch.randn(3, 2, 9, 13, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    grid = torch.rand(3, 4, 37, 2, dtype=torch.float64) * 2.6 - 1.3
    go = torch.randn(3, 2, 4, 37, dtype=torch.float64)
    results = []
    for threads in (1, 4):
        torch.set_num_threads(threads)
        x32, g32 = x.float().requires_grad_(), grid.float().requires_grad_()
        results.append(torch.autograd.grad(ops.grid_sample(x32, g32, "bilinear", pad), (x32, g32), go.float()))
    torch.set_num_threads(threads_default)
    for one_pass, two_passes in zip(*results):
        if not torch.equal(one_pass, two_passes):
            failures.append(f"grid_sample one-pass vs two-pass gradients differ {pad, cl}")
    xr, gr = x.clone().requires_grad_(), grid.clone().requires_grad_()
    rx, rg = torch.autograd.grad(F.grid_sample(xr, gr, "bilinear", pad, False), (xr, gr), go)
    check(f"grid_sample one-pass grad input {pad, cl}", results[0][0].double(), rx, 1e-4)
    check(f"grid_sample one-pass grad grid {pad, cl}", results[0][1].double(), rg, 1e-4)

# the fused affine warp's backward (coordinates recomputed per row from theta,
# grid gradient reduced to theta in double): one pass and two passes give
# bit-identical gradients; against float64 F.affine_grid + F.grid_sample
for pad, cl, ow in itertools.product(["zeros", "border"], [False, True], [1, 16, 37]):
    x = torch.randn(3, 2, 9, 13, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    theta = torch.eye(2, 3, dtype=torch.float64) + 0.4 * torch.randn(3, 2, 3, dtype=torch.float64)
    go = torch.randn(3, 2, 5, ow, dtype=torch.float64)
    results = []
    for threads in (1, 4):
        torch.set_num_threads(threads)
        x32, t32 = x.float().requires_grad_(), theta.float().requires_grad_()
        out = ops.affine_grid_sample(x32, t32, (5, ow), "bilinear", pad)
        results.append(torch.autograd.grad(out, (x32, t32), go.float()))
    torch.set_num_threads(threads_default)
    for one_pass, two_passes in zip(*results):
        if not torch.equal(one_pass, two_passes):
            failures.append(f"affine_grid_sample one-pass vs two-pass gradients differ {pad, cl, ow}")
    xr, tr = x.clone().requires_grad_(), theta.clone().requires_grad_()
    ref = F.grid_sample(xr, F.affine_grid(tr, [3, 2, 5, ow], align_corners=False), "bilinear", pad, False)
    rx, rt = torch.autograd.grad(ref, (xr, tr), go)
    check(f"affine_grid_sample grad input {pad, cl, ow}", results[0][0].double(), rx, 1e-4)
    check(f"affine_grid_sample grad theta {pad, cl, ow}", results[0][1].double(), rt, 1e-4)

# depthwise convolution: 3x3 and 5x5, strides 1 and 2, both layouts; at stride 1
# and k >= 5 the NCHW row-reuse blocks with kernel widths fixed at compile time
# (5, 7, 13: wider than an AVX2 vector) and taken at run time (9)
CASES = [(3, 1, 19), (3, 2, 23), (5, 1, 17), (5, 2, 14), (7, 1, 9), (9, 1, 12), (13, 1, 20)]
for (k, s, hw), cl in itertools.product(CASES, [False, True]):
    x = torch.randn(2, 6, hw, hw + 3, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    wgt = torch.randn(6, 1, k, k, dtype=torch.float64)
    x32, w32 = x.float().requires_grad_(), wgt.float().requires_grad_()
    out = ops.depthwise_conv2d(x32, w32, None, s, k // 2)
    ref = F.conv2d(x, wgt, None, s, k // 2, 1, 6)
    check(f"depthwise fwd {k, s, hw, cl}", out.double(), ref, 1e-4)
    go = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(out, (x32, w32), go.float())
    xr, wr = x.clone().requires_grad_(), wgt.clone().requires_grad_()
    rx, rw = torch.autograd.grad(F.conv2d(xr, wr, None, s, k // 2, 1, 6), (xr, wr), go)
    check(f"depthwise grad input {k, s, hw, cl}", gx.double(), rx, 1e-4)
    check(f"depthwise grad weight {k, s, hw, cl}", gw.double(), rw, 1e-3)

# thin-plate splines in float32 (rows vectorised in 64-point blocks, a polynomial
# logarithm) against float64: widths 1, 64, 65 and 130 cover whole and partial
# blocks; control point 0 sits on an output pixel (s = 0), point 1 far outside.
# A float32 TPS sum rounds like its largest terms (weights up to ~15 times a
# basis up to ~80 here), so each error is bounded by twice that of torch's own
# float32 pipeline (materialised basis + matmul) on the same inputs, plus 1e-6
# of the largest value (sums over up to 650 points, in another order than torch's).
from reference.sampling import tps_grid_torch


def check_like_torch(what, ours, torch32, ref, factor=2, floor=1e-6):
    bound = factor * (torch32.double() - ref).abs().max().item() + floor * max(1.0, ref.abs().max().item())
    err = (ours.double() - ref).abs().max().item()
    if not err <= bound:
        failures.append(f"{what}: max abs diff {err:.3g} > {bound:.3g}")


for (b, k, oh, ow), ac in itertools.product([(2, 20, 5, 130), (1, 7, 3, 64), (2, 4, 4, 1), (1, 12, 2, 65)],
                                            [False, True]):
    target = torch.rand(b, k, 2, dtype=torch.float64) * 1.8 - 0.9
    on_pixel = (-1.0, -1.0) if ac else (-1 + 1 / ow, -1 + 1 / oh)
    target[:, 0] = torch.tensor(on_pixel, dtype=torch.float64)
    target[:, 1] = torch.tensor([3.0, -2.5], dtype=torch.float64)
    kw, aw = ops.tps_fit(target + 0.1 * torch.randn_like(target), target)
    case = (b, k, oh, ow, ac)
    p32 = [t.float().requires_grad_() for t in (kw, aw, target)]
    p64 = [t.clone().requires_grad_() for t in (kw, aw, target)]
    t32 = [t.float().requires_grad_() for t in (kw, aw, target)]
    grid32, grid64 = ops.tps_grid(*p32, (oh, ow), ac), ops.tps_grid(*p64, (oh, ow), ac)
    torch_grid32 = tps_grid_torch(*t32, (oh, ow), ac)
    check_like_torch(f"tps_grid fwd {case}", grid32, torch_grid32, grid64)
    go = torch.randn_like(grid64)
    g32 = torch.autograd.grad(grid32, p32, go.float())
    g64 = torch.autograd.grad(grid64, p64, go)
    gt = torch.autograd.grad(torch_grid32, t32, go.float())
    for name, ours, peer, ref in zip(("kernel_weights", "affine_weights", "target_points"), g32, gt, g64):
        check_like_torch(f"tps_grid grad {name} {case}", ours, peer, ref)
    x = torch.randn(b, 2, 9, 11, dtype=torch.float64)
    for pad in ("zeros", "reflection"):  # the row kernel path and the per-point path
        out = ops.tps_grid_sample(x.float(), *p32, (oh, ow), "bilinear", pad, ac)
        peer = F.grid_sample(x.float(), torch_grid32.detach(), "bilinear", pad, ac)
        check_like_torch(f"tps_grid_sample fwd {pad} {case}", out, peer, F.grid_sample(x, grid64.detach(), "bilinear", pad, ac))
        # the backward: fused (zeros: coordinates recomputed per row, parameter sums
        # per row) or through a materialised grid (reflection); one pass (a task
        # per image, 1 thread) and two passes (4 threads) give identical results.
        # The image is smooth: a point whose float32 coordinate lands in another
        # cell than the float64 one changes its grid gradient by the image's
        # second difference, large on noise, whoever computes it.
        go = torch.randn_like(out, dtype=torch.float64)
        yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
        smooth = (torch.sin(xx / 3) * torch.cos(yy / 4)).double().expand(b, 2, 9, 11).contiguous()
        x32, x64, xt = (smooth.float().requires_grad_(), smooth.clone().requires_grad_(), smooth.float().requires_grad_())
        grads = []
        for threads in (1, 4):
            torch.set_num_threads(threads)
            leaves = [x32] + [t.detach().requires_grad_() for t in p32]
            grads.append(torch.autograd.grad(ops.tps_grid_sample(*leaves, (oh, ow), "bilinear", pad, ac), leaves,
                                             go.float()))
        torch.set_num_threads(threads_default)
        if not all(torch.equal(u, v) for u, v in zip(*grads)):
            failures.append(f"tps_grid_sample backward differs between 1 and 4 threads {pad} {case}")
        l64 = [x64] + [t.detach().requires_grad_() for t in p64]
        ref = torch.autograd.grad(F.grid_sample(x64, ops.tps_grid(*l64[1:], (oh, ow), ac), "bilinear", pad, ac), l64, go)
        lt = [xt] + [t.detach().requires_grad_() for t in t32]
        gpeer = torch.autograd.grad(F.grid_sample(xt, tps_grid_torch(*lt[1:], (oh, ow), ac), "bilinear", pad, ac), lt,
                                    go.float())
        for name, ours, peer_grad, r in zip(("input", "kernel_weights", "affine_weights", "target_points"), grads[0],
                                             gpeer, ref):
            # sums over many points of terms whose float32 errors follow the coordinates'
            # (ours: a polynomial logarithm, <= 3 ulp): a looser factor than the forward's,
            # and a floor of float32 accumulation over the OH*OW*K (up to 1560) terms
            # (~n * 2^-24 = 1e-4 of the largest gradient): torch's own error, the other part
            # of the bound, is smaller on some CPUs (AVX-512 EPYC: 1.4e-5 of it, ours 7.7e-5)
            check_like_torch(f"tps_grid_sample grad {name} {pad} {case}", ours, peer_grad, r, factor=3, floor=1e-4)

# CTC loss gradient, whose dense part exp(log_probs) * g runs 16 lanes (AVX-512), 8 (AVX2)
# and the rest one by one: C = 5, 29 (16 + 8 + 5) and 40 (16 + 16 + 8) against float64 torch
for c in (5, 29, 40):
    lp64 = torch.randn(12, 3, c, dtype=torch.float64).log_softmax(2)
    targets = torch.randint(1, c, (3, 4))
    lengths = (torch.tensor([12, 10, 7]), torch.tensor([4, 2, 3]))
    lp32 = lp64.float().requires_grad_()
    (ours,) = torch.autograd.grad(ops.ctc_loss(lp32, targets, *lengths), lp32)
    lr = lp64.clone().requires_grad_()
    (ref,) = torch.autograd.grad(F.ctc_loss(lr, targets, *lengths), lr)
    check(f"ctc_loss grad C={c}", ours.double(), ref, 1e-5)

# RoIPool: channel counts 1, 5, 19 and 37 cover whole and partial 8- and 16-lane vectors; ties and NaNs
# exercise the first-maximum and first-NaN rules in every lane (values and argmax must equal the oracle)
from reference.roi import roi_pool_argmax_reference

for channels, cl in itertools.product([1, 5, 19, 37], [False, True]):
    x = torch.randint(0, 4, (2, channels, 9, 11)).float()
    x[torch.rand(x.shape) < 0.03] = float("nan")
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, 0.0, 0, 10, 8], [1, 1.0, 1, 7, 9], [0, 2.0, 3, 9, 6], [1, -3.0, -2, 20, 30]])
    out, argmax = torch.ops.visionops.roi_pool(x, rois, 1.0, 3, 2)
    ref_out, ref_argmax = roi_pool_argmax_reference(x, rois, (3, 2), 1.0)
    if not (torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.nan_to_num(), ref_out.nan_to_num())
            and torch.equal(argmax, ref_argmax)):
        failures.append(f"roi_pool {channels, cl}: values or argmax differ from the oracle")

assert not failures, "\n".join(failures)
print("checked")
"""


def _cpu_has(isa: str) -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    return {"generic": True, "avx2": capability in ("AVX2", "AVX512"), "avx512": capability == "AVX512"}[isa]


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_capped_kernel_variant_matches_torch(isa):
    if not _cpu_has(isa):
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, VISIONOPS_CPU_ISA=isa)
    script = f"import sys\nsys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n" + _SCRIPT
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "checked" in result.stdout
