"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
boxes          :func:`box_iou`, :func:`nms`, :func:`batched_nms`, :func:`nms_fixed`
rotated        :func:`box_iou_rotated`, :func:`convert_rotated_boxes`,
               :func:`roi_align_rotated`, :func:`roi_pool_rotated`,
               :func:`nms_rotated`, :func:`batched_nms_rotated`
ctc            :func:`ctc_loss`, :func:`ctc_greedy_decode`, :func:`ctc_beam_search_decode`
conv           :func:`conv2d`, :func:`depthwise_conv2d`
sampling       :func:`grid_sample`, :func:`affine_grid`, :func:`affine_grid_sample`,
               :func:`tps_fit`, :func:`tps_grid`, :func:`tps_grid_sample`
=============  ===========================================================
"""

from .boxes import batched_nms, box_iou, nms, nms_fixed
from .conv import conv2d, depthwise_conv2d
from .ctc import ctc_beam_search_decode, ctc_greedy_decode, ctc_loss
from .roi import convert_boxes_to_rois, roi_align, roi_pool
from .rotated import (
    batched_nms_rotated,
    box_iou_rotated,
    convert_rotated_boxes,
    convert_rotated_boxes_to_rois,
    nms_rotated,
    roi_align_rotated,
    roi_pool_rotated,
)
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
    "box_iou",
    "nms",
    "batched_nms",
    "nms_fixed",
    "box_iou_rotated",
    "convert_rotated_boxes",
    "convert_rotated_boxes_to_rois",
    "roi_align_rotated",
    "roi_pool_rotated",
    "nms_rotated",
    "batched_nms_rotated",
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
    "conv2d",
    "depthwise_conv2d",
]
