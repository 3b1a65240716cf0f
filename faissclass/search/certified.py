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

__all__ = ["CertifiedStats", "certified_search", "lowp_supported"]

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
                     ids: Any = None) -> tuple[SearchResult, CertifiedStats]:
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
    n, d = X.shape
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
    db_block = check_int(db_block, "db_block")
    tdt = torch.bfloat16 if precision == "bf16" else torch.float16
    dev = torch.device(device)
    Xt = torch.from_numpy(X).to(dev).to(tdt)
    # the bound's database terms: max ‖x‖, max ‖x̃‖, max ‖x − x̃‖ (float64, in chunks)
    x_norm = xt_norm = x_err = 0.0
    for b in range(0, n, 65_536):
        x = X[b:b + 65_536].astype(np.float64)
        xr = Xt[b:b + 65_536].float().cpu().numpy().astype(np.float64)
        x_norm = max(x_norm, float(np.sqrt((x * x).sum(1)).max(initial=0.0)))
        xt_norm = max(xt_norm, float(np.sqrt((xr * xr).sum(1)).max(initial=0.0)))
        x_err = max(x_err, float(np.sqrt(((x - xr) ** 2).sum(1)).max(initial=0.0)))
    u = _U_OUT[precision]
    u_acc = 2.0 ** -24 if _fp32_accumulation(dev, tdt) else u
    gamma = d * u_acc / (1 - d * u_acc)
    gamma32 = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)  # float32 dot products (re-rank, ref.)
    dist = np.empty((nq, kk), np.float32)
    out = np.empty((nq, kk), np.int64)
    certified = 0
    fallback_rows: list[np.ndarray] = []
    for a in range(0, nq, query_block):
        q = Q[a:a + query_block]
        qt = torch.from_numpy(q).to(dev).to(tdt)
        qr = qt.float().cpu().numpy().astype(np.float64)
        q_err = np.sqrt(((q - qr) ** 2).sum(1))
        qt_norm = np.sqrt((qr ** 2).sum(1))
        best_s = best_i = None
        for b in range(0, n, db_block):
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
        cand = best_i.cpu().numpy()
        lowk = best_s[:, -1].cpu().numpy().astype(np.float64)  # k'-th low-precision score
        # float32 re-rank of the candidates, then the exact (score, id) order
        exact = np.empty(cand.shape, np.float32)
        step = max(1, 2**24 // (kc * d))  # gathers of (step, k', d): <= 64 MB at a time
        for r in range(0, len(q), step):
            exact[r:r + step] = np.einsum("qd,qcd->qc", q[r:r + step], X[cand[r:r + step]])
        pos, sc = _select(exact, idv[cand], kk)
        rows = cand[np.arange(len(q))[:, None], pos]
        dist[a:a + len(q)] = sc
        out[a:a + len(q)] = idv[rows]
        if kc >= n:  # every vector was a candidate: nothing left out
            certified += len(q)
            continue
        # the left-out vectors' exact scores are at most ``bound``; the two float32
        # terms cover the rounding of the re-ranked score and of a float32 search
        q_norm = np.sqrt((q.astype(np.float64) ** 2).sum(1))
        bound = (lowk + u * np.abs(lowk) / (1 - u) + _ETA_OUT[precision]
                 + gamma * qt_norm * xt_norm + q_err * x_norm + qt_norm * x_err
                 + 2 * gamma32 * q_norm * x_norm)
        ok = sc[:, kk - 1].astype(np.float64) > bound
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
