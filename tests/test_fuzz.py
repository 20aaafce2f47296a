"""Fuzzing every public op of ``visionops.ops`` (issue 10).

Each op has one entry in ``SPECS``: a hypothesis builder of arbitrary calls
(0-size dimensions, NaN/Inf, huge and tiny magnitudes, wrong dtypes, invalid
arguments) and, optionally, a peer/reference to compare with on tame cases.
Every tensor argument is then given a random memory layout (transposed,
strided, storage offset, expanded stride-0 view, channels_last) and the call
must either

* return what the op returns on the same values made contiguous (bit for bit;
  to rounding when the layout switches a kernel to its channels_last path),
  and the peer's result when the case is tame, without touching its inputs; or
* raise ``RuntimeError`` / ``ValueError`` / ``TypeError`` whose message names
  one of the op's arguments, and do so for the contiguous input as well.

Differentiable ops are also run backward with a randomly laid out
``grad_output``. Everything runs in this process: a crash fails the suite.

The number of examples per op follows the hypothesis profile (``ci``: 25,
``dev``: 300) or ``VISIONOPS_FUZZ_EXAMPLES=N``. ``VISIONOPS_FUZZ_STATS=path``
appends one JSON line per op with the counts of each outcome; the counts are
also attached to the junit report (``record_property``).

Adding an op family means adding its entries to ``SPECS`` (see ``Spec``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
import torch
from conftest import DEVICES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visionops import ops

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
WRONG_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "expanded", "channels_last")
ERRORS = (RuntimeError, ValueError, TypeError)

_examples = os.environ.get("VISIONOPS_FUZZ_EXAMPLES")
FUZZ_SETTINGS = settings(
    max_examples=int(_examples) if _examples else settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------- value generation


def _rand(g: torch.Generator, shape, kind: str) -> torch.Tensor:
    """float64 values of one kind: normal O(1), huge, tiny, or O(1) salted with
    NaN, +-Inf, +-0, huge and subnormal values."""
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "huge":
        return x * 1e30
    if kind == "tiny":
        return x * 1e-30
    if kind == "special":
        specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e30, -3e38, 1e-40, 6.6e4])
        pick = torch.randint(0, len(specials), shape, generator=g)
        mask = torch.rand(shape, generator=g) < 0.3
        x = torch.where(mask, specials[pick].to(torch.float64), x)
    return x


@dataclass
class Draw:
    """Thin helper around hypothesis' ``data`` with a torch generator for the
    bulk values (drawing each element through hypothesis would be slow)."""

    data: Any
    tame: bool = True  # set False by any draw that leaves the peer's domain
    g: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self):
        self.g.manual_seed(self.data.draw(st.integers(0, 2**31 - 1), label="seed"))

    def __call__(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def flag(self, p: float = 0.1, label=None) -> bool:
        """True with probability about p (more: hypothesis favours boundary values);
        shrinks to False, so a failing example keeps only the flags it needs."""
        return self.data.draw(st.integers(0, 999), label=label) >= 1000 - int(p * 1000)

    def size(self, lo: int = 0, hi: int = 4, label=None) -> int:
        return self(st.integers(lo, hi), label)

    def float_dtype(self, label=None) -> torch.dtype:
        return self(st.sampled_from(FLOATS), label)

    def maybe_wrong_dtype(self, dtype: torch.dtype, label=None) -> torch.dtype:
        if self.flag(0.06, label):
            self.tame = False
            return self(st.sampled_from(WRONG_DTYPES), label)
        return dtype

    def kind(self) -> str:
        k = self(st.sampled_from(("normal", "normal", "normal", "special", "huge", "tiny")), "kind")
        if k != "normal":
            self.tame = False
        return k

    def values(self, shape, dtype: torch.dtype, kind: Optional[str] = None, scale: float = 1.0, shift: float = 0.0):
        x = _rand(self.g, shape, kind or self.kind()) * scale + shift
        return _cast(x, dtype)

    def uniform(self, shape, lo: float, hi: float, dtype: torch.dtype):
        return _cast(lo + (hi - lo) * torch.rand(shape, generator=self.g, dtype=torch.float64), dtype)

    def ints(self, shape, lo: int, hi: int, dtype=torch.int64):
        return torch.randint(lo, hi, shape, generator=self.g).to(dtype)

    def output_size(self, hi: int = 3):
        if self.flag(0.05, "bad_output_size"):
            self.tame = False
            return self(st.sampled_from([0, -1, (2, 0), (1, 2, 3), 1.5, "2"]), "output_size")
        if self.flag(0.5, "square"):
            return self.size(1, hi, "output_size")
        return (self.size(1, hi, "output_h"), self.size(1, hi, "output_w"))


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return x.to(dtype)
    if dtype == torch.bool:
        return x > 0
    lo, hi = (0, 255) if dtype == torch.uint8 else (-(2**31), 2**31 - 1)
    return torch.nan_to_num(x, nan=0.0).clamp(lo, hi).to(dtype)


# ---------------------------------------------------------------- cases and specs


@dataclass
class Case:
    args: list
    kwargs: dict = field(default_factory=dict)
    tame: bool = True


@dataclass(frozen=True)
class Spec:
    """One public op.

    name: function of ``visionops.ops``.
    build: ``Draw -> Case`` (arbitrary arguments; ``Case.tame`` when the peer applies).
    peer: called like the op on the contiguous arguments of tame cases; returns
        the expected result (or raises, then nothing is compared).
    peer_tol: ``assert_close`` tolerances per dtype for the peer comparison.
    grad: positional indices of the arguments to differentiate (when floating).
    names: words, besides the parameter names, that an error message may use
        for an argument (the C++ kernels call ``boxes`` ``rois``, for example).
    exact: the op runs visionops kernels, which copy their inputs to a fixed
        layout, so any layout gives the same bits. False for plain torch code
        (linalg.solve, matmul): torch may pick another kernel for another layout.
    """

    name: str
    build: Callable[[Draw], Case]
    peer: Optional[Callable[..., Any]] = None
    peer_tol: Optional[Callable[[torch.dtype], dict]] = None
    grad: tuple = ()
    names: tuple = ()
    exact: bool = True

    @property
    def fn(self) -> Callable:
        return getattr(ops, self.name)


def _default_tol(dtype: torch.dtype) -> dict:
    # O(1) inputs, sums of at most a few hundred terms in another order than the peer:
    # a few hundred ulps of float32; 16-bit outputs are one rounding apart.
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float32: dict(rtol=1e-4, atol=1e-5),
    }.get(dtype, dict(rtol=2e-2, atol=2e-2))


# ---- roi


def _rois(d: Draw, n: int, k: int, columns: int, dtype, extent: float, rotated: bool):
    """[K, columns] RoIs; batch indices in [0, n) unless a draw breaks them."""
    index = d.ints((k, 1), 0, max(n, 1)).to(torch.float64)
    if d.flag(0.05, "bad_batch_index"):
        d.tame = False
        index[:1] = d(st.sampled_from([-1.0, float(n), 0.5, math.nan, 1e20]), "batch_index")
    kind = d.kind()
    if rotated:
        centre = d.values((k, 2), torch.float64, kind, scale=extent / 2, shift=extent / 2)
        sizes = d.values((k, 2), torch.float64, kind, scale=extent / 3).abs()
        angle = d.values((k, 1), torch.float64, kind, scale=90.0)
        body = torch.cat([centre, sizes, angle], dim=1)
    else:
        p1 = d.values((k, 2), torch.float64, kind, scale=extent / 2, shift=extent / 2)
        p2 = p1 + d.values((k, 2), torch.float64, kind, scale=extent / 3).abs()
        if d.flag(0.1, "inverted"):
            p1, p2 = p2, p1
        body = torch.cat([p1, p2], dim=1)
    return _cast(torch.cat([index, body], dim=1), dtype)


def _pooling_case(d: Draw, rotated: bool, align: bool) -> Case:
    dtype = d.float_dtype("dtype")
    n, c, h, w, k = (d.size(0, 3, "n"), d.size(0, 3, "c"), d.size(0, 6, "h"), d.size(0, 6, "w"), d.size(0, 5, "k"))
    if n == 0 and k > 0 and not d.flag(0.2, "rois_without_images"):
        n = 1
    scale = d(st.sampled_from([1.0, 0.5, 0.25, 2.0]), "spatial_scale")
    if d.flag(0.04, "bad_scale"):
        d.tame = False
        scale = d(st.sampled_from([0.0, -1.0, math.nan, math.inf]), "spatial_scale")
    x = d.values((n, c, h, w), d.maybe_wrong_dtype(dtype, "input_dtype"))
    extent = max(h, w, 1) / (scale if math.isfinite(scale) and scale > 0 else 1.0)
    rois = _rois(d, n, k, 6 if rotated else 5, d.maybe_wrong_dtype(dtype, "rois_dtype"), extent, rotated)
    if d.flag(0.15, "list_form") and rois.dtype.is_floating_point:
        per_image = [rois[rois[:, 0] == i, 1:] for i in range(n)] or [rois[:0, 1:]]
        rois = per_image
    args = [x, rois, d.output_size(), scale]
    if align:
        args += [d(st.integers(-1, 3), "sampling_ratio"), d(st.booleans(), "aligned")]
    return Case(args)


def _tv(name):
    def peer(*args):
        tv = pytest.importorskip("torchvision")
        if any(isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) for a in args):
            raise NotImplementedError  # torchvision's 16-bit CPU paths round differently: not a peer
        if name.startswith("roi_") and args[0].numel() == 0:
            raise NotImplementedError  # torchvision 0.29's CPU roi_align segfaults on an empty feature map
        return getattr(tv.ops, name)(*args)

    return peer


def _roi_align_rotated_peer(x, rois, output_size, scale, sampling_ratio, aligned):
    from reference.rotated import roi_align_rotated_reference

    if x.dtype != torch.float64 or x.numel() > 200 or isinstance(rois, list):
        raise NotImplementedError  # the oracle is plain Python: small float64 cases only
    return roi_align_rotated_reference(x, rois, output_size, scale, sampling_ratio, aligned)


# ---- boxes


def _boxes(d: Draw, n: int, dtype, columns: int = 4):
    kind = d.kind()
    if columns == 5:
        centre = d.values((n, 2), torch.float64, kind, scale=5.0, shift=5.0)
        sizes = d.values((n, 2), torch.float64, kind, scale=4.0).abs()
        if d.flag(0.05, "negative_sizes"):
            sizes = -sizes
        return _cast(torch.cat([centre, sizes, d.values((n, 1), torch.float64, kind, scale=90.0)], dim=1), dtype)
    p1 = d.values((n, 2), torch.float64, kind, scale=5.0)
    p2 = p1 + d.values((n, 2), torch.float64, kind, scale=4.0).abs()
    if d.flag(0.05, "inverted"):
        d.tame = False
        p1, p2 = p2, p1
    return _cast(torch.cat([p1, p2], dim=1), dtype)


def _box_pair_case(d: Draw, columns: int) -> Case:
    dtype = d.float_dtype("dtype")
    n, m = d.size(0, 6, "n"), d.size(0, 6, "m")
    b1 = _boxes(d, n, d.maybe_wrong_dtype(dtype, "dtype1"), columns)
    b2 = _boxes(d, m, d.maybe_wrong_dtype(dtype, "dtype2"), columns)
    if d.flag(0.04, "bad_shape"):
        d.tame = False
        b2 = b2.reshape(-1)
    return Case([b1, b2])


def _box_iou_rotated_case(d: Draw) -> Case:
    case = _box_pair_case(d, 5)
    aligned = d(st.booleans(), "aligned")
    if aligned and case.args[0].shape[0] != case.args[1].shape[0] and not d.flag(0.2, "mismatch"):
        case.args[1] = case.args[1][: case.args[0].shape[0]]
        if case.args[1].shape[0] != case.args[0].shape[0]:
            case.args[0] = case.args[0][: case.args[1].shape[0]]
    mode = d(st.sampled_from(["iou", "iof"]), "mode")
    if d.flag(0.04, "bad_mode"):
        mode = "giou"
    return Case(case.args + [mode, aligned])


def _box_iou_rotated_peer(b1, b2, mode, aligned):
    from reference.rotated import iou_matrix

    if b1.dtype != torch.float64:
        raise NotImplementedError  # 16/32-bit boxes: the kernel's float64 IoU of the rounded boxes is the oracle's too,
        # but the comparison adds nothing over float64
    return torch.tensor(iou_matrix(b1, b2, mode, aligned, exact=False), dtype=torch.float64).reshape(
        (b1.shape[0],) if aligned else (b1.shape[0], b2.shape[0])
    )


def _threshold(d: Draw):
    if d.flag(0.05, "bad_threshold"):
        d.tame = False
        return d(st.sampled_from([-0.1, 1.5, math.nan, "0.5", None]), "iou_threshold")
    return d(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), "iou_threshold")


def _nms_args(d: Draw, columns: int, batched: bool):
    dtype = d.float_dtype("dtype")
    n = d.size(0, 12, "n")
    boxes = _boxes(d, n, d.maybe_wrong_dtype(dtype, "boxes_dtype"), columns)
    # distinct scores: ties are ordered by index here but not by every peer
    scores = _cast(torch.randperm(n, generator=d.g).to(torch.float64) / max(n, 1), d.maybe_wrong_dtype(dtype, "sd"))
    if d.flag(0.1, "special_scores"):
        d.tame = False
        scores = d.values((n,), scores.dtype if scores.dtype.is_floating_point else dtype, "special")
    if d.flag(0.04, "bad_scores_shape"):
        d.tame = False
        scores = scores[: max(n - 1, 0)]
    idxs = None
    if batched:
        idxs = d.ints((n,), 0, 3, d(st.sampled_from([torch.int64, torch.int64, torch.int32]), "idxs_dtype"))
        if d.flag(0.04, "float_idxs"):
            d.tame = False
            idxs = idxs.float()
    return boxes, scores, idxs


def _nms_case(d: Draw) -> Case:
    boxes, scores, _ = _nms_args(d, 4, False)
    return Case([boxes, scores, _threshold(d)])


def _batched_nms_case(d: Draw) -> Case:
    boxes, scores, idxs = _nms_args(d, 4, True)
    return Case([boxes, scores, idxs, _threshold(d)])


def _nms_fixed_case(d: Draw) -> Case:
    boxes, scores, idxs = _nms_args(d, 4, d(st.booleans(), "batched"))
    size = d.size(0, boxes.shape[0] + 2, "max_output_size") if boxes.dim() == 2 else 3
    if d.flag(0.04, "bad_size"):
        d.tame = False
        size = d(st.sampled_from([-1, 2.0, True]), "max_output_size")
    return Case([boxes, scores, _threshold(d), size, idxs])


def _nms_fixed_peer(boxes, scores, thr, size, idxs):
    keep = _tv("nms")(boxes, scores, thr) if idxs is None else _tv("batched_nms")(boxes, scores, idxs, thr)
    out = torch.full((size,), -1, dtype=torch.int64)
    out[: min(size, keep.numel())] = keep[:size]
    return out, torch.tensor(min(size, keep.numel()))


def _rotated_nms_peer(boxes, scores, thr, idxs=None):
    import numpy as np
    from reference.boxes import greedy_nms_from_iou
    from reference.rotated import iou_matrix

    if boxes.dtype != torch.float64:
        raise NotImplementedError
    return greedy_nms_from_iou(np.array(iou_matrix(boxes, boxes, exact=False)).reshape(len(boxes), -1), scores, thr, idxs)


def _nms_rotated_case(d: Draw) -> Case:
    boxes, scores, _ = _nms_args(d, 5, False)
    return Case([boxes, scores, _threshold(d)])


def _batched_nms_rotated_case(d: Draw) -> Case:
    boxes, scores, idxs = _nms_args(d, 5, True)
    return Case([boxes, scores, idxs, _threshold(d)])


# ---- rotated box conversion


_FORMATS = ("xywha", "xywhr", "xywhr_cw", "rrpn", "poly", "detectron2", "mmcv")


def _convert_rotated_case(d: Draw) -> Case:
    src, dst = d(st.sampled_from(_FORMATS), "in_fmt"), d(st.sampled_from(_FORMATS), "out_fmt")
    lead = tuple(d.size(0, 3, "lead") for _ in range(d.size(0, 2, "lead_dims")))
    shape = lead + ((4, 2) if src == "poly" else (5,))
    if d.flag(0.04, "bad_shape"):
        shape = lead + (4,)
    if d.flag(0.04, "bad_fmt"):
        src = d(st.sampled_from(["xyxy", 5, "XYWHA"]), "in_fmt")
    return Case([d.values(shape, d.maybe_wrong_dtype(d.float_dtype("dtype"), "dt"), scale=5.0), src, dst])


def _to_rois_case(d: Draw, columns: int) -> Case:
    dtype = d.maybe_wrong_dtype(d.float_dtype("dtype"), "dt")
    if d.flag(0.3, "tensor_form"):
        return Case([d.values((d.size(0, 4, "k"), columns + d.size(-1, 1, "extra")), dtype)])
    boxes = [d.values((d.size(0, 3, "l"), columns), dtype) for _ in range(d.size(0, 3, "images"))]
    if boxes and d.flag(0.05, "bad_element"):
        boxes[0] = boxes[0].reshape(-1)
    return Case([boxes])


# ---- ctc


def _ctc_loss_case(d: Draw) -> Case:
    dtype = d.maybe_wrong_dtype(d.float_dtype("dtype"), "log_probs_dtype")
    t, n, c, s = d.size(0, 8, "t"), d.size(0, 3, "n"), d.size(1, 5, "c"), d.size(0, 4, "s")
    blank = d.size(0, c - 1, "blank")
    if d.flag(0.04, "bad_blank"):
        d.tame = False
        blank = d(st.sampled_from([-1, c]), "blank")
    kind = d.kind()
    lp = _rand(d.g, (t, n, c), kind).log_softmax(-1) if kind == "normal" else _rand(d.g, (t, n, c), kind)
    lp = _cast(lp, dtype)
    # labels other than blank: draw in [0, c - 1) and shift past the blank
    labels = d.ints((n, s), 0, max(c - 1, 1))
    labels = labels + (labels >= blank).long()
    if c == 1 and s > 0:
        d.tame = False  # only the blank exists: any label is out of range
    if d.flag(0.05, "bad_label"):
        d.tame = False
        labels[..., :1] = d(st.sampled_from([-1, c, blank]), "label")
    il = d.ints((n,), 0, t + 1)
    tl = d.ints((n,), 0, s + 1)
    if d.flag(0.05, "bad_lengths"):
        d.tame = False
        (il if d.flag(0.5, "which") else tl)[:1] = d(st.sampled_from([-1, t + 1, s + 1, 2**40]), "length")
    targets = labels
    if d.flag(0.3, "concatenated"):
        targets = torch.cat([labels[i, : int(tl[i])] for i in range(n)]) if n and (tl >= 0).all() else labels.reshape(-1)
    targets = targets.to(d(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8]), "targets_dtype"))
    if d.flag(0.04, "float_targets"):
        d.tame = False
        targets = targets.float()
    input_lengths = il if d.flag(0.7, "il_tensor") else il.tolist()
    target_lengths = tl if d.flag(0.7, "tl_tensor") else tl.tolist()
    if d.flag(0.1, "unbatched") and n == 1:
        lp, targets = lp[:, 0], targets.reshape(-1)
        input_lengths, target_lengths = int(il[0]), int(tl[0])
    reduction = d(st.sampled_from(["none", "mean", "sum"]), "reduction")
    if d.flag(0.03, "bad_reduction"):
        reduction = "avg"
    return Case([lp, targets, input_lengths, target_lengths, blank, reduction, d(st.booleans(), "zero_infinity")])


def _ctc_peer(lp, targets, il, tl, blank, reduction, zero_infinity):
    if lp.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError
    il = torch.as_tensor(il)
    tl = torch.as_tensor(tl)
    return torch.nn.functional.ctc_loss(lp, targets.long(), il, tl, blank, reduction, zero_infinity)


def _decode_case(d: Draw, beam: bool) -> Case:
    dtype = d.maybe_wrong_dtype(d.float_dtype("dtype"), "log_probs_dtype")
    t, n, c = d.size(0, 6, "t"), d.size(0, 3, "n"), d.size(1, 5, "c")
    lp = d.values((t, n, c), dtype)
    il = d.ints((n,), 0, t + 1)
    if d.flag(0.05, "bad_lengths"):
        il[:1] = d(st.sampled_from([-1, t + 1]), "length")
    lengths = il if d.flag(0.7, "tensor_lengths") else il.tolist()
    if d.flag(0.1, "unbatched") and n == 1:
        lp, lengths = lp[:, 0], int(il[0])
    blank = d.size(0, c - 1, "blank")
    if d.flag(0.04, "bad_blank"):
        blank = d(st.sampled_from([-1, c]), "blank")
    if beam:
        width = d(st.integers(1, 4), "beam_width")
        if d.flag(0.05, "bad_width"):
            width = d(st.sampled_from([0, -1, 2.0]), "beam_width")
        return Case([lp, lengths, width, blank])
    return Case([lp, lengths, blank])


# ---- sampling


def _sampling_mode(d: Draw):
    mode = d(st.sampled_from(["bilinear", "nearest"]), "mode")
    padding = d(st.sampled_from(["zeros", "border", "reflection"]), "padding_mode")
    if d.flag(0.04, "bad_mode"):
        mode = "bicubic"
    return mode, padding, d(st.booleans(), "align_corners")


def _image(d: Draw, dtype):
    n, c, h, w = d.size(0, 2, "n"), d.size(0, 3, "c"), d.size(0, 5, "h"), d.size(0, 5, "w")
    return d.values((n, c, h, w), d.maybe_wrong_dtype(dtype, "input_dtype"))


def _grid_sample_case(d: Draw) -> Case:
    dtype = d.float_dtype("dtype")
    x = _image(d, dtype)
    n = x.shape[0] if not d.flag(0.04, "batch_mismatch") else x.shape[0] + 1
    grid = d.values((n, d.size(0, 4, "oh"), d.size(0, 4, "ow"), 2), d.maybe_wrong_dtype(dtype, "grid_dtype"), scale=0.8)
    return Case([x, grid, *_sampling_mode(d)])


def _grid_sample_peer(x, grid, mode, padding, align):
    if x.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError
    return torch.nn.functional.grid_sample(x, grid, mode, padding, align)


def _theta(d: Draw, n: int, dtype):
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    return _cast(eye + d.values((n, 2, 3), torch.float64, scale=0.3), d.maybe_wrong_dtype(dtype, "theta_dtype"))


def _affine_grid_case(d: Draw) -> Case:
    dtype = d.float_dtype("dtype")
    n = d.size(0, 3, "n")
    size = [n, d.size(0, 3, "c"), d.size(0, 5, "h"), d.size(0, 5, "w")]
    if d.flag(0.05, "bad_size"):
        size = size[1:] if d.flag(0.5, "short") else [n + 1] + size[1:]
    return Case([_theta(d, n, dtype), size, d(st.booleans(), "align_corners")])


def _affine_grid_sample_case(d: Draw) -> Case:
    dtype = d.float_dtype("dtype")
    x = _image(d, dtype)
    n = x.shape[0] if not d.flag(0.04, "batch_mismatch") else x.shape[0] + 1
    return Case([x, _theta(d, n, dtype), d.output_size(4), *_sampling_mode(d)])


def _affine_grid_sample_peer(x, theta, output_size, mode, padding, align):
    if x.dtype not in (torch.float32, torch.float64) or x.shape[0] == 0:
        raise NotImplementedError
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    grid = torch.nn.functional.affine_grid(theta, (x.shape[0], x.shape[1], h, w), align)
    return torch.nn.functional.grid_sample(x, grid, mode, padding, align)


def _points(d: Draw, b: Optional[int], k: int, dtype, spread: float = 1.0):
    shape = (k, 2) if b is None else (b, k, 2)
    return d.values(shape, d.maybe_wrong_dtype(dtype, "points_dtype"), scale=spread)


def _tps_fit_case(d: Draw) -> Case:
    dtype = d.float_dtype("dtype")
    b, k = (None if d.flag(0.3, "unbatched") else d.size(0, 3, "b")), d.size(0, 6, "k")
    target = _points(d, b, k, dtype)
    if d.flag(0.1, "degenerate") and k:
        target = target * 0 if d.flag(0.5, "repeat") else torch.stack([target[..., 0], 2 * target[..., 0]], -1)
    source = _points(d, b if not d.flag(0.05, "other_b") else (b or 0) + 2, k + d.size(0, 1, "k_extra") * d.flag(0.05), dtype)
    reg = d(st.sampled_from([0.0, 0.1, 1.0, -1.0 if d.flag(0.05, "bad_reg") else 0.0]), "regularization")
    return Case([source, target, reg])


def _tps_weights(d: Draw, dtype):
    b, k = d.size(0, 2, "b"), d.size(0, 6, "k")
    kw = d.values((b, k, 2), d.maybe_wrong_dtype(dtype, "kw_dtype"), scale=0.1)
    aw = _cast(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).expand(b, 3, 2) + _rand(d.g, (b, 3, 2), "normal") * 0.1,
               d.maybe_wrong_dtype(dtype, "aw_dtype"))
    target = _points(d, b if not d.flag(0.3, "shared_points") else None, k, dtype)
    if d.flag(0.04, "k_mismatch"):
        target = target[..., : max(k - 1, 0), :]
    return kw, aw, target


def _tps_grid_case(d: Draw) -> Case:
    kw, aw, target = _tps_weights(d, d.float_dtype("dtype"))
    return Case([kw, aw, target, d.output_size(4), d(st.booleans(), "align_corners")])


def _tps_grid_peer(kw, aw, target, output_size, align):
    from reference.sampling import tps_grid_torch

    if kw.dtype != torch.float64:
        raise NotImplementedError
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if target.dim() == 2:
        target = target.expand(kw.shape[0], -1, -1)
    return tps_grid_torch(kw, aw, target, (h, w), align)


def _tps_grid_sample_case(d: Draw) -> Case:
    dtype = d.float_dtype("dtype")
    x = _image(d, dtype)
    kw, aw, target = _tps_weights(d, dtype)
    if x.shape[0] != kw.shape[0] and not d.flag(0.1, "batch_mismatch"):
        x = x[: kw.shape[0]] if x.shape[0] > kw.shape[0] else torch.cat([x] * (kw.shape[0] + 1))[: kw.shape[0]]
    return Case([x, kw, aw, target, d.output_size(4), *_sampling_mode(d)])


def _tps_grid_sample_peer(x, kw, aw, target, output_size, mode, padding, align):
    if x.dtype != torch.float64:
        raise NotImplementedError
    grid = ops.tps_grid(kw, aw, target, output_size, align)
    return torch.nn.functional.grid_sample(x, grid, mode, padding, align)


def _rare_fiducials_case(d: Draw) -> Case:
    k = d(st.sampled_from([4, 6, 20, 3, 0, -2, 5.0]), "num_fiducial")
    return Case([k, d.float_dtype("dtype")])


SPECS = [
    # roi
    Spec("roi_align", lambda d: _pooling_case(d, False, True), _tv("roi_align"), grad=(0,), names=("rois",)),
    Spec("roi_pool", lambda d: _pooling_case(d, False, False), _tv("roi_pool"), grad=(0,), names=("rois",)),
    Spec("convert_boxes_to_rois", lambda d: _to_rois_case(d, 4)),
    # boxes
    Spec("box_iou", lambda d: _box_pair_case(d, 4), _tv("box_iou"), grad=(0, 1)),
    Spec("nms", _nms_case, _tv("nms")),
    Spec("batched_nms", _batched_nms_case, _tv("batched_nms")),
    Spec("nms_fixed", _nms_fixed_case, _nms_fixed_peer),
    # rotated
    Spec("box_iou_rotated", _box_iou_rotated_case, _box_iou_rotated_peer),
    Spec("convert_rotated_boxes", _convert_rotated_case, grad=(0,), names=("fmt",), exact=False),
    Spec("convert_rotated_boxes_to_rois", lambda d: _to_rois_case(d, 5), names=("rois",)),
    Spec("roi_align_rotated", lambda d: _pooling_case(d, True, True), _roi_align_rotated_peer, grad=(0,)),
    Spec("roi_pool_rotated", lambda d: _pooling_case(d, True, False), grad=(0,), names=("rois",)),
    Spec("nms_rotated", _nms_rotated_case, _rotated_nms_peer),
    Spec("batched_nms_rotated", _batched_nms_rotated_case, lambda b, s, i, t: _rotated_nms_peer(b, s, t, i)),
    # ctc
    Spec("ctc_loss", _ctc_loss_case, _ctc_peer, grad=(0,), names=("label", "labels", "lengths")),
    Spec("ctc_greedy_decode", lambda d: _decode_case(d, False)),
    Spec("ctc_beam_search_decode", lambda d: _decode_case(d, True)),
    # sampling
    Spec("grid_sample", _grid_sample_case, _grid_sample_peer, grad=(0, 1)),
    Spec("affine_grid", _affine_grid_case, lambda t, s, a: torch.nn.functional.affine_grid(t, s, a), grad=(0,), exact=False),
    Spec("affine_grid_sample", _affine_grid_sample_case, _affine_grid_sample_peer, grad=(0, 1)),
    Spec("tps_fit", _tps_fit_case, grad=(0, 1), names=("points",), exact=False),
    Spec("tps_grid", _tps_grid_case, _tps_grid_peer, grad=(0, 1, 2), names=("weights",)),
    Spec("tps_grid_sample", _tps_grid_sample_case, _tps_grid_sample_peer, grad=(0, 1, 2, 3), names=("weights",)),
    Spec("rare_fiducials", _rare_fiducials_case),
]


# ---- conv (merged separately: these entries switch on with the family)


def _conv_case(d: Draw, depthwise: bool) -> Case:
    dtype = d.float_dtype("dtype")
    groups = 1 if depthwise else d(st.sampled_from([1, 1, 2]), "groups")
    n, c, h, w = d.size(0, 2, "n"), groups * d.size(0 if groups == 1 else 1, 3, "c"), d.size(0, 6, "h"), d.size(0, 6, "w")
    kh, kw = d.size(1, 3, "kh"), d.size(1, 3, "kw")
    if depthwise:
        cout, cin = c * d.size(1, 2, "multiplier"), 1
    else:
        cout, cin = groups * d.size(1, 3, "cout"), c // groups
    x = d.values((n, c, h, w), d.maybe_wrong_dtype(dtype, "input_dtype"))
    weight = d.values((cout, cin, kh, kw), d.maybe_wrong_dtype(dtype, "weight_dtype"), scale=0.3)
    bias = d.values((cout,), dtype) if d.flag(0.5, "bias") else None
    stride = d(st.sampled_from([1, 2, (1, 2)]), "stride")
    padding = d(st.sampled_from([0, 1, (1, 0), "valid"] + (["same"] if stride == 1 else [])), "padding")
    dilation = d(st.sampled_from([1, 2]), "dilation")
    if d.flag(0.04, "bad_stride"):
        d.tame = False
        stride = d(st.sampled_from([0, -1, (1, 2, 3)]), "stride")
    args = [x, weight, bias, stride, padding, dilation]
    if depthwise:
        return Case(args + [d(st.sampled_from([None, "relu", "relu6"]), "activation")])
    return Case(args + [groups])


def _conv_peer(x, weight, bias, stride, padding, dilation, last):
    if x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        raise NotImplementedError
    depthwise = last is None or isinstance(last, str)
    groups = x.shape[1] if depthwise else last
    out = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if last == "relu":
        out = out.relu()
    elif last == "relu6":
        out = out.clamp(0, 6)
    return out


if hasattr(ops, "conv2d"):
    SPECS += [
        Spec("conv2d", lambda d: _conv_case(d, False), _conv_peer, grad=(0, 1, 2)),
        Spec("depthwise_conv2d", lambda d: _conv_case(d, True), _conv_peer, grad=(0, 1, 2)),
    ]


# ---------------------------------------------------------------- layouts


def relayout(t: torch.Tensor, layout: str, d: Draw) -> torch.Tensor:
    """``t``'s values (or, for ``expanded``, a stride-0 broadcast of one slice of
    them) in another memory layout."""
    if layout == "transposed" and t.dim() >= 2:
        a, b = d(st.permutations(range(t.dim())), "perm")[:2]
        return t.transpose(a, b).contiguous().transpose(a, b)
    if layout == "strided" and t.dim() >= 1:
        buf = t.new_zeros(t.shape[:-1] + (2 * t.shape[-1] + 1,))
        view = buf[..., 1::2]
        view.copy_(t)
        return view
    if layout == "offset":
        buf = t.new_zeros(t.numel() + 3)
        view = buf[3:].view(t.shape)
        view.copy_(t)
        return view
    if layout == "expanded" and t.dim() >= 1:
        dim = d(st.integers(0, t.dim() - 1), "expand_dim")
        return t.narrow(dim, 0, min(1, t.shape[dim])).expand(t.shape)
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _flat(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return []


def _is_cl(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _finite_max(tensors) -> float:
    m = 0.0
    for t in tensors:
        if t.is_floating_point() and t.numel():
            f = t.detach().double().abs().nan_to_num(nan=0.0, posinf=0.0)
            m = max(m, float(f.max()))
    return m


def assert_same(actual, expected, exact: bool, scale: float, what: str):
    """Same structure, shapes and dtypes; integer results equal; float results
    bit-identical (NaN == NaN) or, when ``exact`` is False (another kernel path
    summing in another order), equal to a few thousand ulps of the accumulation
    dtype times the largest input magnitude."""
    a, e = _flat(actual), _flat(expected)
    assert type(actual) is type(expected) and len(a) == len(e), f"{what}: {type(actual)} vs {type(expected)}"
    for i, (x, y) in enumerate(zip(a, e)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}[{i}]: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"
        x, y = x.detach().cpu(), y.detach().cpu()
        if not x.is_floating_point() or exact:
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}[{i}]: {m}")
        else:
            eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
            tol = dict(rtol=4 * torch.finfo(x.dtype).eps + 1e3 * eps, atol=1e3 * eps * scale)
            torch.testing.assert_close(x.double(), y.double(), equal_nan=True, **tol, msg=lambda m: f"{what}[{i}]: {m}")


def _error_names(spec: Spec) -> set:
    names = set(inspect.signature(spec.fn).parameters) | set(spec.names)
    return {n for n in names if len(n) > 2}


def check_error(spec: Spec, err: Exception):
    msg = str(err)
    names = _error_names(spec)
    assert any(re.search(rf"\b{re.escape(n)}", msg) for n in names), (
        f"{spec.name}: {type(err).__name__} does not name an argument ({sorted(names)}): {msg[:300]}"
    )


def _call(spec: Spec, args, kwargs):
    try:
        return spec.fn(*args, **kwargs), None
    except ERRORS as err:
        return None, err


def _snapshot(args):
    return [t.clone() for t in _flat(args)]


def run_case(spec: Spec, case: Case, d: Draw, device: str, stats: Counter):
    args = _map_tensors(case.args, lambda t: t.to(device))
    layouts = []

    def pick(t):
        layout = d(st.sampled_from(LAYOUTS), "layout")
        layouts.append(layout)
        return relayout(t, layout, d)

    laid = _map_tensors(args, pick)
    contiguous = _map_tensors(laid, lambda t: t.contiguous())
    before = _snapshot(laid)
    out, err = _call(spec, laid, case.kwargs)
    ref, ref_err = _call(spec, contiguous, case.kwargs)
    for x, y in zip(_flat(laid), before):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f"{spec.name} wrote to an input")

    if err is not None or ref_err is not None:
        assert err is not None and ref_err is not None and type(err) is type(ref_err), (
            f"{spec.name}: layouts {layouts} changed the outcome: {err!r} vs contiguous {ref_err!r}"
        )
        check_error(spec, err)
        stats[f"raised {type(err).__name__}"] += 1
        return
    stats["returned"] += 1
    exact = spec.exact and [_is_cl(t) for t in _flat(laid)] == [_is_cl(t) for t in _flat(contiguous)]
    scale = _finite_max(_flat(args))
    assert_same(out, ref, exact, scale, f"{spec.name} layouts {layouts}")

    if spec.peer is not None and case.tame and device == "cpu":
        try:
            expected = spec.peer(*contiguous, **case.kwargs)
        except (NotImplementedError, RuntimeError, ValueError):
            expected = None  # outside the peer's domain (or its dtype support)
        if expected is not None:
            stats["vs peer"] += 1
            for x, y in zip(_flat(out), _flat(expected)):
                tol = (spec.peer_tol or _default_tol)(x.dtype) if x.is_floating_point() else dict(rtol=0, atol=0)
                torch.testing.assert_close(x.cpu().to(y.dtype), y.cpu(), equal_nan=True, **tol)

    if spec.grad:
        run_backward(spec, case, laid, contiguous, d, exact, scale, stats)


def run_backward(spec, case, laid, contiguous, d, exact, scale, stats):
    wanted = [i for i in spec.grad if isinstance(laid[i], torch.Tensor) and laid[i].is_floating_point()]
    if not wanted:
        return

    def forward(args):
        args = list(args)
        leaves = []
        for i in wanted:
            args[i] = args[i].detach().requires_grad_(True)
            leaves.append(args[i])
        return spec.fn(*args, **case.kwargs), leaves

    out, leaves = forward(laid)
    outs = [o for o in _flat(out) if o.is_floating_point() and o.requires_grad]
    if not outs:
        return
    grads = [d.values(o.shape, o.dtype, "normal") .to(o.device) for o in outs]
    laid_grads = [relayout(g, d(st.sampled_from(LAYOUTS), "grad_layout"), d) for g in grads]
    ref_out, ref_leaves = forward(contiguous)
    ref_outs = [o for o in _flat(ref_out) if o.is_floating_point() and o.requires_grad]
    try:
        got = torch.autograd.grad(outs, leaves, laid_grads, allow_unused=True)
    except ERRORS as err:
        with pytest.raises(type(err)):
            torch.autograd.grad(ref_outs, ref_leaves, [g.contiguous() for g in laid_grads], allow_unused=True)
        check_error(spec, err)
        stats["backward raised"] += 1
        return
    want = torch.autograd.grad(ref_outs, ref_leaves, [g.contiguous() for g in laid_grads], allow_unused=True)
    exact = exact and all(not _is_cl(g) for g in laid_grads)
    # CUDA backward kernels of the roi and sampling families add with atomics
    # (any summation order) unless deterministic mode is on
    exact = exact and (outs[0].device.type == "cpu" or torch.are_deterministic_algorithms_enabled())
    for g, w in zip(got, want):
        if g is None or w is None:
            assert g is None and w is None, f"{spec.name}: gradient missing for one layout only"
            continue
        assert_same(g, w, exact, scale * max(_finite_max(grads), 1.0), f"{spec.name} backward")
    stats["backward"] += 1


# ---------------------------------------------------------------- the tests


def _record(spec: Spec, device: str, stats: Counter, record_property):
    record_property(f"fuzz_{spec.name}_{device}", dict(stats))
    path = os.environ.get("VISIONOPS_FUZZ_STATS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"op": spec.name, "device": device, **stats}) + "\n")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_fuzz(spec, device, record_property):
    stats: Counter = Counter()

    @FUZZ_SETTINGS
    @given(st.data())
    def run(data):
        d = Draw(data)
        case = spec.build(d)
        case.tame = case.tame and d.tame
        stats["examples"] += 1
        run_case(spec, case, d, device, stats)

    run()
    _record(spec, device, stats, record_property)
    # the strategies must reach the kernels, not only the argument checks
    assert stats["returned"] > 0, dict(stats)


def test_every_public_op_is_fuzzed():
    """A new op of visionops.ops needs an entry in SPECS (conv included)."""
    public = {n for n in ops.__all__ if callable(getattr(ops, n)) and not isinstance(getattr(ops, n), type)}
    assert public - {s.name for s in SPECS} == set()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a CUDA device")
@pytest.mark.parametrize("spec", [s for s in SPECS if s.name != "rare_fiducials"], ids=lambda s: s.name)
def test_fuzz_mixed_devices(spec):
    """One tensor argument on the GPU and the rest on the CPU: a clear error, or
    (for arguments the op accepts on either device, like CTC lengths) the result
    of the all-CPU call, to rounding."""

    @FUZZ_SETTINGS
    @given(st.data())
    def run(data):
        d = Draw(data)
        case = spec.build(d)
        tensors = _flat(case.args)
        if not tensors:
            return
        which = d(st.integers(0, len(tensors) - 1), "which")
        counter = iter(range(len(tensors)))
        args = _map_tensors(case.args, lambda t: t.cuda() if next(counter) == which else t)
        out, err = _call(spec, args, case.kwargs)
        ref, ref_err = _call(spec, case.args, case.kwargs)
        if err is not None:
            check_error(spec, err)
            return
        if ref_err is None:
            assert_same(_map_tensors(out, lambda t: t.cpu()), ref, False, _finite_max(tensors), spec.name)

    run()


# ---------------------------------------------------------------- regressions found by the fuzzer


def test_affine_grid_sample_backward_with_empty_batch():
    """N = 0: the theta gradient reshaped [0, -1, 2], which torch rejects."""
    x = torch.randn(0, 2, 4, 4, requires_grad=True)
    theta = torch.randn(0, 2, 3, requires_grad=True)
    out = ops.affine_grid_sample(x, theta, (3, 5))
    gx, gt = torch.autograd.grad(out.sum(), [x, theta])
    assert out.shape == (0, 2, 3, 5) and gx.shape == x.shape and gt.shape == theta.shape


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_tps_fit_rejects_non_finite_target_points(bad):
    """A NaN/Inf control point passed the collinearity check (NaN compares false)
    and reached linalg.solve, whose error named no argument."""
    target = ops.rare_fiducials(6)
    target[2, 0] = bad
    with pytest.raises(ValueError, match="target_points"):
        ops.tps_fit(ops.rare_fiducials(6), target)


@pytest.mark.parametrize("call,message", [
    (lambda other: ops.convert_boxes_to_rois([torch.zeros(1, 4), torch.zeros(1, 4, device=other)]), r"roi_align: boxes\[1\] is on meta"),
    (lambda other: ops.roi_pool(torch.zeros(1, 1, 4, 4), [torch.zeros(1, 4), torch.zeros(1, 4, device=other)], 2), r"roi_pool: boxes\[1\] is on meta"),
    (lambda other: ops.convert_rotated_boxes_to_rois([torch.zeros(1, 5, device=other), torch.zeros(1, 5)]), r"rois\[1\] is on cpu but rois\[0\] is on meta"),
    (lambda other: ops.tps_fit(ops.rare_fiducials(4).to(other), ops.rare_fiducials(4)), r"tps_fit: source_points is on meta"),
])
def test_python_helpers_reject_tensors_on_two_devices(call, message):
    """Found on the H100: per-image box lists and tps_fit's two point sets spread
    over two devices reached torch.cat, whose error names no argument. The meta
    device stands in for the GPU so that this runs everywhere."""
    with pytest.raises(RuntimeError, match=message):
        call("meta")
