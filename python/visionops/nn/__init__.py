"""nn.Module wrappers of visionops ops."""

from .ctc import CTCLoss
from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from .sampling import AffineGridSampler, TPSGridSampler

__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign", "CTCLoss", "AffineGridSampler", "TPSGridSampler"]
