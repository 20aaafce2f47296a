"""nn.Module wrappers of visionops ops."""

from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool

__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign"]
