"""One seeded generator of synthetic embeddings, for tests and benchmarks.

Cluster centres on the unit sphere plus isotropic noise, L2-normalised: a
difficulty knob (``noise``) moves kNN accuracy from trivial to hopeless.
Generated in blocks of rows, so memory holds the output and one block.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_int

__all__ = ["clustered"]


def clustered(n: int, dim: int, n_clusters: int, *, noise: float, seed: int,
              n_queries: int = 0, block: int = 65_536, query_labels: bool = False
              ) -> tuple[np.ndarray, ...]:
    """(database (n, dim), labels (n,), queries (n_queries, dim)), L2-normalised float32;
    with ``query_labels``, the queries' labels (n_queries,) come fourth.

    Points are cluster centres plus isotropic noise of norm ~``noise``; queries
    are drawn the same way but are not in the database. The numbers do not
    depend on ``block`` (numpy draws the same stream in one call or in blocks).
    """
    n, dim = check_int(n, "n", min_value=0), check_int(dim, "dim")
    n_clusters = check_int(n_clusters, "n_clusters")
    n_queries, block = check_int(n_queries, "n_queries", min_value=0), check_int(block, "block")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n + n_queries
    lab = rng.integers(0, n_clusters, total)
    x = np.empty((total, dim), np.float32)
    for a in range(0, total, block):
        b = min(a + block, total)
        x[a:b] = centres[lab[a:b]] + noise * rng.standard_normal((b - a, dim)).astype(
            np.float32) / np.sqrt(dim)
        x[a:b] /= np.linalg.norm(x[a:b], axis=1, keepdims=True)
    if query_labels:
        return x[:n], lab[:n], x[n:], lab[n:]
    return x[:n], lab[:n], x[n:]
