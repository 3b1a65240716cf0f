"""faissclass: classification and similarity search on frozen embeddings.

Layers (imports point down only): the HDF5 shard store (``store``), FAISS
indexes (``index``), classifiers (``classify``), the timm embedding pipeline
(``embed``) and metrics. Only ``index`` imports faiss and only ``embed``
imports torch, so the store works with the core dependencies alone.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._validation import FaissclassError, StoreError
from .store import Batch, EmbeddingStore, ShardInfo, ShardWriter

__all__ = [
    "Batch",
    "EmbeddingStore",
    "FaissclassError",
    "ShardInfo",
    "ShardWriter",
    "StoreError",
    "__version__",
]
