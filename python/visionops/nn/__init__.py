"""nn.Module wrappers of visionops ops."""

from .ctc import CTCLoss
from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool

__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign", "CTCLoss"]
