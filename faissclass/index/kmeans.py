"""Seeded FAISS k-means (spherical for cosine), as the prototype classifier uses it."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .._validation import check_embeddings, check_int

__all__ = ["kmeans"]


def kmeans(x: Any, k: int, *, seed: int = 0, niter: int = 20, spherical: bool = True
           ) -> np.ndarray:
    """Seeded FAISS k-means: centroids (min(k, n), dim) float32, L2-normalised if spherical.

    With n <= k every point is its own centroid. Small n is accepted knowingly
    (FAISS's 39-points-per-centroid warning is switched off).
    """
    arr = check_embeddings(x, dim=None, name="k-means input", dtype=np.dtype(np.float32))
    k = check_int(k, "k")
    if arr.shape[0] <= k:
        c = arr.copy()
    else:
        km = faiss.Kmeans(arr.shape[1], int(k), niter=niter, seed=seed, spherical=spherical,
                          verbose=False)
        km.cp.min_points_per_centroid = 1
        km.train(arr)
        c = km.centroids.copy()
    if spherical:
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return c
