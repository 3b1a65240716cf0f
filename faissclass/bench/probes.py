"""Measuring: wall time (GPU synchronised), medians, peak resident memory per phase."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Phases", "gpu_used_bytes", "median", "reset_peak_rss", "settle", "synchronize",
           "timed", "vm_bytes"]


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


def gpu_used_bytes() -> int | None:
    """Bytes in use on the current GPU, as the driver sees them (FAISS's and torch's
    allocations alike), or None without torch+CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


class Phases:
    """Times and memory of a cell's phases.

    ``with phases("val_search"):`` runs a phase: peak RSS is reset at its start
    (so each phase reports its own peak), GPU work is synchronised before each
    clock read, and repeated phases accumulate (``phases.add``) or are recorded
    per repeat (``phases.repeat``), the median reported.
    """

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def _entry(self, name: str) -> dict[str, Any]:
        return self.data.setdefault(name, {"all_seconds": [], "peak_rss_bytes": None,
                                           "start_rss_bytes": None,
                                           "gpu_peak_bytes": None})

    def begin(self, name: str) -> float:
        e = self._entry(name)
        reset_peak_rss()
        try:  # what the process held already: the phase's own growth is peak - start
            rss = vm_bytes("VmRSS")
            e["start_rss_bytes"] = min(e["start_rss_bytes"] or rss, rss)
        except (OSError, KeyError):
            pass
        synchronize()
        return time.perf_counter()

    def end(self, name: str, t0: float, *, accumulate: bool = False) -> float:
        synchronize()
        dt = time.perf_counter() - t0
        e = self._entry(name)
        if accumulate and e["all_seconds"]:
            e["all_seconds"][-1] += dt
        else:
            e["all_seconds"].append(dt)
        try:
            rss = vm_bytes("VmHWM")
            e["peak_rss_bytes"] = max(e["peak_rss_bytes"] or 0, rss)
        except (OSError, KeyError):
            pass
        gpu = gpu_used_bytes()
        if gpu is not None:
            e["gpu_peak_bytes"] = max(e["gpu_peak_bytes"] or 0, gpu)
        return dt

    def __call__(self, name: str, *, accumulate: bool = False) -> Any:
        phases = self

        class _Ctx:
            def __enter__(self) -> None:
                self.t0 = phases.begin(name)

            def __exit__(self, *exc: Any) -> None:
                if exc[0] is None:
                    phases.end(name, self.t0, accumulate=accumulate)

        return _Ctx()

    def summary(self, items: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """{phase: {seconds (median), all_seconds, peak_rss_bytes, start_rss_bytes (RSS
        as it began, the smallest over repeats), gpu_peak_bytes, items_per_s}};
        ``items`` gives a phase's item count for a rate."""
        out = {}
        for name, e in self.data.items():
            if not e["all_seconds"]:
                continue
            sec = median(e["all_seconds"])
            n = (items or {}).get(name)
            out[name] = {"seconds": sec, "all_seconds": e["all_seconds"],
                         "peak_rss_bytes": e["peak_rss_bytes"],
                         "start_rss_bytes": e["start_rss_bytes"],
                         "gpu_peak_bytes": e["gpu_peak_bytes"],
                         "items_per_s": (n / sec) if n and sec > 0 else None}
        return out
