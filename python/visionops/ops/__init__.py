"""Functional API of visionops: one module per op family.

=============  ===========================================================
family         functions
=============  ===========================================================
roi            :func:`roi_align`, :func:`roi_pool`
ctc            :func:`ctc_loss`, :func:`ctc_greedy_decode`, :func:`ctc_beam_search_decode`
=============  ===========================================================
"""

from .ctc import ctc_beam_search_decode, ctc_greedy_decode, ctc_loss
from .roi import convert_boxes_to_rois, roi_align, roi_pool

__all__ = [
    "roi_align",
    "roi_pool",
    "convert_boxes_to_rois",
    "ctc_loss",
    "ctc_greedy_decode",
    "ctc_beam_search_decode",
]
