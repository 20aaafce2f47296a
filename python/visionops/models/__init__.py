"""Reference networks built on visionops ops (MobileNet, ShuffleNet, Faster R-CNN
heads, RRPN, CRNN+CTC, STN/RARE). Importing this package registers their
training tasks with :mod:`visionops.training`."""

__all__: list[str] = []

# --- classification backbones and detection (issue 8: backbones, Faster/Mask R-CNN) ---
from .backbones import (  # noqa: E402
    MobileNetV1,
    MobileNetV2,
    ShuffleNetV2,
    channel_shuffle,
    load_torchvision_weights,
    mobilenet_v1,
    mobilenet_v2,
    shufflenet_v2,
)
from .detection import (  # noqa: E402
    FastRCNNHead,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    grid_anchors,
    match_proposals,
    use_torchvision,
    use_visionops,
)

__all__ += [
    "MobileNetV1",
    "MobileNetV2",
    "ShuffleNetV2",
    "channel_shuffle",
    "load_torchvision_weights",
    "mobilenet_v1",
    "mobilenet_v2",
    "shufflenet_v2",
    "FastRCNNHead",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "grid_anchors",
    "match_proposals",
    "use_torchvision",
    "use_visionops",
]

# --- RRPN (issue 8: rotated region proposals); importing registers the "rrpn" training task ---
from .rrpn import (  # noqa: E402
    RRPN,
    RRoIHead,
    decode_rotated,
    encode_rotated,
    label_anchors,
    rotated_anchors,
    rotated_base_anchors,
    rotated_proposals,
)

__all__ += [
    "RRPN",
    "RRoIHead",
    "decode_rotated",
    "encode_rotated",
    "label_anchors",
    "rotated_anchors",
    "rotated_base_anchors",
    "rotated_proposals",
]

# --- text recognition (issue 8: CRNN, STN, RARE); importing registers crnn, stn, rare, crnn-affine, crnn-curved ---
from .crnn import CRNN, RARE, STNRecognizer  # noqa: E402

__all__ += ["CRNN", "STNRecognizer", "RARE"]
