"""Plain NumPy box IoU and greedy NMS, written from the definition.

NMS (Girshick et al.; torchvision's semantics): visit boxes by decreasing
score (ties: lower index first, a stable sort), keep a box unless a kept box of
the same class overlaps it with IoU > threshold (strict).

The IoU is evaluated in the dtype the op computes in (float32 for 16-bit
inputs, else the input dtype) with the plain formula, so that decisions at the
threshold are made on the same rounded values; the threshold itself is compared
in float64, as a Python float is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _compute_dtype(t: Tensor) -> np.dtype:
    return np.float64 if t.dtype == torch.float64 else np.float32


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return inter / (area + areas - inter)


def box_iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """float64 [N, M] IoU."""
    a = boxes1.detach().cpu().double().numpy()
    b = boxes2.detach().cpu().double().numpy()
    out = np.stack([iou_one_to_many(a[i], b) for i in range(len(a))]) if len(a) else np.zeros((0, len(b)))
    return torch.from_numpy(out.reshape(len(a), len(b)))


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None) -> Tensor:
    """int64 indices kept by greedy NMS (per class when idxs is given)."""
    dtype = _compute_dtype(boxes)
    b = boxes.detach().cpu().float().numpy().astype(dtype) if dtype == np.float32 else boxes.cpu().numpy()
    s = scores.detach().cpu().double().numpy()
    cls = idxs.cpu().numpy() if idxs is not None else np.zeros(len(b), dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    thr = np.float64(iou_threshold)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        same = cls == cls[i]
        suppressed |= same & (iou_one_to_many(b[i], b).astype(np.float64) > thr)
    return torch.tensor(keep, dtype=torch.int64)


def greedy_nms_from_iou(iou: np.ndarray, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None) -> Tensor:
    """Greedy NMS given the full [N, N] float64 IoU matrix (for any box type)."""
    s = scores.detach().cpu().double().numpy()
    n = len(s)
    cls = idxs.cpu().numpy() if idxs is not None else np.zeros(n, dtype=np.int64)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in np.argsort(-s, kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (cls == cls[i]) & (iou[i] > np.float64(iou_threshold))
    return torch.tensor(keep, dtype=torch.int64)
