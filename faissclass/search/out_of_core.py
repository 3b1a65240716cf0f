"""Exact search of queries against a store larger than memory.

The store is streamed block by block (its bounded-memory batches), each block is
searched exactly (FAISS's blocked GEMM and heap selection on the CPU; on a GPU the
block is copied in and searched with torch while the next block is read), and a
running top-k per query is merged exactly with :func:`faissclass.topk.merge_topk`.
Memory: the queries, their running top-k, and one or two blocks — whatever the
store's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._validation import check_finite_embeddings, check_int
from ..devices import parse_device
from ..distributed import show_progress
from ..source import Batch, VectorSource
from ..topk import SearchResult, check_metric, merge_topk, pad_value

__all__ = ["search_source"]


def _prefetch(batches: Iterator[Batch]) -> Iterator[Batch]:
    """The same batches, the next one read on a worker thread while the caller works
    on the current one (reading releases the GIL in h5py)."""
    with ThreadPoolExecutor(1, thread_name_prefix="faissclass-prefetch") as pool:
        nxt = pool.submit(next, batches, None)
        while True:
            b = nxt.result()
            if b is None:
                return
            nxt = pool.submit(next, batches, None)
            yield b


def _block_search_cpu(Q: np.ndarray, X: np.ndarray, ids: np.ndarray, k: int, metric: str
                      ) -> SearchResult:
    """The exact top-k of one block with ties broken by id (FAISS's blocked search, one
    extra neighbour to see ties at the k-th place; those rare rows are redone in numpy)."""
    import faiss

    from ..topk import _select

    kk = min(k, len(X))
    extra = min(kk + 1, len(X))
    fm = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    D, idx = faiss.knn(Q, X, extra, metric=fm)
    if extra > kk:
        tied = np.flatnonzero(D[:, kk - 1] == D[:, kk])
        D, idx = D[:, :kk].copy(), idx[:, :kk].copy()
        for r in tied:  # equal scores at the k-th place: the smaller ids win
            s = Q[r] @ X.T if metric == "ip" else -((X - Q[r]) ** 2).sum(1)
            pos, sc = _select(s[None, :], ids[None, :], kk)
            idx[r], D[r] = pos[0], (sc[0] if metric == "ip" else -sc[0])
    # Within the k kept, order by (score, id): FAISS's order of equal scores is its own.
    ids_k = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1).astype(np.int64)
    key = D if metric == "ip" else -D
    order = np.lexsort((ids_k, -key), axis=1)
    return SearchResult(np.take_along_axis(D, order, 1).astype(np.float32),
                        np.take_along_axis(ids_k, order, 1))


def _block_search_torch(Qt: Any, X: np.ndarray, ids: np.ndarray, k: int, metric: str,
                        dev: Any) -> SearchResult:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(X)).to(dev, non_blocking=True)
    s = Qt @ x.T
    if metric == "l2":
        s = -((Qt * Qt).sum(1, keepdim=True) - 2 * s + (x * x).sum(1)[None, :])
    kk = min(k, len(X))
    vals, idx = torch.topk(s, kk, dim=1, largest=True, sorted=True)
    vals, idx = vals.float().cpu().numpy(), idx.cpu().numpy()
    return SearchResult(-vals if metric == "l2" else vals, ids[idx])


def search_source(source: VectorSource, queries: Any, k: int, metric: str = "ip", *,
                  batch_size: int = 65_536, device: str = "cpu",
                  progress: bool | None = None) -> SearchResult:
    """Exact k nearest of each query among every vector of ``source``, streamed.

    Parameters
    ----------
    source : VectorSource
        An :class:`~faissclass.EmbeddingStore` of any size (or any source).
    queries : array_like, shape (nq, dim), finite floats
    k : int
    metric : {"ip", "l2"}
    batch_size : int
        Rows of the source per block: memory holds about two blocks (float32).
    device : str
        "cpu" (FAISS's blocked BLAS search) or a GPU ("cuda", "cuda:N"; torch).

    Returns
    -------
    SearchResult, shape (nq, k)
        Exactly :func:`faissclass.exact_search` over all the vectors: equal scores by
        smaller id first; padded with id -1 if the source holds fewer than k vectors.
    """
    metric = check_metric(metric)
    k = check_int(k, "k")
    batch_size = check_int(batch_size, "batch_size")
    Q = check_finite_embeddings(queries, dim=source.dim, name="queries")
    dev = parse_device(device)
    nq = len(Q)
    best = SearchResult(np.full((nq, k), pad_value(metric), np.float32),
                        np.full((nq, k), -1, np.int64))
    Qt = None
    if dev.is_gpu:
        import torch

        tdev = dev.torch()
        Qt = torch.from_numpy(Q).to(tdev)
    with tqdm(total=len(source), unit="vec", unit_scale=True, desc="out-of-core search",
              disable=not show_progress(progress)) as bar:
        for b in _prefetch(iter(source.iter_batches(batch_size))):
            X = check_finite_embeddings(b.embeddings, dim=source.dim, name="store vectors")
            if Qt is None:
                part = _block_search_cpu(Q, X, b.ids, k, metric)
            else:
                part = _block_search_torch(Qt, X, b.ids, k, metric, tdev)
            best = merge_topk([best, part], k, metric)
            bar.update(len(b.ids))
    return best
