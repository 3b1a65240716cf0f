"""Measuring: wall time (GPU synchronised), medians, peak resident memory per phase."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["median", "reset_peak_rss", "settle", "synchronize", "timed", "vm_bytes"]


def synchronize() -> None:
    """Wait for queued GPU work (torch's CUDA streams), so a clock read means done work.
    A no-op without torch or CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call, GPU work included."""
    synchronize()
    t = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def vm_bytes(field: str) -> int:
    """A /proc/self/status figure (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def settle(nbytes: int) -> None:
    """Flush dirty pages and touch ``nbytes`` of fresh memory before a timing.

    On a VM that returns idle guest memory to the host, the first touch of such
    pages costs ~10x a normal page fault (measured here: 1.6 s vs 0.16 s for
    1.5 GB); touching and freeing a buffer first makes the timed call reuse backed
    pages, on every side of an A/B pair alike. ``os.sync`` keeps one write's
    writeback from being billed to the next operation.
    """
    os.sync()
    buf = np.ones(max(1, nbytes // 8), dtype=np.float64)
    del buf
