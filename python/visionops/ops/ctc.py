"""CTC loss (Graves et al. 2006) and CTC decoders: a drop-in for
``torch.nn.functional.ctc_loss`` plus greedy and prefix beam-search decoding.

Schemas: ``cpp/ops.cpp``; kernels: ``cpp/ctc_cpu.cpp`` and ``cuda/ctc_cuda.cu``;
the recursion shared by both: ``cpp/include/visionops/ctc.h``. This module holds
the public functions and the fake, autograd and autocast registrations.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from ._registry import _lib, check_tensor

__all__ = ["ctc_loss", "ctc_greedy_decode", "ctc_beam_search_decode"]

Lengths = Union[Tensor, Sequence[int], int]

_REDUCTIONS = ("none", "mean", "sum")


def _as_lengths(value: Lengths, name: str, op: str, device: torch.device) -> Tensor:
    """int64 lengths on ``device``; CPU tensors and Python ints are moved there."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must hold integers, got dtype {value.dtype}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be on the CPU or on the device of log_probs ({device}), got {value.device}")
        if value.dim() > 1:
            raise ValueError(f"{op}: {name} must be a 0-D or 1-D tensor, got shape {tuple(value.shape)}")
        return value.reshape(-1).to(device=device, dtype=torch.long)
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(f"{op}: {name} must be a tensor or a sequence of ints, got {value!r}")
    return torch.tensor(list(value), dtype=torch.long, device=device)


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """Connectionist temporal classification loss: exactly
    :func:`torch.nn.functional.ctc_loss`, without its limits.

    Args:
        log_probs: ``[T, N, C]`` (or unbatched ``[T, C]``) log-softmax outputs,
            float16/bfloat16/float32/float64 on CPU or CUDA (16-bit inputs are
            accumulated in float32 on both devices).
        targets: padded ``[N, S]`` (entries past each target length are ignored,
            whatever their value) or concatenated 1-D ``[sum(target_lengths)]``
            labels in ``[0, C)`` other than ``blank``; any integer dtype, on the
            CPU or on the device of ``log_probs``.
        input_lengths, target_lengths: ``[N]`` integer tensors (CPU or the
            device of ``log_probs``) or sequences of ints; may differ per sample.
        blank: index of the blank class, any value in ``[0, C)``.
        reduction: ``"none"`` (``[N]`` losses), ``"sum"``, or ``"mean"`` (each
            loss divided by its target length, clamped to >= 1, then averaged).
        zero_infinity: replace infinite losses (impossible alignments) and
            their gradients by zero.

    Returns:
        The loss in the dtype of ``log_probs``. The gradient w.r.t. ``log_probs``
        is torch's: ``exp(log_probs) - occupancy`` (the gradient w.r.t. the
        logits, correct once it flows back through ``log_softmax``).
        An impossible alignment gives ``inf`` (NaN gradients, as torch) unless
        ``zero_infinity``. Invalid lengths or labels raise on the CPU; on CUDA
        (values cannot be checked without a host sync) lengths given on the CPU
        are checked, and a sample with a label out of range gets a NaN loss.

    Example:
        >>> lp = torch.tensor([[0.6, 0.4], [0.3, 0.7]]).log().unsqueeze(1)  # T=2, N=1, C=2
        >>> # paths for target [1]: (1,1), (1,0), (0,1): 0.4*0.7 + 0.4*0.3 + 0.6*0.7 = 0.82
        >>> round(ctc_loss(lp, torch.tensor([[1]]), [2], [1], reduction="sum").exp().item() ** -1, 4)
        0.82
    """
    op = "ctc_loss"
    check_tensor(log_probs, "log_probs", op)
    check_tensor(targets, "targets", op)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not log_probs.is_floating_point():
        raise TypeError(f"{op}: log_probs must be a floating-point tensor, got {log_probs.dtype}")
    if log_probs.dim() not in (2, 3):
        raise ValueError(f"{op}: log_probs must be [T, N, C] or unbatched [T, C], got shape {tuple(log_probs.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"{op}: targets must hold integers, got dtype {targets.dtype}")
    device = log_probs.device
    if targets.device != device and targets.device.type != "cpu":
        raise ValueError(f"{op}: targets must be on the CPU or on the device of log_probs ({device}), got {targets.device}")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
        if targets.dim() == 1:
            targets = targets.unsqueeze(0)
    il_host = input_lengths.device.type == "cpu" if isinstance(input_lengths, Tensor) else True
    tl_host = target_lengths.device.type == "cpu" if isinstance(target_lengths, Tensor) else True
    il = _as_lengths(input_lengths, "input_lengths", op, torch.device("cpu") if il_host else device)
    tl = _as_lengths(target_lengths, "target_lengths", op, torch.device("cpu") if tl_host else device)
    if targets.dim() == 2:
        max_target_length = targets.size(1)
    elif targets.dim() == 1:
        # concatenated targets: the widest sample sizes log_alpha (a sync if tl is on a GPU)
        max_target_length = int(tl.max()) if tl.numel() else 0
        max_target_length = max(max_target_length, 0)
    else:
        raise ValueError(f"{op}: targets must be padded [N, S] or concatenated 1-D, got shape {tuple(targets.shape)}")
    if device.type != "cpu" and il_host and tl_host and not torch.compiler.is_compiling():
        # free on the host: the errors the CPU kernel raises, for a GPU input
        _check_host_lengths(op, il, tl, log_probs.size(0), max_target_length, log_probs.size(1))
    loss, _ = torch.ops.visionops.ctc_loss(
        log_probs, targets.to(device), il.to(device), tl.to(device), max_target_length, int(blank), bool(zero_infinity)
    )
    if reduction == "mean":
        loss = (loss / tl.to(device=device, dtype=loss.dtype).clamp_min(1)).mean()
    elif reduction == "sum":
        loss = loss.sum()
    elif unbatched:
        loss = loss.squeeze(0)
    return loss


def _check_host_lengths(op: str, il: Tensor, tl: Tensor, max_time: int, max_target_length: int, n: int) -> None:
    if il.numel() != n or tl.numel() != n:
        return  # the kernel's shape check names the argument
    bad = ((il < 0) | (il > max_time)).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"{op}: input_lengths[{b}] = {int(il[b])} must lie in [0, T] = [0, {max_time}]")
    bad = ((tl < 0) | (tl > max_target_length)).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"{op}: target_lengths[{b}] = {int(tl[b])} must lie in [0, S] = [0, {max_target_length}]")


def ctc_greedy_decode(log_probs: Tensor, input_lengths: Lengths, blank: int = 0) -> list[Tensor]:
    """Best-path decoding: the most likely class per step, repeats collapsed,
    blanks removed. Vectorised torch ops on any device (one host sync to split
    the result per sample).

    Args:
        log_probs: ``[T, N, C]`` or unbatched ``[T, C]`` scores (any monotone
            transform of the probabilities: only the argmax matters).
        input_lengths: ``[N]`` valid steps per sample.
        blank: index of the blank class.

    Returns:
        A list of N int64 label tensors on the device of ``log_probs``
        (one tensor for unbatched input).

    Example:
        >>> lp = torch.eye(4)[[1, 1, 0, 1, 2, 2, 0]].unsqueeze(1).log()  # path 1 1 - 1 2 2 -
        >>> ctc_greedy_decode(lp, [7])
        [tensor([1, 1, 2])]
    """
    op = "ctc_greedy_decode"
    log_probs = _check_decode_input(log_probs, op)
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
    t, n, c = log_probs.shape
    if not 0 <= blank < c:
        raise ValueError(f"{op}: blank must lie in [0, C) = [0, {c}), got {blank}")
    lengths = _as_lengths(input_lengths, "input_lengths", op, log_probs.device)
    if lengths.numel() != n:
        raise ValueError(f"{op}: input_lengths must hold N = {n} lengths, got {lengths.numel()}")
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ((lengths < 0) | (lengths > t)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"{op}: input_lengths[{b}] = {int(lengths[b])} must lie in [0, T] = [0, {t}]")
    if t == 0 or n == 0:
        out = [torch.zeros(0, dtype=torch.long, device=log_probs.device) for _ in range(n)]
        return out[0] if unbatched else out
    best = log_probs.argmax(dim=2).t()  # [N, T]
    steps = torch.arange(t, device=log_probs.device)
    keep = (best != blank) & (steps < lengths.view(n, 1))
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    counts = keep.sum(dim=1).tolist()
    out = list(best[keep].split(counts))
    return out[0] if unbatched else out


def ctc_beam_search_decode(
    log_probs: Tensor, input_lengths: Lengths, beam_width: int = 10, blank: int = 0
) -> tuple[list[Tensor], Tensor]:
    """CTC prefix beam search: the most likely labelling, summing over all of
    its alignments, among the ``beam_width`` prefixes kept per step.

    A compiled CPU kernel (float64 search, parallel over the batch); CUDA
    inputs are copied to the host, as the search is sequential hash-map work
    per step, and the results come back on the input's device.

    Args:
        log_probs: ``[T, N, C]`` or unbatched ``[T, C]`` log-probabilities.
        input_lengths: ``[N]`` valid steps per sample.
        beam_width: prefixes kept per step (>= 1; 1 is not the same as greedy:
            it merges the alignments of the kept prefix).
        blank: index of the blank class.

    Returns:
        ``(sequences, scores)``: a list of N int64 label tensors and
        ``Tensor[N]`` of their log-probabilities ``log p(sequence | input)``
        (exact when no prefix of the result was pruned), float32 (float64 for
        float64 input). Unbatched input gives one tensor and a 0-D score.

    Example:
        >>> lp = torch.tensor([[0.4, 0.6], [0.4, 0.6]]).log().unsqueeze(1)  # blank=0, one label
        >>> seqs, scores = ctc_beam_search_decode(lp, [2])
        >>> seqs, round(scores.exp().item(), 2)  # "1" via 11, 10, 01: 0.36 + 0.24 + 0.24; best path "11" alone is 0.36
        ([tensor([1])], 0.84)
    """
    op = "ctc_beam_search_decode"
    log_probs = _check_decode_input(log_probs, op)
    if isinstance(beam_width, bool) or not isinstance(beam_width, int):
        raise TypeError(f"{op}: beam_width must be an int, got {beam_width!r}")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
    device = log_probs.device
    lengths = _as_lengths(input_lengths, "input_lengths", op, torch.device("cpu"))
    labels, counts, scores = torch.ops.visionops.ctc_beam_search_decode(
        log_probs.detach().cpu(), lengths, beam_width, int(blank)
    )
    seqs = [labels[i, : int(k)].to(device) for i, k in enumerate(counts.tolist())]
    scores = scores.to(device)
    if unbatched:
        return seqs[0], scores[0]
    return seqs, scores


def _check_decode_input(log_probs: Tensor, op: str) -> Tensor:
    check_tensor(log_probs, "log_probs", op)
    if not log_probs.is_floating_point():
        raise TypeError(f"{op}: log_probs must be a floating-point tensor, got {log_probs.dtype}")
    if log_probs.dim() not in (2, 3):
        raise ValueError(f"{op}: log_probs must be [T, N, C] or unbatched [T, C], got shape {tuple(log_probs.shape)}")
    return log_probs


# ---------------------------------------------------------------- fake kernels


@torch.library.register_fake("visionops::ctc_loss")
def _ctc_loss_fake(log_probs, targets, input_lengths, target_lengths, max_target_length, blank, zero_infinity):
    torch._check(log_probs.dim() == 3, lambda: f"ctc_loss: log_probs must be [T, N, C], got {log_probs.dim()}-D")
    torch._check(
        targets.dim() in (1, 2), lambda: f"ctc_loss: targets must be padded [N, S] or 1-D, got {targets.dim()}-D"
    )
    t, n, _ = log_probs.shape
    acc = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    nll = log_probs.new_empty((n,))
    log_alpha = log_probs.new_empty((n, t, 2 * max_target_length + 1), dtype=acc)
    return nll, log_alpha


@torch.library.register_fake("visionops::_ctc_loss_backward")
def _ctc_loss_backward_fake(grad, log_probs, targets, input_lengths, target_lengths, log_alpha, blank, zero_infinity):
    return torch.empty_like(log_probs, memory_format=torch.contiguous_format)


@torch.library.register_fake("visionops::ctc_beam_search_decode")
def _ctc_beam_search_fake(log_probs, input_lengths, beam_width, blank):
    t, n, _ = log_probs.shape
    acc = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    labels = log_probs.new_empty((n, t), dtype=torch.long)
    return labels, log_probs.new_empty((n,), dtype=torch.long), log_probs.new_empty((n,), dtype=acc)


# Autograd: cpp/ctc_autograd.cpp.

# ---------------------------------------------------------------- autocast


def _register_ctc_autocast() -> None:
    """Under autocast, like torch (ctc_loss is on its float32 list): the loss is
    computed from float32 log_probs and returned in float32. The kernels
    accumulate in float32 anyway; the cast keeps the output dtype torch's."""
    op = torch.ops.visionops.ctc_loss.default
    for key in ("AutocastCPU", "AutocastCUDA"):
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(log_probs, *args, _keyset=keyset):
            with torch._C._ExcludeDispatchKeyGuard(_keyset):
                return op(log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs, *args)

        _lib.impl("ctc_loss", kernel, key)


_register_ctc_autocast()
