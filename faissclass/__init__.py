"""faissclass: classification and similarity search on frozen embeddings.

Layers (imports point down only): the HDF5 shard store (``store``), the faiss-free
top-k (``topk``), FAISS indexes (``index``), classifiers (``classify``), the timm
embedding pipeline (``embed``), metrics, and the benchmark runner (``bench``).
Names from layers with heavy imports (faiss, torch) load on first use, so
``import faissclass`` works with the core dependencies alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# The public face: {module: names}. A name resolves from the module that defines it.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "._validation": ("FaissclassError", "FormatError", "IndexFileError", "StoreError"),
    ".source": ("ArraySource", "Batch", "VectorSource"),
    ".store": ("EmbeddingStore", "IncompatibleStoresError", "ShardInfo", "ShardWriter",
               "check_compatible", "merge_stores"),
    ".topk": ("SearchResult", "exact_search", "merge_topk"),
    ".devices": ("Device",),
    ".metrics": ("recall_at_k",),
    ".index": ("IndexSpec", "SearchParams", "VectorIndex", "suggest_spec", "sweep",
               "training_rows"),
    ".classify": ("KNNClassifier", "PrototypeClassifier", "hard_examples",
                  "select_prototypes", "tune_per_class"),
    ".embed": ("Embedder",),
}
_MODULES = ("metrics", "topk", "distributed", "devices", "source")

_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}
if len(_WHERE) != sum(len(v) for v in _PUBLIC.values()):  # pragma: no cover - a typo here
    raise ImportError("faissclass: a public name is listed under two modules")

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from . import devices, distributed, metrics, source, topk
    from ._validation import FaissclassError, FormatError, IndexFileError, StoreError
    from .classify import (
        KNNClassifier,
        PrototypeClassifier,
        hard_examples,
        select_prototypes,
        tune_per_class,
    )
    from .devices import Device
    from .embed import Embedder
    from .index import IndexSpec, SearchParams, VectorIndex, suggest_spec, sweep, training_rows
    from .metrics import recall_at_k
    from .source import ArraySource, Batch, VectorSource
    from .store import (
        EmbeddingStore,
        IncompatibleStoresError,
        ShardInfo,
        ShardWriter,
        check_compatible,
        merge_stores,
    )
    from .topk import SearchResult, exact_search, merge_topk


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'faissclass' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_MODULES})


__all__ = sorted([*_WHERE, *_MODULES, "__version__"])
