"""roi family: roi_align and roi_pool against torchvision and the float64 oracle."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, HAS_CUDA
from hypothesis import given
from hypothesis import strategies as st
from reference.roi import roi_align_reference, roi_pool_argmax_reference, roi_pool_reference

import visionops
from visionops import nn as vnn
from visionops import ops

tv = pytest.importorskip("torchvision", reason="torchvision is the reference for the roi family")

# fp32: the kernels sum the same products as torchvision in another order;
# with O(1) inputs and <= a few hundred terms the difference stays ~1e-6.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)


def make_case(seed, n, c, h, w, k, scale, degenerate, dtype=torch.float32, device="cpu", channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    img_h, img_w = h / scale, w / scale
    # boxes reach 30% beyond the image on every side
    lo = torch.tensor([-0.3 * img_w, -0.3 * img_h])
    span = torch.tensor([1.6 * img_w, 1.6 * img_h])
    p1 = lo + torch.rand(k, 2, generator=g, dtype=torch.float64) * span
    p2 = lo + torch.rand(k, 2, generator=g, dtype=torch.float64) * span
    boxes = torch.cat([torch.minimum(p1, p2), torch.maximum(p1, p2)], dim=1)
    if degenerate and k:
        boxes[0, 2] = boxes[0, 0]  # zero width
        boxes[-1, 3] = boxes[-1, 1]  # zero height
        boxes[k // 2, 2:] = boxes[k // 2, :2] - 1.0  # inverted (x2 < x1)
    index = torch.randint(0, n, (k, 1), generator=g).to(torch.float64)
    rois = torch.cat([index, boxes], dim=1)
    x = x.to(dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, rois.to(dtype=dtype, device=device)


case_args = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.integers(0, 6),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    degenerate=st.booleans(),
    out_h=st.integers(1, 4),
    out_w=st.integers(1, 4),
    channels_last=st.booleans(),
)


# ---------------------------------------------------------------- roi_align


@pytest.mark.parametrize("device", DEVICES)
@given(sampling_ratio=st.integers(-1, 3), aligned=st.booleans(), **case_args)
def test_roi_align_matches_torchvision(
    device, seed, n, c, h, w, k, scale, degenerate, out_h, out_w, channels_last, sampling_ratio, aligned
):
    x, rois = make_case(seed, n, c, h, w, k, scale, degenerate, device=device, channels_last=channels_last)
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = ops.roi_align(x, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    ref = tv.ops.roi_align(x_ref, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    # channels_last in, channels_last out, unless the input is NCHW-contiguous too (c == 1, or h == w == 1),
    # where the layout is ambiguous and the output is NCHW (as torchvision's)
    cl_out = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if cl_out else torch.contiguous_format)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, **FP32_TOL)


@given(sampling_ratio=st.integers(-1, 3), aligned=st.booleans(), **case_args)
def test_roi_align_matches_float64_oracle(
    seed, n, c, h, w, k, scale, degenerate, out_h, out_w, channels_last, sampling_ratio, aligned
):
    x, rois = make_case(seed, n, c, h, w, k, scale, degenerate, dtype=torch.float64, channels_last=channels_last)
    out = ops.roi_align(x, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    ref = roi_align_reference(x, rois, (out_h, out_w), scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_half_precision_matches_float32(device, dtype, tol, op):
    # Inputs and boxes are rounded to the low precision first and the float32
    # reference runs on those same values: accumulation is in float32, so the only
    # error left is rounding each output once (2^-11 for fp16, 2^-8 for bf16
    # relative), which the tolerance covers with a factor of 2 to 4 of margin.
    x, rois = make_case(3, 2, 16, 20, 24, 30, 0.5, True, dtype=dtype, device=device)
    x.requires_grad_(True)
    x32 = x.detach().float().requires_grad_(True)
    fn = getattr(ops, op)
    args = ((4, 3), 0.5) + ((2, True) if op == "roi_align" else ())
    out = fn(x, rois, *args)
    ref = fn(x32, rois.float(), *args)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.randn(ref.shape, device=device).to(dtype)
    out.backward(grad)
    ref.backward(grad.float())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=tol, atol=tol)


def test_sampling_matches_bilinear_formula_worked_example():
    # A 1x1 bin with one sample (sampling_ratio=1) reads a single bilinear point;
    # SEED_NOTES' STN example: value 1.8 at pixel (x, y) = (1.2, 2.3).
    img = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    img[0, 0, 2, 1], img[0, 0, 2, 2], img[0, 0, 3, 1], img[0, 0, 3, 2] = 1, 2, 3, 4
    # aligned=True: sample at x1 - 0.5 + w/2, so the box [1.2, 2.3] +- 0.25 (+0.5)
    box = torch.tensor([[0, 1.2 + 0.5 - 0.25, 2.3 + 0.5 - 0.25, 1.2 + 0.5 + 0.25, 2.3 + 0.5 + 0.25]], dtype=torch.float64)
    out = ops.roi_align(img, box, 1, 1.0, 1, True)
    assert out.item() == pytest.approx(1.8, abs=1e-12)


# ---------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("device", DEVICES)
@given(**case_args)
def test_roi_pool_matches_torchvision(device, seed, n, c, h, w, k, scale, degenerate, out_h, out_w, channels_last):
    x, rois = make_case(seed, n, c, h, w, k, scale, degenerate, device=device, channels_last=channels_last)
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = ops.roi_pool(x, rois, (out_h, out_w), scale)
    ref = tv.ops.roi_pool(x_ref, rois, (out_h, out_w), scale)
    # both give 0 for empty bins; every other value is an exact copy of an input value
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, **FP32_TOL)


@given(**case_args)
def test_roi_pool_matches_float64_oracle(seed, n, c, h, w, k, scale, degenerate, out_h, out_w, channels_last):
    x, rois = make_case(seed, n, c, h, w, k, scale, degenerate, dtype=torch.float64, channels_last=channels_last)
    out = ops.roi_pool(x, rois, (out_h, out_w), scale)
    torch.testing.assert_close(out, roi_pool_reference(x, rois, (out_h, out_w), scale), rtol=0, atol=0)


def test_roi_pool_backward_routes_to_argmax():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    with torch.no_grad():
        x[0, 0, 1, 2] = 5.0
    out = ops.roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), 1)
    out.sum().backward()
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 2] = 1.0
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_roi_pool_propagates_nan():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    out = ops.roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), 2)
    assert math.isnan(out[0, 0, 0, 0].item()) and (out[0, 0].flatten()[1:] == 0).all()
    # after a larger value in the same bin too; the gradient goes to the NaN's cell
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 9.0, float("nan")
    x.requires_grad_(True)
    out = ops.roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), 2)
    assert math.isnan(out[0, 0, 0, 0].item()) and (out[0, 0].flatten()[1:] == 0).all()
    out[0, 0, 0, 0].backward()
    assert x.grad[0, 0, 1, 1] == 1 and x.grad.sum() == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [1, 5, 37])
def test_roi_pool_values_and_argmax_match_oracle(channels, channels_last, dtype):
    """The CPU kernel pools all channels of a bin at once from a channels-innermost
    copy of the RoI (vector lanes, with partial vectors for 5 and 37 channels):
    values and argmax must follow the scan rules of the oracle, with ties (small
    integers) and NaNs (the first NaN wins, also after a larger value)."""
    g = torch.Generator().manual_seed(7 + channels)
    x = torch.randint(0, 4, (2, channels, 9, 11), generator=g).to(dtype)
    nan_at = torch.rand(x.shape, generator=g) < 0.03
    x[nan_at] = float("nan")
    x[0, -1, 5, 7] = 99.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, 0.0, 0, 10, 8], [1, 1.0, 1, 7, 9], [0, 2.0, 3, 9, 6], [1, 5.0, 5, 4, 4],
                         [0, -3.0, -2, 20, 30], [1, 12.0, 10, 15, 12]], dtype=dtype)
    out, argmax = torch.ops.visionops.roi_pool(x, rois, 1.0, 3, 2)
    ref_out, ref_argmax = roi_pool_argmax_reference(x, rois, (3, 2), 1.0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(argmax, ref_argmax)


def test_roi_pool_huge_rois_take_the_scalar_scan_with_the_same_rules():
    """A RoI whose channels-innermost copy would exceed 2^22 elements is pooled
    channel by channel instead: same values and argmax as the oracle."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 6, (1, 64, 260, 260), generator=g).float()
    x[0, 3, 100:104, 50] = float("nan")
    rois = torch.tensor([[0, 0.0, 0, 259, 259], [0, 10.0, 20, 40, 50]])
    out, argmax = torch.ops.visionops.roi_pool(x, rois, 1.0, 2, 3)
    ref_out, ref_argmax = roi_pool_argmax_reference(x, rois, (2, 3), 1.0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(argmax, ref_argmax)


# ---------------------------------------------------------------- gradients, opcheck, compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck(device, aligned):
    x, rois = make_case(7, 2, 3, 6, 7, 4, 0.5, False, dtype=torch.float64, device=device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, (2, 3), 0.5, -1, aligned), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_gradcheck(device):
    x, rois = make_case(8, 2, 3, 6, 7, 4, 0.5, False, dtype=torch.float64, device=device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.roi_pool(t, rois, (2, 3), 0.5), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, channels_last):
    x, rois = make_case(9, 2, 3, 8, 9, 5, 0.5, True, device=device, channels_last=channels_last)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.visionops.roi_align.default, (x, rois, 0.5, 2, 3, 2, True))
    torch.library.opcheck(torch.ops.visionops.roi_pool.default, (x, rois, 0.5, 2, 3))
    grad = torch.randn(5, 3, 2, 3, device=device)
    torch.library.opcheck(
        torch.ops.visionops._roi_align_backward.default, (grad, rois, 0.5, 2, 3, 2, 3, 8, 9, 2, True)
    )
    _, argmax = torch.ops.visionops.roi_pool(x.detach(), rois, 0.5, 2, 3)
    torch.library.opcheck(
        torch.ops.visionops._roi_pool_backward.default,
        (grad.contiguous(memory_format=argmax_format(argmax)), rois, argmax, 0.5, 2, 3, 2, 3, 8, 9),
    )


def argmax_format(t):
    return torch.channels_last if not t.is_contiguous() else torch.contiguous_format


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, rois = make_case(10, 2, 4, 10, 11, 6, 0.5, False, device=device)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]

    def f(t, boxes):
        a = ops.roi_align(t, boxes, 3, 0.5, 2, True)
        b = ops.roi_pool(t, boxes, (2, 3), 0.5)
        return a.sum() + b.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    f(x1, boxes).backward()
    compiled(x2, boxes).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    x, rois = make_case(11, 1, 3, 8, 8, 3, 1.0, False)
    compiled = torch.compile(lambda t, r: ops.roi_align(t, r, 2, 1.0, 2, False) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x, rois), ops.roi_align(x, rois, 2, 1.0, 2, False) * 2)


# ---------------------------------------------------------------- determinism and autocast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_deterministic_backward_is_bit_identical(device, channels_last, op):
    # many overlapping RoIs on one image: atomics would reorder the sums
    x, rois = make_case(12, 1, 8, 16, 16, 200, 1.0, False, device=device, channels_last=channels_last)
    fn = getattr(ops, op)
    args = ((4, 4), 1.0) + ((2, True) if op == "roi_align" else ())
    grad = torch.randn(200, 8, 4, 4, device=device)

    def grad_input():
        t = x.clone().requires_grad_(True)
        fn(t, rois, *args).backward(grad)
        return t.grad

    free = grad_input()
    torch.use_deterministic_algorithms(True)
    first, second = grad_input(), grad_input()
    assert torch.equal(first, second)
    torch.testing.assert_close(first, free, **FP32_TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_autocast_runs_float32_and_keeps_input_dtype(device, op):
    x, rois = make_case(13, 2, 4, 9, 9, 5, 1.0, False, device=device)
    fn = getattr(ops, op)
    low = torch.bfloat16
    with torch.autocast(device_type=device, dtype=low):
        out = fn(x, rois, 3, 1.0)
        out_low = fn(x.to(low), rois, 3, 1.0)
    assert out.dtype == torch.float32 and out_low.dtype == low
    torch.testing.assert_close(out, fn(x, rois, 3, 1.0))
    # the low-precision input runs in float32 on the same (rounded) values
    torch.testing.assert_close(out_low, fn(x.to(low).float(), rois, 3, 1.0).to(low))


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_empty_inputs(device, op):
    fn = getattr(ops, op)
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    out = fn(x, torch.zeros(0, 5, device=device), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # batch 0, zero channels, zero-size feature maps
    assert fn(torch.randn(0, 3, 5, 5, device=device), torch.zeros(0, 5, device=device), 2).shape == (0, 3, 2, 2)
    rois = torch.tensor([[0.0, 0, 0, 3, 3]], device=device)
    assert fn(torch.randn(1, 0, 5, 5, device=device), rois, 2).shape == (1, 0, 2, 2)
    out = fn(torch.randn(1, 2, 0, 5, device=device), rois, 2)
    assert out.shape == (1, 2, 2, 2) and (out == 0).all()
    # list form with an image that has no boxes
    out = fn(x, [torch.zeros(0, 4, device=device), torch.tensor([[0.0, 0, 4, 4]], device=device)], 2)
    assert out.shape == (1, 3, 2, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_box_list_equals_tensor_form_and_every_batch_index(device):
    x, rois = make_case(14, 3, 2, 8, 8, 9, 1.0, False, device=device)
    rois[:, 0] = torch.arange(9, device=device) % 3
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    order = torch.cat([torch.where(rois[:, 0] == i)[0] for i in range(3)])
    for fn in (ops.roi_align, ops.roi_pool):
        torch.testing.assert_close(fn(x, boxes, (1, 4)), fn(x, rois, (1, 4))[order])


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_fully_outside_give_zero(device):
    x = torch.randn(1, 2, 6, 6, device=device)
    rois = torch.tensor([[0, 20.0, 20, 30, 30], [0, -30, -30, -20, -20]], device=device)
    assert (ops.roi_align(x, rois, 2, 1.0, 2, True) == 0).all()
    assert (ops.roi_pool(x, rois, 2) == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_huge_and_non_finite_boxes_do_not_hang_or_crash(device):
    # a 1e7-pixel box with adaptive sampling asks for ~1e6 x 1e6 samples per bin;
    # only samples that can touch the map are visited
    x = torch.randn(1, 2, 6, 6, device=device)
    rois = torch.tensor(
        [[0, -1e7, -1e7, 1e7, 1e7], [0, float("nan"), 0, 3, 3], [0, 0, 0, float("inf"), 3]], device=device
    )
    out = ops.roi_align(x, rois, 2, 1.0, -1, False)
    assert torch.isfinite(out).all() and (out[1:] == 0).all()
    out = ops.roi_pool(x, rois, 2)
    assert torch.isfinite(out).all() and (out[1:] == 0).all()


# ---------------------------------------------------------------- bad input

BAD_INPUTS = [
    # (description, kwargs override, exception, message fragment)
    ("input 3-D", dict(input=torch.randn(3, 5, 5)), RuntimeError, "input must be a 4-D"),
    ("input integer", dict(input=torch.ones(1, 3, 5, 5, dtype=torch.int64)), RuntimeError, "floating-point"),
    ("input not a tensor", dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
    ("boxes [K, 4] tensor", dict(boxes=torch.zeros(2, 4)), ValueError, "boxes must be a Tensor[K, 5]"),
    ("boxes 1-D", dict(boxes=torch.zeros(5)), ValueError, "boxes must be a Tensor[K, 5]"),
    ("boxes list of [L, 5]", dict(boxes=[torch.zeros(2, 5)]), ValueError, "boxes[0] must be a Tensor[L, 4]"),
    ("boxes list of lists", dict(boxes=[[0.0, 0, 1, 1]]), TypeError, "boxes[0] must be a Tensor"),
    ("boxes not a tensor", dict(boxes="boxes"), TypeError, "boxes must be a Tensor[K, 5]"),
    ("boxes float64", dict(boxes=torch.zeros(1, 5, dtype=torch.float64)), RuntimeError, "rois must have the same dtype"),
    ("batch index too large", dict(boxes=torch.tensor([[1.0, 0, 0, 2, 2]])), RuntimeError, "batch index"),
    ("batch index negative", dict(boxes=torch.tensor([[-1.0, 0, 0, 2, 2]])), RuntimeError, "batch index"),
    ("batch index NaN", dict(boxes=torch.tensor([[float("nan"), 0, 0, 2, 2]])), RuntimeError, "batch index"),
    ("output_size 0", dict(output_size=0), ValueError, "output_size must be positive"),
    ("output_size negative pair", dict(output_size=(2, -1)), ValueError, "output_size must be positive"),
    ("output_size triple", dict(output_size=(2, 2, 2)), ValueError, "output_size must be an int or a pair"),
    ("output_size float", dict(output_size=2.5), TypeError, "output_size must be an int or a pair"),
    ("spatial_scale 0", dict(spatial_scale=0.0), RuntimeError, "spatial_scale must be a positive"),
    ("spatial_scale nan", dict(spatial_scale=float("nan")), RuntimeError, "spatial_scale must be a positive"),
]


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
@pytest.mark.parametrize("desc,override,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(op, desc, override, exc, message):
    kwargs = dict(input=torch.randn(1, 3, 5, 5), boxes=torch.tensor([[0.0, 0, 0, 2, 2]]), output_size=2)
    kwargs.update(override)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]")):
        getattr(ops, op)(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_boxes_on_another_device_raise():
    with pytest.raises(RuntimeError, match="rois must be on the same device"):
        ops.roi_align(torch.randn(1, 1, 4, 4, device="cuda"), torch.zeros(1, 5), 2)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_out_of_range_batch_index_pools_to_zero():
    # documented: CUDA cannot check without a host sync; such RoIs give zeros
    x = torch.randn(1, 2, 4, 4, device="cuda", requires_grad=True)
    rois = torch.tensor([[3.0, 0, 0, 2, 2], [0, 0, 0, 2, 2]], device="cuda")
    out = ops.roi_align(x, rois, 2)
    assert (out[0] == 0).all() and (out[1] != 0).any()
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(ops.roi_align(x, rois[1:], 2).sum(), x)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_cuda_matches_cpu_on_detector_sizes(op):
    x, rois = make_case(15, 2, 64, 50, 68, 512, 1 / 16, True)
    fn = getattr(ops, op)
    args = (7, 1 / 16) + ((2, True) if op == "roi_align" else ())
    xc = x.clone().requires_grad_(True)
    xg = x.cuda().requires_grad_(True)
    out_c, out_g = fn(xc, rois, *args), fn(xg, rois.cuda(), *args)
    # CPU folds samples into per-cell weights first, CUDA sums sample by sample:
    # with up to 16 products of O(1) values per output the float32 results differ
    # by a few 1e-6 typically; over 1.6M outputs the worst seen was 2e-5.
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-5, atol=5e-5)
    grad = torch.randn_like(out_c)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("device", DEVICES)
def test_modules_match_torchvision_modules(device):
    x, rois = make_case(16, 2, 3, 12, 12, 7, 0.5, False, device=device)
    torch.testing.assert_close(
        vnn.RoIAlign((3, 2), 0.5, 2, True)(x, rois), tv.ops.RoIAlign((3, 2), 0.5, 2, True)(x, rois), **FP32_TOL
    )
    torch.testing.assert_close(vnn.RoIPool(3, 0.5)(x, rois), tv.ops.RoIPool(3, 0.5)(x, rois))
    assert "spatial_scale=0.5" in repr(vnn.RoIAlign(3, 0.5, 2))


@pytest.mark.parametrize("device", DEVICES)
@given(seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 4), n_images=st.integers(1, 2))
def test_multiscale_roi_align_matches_torchvision(device, seed, levels, n_images):
    g = torch.Generator().manual_seed(seed)
    names = [f"p{i + 2}" for i in range(levels)]
    image_shapes = [(256, 200), (240, 256)][:n_images]
    feats = {
        name: torch.randn(n_images, 4, 256 // 2 ** (i + 2), 256 // 2 ** (i + 2), generator=g).to(device)
        for i, name in enumerate(names)
    }
    feats["pool"] = torch.randn(n_images, 4, 2, 2).to(device)  # not in featmap_names: must be ignored
    boxes = [visionops.data.random_boxes(6, (240, 200), min_size=2, max_size=230, generator=g).to(device)
             for _ in range(n_images)]
    ours = vnn.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, image_shapes)
    ref = tv.ops.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, image_shapes)
    torch.testing.assert_close(ours, ref, **FP32_TOL)
