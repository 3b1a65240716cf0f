"""Choosing an index and its knobs: sweep search settings against exact search, pick a
spec within a memory budget (FAISS's guidelines), and the one nlist heuristic."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._validation import check_int
from ..metrics import recall_at_k
from ..topk import SearchResult
from .spec import _GPU_PQ_BYTES, MIN_POINTS_PER_CENTROID, IndexSpec, SearchParams
from .vector_index import VectorIndex

__all__ = ["suggest_nlist", "suggest_spec", "sweep"]


def suggest_nlist(n: int, *, max_nlist: int | None = None) -> int:
    """IVF lists for ``n`` vectors: below 1M, a power of two near 4·√n (FAISS's
    guideline, 4·√n to 16·√n) with at least 39 training points per list, at least 4.

    Above 1M vectors FAISS suggests 65,536 (1M–10M), 262,144 (10M–100M), 1,048,576.
    """
    n = check_int(n, "n")
    if n >= 100_000_000:
        nlist = 1_048_576
    elif n >= 10_000_000:
        nlist = 262_144
    elif n >= 1_000_000:
        nlist = 65_536  # FAISS's table (training then samples 30-256 per list elsewhere)
    else:
        nlist = 2 ** max(2, round(math.log2(4 * math.sqrt(n))))
        while nlist > 4 and n < MIN_POINTS_PER_CENTROID * nlist:
            nlist //= 2
    return min(nlist, max_nlist) if max_nlist else nlist


def sweep(index: VectorIndex, queries: Any, k: int, params_list: Iterable[SearchParams],
          reference: SearchResult, *, repeats: int = 3) -> list[dict[str, Any]]:
    """Recall and speed for each setting, to pick nprobe / ef_search for a target recall.

    Returns
    -------
    list of dict
        One per setting: ``params`` (dict), ``recall@1``, ``recall@k``, ``qps``
        (queries/s, median of ``repeats`` timed searches after one warm-up).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    rows = []
    for p in params_list:
        res = index.search(q, k, p)  # warm-up, and the result scored
        times = []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            index.search(q, k, p)
            times.append(time.perf_counter() - t)
        rows.append({"params": p.to_dict(), "recall@1": recall_at_k(res, reference, 1),
                     f"recall@{k}": recall_at_k(res, reference, k),
                     "qps": q.shape[0] / float(np.median(times))})
    return rows


def suggest_spec(n: int, dim: int, memory_budget_bytes: int) -> IndexSpec:
    """Pick an index for ``n`` vectors of ``dim`` within a memory budget.

    Follows FAISS's wiki page "Guidelines to choose an index"
    (github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index):

    1. Small sets (n < 10,000): flat. Exact, and too few points to train IVF well.
    2. Memory not a concern -> HNSW32, the wiki's best speed/accuracy trade-off
       when the graph fits (~4·dim + 8·M bytes a vector, plus ~10% for upper levels).
    3. Otherwise IVF with nlist by size (wiki: 4·√n..16·√n below 1M; 65,536 for
       1M–10M; 262,144 for 10M–100M; 1,048,576 beyond; we take 4·√n rounded to a
       power of two below 1M), and the richest codes that fit:
       Flat (4·dim bytes), SQ8 (dim bytes), then PQ with the largest m that fits.
    4. If flat storage fits but HNSW does not, IVF-Flat is preferred to flat for
       speed; exact search remains available as IndexSpec(kind="flat").

    Raises
    ------
    ValueError
        If even the smallest PQ code does not fit the budget.
    """
    n, dim = check_int(n, "n"), check_int(dim, "dim")
    memory_budget_bytes = check_int(memory_budget_bytes, "memory_budget_bytes")
    flat = n * dim * 4
    if n < 10_000 and flat <= memory_budget_bytes:
        return IndexSpec(kind="flat")
    M = 32
    if n * (dim * 4 + 8 * M) * 1.1 <= memory_budget_bytes:
        return IndexSpec(kind="hnsw", M=M)
    nlist = suggest_nlist(n)
    centroids = nlist * dim * 4
    per_id = 8
    if n * (dim * 4 + per_id) + centroids <= memory_budget_bytes:
        return IndexSpec(kind="ivf", nlist=nlist, storage="flat")
    if n * (dim + per_id) + centroids <= memory_budget_bytes:
        return IndexSpec(kind="ivf", nlist=nlist, storage="sq8")
    for m in _GPU_PQ_BYTES:
        if dim % m == 0 and n * (m + per_id) + centroids + 256 * dim * 4 <= memory_budget_bytes:
            return IndexSpec(kind="ivf", nlist=nlist, storage="pq", m=m)
    raise ValueError(f"no index of {n} vectors × {dim} fits {memory_budget_bytes} bytes: even "
                     f"PQ1 needs about {n * 9 + centroids} bytes")

