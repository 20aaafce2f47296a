"""Small training tasks for the harness tests (not collected by pytest).

Loaded by the training tests with ``python -m visionops train toy ... --task-module
tests/toy_tasks.py`` (or ``VISIONOPS_TASK_MODULES``), in the launcher and in every
torchrun worker, so that the data-parallel machinery can be tested before (and
independently of) the reference networks.

The problem: a 12x12 image of noise with one bright 3x3 square lying wholly in
one quadrant; the label is the quadrant. The model is visionops layers: a
convolution, optional BatchNorm, ``visionops.ops.roi_align`` pooling the whole
map to 2x2 bins, and a linear classifier.

* ``toy``: with BatchNorm (buffers, SyncBatchNorm conversion); the loss calls
  ``model.loss(...)``, as the reference tasks do.
* ``toy-nobn``: without BatchNorm, the loss calls ``model(...)``; one step of N
  ranks x batch B equals one step of one process on both ranks' samples (the
  DDP equivalence test).
* ``toy-wide``: 64 channels on 32x32 images, heavier per step, for measuring
  the 1- vs 2-process scaling.
"""

from __future__ import annotations

import os
import time

import torch

from visionops.models._layers import Conv2d
from visionops.ops import roi_align
from visionops.training import Task, register_task


class ToyNet(torch.nn.Module):
    def __init__(self, channels: int = 8, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = Conv2d(1, channels, 3, padding=1, bias=not batch_norm)
        self.norm = torch.nn.BatchNorm2d(channels) if batch_norm else torch.nn.Identity()
        self.head = torch.nn.Linear(channels * 4, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(images)))
        n, _, h, w = features.shape
        whole = torch.tensor([[0.0, 0.0, float(w), float(h)]], dtype=features.dtype, device=features.device)
        rois = torch.cat([torch.arange(n, dtype=features.dtype, device=features.device)[:, None],
                          whole.expand(n, 4)], dim=1)
        pooled = roi_align(features, rois, 2, sampling_ratio=2, aligned=True)  # [N, C, 2, 2]
        return self.head(pooled.flatten(1))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(images), labels)


# seconds to sleep per batch: slows a run down so that a test can kill it mid-way (no effect on the numbers)
STEP_SLEEP = float(os.environ.get("TOY_STEP_SLEEP", "0"))


def make_batch(generator: torch.Generator, batch_size: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    if STEP_SLEEP:
        time.sleep(STEP_SLEEP)
    half = size // 2
    labels = torch.randint(0, 4, (batch_size,), generator=generator)
    offset = torch.randint(0, half - 3 + 1, (batch_size, 2), generator=generator)
    images = 0.1 * torch.randn(batch_size, 1, size, size, generator=generator)
    for i in range(batch_size):
        y = int(offset[i, 0]) + half * int(labels[i] // 2)
        x = int(offset[i, 1]) + half * int(labels[i] % 2)
        images[i, 0, y:y + 3, x:x + 3] += 1.0
    return images, labels


def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    return model.loss(*batch)  # a method call, as the reference tasks do (crnn, rrpn)


def loss_fn_forward(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    images, labels = batch
    return torch.nn.functional.cross_entropy(model(images), labels)  # through forward


def _evaluator(size: int):
    def evaluate(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        images, labels = make_batch(torch.Generator().manual_seed(12345), 256, size)
        logits = model(images.to(device))
        loss = torch.nn.functional.cross_entropy(logits, labels.to(device))
        return {"accuracy": (logits.argmax(1).cpu() == labels).float().mean().item(), "loss": loss.item()}

    return evaluate


for name, channels, bn, size in [("toy", 8, True, 12), ("toy-nobn", 8, False, 12), ("toy-wide", 64, True, 32)]:
    register_task(Task(
        name=name,
        build_model=lambda channels=channels, bn=bn: ToyNet(channels, bn),
        make_batch=lambda g, b, size=size: make_batch(g, b, size),
        loss_fn=loss_fn if bn else loss_fn_forward,
        evaluate=_evaluator(size),
        metric="accuracy",
        batch_size=16,
        lr=1e-2,
        eval_every=50,
        description="quadrant of a bright square (harness test task)",
    ))


# ---------------------------------------------------------------- a torchvision detector on visionops ops
# (issue 11: the detection models swapped with use_visionops train under DDP)


def _build_swapped_detector() -> torch.nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    from visionops.models import use_visionops

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3,
                                              min_size=96, max_size=128)
    return use_visionops(model)


def _detection_batch(generator: torch.Generator, batch_size: int) -> tuple:
    from visionops.data import random_boxes

    images, targets = [], []
    for _ in range(batch_size):
        image = 0.1 * torch.rand(3, 96, 112, generator=generator)
        boxes = random_boxes(2, (96, 112), min_size=16.0, generator=generator).round()
        for x1, y1, x2, y2 in boxes.int().tolist():
            image[:, y1:y2, x1:x2] += 0.8
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 3, (2,), generator=generator)})
    return images, targets


def _detection_loss(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    images, targets = batch
    return sum(model(images, targets).values())


def _detection_eval(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
    images, _ = _detection_batch(torch.Generator().manual_seed(99), 2)
    detections = model([im.to(device) for im in images])
    return {"detections": float(sum(len(d["boxes"]) for d in detections)) / len(detections)}


register_task(Task(
    name="toy-fasterrcnn",
    build_model=_build_swapped_detector,
    make_batch=_detection_batch,
    loss_fn=_detection_loss,
    evaluate=_detection_eval,
    metric="detections",
    batch_size=2,
    lr=1e-3,
    eval_every=1000,
    find_unused_parameters=True,
    description="torchvision Faster R-CNN (MobileNetV3-FPN) with use_visionops (DDP test task)",
))
