"""Certified low-precision exact search: candidates by a bf16/fp16 GEMM, re-ranked in
float32, and a per-query proof that nothing outside the candidates belongs in the top-k.

For a query q, a stored vector x and their rounded copies q̃, x̃::

    |q·x − q̃·x̃| ≤ ‖q − q̃‖·‖x‖ + ‖q̃‖·‖x − x̃‖                         (exact algebra)

and the low-precision product ŝ of q̃·x̃ (accumulated in float32 over d terms, then
rounded to the output type with unit roundoff u_out) satisfies
``q̃·x̃ ≤ ŝ + u_out·|ŝ|/(1 − u_out) + γ_d·‖q̃‖·‖x̃‖`` with γ_d = d·2⁻²⁴/(1 − d·2⁻²⁴).
Take the k' > k best vectors by ŝ, score them in float32, and let t be the k-th best
of those float32 scores and ŝ' the k'-th best low-precision score. Every vector left
out has ŝ ≤ ŝ', so its exact score is at most

    bound = ŝ' + u_out·|ŝ'|/(1 − u_out) + γ_d·‖q̃‖·max‖x̃‖ + ‖q − q̃‖·max‖x‖ + ‖q̃‖·max‖x − x̃‖

and if t > bound the re-ranked top-k is the exact top-k (a query is *certified*). A
query that is not falls back to a float32 exact search. The result is exact either
way: the ids of a float32 flat search (equal scores ordered by smaller id), except that
two scores within float32 rounding of each other may come in either order (the
re-rank and a float32 search sum in different orders). Two float32 rounding terms in
the bound make sure a left-out vector cannot overtake the k-th in float32 either.

torch provides the low-precision GEMM and is imported only here (never by the store
or index layers). Inner product only (the metric of normalised embeddings).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_finite_embeddings, check_int
from ..topk import SearchResult, _select, exact_search, pad_value
from .self_join import (
    DEFAULT_BLOCK,
    _bar,
    _id_order,
    _kernels,
    _load_checked,
    _products,
    _share,
    _threads,
    _Workers,
    self_knn,
)

__all__ = ["CertifiedStats", "certified_search", "certified_self_knn", "lowp_supported"]

PRECISIONS = ("bf16", "fp16")
_U_OUT = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}  # unit roundoff of the output type
# absolute rounding error below the output type's normal range (half its subnormal
# spacing, rounded up): the relative term alone does not cover subnormal outputs
_ETA_OUT = {"bf16": 2.0 ** -133, "fp16": 2.0 ** -24}


@dataclass
class CertifiedStats:
    """How a certified search went.

    Attributes
    ----------
    queries : int
    certified : int
        Queries whose top-k was proved exact from the low-precision candidates.
    fallback : int
        Queries re-searched in float32 (``queries - certified``).
    candidates : int
        k' — low-precision candidates re-ranked per query.
    precision : str
    """

    queries: int
    certified: int
    fallback: int
    candidates: int
    precision: str

    @property
    def rate(self) -> float:
        """Certified fraction of the queries."""
        return self.certified / self.queries if self.queries else 1.0


@functools.cache
def lowp_supported(device: str = "cpu", precision: str = "bf16") -> bool:
    """Whether the device multiplies ``precision`` natively (so that the mode can win):
    a CPU with AVX512-BF16 or AMX-BF16 (bf16 only), a CUDA GPU (fp16; bf16 from
    compute capability 8.0)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if device == "cpu":
        if precision != "bf16":
            return False
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return precision == "fp16" or major >= 8


class _Bound:
    """The certificate's bound: for queries q (rows), their rounded copies and the
    kc-th best low-precision score ŝ', the largest exact score a vector left out of
    the candidates can have (see the module's docstring). The database terms — max ‖x‖,
    max ‖x̃‖, max ‖x − x̃‖ — are computed once.

    Norms are float32 sums, rounded *up* by :func:`_norms_up`; x − x̃ is exact in
    float32 (x̃ is within a factor 2 of x or zero: Sterbenz's lemma)."""

    def __init__(self, X: np.ndarray, Xt: Any, precision: str, fp32_acc: bool) -> None:
        n, d = X.shape
        self.x_norm = self.xt_norm = self.x_err = 0.0
        for b in range(0, n, 65_536):
            x = X[b:b + 65_536]
            xr = Xt[b:b + 65_536].float().cpu().numpy()
            self.x_norm = max(self.x_norm, float(_norms_up(x).max(initial=0.0)))
            self.xt_norm = max(self.xt_norm, float(_norms_up(xr).max(initial=0.0)))
            self.x_err = max(self.x_err, float(_norms_up(x - xr).max(initial=0.0)))
        self.u = _U_OUT[precision]
        self.eta = _ETA_OUT[precision]
        u_acc = 2.0 ** -24 if fp32_acc else self.u
        # the accumulation bound holds for d·u < 1 only: beyond it (bf16 reductions
        # from d = 256, fp16 from 2048) nothing can be certified, every query falls back
        self.gamma = d * u_acc / (1 - d * u_acc) if d * u_acc < 1 else np.inf
        self.gamma32 = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)  # float32 dot products

    def __call__(self, q: np.ndarray, qt: Any, lowk: np.ndarray) -> np.ndarray:
        qr = qt.float().cpu().numpy()
        q_err = _norms_up(q - qr)
        qt_norm = _norms_up(qr)
        q_norm = _norms_up(q)
        # the two float32 terms cover the rounding of the re-ranked score and of a
        # float32 search
        return (lowk + self.u * np.abs(lowk) / (1 - self.u) + self.eta
                + self.gamma * qt_norm * self.xt_norm + q_err * self.x_norm
                + qt_norm * self.x_err + 2 * self.gamma32 * q_norm * self.x_norm)


def _norms_up(x: np.ndarray) -> np.ndarray:
    """Upper bounds of the rows' Euclidean norms (float64, (m,)) from a float32 sum of
    squares: fl(Σx²) ≥ Σx²·(1 − γ_d) with γ_d = d·2⁻²⁴/(1 − d·2⁻²⁴), plus what
    underflow can lose (d squares below 2⁻¹²⁶), and the square root's rounding."""
    d = x.shape[1]
    gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
    ss = np.einsum("ij,ij->i", x, x, dtype=np.float32).astype(np.float64)
    return np.sqrt(ss / (1 - gamma) + d * 2.0 ** -126) * (1 + 2.0 ** -23)


def _rerank(q: np.ndarray, X: np.ndarray, cand: np.ndarray, idv: np.ndarray, k: int,
            kern: Any = None, run: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores of each query's candidates, and its k best in the exact (score,
    id) order: (scores (m, k), database rows (m, k)). With the compiled kernels, the
    dot products run on ``run``'s threads without gathering the candidates."""
    kc, d = cand.shape[1], X.shape[1]
    exact = np.empty(cand.shape, np.float32)
    if kern is not None:
        m = len(q)
        run(lambda t, nt: kern.dots(q, X, cand, exact, *_share(m, t, nt)))
    else:
        step = max(1, 2**24 // (kc * d))  # gathers of (step, k', d): <= 64 MB at a time
        for r in range(0, len(q), step):
            exact[r:r + step] = np.einsum("qd,qcd->qc", q[r:r + step],
                                          X[cand[r:r + step]])
    pos, sc = _select(exact, idv[cand], k)
    return sc, cand[np.arange(len(q))[:, None], pos]


def _cpu_kernels() -> Any:
    """The compiled selection, or None without numba (then torch.topk selects)."""
    try:
        from . import _kernels
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("numba", "llvmlite"):
            raise
        return None
    return _kernels


def _candidates_torch(qt: Any, Xt: Any, kc: int, db_block: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each query's kc best low-precision scores (nq, kc) and its kc-th best
    score (float64, nq): torch.topk per database block, merged."""
    import torch

    best_s = best_i = None
    for b in range(0, Xt.shape[0], db_block):
        s = qt @ Xt[b:b + db_block].T
        kb = min(kc, s.shape[1])
        v, i = torch.topk(s, kb, dim=1)  # in the low-precision type: no float copy
        v, i = v.float(), i + b
        if best_s is not None:
            v = torch.cat([best_s, v], 1)
            i = torch.cat([best_i, i], 1)
            if v.shape[1] > kc:
                v, j = torch.topk(v, kc, dim=1)
                i = torch.gather(i, 1, j)
        best_s, best_i = v, i
    assert best_s is not None and best_i is not None
    return best_i.cpu().numpy(), best_s[:, -1].cpu().numpy().astype(np.float64)


def _candidates_cpu(kern: Any, run: Any, qt: Any, Xt: Any, kc: int, db_block: int,
                    precision: str) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_candidates_torch`, by the compiled selection: the product's bits read
    as order keys, heaps of kc (key, position), pruned against each row's kc-th key
    (a branch-free count per segment), equal keys by smaller position."""
    import torch

    n = Xt.shape[0]
    m = qt.shape[0]
    hk = np.full((m, kc), -1, np.int32)  # below every key: an empty slot
    hp = np.full((m, kc), n, np.int32 if n < 2**31 - 1 else np.int64)
    for b in range(0, n, db_block):
        S16 = (qt @ Xt[b:b + db_block].T).view(torch.int16).numpy()
        run(lambda t, nt, S16=S16, b=b: kern.lowp_rows(S16, 0, b, hk, hp, kc, False,
                                                        *_share(m, t, nt)))
    run(lambda t, nt: kern.finish(hk, hp, kc, *_share(m, t, nt)))
    return hp.astype(np.int64), _key_values(hk[:, -1], precision).astype(np.float64)


def _tensor(a: np.ndarray) -> Any:
    """torch.from_numpy, quiet about read-only arrays (only copies of them are made)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _key_values(keys: np.ndarray, precision: str) -> np.ndarray:
    """Order keys (see ``_kernels._key``) back to the numbers, as float32."""
    u = np.where(keys >= 0x8000, keys ^ 0x8000, 0xFFFF - keys).astype(np.uint16)
    if precision == "bf16":
        return (u.astype(np.uint32) << 16).view(np.float32)
    return u.view(np.float16).astype(np.float32)


def _fp32_accumulation(dev: Any, tdt: Any) -> bool:
    """Whether the low-precision GEMM accumulates in float32: on CPU (checked for
    torch's bf16/fp16 matmul), and on CUDA unless torch allows cuBLAS reduced-precision
    reductions (its default does: then the bound uses the low type's roundoff)."""
    import torch

    if dev.type == "cpu":
        return True
    m = torch.backends.cuda.matmul
    flag = ("allow_bf16_reduced_precision_reduction" if tdt == torch.bfloat16
            else "allow_fp16_reduced_precision_reduction")
    return getattr(m, flag, True) is False


def certified_search(database: Any, queries: Any, k: int, *, precision: str = "bf16",
                     candidates: int | None = None, device: str = "cpu",
                     query_block: int = 1024, db_block: int = 65_536,
                     ids: Any = None, threads: int | None = None
                     ) -> tuple[SearchResult, CertifiedStats]:
    """Exact inner-product top-k with a low-precision GEMM for the candidates.

    Parameters
    ----------
    database : array_like, shape (n, d), finite floats
    queries : array_like, shape (nq, d), finite floats
    k : int
        Clipped to n (as :func:`~faissclass.topk.exact_search`).
    precision : {"bf16", "fp16"}
        Type of the candidate GEMM (fp16 on GPUs; CPUs multiply bf16).
    candidates : int, optional
        k' > k low-precision candidates re-ranked per query (default 4·k + 16).
    device : str
        "cpu" or a CUDA device for the low-precision GEMM (torch).
    query_block, db_block : int
        Tile of the (queries × database) product held at once.
    ids : array_like of int, shape (n,), optional
        Each stored row's id (default: the row number).
    threads : int, optional
        Threads of the candidate selection on CPU (default: the cores this process may
        run on; the GEMM uses torch's threads, as they are set).

    Returns
    -------
    SearchResult, shape (nq, k)
        ``exact_search(database, queries, k)``: best first, equal scores by smaller
        id (scores within float32 rounding of each other may swap).
    CertifiedStats
        How many queries were certified and how many fell back to float32.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    X = check_finite_embeddings(database, dim=None, name="database")
    Q = check_finite_embeddings(queries, dim=X.shape[1], name="queries")
    k = check_int(k, "k")
    n = X.shape[0]
    nq = Q.shape[0]
    idv = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    if idv.shape != (n,):
        raise ValueError(f"ids must have one id per database row ({n}); got {idv.shape}")
    kk = min(k, n)
    if kk == 0:  # an empty database: FAISS's padding, nothing to certify
        return (SearchResult(np.full((nq, k), pad_value("ip"), np.float32),
                             np.full((nq, k), -1, np.int64)),
                CertifiedStats(queries=nq, certified=nq, fallback=0, candidates=0,
                               precision=precision))
    kc = check_int(4 * kk + 16 if candidates is None else candidates, "candidates")
    kc = min(max(kc, kk), n)
    query_block = check_int(query_block, "query_block")
    nthreads = _threads(threads)
    db_block = check_int(db_block, "db_block")
    tdt = torch.bfloat16 if precision == "bf16" else torch.float16
    dev = torch.device(device)
    Xt = _tensor(X).to(dev).to(tdt)
    bound = _Bound(X, Xt, precision, _fp32_accumulation(dev, tdt))
    dist = np.empty((nq, kk), np.float32)
    out = np.empty((nq, kk), np.int64)
    certified = 0
    fallback_rows: list[np.ndarray] = []
    # On CPU the candidates come from the compiled selection (the self-join's row
    # kernel on the product's bits), threads of its own; elsewhere from torch.topk.
    kern = _cpu_kernels() if dev.type == "cpu" else None
    with _Workers(nthreads if kern is not None else 1) as workers:
        for a in range(0, nq, query_block):
            q = Q[a:a + query_block]
            qt = _tensor(q).to(dev).to(tdt)
            if kern is not None:
                cand, lowk = _candidates_cpu(kern, workers, qt, Xt, kc, db_block, precision)
            else:
                cand, lowk = _candidates_torch(qt, Xt, kc, db_block)
            sc, rows = _rerank(q, X, cand, idv, kk, kern, workers)
            dist[a:a + len(q)] = sc
            out[a:a + len(q)] = idv[rows]
            if kc >= n:  # every vector was a candidate: nothing left out
                certified += len(q)
                continue
            ok = sc[:, kk - 1].astype(np.float64) > bound(q, qt, lowk)
            certified += int(ok.sum())
            if not ok.all():
                fallback_rows.append(a + np.flatnonzero(~ok))
    if fallback_rows:
        fb = np.concatenate(fallback_rows)
        ref = exact_search(X, Q[fb], kk, "ip", ids=idv)
        dist[fb], out[fb] = ref.distances, ref.ids
    if kk < k:
        dist = np.concatenate([dist, np.full((nq, k - kk), pad_value("ip"), np.float32)], 1)
        out = np.concatenate([out, np.full((nq, k - kk), -1, np.int64)], 1)
    stats = CertifiedStats(queries=nq, certified=certified, fallback=nq - certified,
                           candidates=kc, precision=precision)
    return SearchResult(dist, out), stats


def certified_self_knn(vectors: Any, k: int, *, precision: str = "bf16",
                       candidates: int | None = None, ids: Any = None,
                       block: int = DEFAULT_BLOCK, threads: int | None = None,
                       progress: bool | None = None
                       ) -> tuple[SearchResult, CertifiedStats]:
    """Leave-one-out exact inner-product kNN — :func:`~faissclass.search.self_knn` —
    with the symmetric join's block products in low precision (CPU, torch's GEMM).

    Each block pair J >= I is multiplied once in ``precision``; both directions feed
    heaps of k' candidates per vector (the product's bits read as order keys); the
    candidates are re-ranked in float32, and each vector's top-k is certified exact by
    the bound of :func:`certified_search` (the vector is the query, the others the
    database) or recomputed by a float32 search.

    Parameters
    ----------
    vectors : array_like, shape (n, d), finite floats, or a VectorSource
        A float32 C-contiguous array is joined where it lies (not copied, whatever the
        ids' order); its low-precision copy takes n·d·2 bytes, the heaps n·k'·8.
    k : int
    precision : {"bf16", "fp16"}
    candidates : int, optional
        k' > k candidates per vector (default 2·k + 8: the heaps are n·k'·8 bytes, and
        on ImageNet-like data 2·k + 8 certifies as many as 4·k + 16, 25% faster).
    ids, block, threads, progress
        As :func:`~faissclass.search.self_knn`.

    Returns
    -------
    SearchResult, shape (n, k)
        ``self_knn(vectors, k, "ip")``: best first, equal scores by smaller id, itself
        excluded (scores within float32 rounding of each other may swap).
    CertifiedStats
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    k = check_int(k, "k")
    block = check_int(block, "block")
    nthreads = _threads(threads)
    # The rows are joined where they lie: equal low-precision keys keep candidates by
    # position (a certificate holds whichever of them stays), the re-rank orders ties by id.
    X, idv = _load_checked(vectors, ids)
    n = X.shape[0]
    _id_order(idv)  # unique ids, or ValueError
    kk = max(0, min(k, n - 1))
    kc = check_int(2 * kk + 8 if candidates is None else candidates, "candidates")
    kc = min(max(kc, kk), n - 1)
    if kk == 0 or kc >= n - 1:  # every other vector is a candidate: plain float32
        res = self_knn(X, k, "ip", ids=idv, block=block, threads=threads, progress=progress)
        return res, CertifiedStats(queries=n, certified=n, fallback=0, candidates=n - 1,
                                   precision=precision)
    kern = _kernels()
    tdt = torch.bfloat16 if precision == "bf16" else torch.float16
    Xt = _tensor(X).to(tdt)
    hk = np.full((n, kc), -1, np.int32)  # order keys; -1 is below every key
    hp = np.full((n, kc), n, np.int32 if n < 2**31 - 1 else np.int64)
    block = min(block, n)

    def lowp(a: Any, b: Any, out: Any) -> np.ndarray:
        return (a @ b).view(torch.int16).numpy()

    with _Workers(nthreads) as run:
        with _bar(n, block, progress) as bar:
            for a0, c0, S16 in _products(Xt, block, None, lowp):
                run(_lowp_pair(kern, S16, a0, c0, hk, hp, kc))
                bar.update(1)
            run(lambda t, nt: kern.finish(hk, hp, kc, *_share(n, t, nt)))
        bound = _Bound(X, Xt, precision, True)  # torch's CPU matmul accumulates in float32
        dist = np.empty((n, k), np.float32)
        out = np.empty((n, k), np.int64)
        certified = 0
        fallback: list[np.ndarray] = []
        step = 16_384
        for a in range(0, n, step):  # re-rank and certify in chunks (bounded temporaries)
            b = min(a + step, n)
            cand = hp[a:b].astype(np.int64)
            sc, rows = _rerank(X[a:b], X, cand, idv, kk, kern, run)
            dist[a:b, :kk], out[a:b, :kk] = sc, idv[rows]
            lowk = _key_values(hk[a:b, -1], precision).astype(np.float64)
            ok = sc[:, kk - 1].astype(np.float64) > bound(X[a:b], Xt[a:b], lowk)
            certified += int(ok.sum())
            fallback.append(a + np.flatnonzero(~ok))
    fb = np.concatenate(fallback)
    for a in range(0, fb.size, step):  # the rest: a float32 search, itself removed
        rows = fb[a:a + step]
        dist[rows, :kk], out[rows, :kk] = _loo_exact(X, idv, rows, kk)
    dist[:, kk:] = pad_value("ip")
    out[:, kk:] = -1
    stats = CertifiedStats(queries=n, certified=certified, fallback=n - certified,
                           candidates=kc, precision=precision)
    return SearchResult(dist, out), stats


def _lowp_pair(kern: Any, S16: np.ndarray, a0: int, c0: int, hk: np.ndarray,
               hp: np.ndarray, kc: int) -> Any:
    from .self_join import _CHUNK

    nr, nc = S16.shape
    diag = a0 == c0

    def work(t: int, nt: int) -> None:
        kern.lowp_rows(S16, a0, c0, hk, hp, kc, diag, *_share(nr, t, nt))
        if not diag:
            kern.lowp_cols(S16, a0, c0, hk, hp, kc, _CHUNK, *_share(nc, t, nt, _CHUNK))
    return work


def _loo_exact(X: np.ndarray, idv: np.ndarray, rows: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows' k nearest other rows by a float32 exact search (k + 1, then each row's
    own id removed — or the last, where the row is not among its k + 1)."""
    ref = exact_search(X, X[rows], k + 1, "ip", ids=idv)  # equal scores by smaller id
    own = ref.ids == idv[rows][:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones(own.shape, bool)
    keep[np.arange(rows.size), drop] = False
    return (ref.distances[keep].reshape(rows.size, k),
            ref.ids[keep].reshape(rows.size, k))
