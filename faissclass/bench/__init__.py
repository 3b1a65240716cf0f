"""The benchmark runner's library side: provenance, probes, reports, evaluation.

Files: ``provenance`` (versions, git SHA, CPU/GPU, host), ``probes`` (timing with
GPU sync, medians, peak RSS), ``report`` (Markdown, JSON records), ``evaluate``
(what ``faissclass eval`` and ``demo`` compute). The scripts in ``benchmarks/``
are entry points on top of these.
"""

from .probes import median, reset_peak_rss, settle, synchronize, timed, vm_bytes
from .provenance import cpu_model, environment, git_sha, gpu_info, library_versions
from .report import markdown_table, save_record

__all__ = [
    "cpu_model",
    "environment",
    "git_sha",
    "gpu_info",
    "library_versions",
    "markdown_table",
    "median",
    "reset_peak_rss",
    "save_record",
    "settle",
    "synchronize",
    "timed",
    "vm_bytes",
]
