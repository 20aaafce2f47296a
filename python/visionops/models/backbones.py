"""Mobile classification backbones on visionops convolutions: MobileNetV1
(Howard et al. 2017), MobileNetV2 (Sandler et al. 2018) and ShuffleNetV2
(Ma et al. 2018).

Every convolution is a :class:`visionops.models._layers.Conv2d` (dense) or
:class:`~visionops.models._layers.DepthwiseConv2d` (``groups = channels``), so the
networks exercise the conv family end to end. Convolutions followed by batch
norm carry no bias. Inputs are ``float`` images ``[N, 3, H, W]`` (any
``H, W >= 32``; global average pooling makes the head size independent of the
input size); outputs are logits ``[N, num_classes]``.

MobileNetV2 and ShuffleNetV2 use the module names of torchvision's
``mobilenet_v2`` / ``shufflenet_v2_x*`` builds, so their state dicts are
interchangeable: :func:`load_torchvision_weights` copies one into the other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._layers import Conv2d, DepthwiseConv2d

__all__ = [
    "channel_shuffle",
    "MobileNetV1",
    "MobileNetV2",
    "ShuffleNetV2",
    "mobilenet_v1",
    "mobilenet_v2",
    "shufflenet_v2",
    "load_torchvision_weights",
]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: view the channels as ``(groups, C / groups)``,
    transpose, flatten, so that each group of the next grouped layer sees
    channels from every group of this one.

    Args:
        x: ``[N, C, *]`` (any number of trailing dims, any dtype), ``C`` divisible by ``groups``.
        groups: number of groups ``g >= 1``.

    Returns:
        a new ``[N, C, *]`` tensor whose channel ``i * g + j`` is input channel ``j * (C / g) + i``.

    >>> channel_shuffle(torch.arange(6.).view(1, 6, 1, 1), 2).flatten().tolist()
    [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    if x.dim() < 2:
        raise ValueError(f"channel_shuffle: x must have a channel dimension ([N, C, ...]), got shape {tuple(x.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"channel_shuffle: groups must be a positive int, got {groups!r}")
    channels = x.size(1)
    if channels % groups:
        raise ValueError(f"channel_shuffle: {channels} channels are not divisible by groups={groups}")
    return x.unflatten(1, (groups, channels // groups)).transpose(1, 2).flatten(1, 2)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never more than 10% below it
    (the rule of the MobileNet reference code, which torchvision follows too)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> activation; indices 0/1/2 as torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, *, depthwise: bool = False,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        pad = (kernel - 1) // 2
        if depthwise:
            if cin != cout:
                raise ValueError(f"depthwise convolution keeps the channel count, got {cin} -> {cout}")
            conv: nn.Module = DepthwiseConv2d(cin, kernel, stride=stride, padding=pad, bias=False)
        else:
            conv = Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=False)
        layers = [conv, nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


def _init_weights(model: nn.Module) -> None:
    # He init for convolutions (fan_out, as in the MobileNet/ShuffleNet reference code), unit BN, small head.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, Conv2d, DepthwiseConv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------ MobileNetV1

# (output channels, stride) of the 13 depthwise-separable blocks (Table 1 of the paper)
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class _DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(_ConvBNAct(cin, cin, 3, stride, depthwise=True), _ConvBNAct(cin, cout, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1: a 3x3 stride-2 conv, 13 depthwise-separable blocks, global
    average pooling and a linear classifier; BN + ReLU after every conv.

    ``width_mult`` (the paper's alpha) scales every layer's channels, rounded to a
    multiple of 8. Modules: ``features`` (``Sequential``: stem, then one
    ``Sequential(depthwise, pointwise)`` per block) and ``classifier`` (``Linear``).
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV1: width_mult must be > 0, got {width_mult}")
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [_ConvBNAct(3, cin, 3, 2)]
        for cout, stride in _V1_BLOCKS:
            cout = _make_divisible(cout * width_mult)
            layers.append(_DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# ------------------------------------------------------------------ MobileNetV2

# (expansion t, output channels c, repeats n, first stride s) (Table 2 of the paper)
_V2_SETTINGS = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


class _InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1) + ReLU6, 3x3 depthwise + ReLU6, linear 1x1
    projection; identity shortcut when the stride is 1 and the width is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            _ConvBNAct(hidden, hidden, 3, stride, depthwise=True, act=nn.ReLU6),
            Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2: inverted residual blocks with linear bottlenecks (expansion 6),
    ReLU6, a final 1x1 conv to 1280 channels, dropout 0.2 and a linear classifier.

    ``width_mult`` scales the channels (rounded to multiples of 8; the last conv
    only grows, ``1280 * max(1, width_mult)``), as torchvision's ``mobilenet_v2``.
    Module names (``features``, ``classifier``) equal torchvision's.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2: width_mult must be > 0, got {width_mult}")
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_ConvBNAct(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in _V2_SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_ConvBNAct(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# ------------------------------------------------------------------ ShuffleNetV2

# output channels of conv1, stage2, stage3, stage4, conv5 (Table 5 of the paper)
_SHUFFLE_WIDTHS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
_SHUFFLE_REPEATS = (4, 8, 4)


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split the channels in halves, keep one, send the
    other through 1x1 -> 3x3 depthwise -> 1x1, concatenate. Stride 2 (downsampling):
    both branches see the whole input (the left one is 3x3 depthwise -> 1x1), which
    doubles the width. Both end with a channel shuffle of 2 groups."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cout % 2:
            raise ValueError(f"ShuffleNetV2 unit: output channels must be even, got {cout}")
        half = cout // 2
        if stride == 1 and cin != cout:
            raise ValueError(f"ShuffleNetV2 unit: stride 1 keeps the width, got {cin} -> {cout}")
        self.stride = stride
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                DepthwiseConv2d(cin, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cin),
                Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            Conv2d(cin if stride > 1 else half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            DepthwiseConv2d(half, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(half),
            Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            keep, x = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch2(x)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 at one of the paper's scales ``0.5, 1.0, 1.5, 2.0``: 3x3 stride-2
    conv (24 channels), 3x3 max-pool, three stages of 4/8/4 units (the first of each
    downsamples), a 1x1 conv, global average pooling and a linear classifier.
    Module names (``conv1``, ``stage2..4``, ``conv5``, ``fc``) equal torchvision's
    ``shufflenet_v2_x*``.
    """

    def __init__(self, scale: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        if scale not in _SHUFFLE_WIDTHS:
            raise ValueError(f"ShuffleNetV2: scale must be one of {sorted(_SHUFFLE_WIDTHS)}, got {scale!r}")
        widths = _SHUFFLE_WIDTHS[scale]
        self.conv1 = _ConvBNAct(3, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for index, (cout, repeats) in enumerate(zip(widths[1:4], _SHUFFLE_REPEATS)):
            units = [_ShuffleUnit(cin, cout, 2)] + [_ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index + 2}", nn.Sequential(*units))
            cin = cout
        self.conv5 = _ConvBNAct(cin, widths[4], 1)
        self.fc = nn.Linear(widths[4], num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------ builders


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000) -> MobileNetV1:
    """MobileNetV1 with width multiplier ``width_mult`` (4.2M parameters at 1.0).

    >>> mobilenet_v1(0.25, num_classes=10)(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """
    return MobileNetV1(width_mult, num_classes)


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 with width multiplier ``width_mult`` (3.5M parameters at 1.0).

    >>> mobilenet_v2(0.5, num_classes=10).eval()(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """
    return MobileNetV2(width_mult, num_classes)


def shufflenet_v2(scale: float = 1.0, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 at ``scale`` in ``{0.5, 1.0, 1.5, 2.0}`` (2.3M parameters at 1.0).

    >>> shufflenet_v2(0.5, num_classes=10)(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """
    return ShuffleNetV2(scale, num_classes)


def load_torchvision_weights(model: nn.Module, tv_model: nn.Module) -> nn.Module:
    """Copy the parameters and buffers of a torchvision ``mobilenet_v2`` or
    ``shufflenet_v2_x*`` into the matching visionops model (same width and
    number of classes) and return ``model``.

    The two share module names, so this is a strict state-dict copy; any
    missing, unexpected or differently shaped entry raises ``ValueError``
    naming the first few, instead of loading a partial model.
    """
    source, target = tv_model.state_dict(), model.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = [f"{k}: {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in source and source[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"load_torchvision_weights: {type(tv_model).__name__} does not match {type(model).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatches {shapes[:3]}); "
            "build both with the same width and num_classes"
        )
    model.load_state_dict(source)
    return model
