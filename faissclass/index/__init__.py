"""FAISS indexes (flat, IVF, HNSW, any factory string; CPU or GPU) behind VectorIndex.

The only package of faissclass that imports faiss. Files: ``spec`` (IndexSpec,
SearchParams, the table of kinds; no faiss), ``vector_index`` (VectorIndex: add,
search, remove, save, load), ``build`` (from any VectorSource), ``tune`` (sweep,
suggest_spec, suggest_nlist), ``kmeans``, ``_devices`` (FAISS on GPUs), ``_faiss``
(what faissclass knows of FAISS's index types).
"""

from __future__ import annotations

try:
    import faiss  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without faiss
    raise ImportError(
        "faissclass.index needs faiss: pip install 'faissclass[cpu]' (faiss-cpu) or "
        "'faissclass[gpu]' (faiss-gpu)"
    ) from _exc

from ..metrics import recall_at_k
from ..topk import SearchResult, exact_search
from ._devices import has_gpu_faiss
from ._faiss import faiss_reason
from .build import build, training_rows
from .kmeans import kmeans
from .spec import (
    DEFAULT_EF_SEARCH,
    KINDS,
    MIN_POINTS_PER_CENTROID,
    IndexSpec,
    Kind,
    SearchParams,
    check_factory,
    default_nprobe,
    default_pq_m,
)
from .tune import suggest_nlist, suggest_spec, sweep
from .vector_index import VectorIndex

# Older names, kept for code written against faissclass 0.1.
_has_gpu_faiss = has_gpu_faiss

__all__ = [
    "DEFAULT_EF_SEARCH",
    "KINDS",
    "MIN_POINTS_PER_CENTROID",
    "IndexSpec",
    "Kind",
    "SearchParams",
    "SearchResult",
    "VectorIndex",
    "build",
    "check_factory",
    "default_nprobe",
    "default_pq_m",
    "exact_search",
    "faiss_reason",
    "has_gpu_faiss",
    "kmeans",
    "recall_at_k",
    "suggest_nlist",
    "suggest_spec",
    "sweep",
    "training_rows",
]
