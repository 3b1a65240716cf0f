"""Seeded clustered embeddings for index and classifier tests."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, n_clusters: int, *, noise: float, seed: int,
              n_queries: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(database (n, dim), labels (n,), queries (n_queries, dim)), L2-normalised float32.

    Points are cluster centres plus isotropic noise; queries are drawn the same way
    but are not in the database.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = rng.integers(0, n_clusters, n + n_queries)
    x = centres[lab] + noise * rng.standard_normal((n + n_queries, dim)).astype(np.float32) \
        / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], lab[:n], x[n:]
