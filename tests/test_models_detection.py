"""Detection on visionops ops: torchvision R-CNN models with their ops swapped
(use_visionops) against the untouched originals, the R-CNN box utilities against
torchvision's BoxCoder / AnchorGenerator, and the Fast R-CNN head."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from conftest import DEVICES
from visionops.models import (
    FastRCNNHead,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    grid_anchors,
    match_proposals,
    use_torchvision,
    use_visionops,
)

torchvision = pytest.importorskip("torchvision", reason="torchvision's detection models are the reference")
from torchvision.models import detection as tvd  # noqa: E402


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


# ---------------------------------------------------------------- use_visionops on torchvision R-CNN models

BUILDERS = {
    "fasterrcnn_mobilenet_v3_large_fpn": tvd.fasterrcnn_mobilenet_v3_large_fpn,
    # ResNet-50: ~2 s per build and step on 2 cores even at 128 px
    "maskrcnn_resnet50_fpn": tvd.maskrcnn_resnet50_fpn,
}


def _images(device):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 128, 144, generator=g).to(device), torch.rand(3, 120, 128, generator=g).to(device)]


def _targets(device):
    def target(boxes, labels, size):
        masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes):
            m[int(y1):int(y2), int(x1):int(x2)] = 1
        return {"boxes": torch.tensor(boxes).to(device), "labels": torch.tensor(labels).to(device),
                "masks": masks.to(device)}

    return [target([[10.0, 20.0, 60.0, 90.0], [50.0, 40.0, 120.0, 110.0]], [1, 2], (128, 144)),
            target([[5.0, 5.0, 50.0, 40.0]], [2], (120, 128))]


def _pair(name: str, device: str):
    """(torchvision model, the same model on visionops ops), equal weights.

    Random init alone makes a degenerate detector (eval-mode batch norm with
    fresh running statistics shrinks the MobileNet features to ~1e-8, and the
    heads' small init gives every RoI the same score), so the heads get weights
    of unit gain and the backbone's running statistics are calibrated on the
    test images: scores then spread and NMS has real decisions to make.
    """
    torch.manual_seed(0)
    ref = BUILDERS[name](weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=160)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in list(ref.rpn.modules()) + list(ref.roi_heads.modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for m in ref.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass sets the statistics of these images
        ref.train()
        ref.backbone(ref.transform(_images("cpu"))[0].tensors)
        for m in ref.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
    ours = copy.deepcopy(ref)
    use_visionops(ours)
    return ref.to(device), ours.to(device)


def _visionops_and_torchvision_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith(("visionops::", "torchvision::"))}


# Eval mode: on the same features RoIAlign, box IoU and NMS give the same numbers on
# both sides (visionops' box_iou is torchvision's formula, NMS keeps the same
# boxes); the only possible difference is the order in which RoIAlign sums its
# bilinear samples, a few float32 ulps in the pooled features, which the heads
# carry to the scores and boxes at ~1e-6 relative. 1e-5 leaves a 10x margin; any
# different NMS decision or pyramid level would change the outputs at O(1).
EVAL_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [
    "fasterrcnn_mobilenet_v3_large_fpn",
    pytest.param("maskrcnn_resnet50_fpn", marks=pytest.mark.slow),
])
def test_eval_detections_equal_torchvision(name, device):
    ref, ours = _pair(name, device)
    ref.eval(), ours.eval()
    images = _images(device)
    with torch.no_grad():
        expected, actual = ref(images), ours(images)
    for e, a in zip(expected, actual):
        assert e.keys() == a.keys()
        assert 10 <= len(e["scores"]) <= 100  # a real set of detections...
        assert e["scores"].unique().numel() > len(e["scores"]) // 2  # ...with distinct scores
        torch.testing.assert_close(a["labels"], e["labels"], rtol=0, atol=0)
        torch.testing.assert_close(a["scores"], e["scores"], **EVAL_TOL)
        torch.testing.assert_close(a["boxes"], e["boxes"], rtol=1e-5, atol=1e-4)  # boxes are O(100) px
        if "masks" in e:
            torch.testing.assert_close(a["masks"], e["masks"], **EVAL_TOL)


# Train mode, in float64. In float32 the ulp-level differences of RoIAlign (the
# order in which its bilinear samples are summed) are enough to flip a few of the
# ~10^6 ReLUs of the box head whose input lies within 1e-6 of 0, and each flip
# moves one RoI's whole contribution to a weight gradient (measured: 1e-3 of the
# tensor's largest entry), so float32 gradients cannot be compared tightly. In
# float64 no pre-activation comes that close to 0, and the sampled RoIs depend only
# on the IoU matching (compared exactly) and on the random samplers (seeded alike).
# Rounding differences of 1e-16 grow to ~1e-14 through ~50 layers of train-mode
# batch norm; atol 1e-9 of each tensor's largest gradient (plus 1e-10 of the
# model's largest, for tensors whose exact gradient is 0 and that hold only
# rounding noise, e.g. biases right before a batch norm) leaves a wide margin and
# still fails on any real difference, which shows at 1e-3 and above.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [
    "fasterrcnn_mobilenet_v3_large_fpn",
    pytest.param("maskrcnn_resnet50_fpn", marks=pytest.mark.slow),
])
def test_train_losses_and_gradients_equal_torchvision(name, device):
    ref, ours = _pair(name, device)
    ref, ours = ref.double(), ours.double()
    images = [im.double() for im in _images(device)]
    targets = [{**t, "boxes": t["boxes"].double()} for t in _targets(device)]
    results = []
    for model in (ref, ours):
        model.train()
        torch.manual_seed(3)  # the RPN's and RoI heads' positive/negative samplers
        losses = model(images, targets)
        sum(losses.values()).backward()
        results.append((losses, {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (losses_ref, grads_ref), (losses, grads) = results
    assert losses.keys() == losses_ref.keys()
    assert ("loss_mask" in losses) == (name.startswith("mask"))
    for k in losses_ref:
        torch.testing.assert_close(losses[k], losses_ref[k], rtol=1e-10, atol=1e-12, msg=k)
    assert grads.keys() == grads_ref.keys() and len(grads) > 100
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for k, g_ref in grads_ref.items():
        atol = 1e-9 * g_ref.abs().max().item() + 1e-10 * scale
        torch.testing.assert_close(grads[k], g_ref, rtol=1e-7, atol=atol, msg=k)


@pytest.mark.parametrize("name", [
    "fasterrcnn_mobilenet_v3_large_fpn",
    pytest.param("maskrcnn_resnet50_fpn", marks=pytest.mark.slow),
])
def test_swapped_model_calls_visionops_ops_only(name):
    ref, ours = _pair(name, "cpu")
    images, targets = _images("cpu"), _targets("cpu")

    def train_and_eval(model):
        def run():
            model.train()
            model(images, targets)
            model.eval()
            with torch.no_grad():
                model(images)
        return run

    used = _visionops_and_torchvision_ops(train_and_eval(ours))
    assert {"visionops::roi_align", "visionops::batched_nms", "visionops::box_iou"} <= used
    assert not any(op.startswith("torchvision::") for op in used), used
    # the original (and any other model) still runs torchvision's ops: nothing leaked
    used_ref = _visionops_and_torchvision_ops(train_and_eval(ref))
    assert {"torchvision::roi_align", "torchvision::nms"} <= used_ref
    assert not any(op.startswith("visionops::") for op in used_ref), used_ref


def test_use_torchvision_reverts_and_swapped_models_pickle():
    ref, ours = _pair("fasterrcnn_mobilenet_v3_large_fpn", "cpu")
    assert ours.state_dict().keys() == ref.state_dict().keys()
    images = _images("cpu")
    ours.eval()
    with torch.no_grad():
        before = ours(images)
    clone = pickle.loads(pickle.dumps(ours))
    assert type(clone.rpn) is type(ours.rpn) and type(clone.rpn) is not type(ref.rpn)
    use_torchvision(ours)
    assert type(ours.rpn) is type(ref.rpn) and type(ours.roi_heads) is type(ref.roi_heads)
    assert type(ours.roi_heads.box_roi_pool) is torchvision.ops.MultiScaleRoIAlign
    used = _visionops_and_torchvision_ops(lambda: ours(images))
    assert "torchvision::roi_align" in used and not any(op.startswith("visionops::") for op in used)
    with torch.no_grad():
        for model in (ours, clone.eval()):
            for e, a in zip(before, model(images)):
                torch.testing.assert_close(a["boxes"], e["boxes"], rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(a["scores"], e["scores"], **EVAL_TOL)
    use_visionops(use_visionops(ours))  # idempotent
    assert type(ours.rpn).__mro__[1] is type(ref.rpn)


def test_use_visionops_rejects_other_models():
    with pytest.raises(TypeError, match="use_visionops"):
        use_visionops(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="use_torchvision"):
        use_torchvision(torchvision.models.mobilenet_v2(weights=None))
