"""Reference networks built on visionops ops (MobileNet, ShuffleNet, Faster R-CNN
heads, RRPN, CRNN+CTC, STN/RARE). Importing this package registers their
training tasks with :mod:`visionops.training`."""

__all__: list[str] = []
