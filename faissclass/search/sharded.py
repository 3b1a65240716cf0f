"""Exact sharded search across the ranks of a torch.distributed job (torchrun / SLURM).

Each rank builds an index (any kind, on its own device: ``cuda:<local rank>`` or the
CPU) over its contiguous slice of the train source. A search broadcasts rank 0's
queries in chunks, every rank searches its shard, and the per-rank top-k are
gathered and merged exactly with :func:`faissclass.topk.merge_topk` — the tie
order of one exact search over everything. With flat shards the merged result
equals single-process exact search.

It is one more searcher (``dim``, ``metric``, ``len``, ``search(Q, k)``): give it
to ``KNNClassifier(index=...)``. Every rank calls the same methods (SPMD, as with
torch DDP); only rank 0 gets results (``None`` elsewhere) unless
``results_on="all"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import distributed as dist
from .._validation import check_choice, check_int
from ..devices import parse_device
from ..source import SliceSource, VectorSource
from ..topk import SearchResult, merge_topk, pad_value

__all__ = ["ShardedSearcher"]


class ShardedSearcher:
    """An index sharded over the ranks of a distributed job.

    Parameters
    ----------
    source : VectorSource
        The whole train source (an :class:`~faissclass.EmbeddingStore` on a shared
        file system): every rank opens it and reads only its slice.
    spec : IndexSpec, optional
        The index each rank builds over its slice (default: flat, exact).
    device : str
        "cpu" or "cuda" (each rank on ``cuda:<local rank>``).
    params : SearchParams, optional
        Default search knobs of the shards.
    chunk : int
        Queries broadcast and merged per step (bounds every buffer).
    results_on : {"main", "all"}
        Who gets merged results: rank 0 only (others get None), or every rank.

    Raises
    ------
    DistributedError
        A rank failed to build its shard (the message names it and its error), the
        ranks disagree on dim or metric, or a collective timed out.
    """

    def __init__(self, source: VectorSource, spec: Any = None, *, device: str = "cpu",
                 params: Any = None, chunk: int = 16_384, results_on: str = "main",
                 progress: bool | None = False, fp16: bool = False,
                 on_phase: Any = None) -> None:
        from ..index import IndexSpec, build

        self.chunk = check_int(chunk, "chunk")
        self.results_on = check_choice(results_on, "results_on", ["main", "all"])
        self.rank, self.world = dist.rank(), dist.world_size()
        n = len(source)
        start, stop = n * self.rank // self.world, n * (self.rank + 1) // self.world
        self.start, self.stop, self.total = start, stop, n
        spec = spec or IndexSpec(kind="flat")
        self.spec = spec
        self.device = str(dist.device_for_rank(parse_device(device).local))
        error = None
        self.local: Any = None
        try:
            part = SliceSource(source, start, stop)
            if len(part):
                self.local = build(part, spec, device=self.device, params=params,
                                   progress=progress, fp16=fp16, on_phase=on_phase)
        except Exception as exc:  # reported to every rank below, not left to hang them
            error = f"{type(exc).__name__}: {exc}"
        status = dist.all_gather_objects({"rank": self.rank, "error": error,
                                          "dim": int(source.dim), "metric": spec.metric,
                                          "rows": stop - start})
        failed = [s for s in status if s["error"]]
        if failed:
            raise dist.DistributedError(
                "; ".join(f"rank {s['rank']} could not build its shard ({s['error']})"
                          for s in failed))
        dims = {s["dim"] for s in status}
        metrics = {s["metric"] for s in status}
        if len(dims) > 1 or len(metrics) > 1:
            raise dist.DistributedError(
                f"the ranks disagree: dims {sorted(dims)}, metrics {sorted(metrics)} "
                f"(per rank: {[(s['rank'], s['dim'], s['metric']) for s in status]})")
        self.dim, self.metric = dims.pop(), metrics.pop()
        self.shard_rows = [s["rows"] for s in status]

    def __len__(self) -> int:
        return self.total

    @property
    def on_cpu(self) -> bool:
        return self.local is None or bool(self.local.on_cpu)

    @property
    def memory_bytes(self) -> int:
        """Bytes of every rank's shard together (a collective: every rank calls it)."""
        mine = 0 if self.local is None else int(self.local.memory_bytes)
        return int(sum(dist.all_gather_objects(mine)))

    def contains(self, ids: Any) -> np.ndarray:
        """Which ids some rank holds (a collective)."""
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        mine = np.zeros(ids.shape, bool) if self.local is None else self.local.contains(ids)
        return np.logical_or.reduce(np.stack(dist.all_gather_objects(mine)))

    def _local_search(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray,
                                                                          np.ndarray]:
        if self.local is None:  # an empty shard: padding only
            return (np.full((len(q), k), pad_value(self.metric), np.float32),
                    np.full((len(q), k), -1, np.int64))
        res = self.local.search(q, k, params)
        return res.distances, res.ids

    def search(self, queries: Any, k: int, params: Any = None, *,
               batch_size: int | None = None) -> SearchResult | None:
        """The exact merge of every shard's k nearest: (nq, k) on rank 0 (every rank with
        ``results_on="all"``), None elsewhere. Every rank must call it; only rank 0's
        ``queries`` are used (the others may pass None)."""
        k = check_int(k, "k")
        q_all = dist.broadcast_array(
            None if self.rank != 0 else np.ascontiguousarray(queries, np.float32))
        if q_all.ndim != 2 or q_all.shape[1] != self.dim:
            raise ValueError(f"queries have shape {q_all.shape}; the shards hold dim "
                             f"{self.dim}")
        want_all = self.results_on == "all"
        D_out, I_out = [], []
        for a in range(0, len(q_all), self.chunk):
            q = q_all[a:a + self.chunk]
            d, i = self._local_search(q, k, params)
            parts = dist.gather_arrays((d, i))
            if parts is not None:
                merged = merge_topk([SearchResult(dd, ii) for dd, ii in parts], k, self.metric)
                D_out.append(merged.distances)
                I_out.append(merged.ids)
        if self.rank != 0 and not want_all:
            return None
        res = SearchResult(np.concatenate(D_out) if D_out else np.empty((0, k), np.float32),
                           np.concatenate(I_out) if I_out else np.empty((0, k), np.int64))
        if want_all and self.world > 1:
            res = SearchResult(dist.broadcast_array(res.distances if self.rank == 0
                                                    else None),
                               dist.broadcast_array(res.ids if self.rank == 0 else None))
        return res
