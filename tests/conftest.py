"""Shared fixtures: seeded data and small stores under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import faissclass as fc


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random L2-normalised float32 rows."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def write_store(root: Path, X: np.ndarray, y: np.ndarray, *, dtype: str = "float32",
                shard_size: int = 100, batch: int = 37, **kw) -> fc.EmbeddingStore:
    """Write X, y through a ShardWriter in odd-sized batches and open the result."""
    kw.setdefault("fsync", False)
    with fc.ShardWriter(root, dim=X.shape[1], dtype=dtype, shard_size=shard_size, **kw) as w:
        for i in range(0, len(X), batch):
            w.append(X[i:i + batch], y[i:i + batch])
    return fc.EmbeddingStore(root)
