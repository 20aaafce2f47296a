"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
boxes          :func:`box_iou`, :func:`nms`, :func:`batched_nms`, :func:`nms_fixed`
rotated        :func:`box_iou_rotated`, :func:`convert_rotated_boxes`,
               :func:`roi_align_rotated`, :func:`roi_pool_rotated`,
               :func:`nms_rotated`, :func:`batched_nms_rotated`
=============  ===========================================================
"""

from .boxes import batched_nms, box_iou, nms, nms_fixed
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
]
