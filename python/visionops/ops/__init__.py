"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
ctc            :func:`ctc_loss`, :func:`ctc_greedy_decode`, :func:`ctc_beam_search_decode`
sampling       :func:`grid_sample`, :func:`affine_grid`, :func:`affine_grid_sample`,
               :func:`tps_fit`, :func:`tps_grid`, :func:`tps_grid_sample`
=============  ===========================================================
"""

from .ctc import ctc_beam_search_decode, ctc_greedy_decode, ctc_loss
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
    "ctc_loss",
    "ctc_greedy_decode",
    "ctc_beam_search_decode",
    "grid_sample",
    "affine_grid",
    "affine_grid_sample",
    "tps_fit",
    "tps_grid",
    "tps_grid_sample",
    "rare_fiducials",
]
