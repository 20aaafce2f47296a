"""Side-by-side timing: median of repeated runs, CUDA synchronised."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def keep_freed_memory() -> bool:
    """Stops glibc's malloc from returning freed memory to the OS (and from
    serving large blocks with fresh mmaps) for the rest of the process.

    Otherwise, depending on the process's allocation history, every call of an
    op with megabytes of output or temporaries page-faults them in anew: on the
    2026-11-27 EPYC, about 1 process in 3 ran the 960x7 depthwise layer at
    1000-1500 us instead of 300-420 us, with 202k page faults against 87k. Both
    sides of a benchmark run in one process, so this only removes noise.
    Returns whether it applied (glibc only)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 28))


def synchronized(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    if device.startswith("cuda"):

        def run():
            out = fn()
            torch.cuda.synchronize()
            return out

        return run
    return fn


def median_time(fn: Callable[[], Any], device: str, min_runs: int = 5, min_seconds: float = 0.2, warmup: int = 2) -> float:
    """Median wall time of one call, in seconds."""
    run = synchronized(fn, device)
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_seconds and len(times) < 1000):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_bandwidth(device: str) -> float | None:
    """Achievable memory bandwidth (bytes/s) from a large device-to-device copy."""
    if not device.startswith("cuda"):
        return None
    src = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, min_runs=10)
    return 2 * src.numel() / seconds
