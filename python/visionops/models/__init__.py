"""Reference networks built on visionops ops (MobileNet, ShuffleNet, Faster R-CNN
heads, RRPN, CRNN+CTC, STN/RARE). None is implemented yet: see the README's
"Not done yet" section."""

__all__: list[str] = []
