"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
boxes          :func:`box_iou`, :func:`nms`, :func:`batched_nms`, :func:`nms_fixed`
=============  ===========================================================
"""

from .boxes import batched_nms, box_iou, nms, nms_fixed
from .roi import convert_boxes_to_rois, roi_align, roi_pool

__all__ = ["roi_align", "roi_pool", "convert_boxes_to_rois", "box_iou", "nms", "batched_nms", "nms_fixed"]
