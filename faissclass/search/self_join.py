"""Exact leave-one-out kNN of a set against itself, computing each score once.

Scoring X against X computes every block product twice: rows i against rows j is the
transpose of j against i. :func:`self_knn` computes only the blocks J >= I (one GEMM
each) and feeds every product to the running top-k of *both* block rows: the row
direction (rows of I see columns of J) and the column direction (rows of J see rows
of I). Half the arithmetic of a search of X in X, same results.

The selection after each GEMM is a compiled kernel (numba), fused with threshold
pruning: each row's running k-th best score is held in a register and a product is
touched only if it beats it, so after the first blocks almost every score costs one
comparison; no id arrays are built (a column's id is its position). It runs on all
cores, over contiguous memory in both directions (the column direction walks a block
of columns row by row).

Order of results: as :mod:`faissclass.topk` — best first, equal scores by smaller id.
Each vector's own row is excluded by position, so a duplicate of it (another row with
the same vector) is still a neighbour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import check_finite_embeddings, check_int
from ..topk import Metric, SearchResult, check_metric, pad_value

__all__ = ["self_join_available", "self_knn", "warm_up"]

DEFAULT_BLOCK = 1024


def self_join_available() -> bool:
    """Whether the compiled selection (numba) can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now, so that the first timed
    self-join does not include it."""
    x = np.eye(3, dtype=np.float32)
    for metric in ("ip", "l2"):  # block 2: a diagonal block and an off-diagonal one
        self_knn(x, 1, metric, block=2, progress=False)


def _kernels() -> Any:
    """The compiled selection kernels (numba, imported and compiled on first use)."""
    try:
        from . import _kernels as kern
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("numba", "llvmlite"):
            raise
        raise ImportError("the self-join needs numba: pip install 'faissclass[cpu]' (or "
                          "pip install numba)") from exc
    return kern


def self_knn(vectors: Any, k: int, metric: Metric = "ip", *, ids: Any = None,
             block: int = DEFAULT_BLOCK, threads: int | None = None,
             progress: bool | None = None) -> SearchResult:
    """Each vector's k nearest *other* vectors of the same set, exactly, with half the
    arithmetic of searching the set in itself.

    Parameters
    ----------
    vectors : array_like, shape (n, d), finite floats, or a VectorSource (a store)
        Loaded as float32 (a store is read whole: memory n·d·4 bytes); a float32
        C-contiguous array is joined where it lies, not copied, whatever the ids' order.
        Memory beyond it: the heaps and the result's ids, n·k·16 bytes (the result's
        distances are the heaps' scores), and one (block, block) product.
    k : int
        Neighbours per vector; beyond n - 1 the result is padded like FAISS (id -1).
    metric : {"ip", "l2"}
        Inner product (larger first) or squared L2 distance (smaller first).
    ids : array_like of int, shape (n,), optional
        Each row's id (default: the row number; a store's own ids for a store).
        Equal scores are ordered by smaller id, and the row itself is left out.
    block : int
        Rows per block; one (block, block) float32 product is held at a time (the
        default keeps it in the CPU's caches while it is selected from).
    threads : int, optional
        Threads of the selection (default: the cores this process may run on). The
        GEMM uses NumPy's BLAS threads, as they are set.
    progress : bool, optional
        tqdm bar over the block pairs (default: on a terminal, rank 0).

    Returns
    -------
    SearchResult, shape (n, k)
        Row i holds vector i's neighbours (not itself), best first, equal scores by
        smaller id: the result of :func:`~faissclass.topk.exact_search` of the set in
        itself with each row's own hit removed.
    """
    k = check_int(k, "k")
    block = check_int(block, "block")
    nthreads = _threads(threads)
    metric = check_metric(metric)
    X, idv = _load_checked(vectors, ids)
    n = X.shape[0]
    pdt = np.int32 if n < 2**31 - 1 else np.int64
    # The kernels order equal scores by what the heaps hold: each row's rank in id order
    # (X is joined as it lies; permuting it to id order would copy it).
    rank, sids = _ranks(idv, pdt)
    kern = _kernels()
    kk = max(0, min(k, n - 1))
    # heaps: scores, and ranks with n as "none yet" (int32 while n fits: 4 bytes less
    # per entry; the heaps are the self-join's memory, n·k·8 bytes)
    hv = np.full((n, max(kk, 1)), -np.inf, np.float32)
    hi = np.full((n, max(kk, 1)), n, pdt)
    norms = _sq_norms(X) if metric == "l2" else None
    if kk > 0:
        if metric == "ip":
            scale, bias = np.float32(1), np.zeros(n, np.float32)
        else:  # rank by 2 x.y - |y|^2 (the row's own |x|^2 is a constant of the row)
            scale, bias = np.float32(2), norms
        block = min(block, n)
        buf = np.empty((block, block), np.float32)
        with _Workers(nthreads) as run, _bar(n, block, progress) as bar:
            for a0, c0, S in _products(X, block, buf, _matmul):
                # Rows of block I and rows of block J are different heaps: each worker
                # takes a share of both directions.
                run(_pair_work(kern, S, a0, c0, hv, hi, rank, kk, scale, bias, a0 == c0))
                bar.update(1)
            run(lambda t, nt: kern.finish(hv, hi, kk, *_share(n, t, nt)))
        del buf
    # The heaps' scores become the distances in place where k fits (no second n·k copy).
    dist = hv if kk == k and k > 0 else np.empty((n, k), np.float32)
    out_ids = np.empty((n, k), np.int64)
    for a in range(0, n, 8192):  # to ids and distances in chunks (bounded temporaries)
        b = min(a + 8192, n)
        pos = hi[a:b, :kk]
        none = pos >= n  # never filled (a score that was NaN): padding, not a neighbour
        ids_ab = sids[np.minimum(pos, max(n - 1, 0))]
        ids_ab[none] = -1
        d = dist[a:b, :kk] if dist is hv else hv[a:b, :kk].copy()
        if metric == "l2":  # back to squared distances: |x|^2 + |y|^2 - 2 x.y
            np.subtract(norms[a:b, None], d, out=d)
            np.maximum(d, 0, out=d)
            # rounding can make different rank scores equal distances: keep equal
            # distances in id order
            tied = np.flatnonzero((d[:, 1:] == d[:, :-1]).any(axis=1)) if kk > 1 else []
            for r in tied:
                o = np.lexsort((ids_ab[r], d[r]))
                d[r], ids_ab[r] = d[r, o], ids_ab[r, o]
        d[none] = pad_value(metric)
        out_ids[a:b, :kk] = ids_ab
        if dist is not hv:
            dist[a:b, :kk] = d
    dist[:, kk:] = pad_value(metric)
    out_ids[:, kk:] = -1
    return SearchResult(dist, out_ids)


def _sq_norms(X: np.ndarray) -> np.ndarray:
    """Each row's squared norm in float32, in chunks (no temporary the size of X)."""
    out = np.empty(X.shape[0], np.float32)
    for a in range(0, X.shape[0], 8192):
        x = X[a:a + 8192]
        out[a:a + 8192] = (x * x).sum(1, dtype=np.float32)
    return out


def _load_checked(vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (n, d) C-contiguous — the caller's array where it is one —, ids (n,))."""
    if hasattr(vectors, "iter_batches") and not isinstance(vectors, np.ndarray):
        X, idv = _load(vectors)
        if ids is not None:
            idv = np.asarray(ids, np.int64)
    else:
        X = check_finite_embeddings(vectors, dim=None, name="vectors")
        idv = (np.arange(X.shape[0], dtype=np.int64) if ids is None
               else np.asarray(ids, np.int64))
    n = X.shape[0]
    if idv.shape != (n,):
        raise ValueError(f"ids must have one id per row ({n}); got shape {idv.shape}")
    return np.ascontiguousarray(X, dtype=np.float32), idv


def _id_order(idv: np.ndarray) -> np.ndarray | None:
    """The permutation that sorts the ids (None where they are sorted already); unique
    ids or ValueError."""
    if idv.size < 2 or bool(np.all(idv[1:] > idv[:-1])):
        return None
    order = np.argsort(idv, kind="stable")
    sids = idv[order]
    if np.any(sids[1:] == sids[:-1]):
        raise ValueError("ids must be unique")
    return order


def _ranks(idv: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each row's id among the ids, the ids sorted); unique ids or ValueError."""
    n = idv.size
    order = _id_order(idv)
    if order is None:
        return np.arange(n, dtype=dtype), idv
    rank = np.empty(n, dtype)
    rank[order] = np.arange(n, dtype=dtype)
    return rank, idv[order]


def _bar(n: int, block: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    from ..distributed import show_progress

    nb = math.ceil(n / block)
    return tqdm(total=nb * (nb + 1) // 2, unit="block", desc="self-join",
                disable=not show_progress(progress))


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    return np.matmul(a, b, out=out)


def _products(X: Any, block: int, buf: Any, matmul: Any) -> Any:
    """Yield (a0, c0, X[a0:a1] @ X[c0:c1].T) for every pair of row blocks J >= I, the
    product in ``buf`` where it fits (``matmul(a, b, out)`` returns it)."""
    n = X.shape[0]
    nb = math.ceil(n / block)
    for bi in range(nb):
        a0, a1 = bi * block, min(n, (bi + 1) * block)
        xa = X[a0:a1]
        for bj in range(bi, nb):
            c0, c1 = bj * block, min(n, (bj + 1) * block)
            full = buf is not None and (a1 - a0, c1 - c0) == tuple(buf.shape)
            yield a0, c0, matmul(xa, X[c0:c1].T, buf if full else None)


_CHUNK = 64  # columns per chunk of the column pass


def _share(m: int, t: int, nt: int, align: int = 1) -> tuple[int, int]:
    """Worker t's part [a, b) of range(m) in nt parts (boundaries multiples of align)."""
    step = -(-m // (nt * align)) * align
    return min(m, t * step), min(m, (t + 1) * step)


def _pair_work(kern: Any, S: np.ndarray, a0: int, c0: int, hv: np.ndarray,
               hi: np.ndarray, rank: np.ndarray, k: int, scale: Any, bias: np.ndarray,
               diag: bool) -> Any:
    nr, nc = S.shape
    colbias, rowbias = bias[c0:c0 + nc], bias[a0:a0 + nr]

    def work(t: int, nt: int) -> None:
        kern.rows(S, a0, c0, hv, hi, rank, k, scale, colbias, diag, *_share(nr, t, nt))
        if not diag:
            kern.cols(S, a0, c0, hv, hi, rank, k, scale, rowbias, _CHUNK,
                      *_share(nc, t, nt, _CHUNK))
    return work


class _Workers:
    """Run work(t, nt) for t in range(nt) on nt threads (the caller's is one) and wait.

    The compiled kernels release the GIL. Idle workers sleep on a queue, so the cores
    are the GEMM's between blocks."""

    def __init__(self, nt: int) -> None:
        self.nt = nt
        self.pool: Any = None

    def __enter__(self) -> Any:
        if self.nt > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.nt - 1, thread_name_prefix="self-join")
        return self

    def __call__(self, work: Any) -> None:
        futures = [self.pool.submit(work, t, self.nt) for t in range(1, self.nt)] \
            if self.pool is not None else []
        try:
            work(0, self.nt)
        finally:
            for f in futures:
                f.result()

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _threads(threads: int | None) -> int:
    if threads is None:
        import os

        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    return check_int(threads, "threads")


def _load(source: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(source, "load"):
        X, _, ids = source.load(dtype=np.float32) if _takes_dtype(source) else source.load()
        return np.asarray(X, np.float32), np.asarray(ids, np.int64)
    parts, idp = [], []
    for b in source.iter_batches(65_536):
        parts.append(np.asarray(b.embeddings, np.float32))
        idp.append(np.asarray(b.ids, np.int64))
    if not parts:
        return np.empty((0, source.dim), np.float32), np.empty(0, np.int64)
    return np.concatenate(parts), np.concatenate(idp)


def _takes_dtype(source: Any) -> bool:
    import inspect

    try:
        return "dtype" in inspect.signature(source.load).parameters
    except (TypeError, ValueError):
        return False
