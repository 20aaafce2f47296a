"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
sampling       :func:`grid_sample`, :func:`affine_grid`, :func:`affine_grid_sample`,
               :func:`tps_fit`, :func:`tps_grid`, :func:`tps_grid_sample`
=============  ===========================================================
"""

from .roi import convert_boxes_to_rois, roi_align, roi_pool
from .sampling import (
    affine_grid,
    affine_grid_sample,
    grid_sample,
    rare_fiducials,
    tps_fit,
    tps_grid,
    tps_grid_sample,
)

__all__ = [
    "roi_align",
    "roi_pool",
    "convert_boxes_to_rois",
    "grid_sample",
    "affine_grid",
    "affine_grid_sample",
    "tps_fit",
    "tps_grid",
    "tps_grid_sample",
    "rare_fiducials",
]
