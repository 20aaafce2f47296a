"""nn.Module wrappers of visionops ops."""

from .conv import Conv2d, DepthwiseConv2d
from .ctc import CTCLoss
from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from .rotated import RoIAlignRotated, RoIPoolRotated
from .sampling import AffineGridSampler, TPSGridSampler

__all__ = [
    "RoIAlign",
    "RoIPool",
    "MultiScaleRoIAlign",
    "RoIAlignRotated",
    "RoIPoolRotated",
    "CTCLoss",
    "Conv2d",
    "DepthwiseConv2d",
    "AffineGridSampler",
    "TPSGridSampler",
]
