"""Reference networks built on visionops ops (MobileNet, ShuffleNet, Faster R-CNN
heads, RRPN, CRNN+CTC, STN/RARE). Importing this package registers their
training tasks with :mod:`visionops.training`."""

from .crnn import CRNN, RARE, STNRecognizer

__all__: list[str] = ["CRNN", "STNRecognizer", "RARE"]
