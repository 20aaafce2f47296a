"""MobileNetV1/V2 and ShuffleNetV2 on visionops convolutions against torchvision
builds (V2, ShuffleNetV2) and a plain torch.nn build written here (V1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import DEVICES
from visionops.models import (
    channel_shuffle,
    load_torchvision_weights,
    mobilenet_v1,
    mobilenet_v2,
    shufflenet_v2,
)

torchvision = pytest.importorskip("torchvision", reason="torchvision builds are the reference networks")

# Tolerances for float32 networks of ~20-50 conv layers. Both sides compute the
# same real numbers; only the summation order inside a convolution may differ
# (visionops kernels vs. torch/cuDNN), which costs a few float32 ulps
# (eps = 1.2e-7) per reduction of up to 9 * 1920 terms, and batch norm keeps
# activations at unit scale between layers. 1e-4 relative to the largest
# magnitude of the compared tensor leaves a ~100x margin over that while still
# catching any real difference (a wrong weight, a missing shuffle or a wrong
# stride changes the logits at the 1e-1 scale). TF32 is turned off on CUDA (the
# fixture below): torch's default TF32 convolutions alone would differ by ~1e-3.
RTOL = 1e-4
# float64: the same summation-order argument with eps = 2.2e-16 gives ~1e-13.
F64_TOL = 1e-9


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = RTOL) -> None:
    # the floor 1e-3 covers tensors that are analytically zero (pure rounding noise,
    # ~1e-14 in float64): real gradients and logits here are >= 1e-3 in magnitude
    atol = tol * max(expected.abs().max().item(), 1e-3)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=atol, msg=lambda m: f"{what}: {m}")


def _randomize(model: nn.Module, seed: int) -> None:
    """Non-trivial batch-norm statistics and affine parameters, so that a wrongly mapped BN
    entry (running mean/var, weight/bias) changes the output, and logits of order 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _compare(ours: nn.Module, ref: nn.Module, device: str, size: int = 64) -> None:
    # Eval logits are compared in float32, the precision users run, with the float32
    # tolerances above. Train-mode gradients are compared in float64: some are
    # analytically zero (the bias of a BN that feeds another train-mode BN), so in
    # float32 both sides hold only rounding noise (~1e-6 vs ~1e-5 once the
    # convolutions are not torch's own) that no tolerance relative to the tensor can
    # compare; in float64 that noise is ~1e-14 and F64_TOL keeps a 1e4 margin.
    ours, ref = ours.to(device, torch.float32), ref.to(device, torch.float32)
    x32 = _images(size=size).to(device)
    ours.eval(), ref.eval()
    with torch.no_grad():
        expected32 = ref(x32)
        _close(ours(x32), expected32, "eval logits (float32)")

    ours, ref = ours.to(device, torch.float64), ref.to(device, torch.float64)
    x = x32.to(torch.float64)
    ours.eval(), ref.eval()
    with torch.no_grad():
        expected = ref(x)
        _close(ours(x), expected, "eval logits (float64)", F64_TOL)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero outputs

    # train mode: batch statistics in BN; dropout masks equal through the same seed
    ours.train(), ref.train()
    target = torch.arange(x.size(0), device=device) % expected.size(1)
    grads = []
    for model in (ours, ref):
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        nn.functional.cross_entropy(out, target).backward()
        grads.append([p.grad for p in model.parameters()])
    # parameters are registered in the same order on both sides (the state dicts were copied that way)
    names = [name for name, _ in ours.named_parameters()]
    assert len(grads[0]) == len(grads[1]) == len(names)
    for name, g, g_ref in zip(names, *grads):
        _close(g, g_ref, f"grad of {name}", F64_TOL)
    # the running statistics were updated alike
    for (name, b), b_ref in zip(ours.named_buffers(), ref.buffers()):
        if b.is_floating_point():
            _close(b, b_ref, f"buffer {name}", F64_TOL)


# ---------------------------------------------------------------- channel shuffle


def test_channel_shuffle_three_groups_of_three():
    x = torch.arange(9.0).view(1, 9, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


@pytest.mark.parametrize("groups,channels", [(1, 4), (2, 8), (4, 12), (6, 6)])
def test_channel_shuffle_is_the_transpose_permutation(groups, channels):
    x = torch.randn(2, channels, 3, 5)
    per_group = channels // groups
    # output channel i * groups + j  <-  input channel j * per_group + i
    perm = [j * per_group + i for i in range(per_group) for j in range(groups)]
    torch.testing.assert_close(channel_shuffle(x, groups), x[:, perm], rtol=0, atol=0)


def test_channel_shuffle_is_undone_by_the_complementary_shuffle():
    x = torch.randn(1, 12, 2, 2)
    torch.testing.assert_close(channel_shuffle(channel_shuffle(x, 3), 4), x, rtol=0, atol=0)


@pytest.mark.parametrize("x,groups", [(torch.zeros(1, 9, 2, 2), 2), (torch.zeros(1, 9), 0), (torch.zeros(9), 3)])
def test_channel_shuffle_rejects_bad_input(x, groups):
    with pytest.raises(ValueError, match="channel_shuffle"):
        channel_shuffle(x, groups)


# ---------------------------------------------------------------- parameter counts


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("width,millions", [(1.0, 4.2), (0.75, 2.6), (0.5, 1.3), (0.25, 0.5)])
def test_mobilenet_v1_parameter_count_is_the_papers(width, millions):
    # Howard et al. 2017, Table 6 (224x224, 1000 classes), rounded to 0.1M
    assert round(_count(mobilenet_v1(width)) / 1e6, 1) == millions


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_mobilenet_v2_parameter_count_equals_torchvision(width):
    assert _count(mobilenet_v2(width)) == _count(torchvision.models.mobilenet_v2(weights=None, width_mult=width))


def test_mobilenet_v2_parameter_count_is_published():
    assert round(_count(mobilenet_v2()) / 1e6, 1) == 3.5  # torchvision's model card: 3,504,872


@pytest.mark.parametrize("scale,name,millions", [(0.5, "x0_5", 1.4), (1.0, "x1_0", 2.3), (1.5, "x1_5", 3.5),
                                                 (2.0, "x2_0", 7.4)])
def test_shufflenet_v2_parameter_count(scale, name, millions):
    count = _count(shufflenet_v2(scale))
    assert round(count / 1e6, 1) == millions  # Ma et al. 2018, Table 8 / torchvision's model cards
    assert count == _count(getattr(torchvision.models, f"shufflenet_v2_{name}")(weights=None))


# ---------------------------------------------------------------- against torchvision


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width", [1.0, 0.5])
def test_mobilenet_v2_matches_torchvision(device, width):
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v2(weights=None, width_mult=width, num_classes=17)
    _randomize(ref, 0)
    ours = load_torchvision_weights(mobilenet_v2(width, num_classes=17), ref)
    _compare(ours, ref, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale,name", [(1.0, "x1_0"), (0.5, "x0_5")])
def test_shufflenet_v2_matches_torchvision(device, scale, name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, f"shufflenet_v2_{name}")(weights=None, num_classes=17)
    _randomize(ref, 0)
    ours = load_torchvision_weights(shufflenet_v2(scale, num_classes=17), ref)
    _compare(ours, ref, device)


def test_load_torchvision_weights_rejects_a_different_architecture():
    with pytest.raises(ValueError, match="load_torchvision_weights"):
        load_torchvision_weights(mobilenet_v2(0.5), torchvision.models.mobilenet_v2(weights=None))
    with pytest.raises(ValueError, match="missing"):
        load_torchvision_weights(shufflenet_v2(1.0), torchvision.models.mobilenet_v2(weights=None))


# ---------------------------------------------------------------- MobileNetV1 against plain torch.nn


def _torch_mobilenet_v1(width: float, num_classes: int) -> nn.Module:
    """The architecture of Howard et al. (2017), Table 1, written with torch.nn only."""

    def c(n: int) -> int:  # width multiplier; every standard width gives a multiple of 8 here
        return max(8, int(n * width + 4) // 8 * 8)

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
            (512, 1), (1024, 2), (1024, 1)]
    layers = conv_bn(3, c(32), 3, 2, 1)
    cin = c(32)
    for cout, stride in plan:
        layers += conv_bn(cin, cin, 3, stride, cin) + conv_bn(cin, c(cout), 1, 1, 1)
        cin = c(cout)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_mobilenet_v1_matches_a_torch_nn_build(device, width):
    torch.manual_seed(0)
    ref = _torch_mobilenet_v1(width, 11)
    _randomize(ref, 1)
    ours = mobilenet_v1(width, num_classes=11)
    source, target = list(ref.state_dict().values()), ours.state_dict()
    assert len(source) == len(target)
    with torch.no_grad():  # same layer order: copy entry by entry, shapes must agree
        for (name, t), s in zip(target.items(), source):
            assert t.shape == s.shape, name
            t.copy_(s)
    assert _count(ours) == _count(ref)
    _compare(ours, ref, device)


def test_mobilenet_v1_uses_depthwise_convolutions():
    from visionops.models._layers import DepthwiseConv2d

    model = mobilenet_v1(0.25)
    assert sum(isinstance(m, DepthwiseConv2d) for m in model.modules()) == 13
