"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
rotated        :func:`box_iou_rotated`, :func:`convert_rotated_boxes`,
               :func:`roi_align_rotated`, :func:`roi_pool_rotated`
=============  ===========================================================
"""

from .roi import convert_boxes_to_rois, roi_align, roi_pool
from .rotated import (
    box_iou_rotated,
    convert_rotated_boxes,
    convert_rotated_boxes_to_rois,
    roi_align_rotated,
    roi_pool_rotated,
)

__all__ = [
    "roi_align",
    "roi_pool",
    "convert_boxes_to_rois",
    "box_iou_rotated",
    "convert_rotated_boxes",
    "convert_rotated_boxes_to_rois",
    "roi_align_rotated",
    "roi_pool_rotated",
]
