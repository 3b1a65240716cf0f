"""Where a figure comes from: versions, git SHA, CPU and GPU models, host, command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cpu_model", "environment", "git_sha", "gpu_info", "library_versions"]


def cpu_model() -> str:
    """The CPU's model name (e.g. "AMD EPYC 7B13"), from /proc/cpuinfo where it exists."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's feature flags that matter for GEMM speed (AVX-512, AMX, BF16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "amx")) or
                              f in ("avx2", "fma", "avx_vnni"))
    except OSError:
        pass
    return []


def git_sha(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The short git SHA of the checkout faissclass runs from (+"-dirty"), or None."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=where, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=where,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """Versions of faissclass and of what it runs on (those installed)."""
    from .._version import __version__

    out = {"faissclass": __version__, "python": platform.python_version(),
           "numpy": np.__version__}
    for name in ("h5py", "faiss", "torch", "timm", "sklearn", "scipy"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except Exception:  # an optional library that fails to import: not recorded
                continue
        version = getattr(mod, "__version__", None) or getattr(
            getattr(mod, "version", None), "version", None)
        if version:
            out[name] = str(version)
    return out


def gpu_info() -> list[dict[str, Any]]:
    """Name, memory and driver of each visible GPU (from nvidia-smi), [] without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
            check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory_mib": int(float(parts[1])),
                         "driver": parts[2]})
    return gpus


def environment() -> dict[str, Any]:
    """A record of the machine and software a figure was measured on."""
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **library_versions(),
        "git_sha": git_sha(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpu_info(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
    }
