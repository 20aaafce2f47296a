"""nn.Module wrappers of visionops ops."""

from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from .rotated import RoIAlignRotated, RoIPoolRotated

__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign", "RoIAlignRotated", "RoIPoolRotated"]
