"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
=============  ===========================================================
"""

from .roi import convert_boxes_to_rois, roi_align, roi_pool

__all__ = ["roi_align", "roi_pool", "convert_boxes_to_rois"]
