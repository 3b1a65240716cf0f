"""Faiss-free top-k: the reference exact search, and the exact merge of partial results.

Everything here is plain numpy, so it can check FAISS (every recall figure is
measured against :func:`exact_search`) and merge what several searchers found
(shards on several ranks, blocks of a store larger than memory).

Order of results: best first — largest inner product (``"ip"``) or smallest
squared L2 distance (``"l2"``) — and, between equal scores, the smaller id
first. :func:`exact_search` and :func:`merge_topk` both keep this order, so a
result merged from shards equals the result of one search over everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ._validation import check_finite_embeddings, check_int

__all__ = ["METRICS", "Metric", "SearchResult", "exact_search", "merge_topk", "pad_value"]

Metric = Literal["ip", "l2"]
METRICS: tuple[str, ...] = ("ip", "l2")


class SearchResult(NamedTuple):
    """k nearest neighbours per query, best first.

    Attributes
    ----------
    distances : numpy.ndarray, shape (nq, k), float32
        Inner products (larger is closer) or squared L2 distances (smaller is
        closer). Where fewer than k vectors exist, FAISS's padding is kept:
        -3.4e38 (ip) or 3.4e38 (l2).
    ids : numpy.ndarray, shape (nq, k), int64
        Stored ids; -1 in padded slots.
    """

    distances: np.ndarray
    ids: np.ndarray


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2'; got {metric!r}")
    return str(metric)


def pad_value(metric: str) -> np.float32:
    """FAISS's distance in empty result slots: the worst float32 for the metric."""
    big = np.finfo(np.float32).max
    return np.float32(-big if metric == "ip" else big)


def _select(score: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score descending, then index ascending) of ``score`` (m, n)
    with ``index`` (m, n) giving each column's id. Returns (positions (m, k), scores)."""
    m, n = score.shape
    if k >= n:
        order = np.lexsort((index, -score), axis=1) if n else np.empty((m, 0), np.int64)
        return order, np.take_along_axis(score, order, 1)
    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
    sc = np.take_along_axis(score, part, 1)
    # Ties at the k-th score: argpartition picks any of them; the defined order wants
    # the smallest ids. Only rows with more tied candidates than slots are redone.
    thr = sc.min(axis=1)
    ties_in = (sc == thr[:, None]).sum(axis=1)
    ties_all = (score == thr[:, None]).sum(axis=1)
    for r in np.flatnonzero(ties_all > ties_in):
        cand = np.flatnonzero(score[r] >= thr[r])
        o = np.lexsort((index[r, cand], -score[r, cand]))[:k]
        part[r] = cand[o]
    sc = np.take_along_axis(score, part, 1)
    ids = np.take_along_axis(index, part, 1)
    order = np.lexsort((ids, -sc), axis=1)
    return np.take_along_axis(part, order, 1), np.take_along_axis(sc, order, 1)


def exact_search(database: Any, queries: Any, k: int, metric: Metric = "ip", *,
                 block: int | None = None, ids: Any = None) -> SearchResult:
    """Exact k-NN by plain numpy (blocked matmul + partial sort), the reference for
    recall. Independent of faiss.

    Parameters
    ----------
    database : array_like, shape (n, d), finite floats
    queries : array_like, shape (nq, d), finite floats
    k : int
        Clipped to n; the result has min(k, n) columns.
    metric : {"ip", "l2"}
        Inner product (larger first) or squared L2 (smaller first).
    block : int, optional
        Queries per matmul (default: keeps the (block, n) score matrix near 256 MB).
    ids : array_like of int, shape (n,), optional
        The id of each database row (default: its row number).

    Returns
    -------
    SearchResult
        Ties between equal scores are broken by smaller id first.
    """
    X = check_finite_embeddings(database, dim=None, name="database")
    Q = check_finite_embeddings(queries, dim=X.shape[1], name="queries")
    metric = check_metric(metric)
    k = check_int(k, "k")
    if block is not None:
        block = check_int(block, "block")
    n = X.shape[0]
    idv = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    if idv.shape != (n,):
        raise ValueError(f"ids must have one id per database row ({n}); got {idv.shape}")
    kk = min(k, n)
    if block is None:
        block = max(1, min(4096, 2**26 // max(1, n)))
    dist = np.empty((Q.shape[0], kk), np.float32)
    out = np.empty((Q.shape[0], kk), np.int64)
    xnorm = (X * X).sum(1) if metric == "l2" else None
    for a in range(0, Q.shape[0], block):
        q = Q[a:a + block]
        s = q @ X.T
        if metric == "l2":
            s = -((q * q).sum(1)[:, None] - 2 * s + xnorm[None, :])  # larger is better
        pos, best = _select(s, np.broadcast_to(idv, s.shape), kk)
        out[a:a + block] = idv[pos]
        dist[a:a + block] = -best if metric == "l2" else best
    return SearchResult(dist, out)


def merge_topk(parts: Sequence[SearchResult], k: int, metric: Metric = "ip") -> SearchResult:
    """Merge partial results of the same queries into the exact top-k of their union.

    Parameters
    ----------
    parts : sequence of SearchResult
        Each (nq, k_i), e.g. the top-k of each shard of a database. Padded slots
        (id -1) are ignored. The parts' ids must be disjoint (as shards' are).
    k : int
        Results per query; missing ones are padded like FAISS (id -1).
    metric : {"ip", "l2"}

    Returns
    -------
    SearchResult, shape (nq, k)
        Best first; equal scores by smaller id first — the order of
        :func:`exact_search` over the union.
    """
    metric = check_metric(metric)
    k = check_int(k, "k")
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    nq = parts[0].ids.shape[0]
    for p in parts:
        if p.ids.shape[0] != nq or p.distances.shape != p.ids.shape:
            raise ValueError(f"every part must hold (distances, ids) for the same {nq} "
                             f"queries; got shapes {p.distances.shape} and {p.ids.shape}")
    D = np.concatenate([np.asarray(p.distances, np.float32) for p in parts], axis=1)
    Ii = np.concatenate([np.asarray(p.ids, np.int64) for p in parts], axis=1)
    score = (D if metric == "ip" else -D).astype(np.float64)
    score[Ii < 0] = -np.inf  # padding never wins
    width = min(k, D.shape[1])
    pos, best = _select(score, np.where(Ii < 0, np.iinfo(np.int64).max, Ii), width)
    ids = np.take_along_axis(Ii, pos, 1)
    dist = np.take_along_axis(D, pos, 1)
    empty = ~np.isfinite(best)
    ids = np.where(empty, -1, ids)
    dist = np.where(empty, pad_value(metric), dist)
    if width < k:
        ids = np.concatenate([ids, np.full((nq, k - width), -1, np.int64)], axis=1)
        dist = np.concatenate([dist, np.full((nq, k - width), pad_value(metric),
                                             np.float32)], axis=1)
    return SearchResult(dist.astype(np.float32), ids.astype(np.int64))
