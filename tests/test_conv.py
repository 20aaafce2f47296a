"""conv family: conv2d and depthwise_conv2d against torch.nn.functional.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, HAS_CUDA
from hypothesis import given
from hypothesis import strategies as st
from reference import conv as ref_conv

from visionops import nn as vnn
from visionops import ops


@pytest.fixture(autouse=True)
def _reference_without_onednn():
    # The F.conv2d reference runs without oneDNN: torch 2.14.1's oneDNN grouped
    # convolution segfaults on some float32 channels_last inputs of width 1, e.g.
    # F.conv2d(x[1,8,19,1] channels_last, w[16,1,4,2], b, (1,2), (3,7), (3,2), 8),
    # without visionops involved. visionops does not use oneDNN.
    with torch.backends.mkldnn.flags(enabled=False):
        yield

# torch warns that it copies the input for padding="same" with even kernels
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# float32: both sides sum the same <= 9*9*4 = 324 products of O(1) values in a
# different order (torch: oneDNN / GEMM blocking, ours: taps in order with FMA);
# the rounding difference is a few ulp of the partial sums, ~1e-6 relative to
# sum(|terms|) <= ~100, so 1e-4 leaves a wide margin while still catching a
# wrong tap (an error of O(1)).
FP32_TOL = dict(rtol=1e-4, atol=1e-4)
# float64: same argument with eps 1e-16
FP64_TOL = dict(rtol=1e-10, atol=1e-10)


def _span(k, d):
    return d * (k - 1) + 1


@st.composite
def conv_cases(draw, depthwise_only=False, max_k=9):
    """A random valid F.conv2d configuration."""
    kind = "depthwise" if depthwise_only else draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if kind == "dense":
        groups, cin, cout = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "depthwise":
        cin = draw(st.integers(1, 6))
        groups, cout = cin, cin * draw(st.integers(1, 3))
    else:
        groups = draw(st.sampled_from([2, 3]))
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if mode == "same":
        sh = sw = 1
        padding, pads = "same", (0, 0)
    elif mode == "valid":
        padding, pads = "valid", (0, 0)
    elif mode == "int":
        p = draw(st.integers(0, 4))
        padding, pads = p, (p, p)
    else:
        pads = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
        padding = pads
    # input at least as large as the dilated kernel minus the padding (odd sizes welcome)
    h = max(1, _span(kh, dh) - 2 * pads[0]) + draw(st.integers(0, 7))
    w = max(1, _span(kw, dw) - 2 * pads[1]) + draw(st.integers(0, 7))
    return dict(
        n=draw(st.sampled_from([0, 1, 2])),
        cin=cin,
        cout=cout,
        groups=groups,
        k=(kh, kw),
        stride=(sh, sw),
        dilation=(dh, dw),
        padding=padding,
        h=h,
        w=w,
        bias=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_tensors(case, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["n"], case["cin"], case["h"], case["w"], generator=g, dtype=torch.float64)
    w = torch.randn(case["cout"], case["cin"] // case["groups"], *case["k"], generator=g, dtype=torch.float64)
    b = torch.randn(case["cout"], generator=g, dtype=torch.float64) if case["bias"] else None
    x, w = x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)
    b = b.to(device=device, dtype=dtype) if b is not None else None
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


def conv_args(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])


def run_both(fn_ours, fn_ref, tensors, grad_seed=0):
    """Forward and all gradients of both functions on the same inputs."""
    ours_in = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    ref_in = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out, ref = fn_ours(*ours_in), fn_ref(*ref_in)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    g = g.to(device=ref.device, dtype=ref.dtype)
    out.backward(g)
    ref.backward(g)
    grads = [(a.grad, b.grad) for a, b in zip(ours_in, ref_in) if a is not None]
    return out, ref, grads


def expected_format(x):
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


# ---------------------------------------------------------------- against F.conv2d


@pytest.mark.parametrize("device", DEVICES)
@given(case=conv_cases())
def test_conv2d_matches_torch(device, case):
    x, w, b = make_tensors(case, device=device)
    args = conv_args(case)
    out, ref, grads = run_both(
        lambda x, w, b: ops.conv2d(x, w, b, groups=case["groups"], **args),
        lambda x, w, b: F.conv2d(x, w, b, groups=case["groups"], **args),
        (x, w, b),
    )
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **FP32_TOL)
    assert out.is_contiguous(memory_format=expected_format(x))
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, **FP32_TOL)


@pytest.mark.parametrize("device", DEVICES)
@given(case=conv_cases(depthwise_only=True), activation=st.sampled_from([None, "relu", "relu6"]))
def test_depthwise_matches_torch(device, case, activation):
    x, w, b = make_tensors(case, device=device)
    if activation == "relu6":
        x = x * 4  # make outputs reach both sides of (0, 6)
    args = conv_args(case)
    act = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6}[activation]
    out, ref, grads = run_both(
        lambda x, w, b: ops.depthwise_conv2d(x, w, b, activation=activation, **args),
        lambda x, w, b: act(F.conv2d(x, w, b, groups=case["cin"], **args)),
        (x, w, b),
    )
    torch.testing.assert_close(out, ref, **FP32_TOL)
    assert out.is_contiguous(memory_format=expected_format(x))
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, **FP32_TOL)


@given(case=conv_cases(max_k=5))
def test_float64_matches_torch_float64(case):
    x, w, b = make_tensors(case, dtype=torch.float64)
    args = conv_args(case)
    out, ref, grads = run_both(
        lambda x, w, b: ops.conv2d(x, w, b, groups=case["groups"], **args),
        lambda x, w, b: F.conv2d(x, w, b, groups=case["groups"], **args),
        (x, w, b),
    )
    torch.testing.assert_close(out, ref, **FP64_TOL)
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, **FP64_TOL)


# sizes that exercise every CPU code path: 4/2/1-vector row blocks and their
# tails (NCHW), channel vectors plus a scalar channel tail (channels_last: 20 =
# 16 + 4), strides 1 and 2, large kernels, multiplier 2
MOBILE_SHAPES = [
    # (n, c, h, w, k, stride, padding, multiplier)
    (2, 20, 37, 45, 3, 1, 1, 1),
    (2, 20, 37, 45, 3, 2, 1, 1),
    (1, 16, 30, 71, 5, 1, 2, 1),
    (1, 8, 29, 29, 7, 2, 3, 2),
    (1, 12, 28, 28, 13, 1, 6, 1),
    (3, 5, 14, 14, 3, 1, 0, 3),
    # images of >= 1 MB (float32): channels_last 3x3 prefetches the next input row,
    # k >= 5 writes its output with streaming stores
    (1, 32, 96, 96, 3, 1, 1, 1),
    (1, 64, 64, 64, 5, 1, 2, 1),
    (1, 64, 64, 64, 7, 1, 3, 1),
    # stride-2 NCHW rows copied by every-other blocks of 16 + 8 (56 wide) and 8 + 4 (28 wide)
    (1, 8, 56, 56, 3, 2, 1, 1),
    (2, 16, 28, 28, 3, 2, 1, 1),
    (2, 24, 14, 14, 3, 1, 1, 1),
    # NCHW outputs narrower than 10 run the channels_last kernels on a copy transposed
    # in 16 x 16 blocks: channel and pixel counts off the block edges
    (2, 16, 13, 13, 3, 2, 1, 1),
    (1, 8, 40, 41, 5, 2, 2, 1),
    (3, 37, 9, 9, 3, 1, 1, 1),
    (2, 20, 7, 7, 5, 2, 2, 1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", MOBILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_mobile_sizes(device, channels_last, shape):
    n, c, h, w, k, s, p, m = shape
    case = dict(n=n, cin=c, cout=c * m, groups=c, k=(k, k), stride=(s, s), dilation=(1, 1), padding=p, h=h, w=w,
                bias=True, channels_last=channels_last, seed=sum(shape))
    x, wt, b = make_tensors(case, device=device)
    out, ref, grads = run_both(
        lambda x, w, b: ops.depthwise_conv2d(x, w, b, s, p, activation="relu6"),
        lambda x, w, b: F.relu6(F.conv2d(x, w, b, s, p, groups=c)),
        (x, wt, b),
    )
    torch.testing.assert_close(out, ref, **FP32_TOL)
    assert out.is_contiguous(memory_format=expected_format(x))
    for ours, theirs in grads:
        # weight gradients sum N*OH*OW ~ 3000 products: scale the tolerance by sqrt(3000 / 300)
        torch.testing.assert_close(ours, theirs, rtol=3e-4, atol=3e-4)


def test_conv2d_routes_depthwise_and_keeps_semantics():
    # groups == C with weight [C*m, 1, k, k] runs the depthwise kernel: same result as the dense path
    x = torch.randn(2, 6, 11, 9)
    w = torch.randn(12, 1, 3, 3)
    out = ops.conv2d(x, w, None, 2, "valid", 1, groups=6)
    torch.testing.assert_close(out, ops.depthwise_conv2d(x, w, None, 2, 0), rtol=0, atol=0)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 2, "valid", 1, 6), **FP32_TOL)


def test_unbatched_input_like_torch():
    x, w = torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(ops.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1), **FP32_TOL)


# ---------------------------------------------------------------- gradcheck, opcheck, compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "activation,stride,multiplier,channels_last",
    [(None, 1, 1, False), ("relu", 2, 2, False), ("relu6", 1, 2, True), (None, 2, 1, True)],
)
def test_depthwise_gradcheck(device, activation, stride, multiplier, channels_last):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(3 * multiplier, 1, 3, 2, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(3 * multiplier, generator=g, dtype=torch.float64).to(device)
    if activation == "relu6":
        x = x * 3
    inputs = tuple(t.requires_grad_(True) for t in (x, w, b))
    # finite differences stay away from the activation's kinks with these random values
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.depthwise_conv2d(x, w, b, stride, (1, 2), (2, 1), activation), inputs, eps=1e-6
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups,padding,stride", [(1, 1, 1), (2, "same", 1), (1, (0, 2), 2)])
def test_conv2d_gradcheck(device, groups, padding, stride):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    w = torch.randn(6, 4 // groups, 2, 3, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    b = torch.randn(6, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, stride, padding, (1, 2), groups), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, channels_last):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 8, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    wd = torch.randn(8, 1, 3, 3, generator=g).to(device).requires_grad_(True)
    wc = torch.randn(6, 2, 3, 3, generator=g).to(device).requires_grad_(True)
    b8 = torch.randn(8, generator=g).to(device).requires_grad_(True)
    b6 = torch.randn(6, generator=g).to(device).requires_grad_(True)
    pad = [1, 2, 0, 1]
    torch.library.opcheck(torch.ops.visionops.depthwise_conv2d.default, (x, wd, b8, [2, 1], pad, [1, 2], 2))
    torch.library.opcheck(torch.ops.visionops.depthwise_conv2d.default, (x, wd, None, [1, 1], pad, [1, 1], 0))
    torch.library.opcheck(torch.ops.visionops.conv2d.default, (x, wc, b6, [2, 1], pad, [1, 2], 2))
    xd = x.detach()
    out = torch.ops.visionops.depthwise_conv2d(xd, wd.detach(), b8.detach(), [2, 1], pad, [1, 2], 2)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.visionops._depthwise_conv2d_backward.default,
        (grad, xd, wd.detach(), out, [2, 1], pad, [1, 2], 2, [True, True, True]),
    )
    out = torch.ops.visionops.conv2d(xd, wc.detach(), None, [2, 1], pad, [1, 2], 2)
    torch.library.opcheck(
        torch.ops.visionops._conv2d_backward.default,
        (torch.randn_like(out), xd, wc.detach(), [2, 1], pad, [1, 2], 2, [True, False, True]),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 10, 10, generator=g).to(device)
    wd, bd = torch.randn(8, 1, 3, 3, generator=g).to(device), torch.randn(8, generator=g).to(device)
    wc = torch.randn(5, 8, 1, 1, generator=g).to(device)

    def f(t, wd, wc):
        y = ops.depthwise_conv2d(t, wd, bd, 1, "same", activation="relu6")
        return ops.conv2d(y, wc, None, 1, 0).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    ins1 = [t.clone().requires_grad_(True) for t in (x, wd, wc)]
    ins2 = [t.clone().requires_grad_(True) for t in (x, wd, wc)]
    f(*ins1).backward()
    compiled(*ins2).backward()
    for a, b in zip(ins1, ins2):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(3, 1, 5, 5)
    compiled = torch.compile(lambda t, w: ops.depthwise_conv2d(t, w, padding=2) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), ops.depthwise_conv2d(x, w, padding=2) * 2)


# ---------------------------------------------------------------- 16-bit, autocast, determinism


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("op", ["depthwise", "conv2d"])
def test_half_precision_matches_float32(device, dtype, tol, op):
    # Inputs are rounded to 16 bits first and the float32 reference runs on the
    # same values; accumulation is in float32, so what is left is rounding the
    # result once: 2^-11 (fp16) / 2^-8 (bf16) relative. Values here are O(1..10),
    # hence an absolute margin of a few units of that rounding. (For conv2d the
    # GEMM library itself may round partial sums to 16 bits; still well inside.)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 17, 19, generator=g).to(device=device, dtype=dtype)
    if op == "depthwise":
        w = (torch.randn(16, 1, 5, 5, generator=g) / 5).to(device=device, dtype=dtype)
        fn = lambda x, w, b: ops.depthwise_conv2d(x, w, b, 1, 2, activation="relu")  # noqa: E731
    else:
        w = (torch.randn(16, 4, 3, 3, generator=g) / 6).to(device=device, dtype=dtype)
        fn = lambda x, w, b: ops.conv2d(x, w, b, 2, 1, groups=2)  # noqa: E731
    b = torch.randn(16, generator=g).to(device=device, dtype=dtype)
    low = [t.clone().requires_grad_(True) for t in (x, w, b)]
    high = [t.detach().float().requires_grad_(True) for t in (x, w, b)]
    out, ref = fn(*low), fn(*high)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.randn(ref.shape, generator=g).to(device=device, dtype=dtype)
    out.backward(grad)
    ref.backward(grad.float())
    for a, r in zip(low, high):
        assert a.grad.dtype == dtype
        # weight/bias gradients sum ~600 products: relative to their magnitude
        scale = r.grad.abs().max().item()
        torch.testing.assert_close(a.grad.float(), r.grad, rtol=tol, atol=tol * max(1.0, scale))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel,channels_last", [(3, False), (1, False), (1, True)], ids=["3x3", "1x1", "1x1_cl"])
def test_half_precision_weight_gradient_sums_the_batch_in_float32(device, dtype, kernel, channels_last):
    """The conv2d weight gradient is a sum over the batch. Here the images'
    terms cancel (the same image with gradients of alternating sign, plus a
    small part that survives): had each image's term been rounded to 16 bits
    before the sum, the error would be ~sqrt(64) roundings of the large terms,
    far above one rounding of the small result that a float32 sum leaves.
    1x1: the whole-batch GEMM path of pointwise convolutions."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 4, 12, 12, generator=g).expand(64, -1, -1, -1).contiguous()
    w = torch.randn(6, 4, kernel, kernel, generator=g) / 6
    size = 13 - kernel
    sign = torch.tensor([1.0, -1.0]).repeat(32).view(64, 1, 1, 1)
    grad = torch.randn(1, 6, size, size, generator=g) * sign + 0.01 * torch.randn(64, 6, size, size, generator=g)
    x, w, grad = (t.to(device=device, dtype=dtype) for t in (x, w, grad))
    if channels_last:
        x, grad = x.contiguous(memory_format=torch.channels_last), grad.contiguous(memory_format=torch.channels_last)
    (gw,) = torch.autograd.grad(ops.conv2d(x, w.requires_grad_(True)), w, grad)
    w32 = w.detach().float().requires_grad_(True)
    (ref,) = torch.autograd.grad(ops.conv2d(x.float(), w32), w32, grad.float())
    eps = torch.finfo(dtype).eps
    # one rounding of the result, plus float32 summation noise of 57600 terms of size ~3
    torch.testing.assert_close(gw.float(), ref, rtol=eps, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_lower_precision_like_torch(device):
    x, w = torch.randn(1, 4, 8, 8, device=device), torch.randn(4, 1, 3, 3, device=device)
    low = torch.bfloat16
    with torch.autocast(device_type=device, dtype=low):
        ours = ops.depthwise_conv2d(x, w, padding=1)
        theirs = F.conv2d(x, w, padding=1, groups=4)
        dense = ops.conv2d(x, torch.randn(2, 4, 3, 3, device=device))
    assert ours.dtype == theirs.dtype == dense.dtype == low
    # same values as torch's autocast conv: both round x and w to bf16, then accumulate
    # in float32 (torch) or float32 opmath (ours); the bf16 output rounding (2^-8
    # relative) dominates
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-7, atol=2**-7 * theirs.abs().max().item())
    # float64 inputs are left alone, as torch's autocast does
    x64, w64 = x.double(), w.double()
    with torch.autocast(device_type=device, dtype=low):
        ours64 = ops.depthwise_conv2d(x64, w64, padding=1)
        theirs64 = F.conv2d(x64, w64, padding=1, groups=4)
        dense64 = ops.conv2d(x64, torch.randn(2, 4, 3, 3, device=device, dtype=torch.float64))
    assert ours64.dtype == theirs64.dtype == dense64.dtype == torch.float64
    torch.testing.assert_close(ours64, theirs64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["depthwise", "conv2d"])
def test_deterministic_backward_is_bit_identical(device, channels_last, op):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 32, 20, 20, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if op == "depthwise":
        w = torch.randn(64, 1, 5, 5, generator=g).to(device)
        fn = lambda x, w: ops.depthwise_conv2d(x, w, None, 2, 2, activation="relu")  # noqa: E731
    else:
        w = torch.randn(16, 16, 3, 3, generator=g).to(device)
        fn = lambda x, w: ops.conv2d(x, w, None, 1, 1, groups=2)  # noqa: E731

    def grads():
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = fn(xs, ws)
        out.backward(torch.ones_like(out))
        return xs.grad, ws.grad

    free = grads()
    torch.use_deterministic_algorithms(True)
    first, second = grads(), grads()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = grads()
    finally:
        torch.set_num_threads(threads)
    for a, b, c, d in zip(first, second, single, free):
        assert torch.equal(a, b)
        # our depthwise kernels also give the same bits on any thread count; conv2d's
        # GEMM (the CPU BLAS) may block its sums by thread count
        if op == "depthwise":
            assert torch.equal(a, c)
        torch.testing.assert_close(a, d, **FP32_TOL)
        torch.testing.assert_close(a, c, **FP32_TOL)


# ---------------------------------------------------------------- edge cases and bad input


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last_input_nchw_grad", "nchw_input_cl_grad"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_whole_batch_gemm_matches_torch(device, dtype, layout, bias):
    """1x1, stride 1, no padding, one group: the forward and gradients run as
    whole-batch GEMMs (one on the [N*H*W, C] pixel rows for channels_last, a
    batched one otherwise); results, gradients and layouts as F.conv2d, whatever
    layout the output gradient comes in."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 6, 9, generator=g, dtype=dtype).to(device)
    w = torch.randn(7, 5, 1, 1, generator=g, dtype=dtype).to(device)
    b = torch.randn(7, generator=g, dtype=dtype).to(device) if bias else None
    grad = torch.randn(3, 7, 6, 9, generator=g, dtype=dtype).to(device)
    if layout.startswith("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout.endswith("cl_grad"):
        grad = grad.contiguous(memory_format=torch.channels_last)
    out, ref, grads = run_both(lambda x, w, b: ops.conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b), (x, w, b))
    tol = FP32_TOL if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    assert out.is_contiguous(memory_format=expected_format(x))
    xs, ws = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    gx, gw = torch.autograd.grad(ops.conv2d(xs, ws, b), [xs, ws], grad)
    rx, rw = torch.autograd.grad(F.conv2d(xs, ws, b), [xs, ws], grad)
    torch.testing.assert_close(gx, rx, **tol)
    torch.testing.assert_close(gw, rw, **tol)
    assert gx.is_contiguous(memory_format=expected_format(x))
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "n,c,oc,size,kernel,stride,padding,dilation",
    [(3, 2, 3, (100, 90), (3, 3), 1, 1, 1),  # 9000 output pixels per image: one image per GEMM chunk
     (5, 3, 4, (10, 11), (2, 4), 1, "same", 1),  # several images per chunk; uneven "same" padding
     (2, 4, 5, (17, 13), (5, 3), (2, 1), (0, 2), (1, 2))],  # strides, dilation, a padding-only column
)
def test_channels_last_patch_rows_match_torch(dtype, n, c, oc, size, kernel, stride, padding, dilation):
    """CPU conv2d with one group on a channels_last input runs as GEMMs over
    patch rows (chunks of whole images); results and gradients as F.conv2d, the
    same bits with 1 and 3 threads."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, c, *size, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(oc, c, *kernel, generator=g, dtype=dtype)
    b = torch.randn(oc, generator=g, dtype=dtype)
    args = dict(stride=stride, padding=padding, dilation=dilation)
    out, ref, grads = run_both(lambda x, w, b: ops.conv2d(x, w, b, **args), lambda x, w, b: F.conv2d(x, w, b, **args),
                               (x, w, b))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else FP32_TOL
    torch.testing.assert_close(out, ref, **tol)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for ours, theirs in grads:
        torch.testing.assert_close(ours, theirs, **tol)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            xs, ws = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
            y = ops.conv2d(xs, ws, b, **args)
            results.append([y, *torch.autograd.grad(y, [xs, ws], torch.ones_like(y))])
    finally:
        torch.set_num_threads(threads)
    for a, bb in zip(*results):
        assert torch.equal(a, bb)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_batch_and_channels(device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(0, 4, 6, 6, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    w = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    out = ops.depthwise_conv2d(x, w, b, padding=1)
    assert out.shape == (0, 8, 6, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape and (w.grad == 0).all() and (b.grad == 0).all()
    wc = torch.randn(4, 2, 3, 3, device=device, requires_grad=True)
    out = ops.conv2d(x, wc, None, 1, 1, groups=2)
    assert out.shape == (0, 4, 6, 6)
    out.sum().backward()
    assert (wc.grad == 0).all()
    # zero output channels
    assert ops.conv2d(torch.randn(2, 4, 5, 5, device=device), torch.randn(0, 4, 3, 3, device=device)).shape == (
        2, 0, 3, 3)


def test_padding_only_input_gives_bias():
    # a 0-width input padded to the kernel size: every output reads only zeros,
    # so it equals the bias (F.conv2d refuses such inputs; the padded map is [3, 4])
    x = torch.randn(1, 2, 3, 0)
    w, b = torch.randn(2, 1, 3, 3), torch.tensor([1.5, -2.0])
    out = ops.depthwise_conv2d(x, w, b, 1, (1, 2))
    torch.testing.assert_close(out, b.view(1, 2, 1, 1).expand(1, 2, 3, 2), rtol=0, atol=0)
    out = ops.conv2d(x, w.view(1, 2, 3, 3), b[:1], 1, (1, 2))
    torch.testing.assert_close(out, b[:1].view(1, 1, 1, 1).expand(1, 1, 3, 2), rtol=0, atol=0)



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k,stride,padding,multiplier", [(1, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), (5, 1, 2, 1),
                                                          (3, 3, 0, 1), (2, 3, 1, 1), (7, 2, 3, 1)])
def test_non_finite_weights_skip_the_padding(device, channels_last, k, stride, padding, multiplier):
    # a diverged training's inf / NaN weights: the zero padding and the outputs
    # no input pixel feeds contribute nothing (not 0 * inf = NaN), so NaNs stay
    # where a non-finite weight meets real data; float64 oracle (torch's kernels
    # disagree among themselves here, see tests/reference/conv.py)
    C = 4
    x = torch.randn(2, C, 9, 8, device=device, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C * multiplier, 1, k, k, device=device, dtype=torch.float64)
    w[0, 0, 0, 0] = float("inf")
    w[1, 0, -1, -1] = float("nan")
    w[2, 0, k // 2, 0] = -float("inf")
    xa = x.clone().requires_grad_()
    out = ops.depthwise_conv2d(xa, w, None, stride, padding)
    expected = ref_conv.depthwise_forward(x.cpu().numpy(), w.cpu().numpy(), stride, padding)
    torch.testing.assert_close(out.cpu(), torch.from_numpy(expected), equal_nan=True)
    go = torch.randn_like(out)
    (ga,) = torch.autograd.grad(out, xa, go)
    expected = ref_conv.depthwise_grad_input(go.cpu().numpy(), w.cpu().numpy(), x.shape, stride, padding)
    torch.testing.assert_close(ga.cpu(), torch.from_numpy(expected), equal_nan=True)
    assert torch.isnan(ga).any() and not torch.isnan(ga).all()

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k,stride,padding,multiplier", [(3, 2, 0, 1), (3, 1, 1, 2), (5, 1, 2, 1), (3, 2, 1, 1)])
def test_non_finite_inputs_in_the_weight_gradient(device, channels_last, k, stride, padding, multiplier):
    # an inf in the last input column, which no output reads at (3, 2, 0) (the
    # NCHW kernel's pitch-space sums would meet it as 0 * inf there), and a NaN
    # in one plane that outputs do read: the weight gradient takes only the
    # products an output makes, against the float64 oracle
    C = 4
    x = torch.randn(2, C, 9, 8, device=device, dtype=torch.float64)
    x[0, 0, 3, -1] = float("inf")
    x[1, 2, 4, 4] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C * multiplier, 1, k, k, device=device, dtype=torch.float64, requires_grad=True)
    out = ops.depthwise_conv2d(x, w, None, stride, padding)
    go = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, w, go)
    expected = ref_conv.depthwise_grad_weight(go.cpu().numpy(), x.cpu().numpy(), tuple(w.shape), stride, padding)
    torch.testing.assert_close(gw.cpu(), torch.from_numpy(expected), equal_nan=True)
    # channel 1 (or its outputs) saw neither value: finite
    assert torch.isfinite(gw[multiplier : 2 * multiplier]).all() and torch.isnan(gw).any()


# The NCHW forward's row-reuse blocks (stride 1 along rows, row dilation 1,
# kernels of >= 5 rows; conv_cpu_kernels.inc: flat_conv_reuse): blocks of 4 or 5
# output rows x 1-4 vectors, so heights that leave a partial last block (1, 7,
# 23), widths of one vector, of several column blocks and with a tail (9, 28,
# 56, 100, 131), kernel widths unrolled at compile time (5, 7, 13), taken at run
# time (6, 3) or wider than a vector (17: tap groups), column strides and
# dilations, multiplier 2, and an inf that must reach only the outputs that read it.
REUSE_CASES = [
    # (h, w, kh, kw, stride, padding, dilation, multiplier)
    (23, 56, 5, 5, 1, 2, 1, 1),
    (28, 28, 7, 7, 1, 3, 1, 1),
    (7, 100, 13, 13, 1, 6, 1, 1),
    (1, 131, 5, 7, 1, (2, 3), 1, 2),
    (30, 9, 6, 3, 1, 2, 1, 1),
    (20, 40, 5, 17, 1, (2, 8), 1, 1),
    (19, 37, 7, 5, (1, 2), 3, (1, 2), 1),
    (16, 45, 9, 6, (1, 3), 4, 1, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", REUSE_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_row_reuse_forward_matches_float64(dtype, case):
    h, w_, kh, kw, stride, padding, dilation, m = case
    g = torch.Generator().manual_seed(h * 1000 + w_)
    C = 3
    x = torch.randn(2, C, h, w_, generator=g, dtype=torch.float64).to(dtype)
    x[1, 2, h // 2, w_ // 3] = float("inf")
    w = torch.randn(C * m, 1, kh, kw, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(C * m, generator=g, dtype=torch.float64).to(dtype)
    for activation in (None, "relu"):
        out = ops.depthwise_conv2d(x, w, b, stride, padding, dilation, activation=activation)
        ref = F.conv2d(x.double(), w.double(), b.double(), stride, padding, dilation, C)
        if activation == "relu":
            ref = ref.relu()
        # float32 / bfloat16 accumulate in float32: <= 13*17 products of O(1)
        # values, a few ulp of float32 each (and bfloat16's output rounding)
        tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(out.double(), ref.to(dtype).double(), rtol=tol, atol=tol, equal_nan=True)
        # the inf reaches the outputs whose window holds it (inf or nan there), no others
        assert (~torch.isfinite(out) == ~torch.isfinite(ref)).all()


BAD_INPUTS = [
    # (description, op, kwargs override, exception, message fragment)
    ("input 2-D", "conv2d", dict(input=torch.randn(5, 5)), RuntimeError, "input must be a 4-D"),
    ("input 5-D", "depthwise", dict(input=torch.randn(1, 1, 4, 5, 5)), RuntimeError, "input must be a 4-D"),
    ("input integer", "conv2d", dict(input=torch.ones(1, 4, 5, 5, dtype=torch.int64)), RuntimeError, "floating-point"),
    ("input not a tensor", "conv2d", dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
    ("weight 3-D", "conv2d", dict(weight=torch.randn(4, 3, 3)), RuntimeError, "weight must be a 4-D"),
    ("weight float64", "conv2d", dict(weight=torch.randn(4, 4, 3, 3, dtype=torch.float64)), RuntimeError,
     "weight must have the same dtype"),
    ("channel mismatch", "conv2d", dict(weight=torch.randn(4, 3, 3, 3)), RuntimeError,
     "weight.size(1) must be in_channels / groups"),
    ("groups do not divide C", "conv2d", dict(groups=3), RuntimeError, "in_channels (4) must be divisible by groups"),
    ("groups do not divide OC", "conv2d", dict(weight=torch.randn(3, 2, 3, 3), groups=2), RuntimeError,
     "out_channels (3) must be divisible by groups"),
    ("groups 0", "conv2d", dict(groups=0), RuntimeError, "groups must be positive"),
    ("depthwise weight not [C*m, 1]", "depthwise", dict(weight=torch.randn(4, 2, 3, 3)), RuntimeError,
     "weight must have shape [C * multiplier, 1, kH, kW]"),
    ("depthwise multiplier not integral", "depthwise", dict(weight=torch.randn(6, 1, 3, 3)), RuntimeError,
     "weight must have shape [C * multiplier, 1, kH, kW]"),
    ("kernel larger than padded input", "conv2d", dict(weight=torch.randn(4, 4, 7, 7)), RuntimeError,
     "is larger than the padded input"),
    ("dilated kernel too large", "depthwise", dict(dilation=3), RuntimeError, "is larger than the padded input"),
    ("stride 0", "conv2d", dict(stride=0), ValueError, "stride must be positive"),
    ("stride negative pair", "depthwise", dict(stride=(1, -2)), ValueError, "stride must be positive"),
    ("dilation 0", "conv2d", dict(dilation=0), ValueError, "dilation must be positive"),
    ("padding negative", "conv2d", dict(padding=-1), ValueError, "padding must be non-negative"),
    ("padding bad string", "conv2d", dict(padding="full"), ValueError, "padding must be an int, a pair"),
    ("same with stride", "depthwise", dict(padding="same", stride=2), ValueError, "not supported for strided"),
    ("stride float", "conv2d", dict(stride=1.5), TypeError, "stride must be an int or a pair"),
    ("bias wrong size", "conv2d", dict(bias=torch.randn(3)), RuntimeError, "bias must be a 1-D tensor of out_channels"),
    ("activation unknown", "depthwise", dict(activation="gelu"), ValueError, "activation must be None"),
]


@pytest.mark.parametrize("desc,op,override,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(desc, op, override, exc, message):
    kwargs = dict(input=torch.randn(1, 4, 5, 5), weight=torch.randn(4, 1 if op == "depthwise" else 4, 3, 3))
    kwargs.update(override)
    fn = ops.depthwise_conv2d if op == "depthwise" else ops.conv2d
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(
            ")", r"\)").replace("*", r"\*")):
        fn(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_weight_on_another_device_raises():
    with pytest.raises(RuntimeError, match="weight must be on the same device"):
        ops.depthwise_conv2d(torch.randn(1, 2, 4, 4, device="cuda"), torch.randn(2, 1, 3, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_cpu_on_mobilenet_sizes(channels_last):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 144, 56, 56, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(144, 1, 7, 7, generator=g) / 7, torch.randn(144, generator=g)
    cpu = [t.clone().requires_grad_(True) for t in (x, w, b)]
    gpu = [t.cuda().requires_grad_(True) for t in (x, w, b)]
    out_c = ops.depthwise_conv2d(*cpu, 2, 3, activation="relu6")
    out_g = ops.depthwise_conv2d(*gpu, 2, 3, activation="relu6")
    torch.testing.assert_close(out_g.cpu(), out_c, **FP32_TOL)
    grad = torch.randn(out_c.shape, generator=g)
    out_c.backward(grad)
    out_g.backward(grad.cuda())
    for a, r in zip(gpu, cpu):
        scale = max(1.0, r.grad.abs().max().item())
        torch.testing.assert_close(a.grad.cpu(), r.grad, rtol=1e-4, atol=1e-4 * scale)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("device", DEVICES)
def test_modules_match_torch_modules_with_same_state_dict(device):
    torch.manual_seed(8)
    ref = torch.nn.Conv2d(6, 9, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), groups=3).to(device)
    ours = vnn.Conv2d(6, 9, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), groups=3).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 11, 12, device=device)
    torch.testing.assert_close(ours(x), ref(x), **FP32_TOL)

    ref_dw = torch.nn.Conv2d(6, 12, 5, stride=1, padding="same", groups=6).to(device)
    dw = vnn.DepthwiseConv2d(6, 5, padding="same", channel_multiplier=2, activation="relu6").to(device)
    assert {k: v.shape for k, v in dw.state_dict().items()} == {k: v.shape for k, v in ref_dw.state_dict().items()}
    dw.load_state_dict(ref_dw.state_dict())
    torch.testing.assert_close(dw(x), F.relu6(ref_dw(x)), **FP32_TOL)
    assert "activation='relu6'" in repr(dw) and "channel_multiplier=2" in repr(dw)
    with pytest.raises(ValueError, match="activation must be None"):
        vnn.DepthwiseConv2d(4, 3, activation="tanh")


def test_models_layers_are_the_visionops_modules():
    from visionops.models import _layers

    assert _layers.Conv2d is vnn.Conv2d and _layers.DepthwiseConv2d is vnn.DepthwiseConv2d


def toy_mobilenet_v1():
    """The toy MobileNetV1 of SEED_NOTES (28x28x1 input, 10 classes), from visionops modules."""
    relu = torch.nn.ReLU
    return torch.nn.Sequential(
        vnn.Conv2d(1, 32, 3, stride=2, padding=1), relu(),
        vnn.DepthwiseConv2d(32, 3, padding=1, activation="relu"),
        vnn.Conv2d(32, 64, 1), relu(),
        vnn.DepthwiseConv2d(64, 3, padding=1, activation="relu"),
        vnn.Conv2d(64, 128, 1), relu(),
        vnn.DepthwiseConv2d(128, 3, stride=2, padding=1, activation="relu"),
        vnn.Conv2d(128, 128, 1), relu(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.BatchNorm1d(128),
        torch.nn.Linear(128, 128), relu(),
        torch.nn.BatchNorm1d(128),
        torch.nn.Linear(128, 10),
    )


def test_toy_mobilenet_v1_parameter_counts():
    model = toy_mobilenet_v1()
    # SEED_NOTES, layer by layer (trainable parameters; BN also holds 256 running statistics)
    expected = [320, 320, 2112, 640, 8320, 1280, 16512, 256, 16512, 256, 1290]
    counts = [sum(p.numel() for p in m.parameters()) for m in model if any(True for _ in m.parameters())]
    assert counts == expected
    assert sum(p.numel() for p in model.parameters()) == 47818
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert sum(p.numel() for p in model.parameters()) + buffers == 48330
    # plain 3x3 convolutions instead of the depthwise-separable pairs: 259,082 (SEED_NOTES)
    dense = [vnn.Conv2d(1, 32, 3), vnn.Conv2d(32, 64, 3), vnn.Conv2d(64, 128, 3), vnn.Conv2d(128, 128, 3)]
    head = 512 + 16512 + 512 + 1290  # BN counted with its running statistics, as the notes do
    assert sum(p.numel() for m in dense for p in m.parameters()) + head == 259082
    model.eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
