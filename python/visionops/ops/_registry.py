"""Helpers shared by the op families: argument checks and autocast rules."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

_lib = torch.library.Library("visionops", "IMPL")  # keeps the autocast kernels registered

_AUTOCAST_KEYS = ("AutocastCPU", "AutocastCUDA")


def register_float32_autocast(name: str) -> None:
    """Under autocast, run ``visionops::<name>`` in float32 and cast floating
    outputs back to the dtype of the first floating input (torchvision's rule
    for its RoI ops: coordinates are never rounded to 16 bits)."""
    op = getattr(torch.ops.visionops, name).default
    for key in _AUTOCAST_KEYS:
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args: Any, _keyset: Any = keyset) -> Any:
            dtype = next(a.dtype for a in args if isinstance(a, Tensor) and a.is_floating_point())
            cast = [a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
            with torch._C._ExcludeDispatchKeyGuard(_keyset):
                out = op(*cast)
            if isinstance(out, tuple):
                return tuple(o.to(dtype) if o.is_floating_point() else o for o in out)
            return out.to(dtype) if out.is_floating_point() else out  # index outputs stay int64

        _lib.impl(name, kernel, key)


def check_tensor(value: Any, name: str, op: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def pair(value: int | Sequence[int], name: str, op: str, minimum: int = 1) -> tuple[int, int]:
    """``int``, ``(a,)`` or ``(a, b)`` -> (a, b), each >= ``minimum`` (1: positive, 0: non-negative)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        if isinstance(v, int) and v < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{op}: {name} must be {kind}, got {value!r}")
    return a, b


def is_channels_last(t: Tensor) -> bool:
    """The layout rule of the C++ kernels (roi_ops.h: use_channels_last)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(t: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format
