"""faissclass: classification and similarity search on frozen embeddings.

Layers (imports point down only): the HDF5 shard store (``store``), FAISS
indexes (``index``), classifiers (``classify``), the timm embedding pipeline
(``embed``) and metrics. Only ``index`` imports faiss and only ``embed``
imports torch, so the store works with the core dependencies alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import metrics
from ._validation import FaissclassError, FormatError, IndexFileError, StoreError
from ._version import __version__
from .store import Batch, EmbeddingStore, ShardInfo, ShardWriter

# Names from layers with heavy imports (faiss), loaded on first use so that
# `import faissclass` works with the core dependencies alone.
_LAZY = {
    **{name: "index"
       for name in ("IndexSpec", "SearchParams", "SearchResult", "VectorIndex", "exact_search",
                    "recall_at_k",
    "select_prototypes", "suggest_spec", "sweep", "training_rows")},
    "KNNClassifier": "classify",
    "PrototypeClassifier": "classify",
    "hard_examples": "classify",
    "select_prototypes": "classify",
    "tune_per_class": "classify",
}

if TYPE_CHECKING:
    from .classify import (
        KNNClassifier,
        PrototypeClassifier,
        hard_examples,
        select_prototypes,
        tune_per_class,
    )
    from .index import (
        IndexSpec,
        SearchParams,
        SearchResult,
        VectorIndex,
        exact_search,
        recall_at_k,
        suggest_spec,
        sweep,
        training_rows,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'faissclass' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Batch",
    "EmbeddingStore",
    "FaissclassError",
    "FormatError",
    "IndexFileError",
    "IndexSpec",
    "KNNClassifier",
    "PrototypeClassifier",
    "SearchParams",
    "SearchResult",
    "ShardInfo",
    "ShardWriter",
    "StoreError",
    "VectorIndex",
    "__version__",
    "exact_search",
    "hard_examples",
    "metrics",
    "recall_at_k",
    "select_prototypes",
    "suggest_spec",
    "sweep",
    "training_rows",
    "tune_per_class",
]
