"""VectorIndex: a FAISS index with ids, checked input, per-search knobs, and safe files.

Everything takes and returns numpy arrays: vectors float32 (float16/float64 input
is cast silently; integer input is refused), ids int64.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from .._atomic import atomic_save_dir, check_target
from .._ids import IdSet, sorted_unique
from .._validation import (
    IndexFileError,
    check_finite_embeddings,
    check_id_vector,
    check_int,
    check_int_vector,
)
from ..devices import parse_device
from ..source import VectorSource
from ..store._manifest import file_digest
from ..topk import SearchResult
from ._devices import GpuPlacement, faiss_gpus
from ._faiss import (
    clusterings,
    faiss_reason,
    hnsw_of,
    id_mode,
    index_bytes,
    native_ids_of,
    search_parameters,
)
from .spec import (
    DEFAULT_EF_SEARCH,
    MIN_POINTS_PER_CENTROID,
    IndexSpec,
    SearchParams,
    check_factory,
    default_nprobe,
)

__all__ = ["FAISS_METRICS", "VectorIndex"]

FAISS_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_FORMAT = "faissclass.index"
_FORMAT_VERSION = 1


class VectorIndex:
    """A FAISS index with ids, input checks, search parameters and persistence.

    Parameters
    ----------
    dim : int
        Vector width.
    spec : IndexSpec
        What to build (default: exact flat inner product).
    device : str
        "cpu", "cuda", "cuda:N" or "cuda:all" (every GPU; ``shard=True`` splits the
        vectors across GPUs, False replicates them).
    params : SearchParams, optional
        Default search parameters, used when ``search`` gets none.
    fp16 : bool
        GPU only: store vectors / lookup tables in float16 (half the memory).
    shard : bool
        With "cuda:all": shard (True) or replicate (False).

    Notes
    -----
    HNSW has no GPU implementation in FAISS: asking for one is an error, not a
    CPU fallback. Searches may run concurrently on a CPU index (the knobs travel
    with each call); adding, removing and GPU searches with other knobs may not.
    """

    def __init__(self, dim: int, spec: IndexSpec | None = None, *, device: str = "cpu",
                 params: SearchParams | None = None, fp16: bool = False,
                 shard: bool = True) -> None:
        dim = check_int(dim, "dim")
        spec = IndexSpec() if spec is None else spec
        if not isinstance(spec, IndexSpec):
            raise TypeError(f"spec must be an IndexSpec; got {type(spec).__name__}")
        if params is not None and not isinstance(params, SearchParams):
            raise TypeError(f"params must be a SearchParams; got {type(params).__name__}")
        self.dim = int(dim)
        self.spec = spec
        self.params = SearchParams() if params is None else params
        self.fp16 = bool(fp16)
        self.shard = bool(shard)
        self._device = parse_device(device)
        self.device = str(self._device)
        self._gpus = faiss_gpus(self._device)
        factory = check_factory(spec.factory_string(self.dim), self.dim)
        try:
            cpu = faiss.index_factory(self.dim, factory, FAISS_METRICS[spec.metric])
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot build {factory!r} for dim {self.dim}: "
                             f"{faiss_reason(exc)}") from exc
        hnsw = hnsw_of(cpu)
        if hnsw is not None:
            hnsw.efConstruction = spec.ef_construction
        self._init_from_cpu(cpu)
        self._check_params(self.params)
        self._set_ids(np.empty(0, np.int64), next_id=0)

    def _set_ids(self, ids: np.ndarray, *, next_id: int) -> None:
        """Id bookkeeping: ``ids`` are the stored ids (in position order for kinds
        that keep none)."""
        self._idset = IdSet()
        if ids.size:
            self._idset.add_open(np.sort(ids))
        # position -> id, for index types without ids of their own
        self._pos_ids: list[np.ndarray] = [ids] if ids.size and not self._native_ids else []
        self._pos_cache: np.ndarray | None = None
        self._next_id = next_id

    def _init_from_cpu(self, cpu: Any) -> None:
        #: CertifiedStats of the last low-precision search (see SearchParams.precision)
        self.last_certified: Any = None
        self._id_mode = id_mode(cpu)
        self._native_ids = self._id_mode != "positions"
        ivf = faiss.try_extract_index_ivf(cpu)
        self._nlist: int | None = None if ivf is None else int(ivf.nlist)
        hnsw = hnsw_of(cpu)
        # The defaults every search starts from, so one search's parameters never leak
        # into the next. Not FAISS's own (nprobe 1, efSearch 16): see default_nprobe.
        self._base_params = SearchParams(
            nprobe=None if ivf is None else default_nprobe(int(ivf.nlist)),
            ef_search=None if hnsw is None else DEFAULT_EF_SEARCH)
        self._placement = None
        if not self._gpus:
            self._index = cpu
            return
        if hnsw_of(cpu) is not None:
            raise ValueError("HNSW has no GPU implementation in FAISS; use device='cpu' for "
                             "HNSW, or an IVF kind on the GPU")
        self._placement = GpuPlacement(self._gpus, fp16=self.fp16, shard=self.shard)
        self._index = self._placement.to_gpu(cpu)

    def _check_params(self, params: SearchParams) -> None:
        if params.nprobe is not None and self._nlist is None:
            raise ValueError(f"nprobe applies to IVF indexes; this one is "
                             f"{self.spec.factory_string(self.dim)}")
        if params.ef_search is not None and self._base_params.ef_search is None:
            raise ValueError(f"ef_search applies to HNSW indexes; this one is "
                             f"{self.spec.factory_string(self.dim)}")
        if params.precision not in (None, "fp32") and not (self._flat_cpu()
                                                           and self.metric == "ip"):
            raise ValueError(f"precision={params.precision!r} applies to flat inner-product "
                             f"indexes on CPU; this one is "
                             f"{self.spec.factory_string(self.dim)} ({self.metric}) on "
                             f"{self.device}")

    # ------------------------------------------------------------------ description

    @property
    def ntotal(self) -> int:
        """Vectors stored."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (GPU or CPU), for what this class does not wrap."""
        return self._index

    def cpu_index(self) -> Any:
        """A CPU FAISS index with the same contents (the index itself when on the CPU)."""
        return self._index if self._placement is None else GpuPlacement.to_cpu(self._index)

    @property
    def on_cpu(self) -> bool:
        """Whether the index lives in host memory (not on a GPU)."""
        return self._placement is None

    @property
    def memory_bytes(self) -> int:
        """Bytes of the index's contents (vectors or codes, lists and their ids, graph,
        trained tables) plus faissclass's id map, computed from the index's own sizes:
        cheap at any size. For a structure it does not know, and for GPU indexes, it
        falls back to :meth:`serialized_bytes` (which copies and serialises)."""
        if self._placement is None:
            n = index_bytes(self._index)
            if n is not None:
                return n + sum(a.nbytes for a in self._pos_ids)
        return self.serialized_bytes()

    def serialized_bytes(self) -> int:
        """Bytes of the index as FAISS serialises it (on a GPU, of its CPU copy) plus
        the id map. Serialises the whole index: costly for large ones."""
        count = [0]

        def sink(b: bytes) -> int:
            count[0] += len(b)
            return len(b)

        faiss.write_index(self.cpu_index(), faiss.PyCallbackIOWriter(sink))
        return count[0] + sum(a.nbytes for a in self._pos_ids)

    def __deepcopy__(self, memo: dict[int, Any]) -> VectorIndex:
        """A copy with its own FAISS index (FAISS's objects do not deep-copy)."""
        new = copy.copy(self)
        new._init_from_cpu(faiss.deserialize_index(faiss.serialize_index(self.cpu_index())))
        new._idset = copy.deepcopy(self._idset, memo)
        new._pos_ids = [a.copy() for a in self._pos_ids]
        new._pos_cache = None
        return new

    def __repr__(self) -> str:
        return (f"VectorIndex(dim={self.dim}, {self.spec.factory_string(self.dim)!r}, "
                f"metric={self.metric!r}, device={self.device!r}, ntotal={self.ntotal})")

    # ------------------------------------------------------------------ building

    def _vectors(self, x: Any, name: str) -> np.ndarray:
        return check_finite_embeddings(x, dim=self.dim, name=name)

    def train(self, sample: Any) -> VectorIndex:
        """Train the coarse quantiser / codebooks on ``sample`` (n, dim).

        Warns once (a Python warning) when n is below FAISS's recommended 39
        points per IVF cell or per PQ centroid, instead of FAISS printing the
        same warning to stderr for every sub-quantiser; a no-op for indexes that
        need no training (flat, HNSW).
        """
        x = self._vectors(sample, "training vectors")
        nlist = self._nlist
        if nlist is not None and x.shape[0] < nlist:
            raise ValueError(f"training needs at least nlist={nlist} vectors; got "
                             f"{x.shape[0]}")
        short = []
        for what, centroids, params in clusterings(self._index):
            params.min_points_per_centroid = 0  # FAISS's stderr warning: ours replaces it
            want = MIN_POINTS_PER_CENTROID * centroids
            if x.shape[0] < want:
                short.append(f"{what} ({centroids} centroids) on {x.shape[0]} vectors, FAISS "
                             f"recommends at least {want}")
        if short:
            warnings.warn("training " + "; ".join(short) + " (39 per centroid). Recall may "
                          "suffer.", UserWarning, stacklevel=2)
        try:
            self._index.train(x)
        except RuntimeError as exc:
            raise ValueError(f"FAISS training failed: {faiss_reason(exc)}") from exc
        return self

    def add(self, vectors: Any, ids: Any = None, *, batch_size: int = 65_536) -> VectorIndex:
        """Add vectors (n, dim) with int64 ids (default: continuing 0, 1, 2, ...).

        Raises
        ------
        ValueError
            Untrained index, wrong dim, non-finite values, duplicate ids or ids
            already in the index.
        """
        batch_size = check_int(batch_size, "batch_size")
        x, idv, s = self._prepare_add(vectors, ids)
        n = x.shape[0]
        n0 = self.ntotal
        try:
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                if self._native_ids:
                    self._index.add_with_ids(x[a:b], idv[a:b])
                else:
                    self._index.add(x[a:b])
        except BaseException:
            # All or nothing: take out what this call added (FAISS adds batch by batch).
            self._undo_add(idv, n0)
            raise
        self._record_ids(idv, s)
        return self

    def _undo_add(self, ids: np.ndarray, n0: int) -> None:
        added = self.ntotal - n0
        if added <= 0:
            return
        try:
            if self._native_ids:
                self._index.remove_ids(faiss.IDSelectorBatch(ids))
            else:  # positions appended at the end
                self._index.remove_ids(faiss.IDSelectorRange(n0, n0 + added))
        except RuntimeError:
            # A kind FAISS cannot remove from (HNSW): keep the vectors with their ids,
            # so the index and its id map still agree.
            kept = ids[:added]
            self._record_ids(kept, np.sort(kept))

    def _prepare_add(self, vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Checked (vectors float32, ids, sorted ids) for an add."""
        if not self.is_trained:
            raise ValueError(f"this {self.spec.factory_string(self.dim)} index must be trained "
                             "before add(): call train(sample) first (or use VectorIndex.build)")
        x = self._vectors(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            idv = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            idv = check_id_vector(ids, n=n, name="ids")
        s, dup = sorted_unique(idv)
        if dup is not None:
            raise ValueError(f"id {dup} appears twice in this batch; ids must be unique")
        hit = self._idset.contains(idv)
        if hit.any():
            raise ValueError(f"id {int(idv[np.flatnonzero(hit)[0]])} is already in the index; "
                             "remove() it first to replace it")
        return x, idv, s

    def _record_ids(self, idv: np.ndarray, s: np.ndarray) -> None:
        if idv.size == 0:
            return
        if not self._native_ids:
            self._pos_ids.append(idv.copy())
            self._pos_cache = None
        self._idset.add_open(s.copy() if s is idv else s)
        self._next_id = max(self._next_id, int(s[-1]) + 1)

    def _reserve_codes(self, n: int) -> None:
        """Size an empty flat-codes CPU index's storage for n vectors up front.

        FAISS grows the codes with std::vector::resize, which doubles the capacity and
        copies: adding 1.28 M × 384 float32 in batches peaked at 3.4 GB for a 1.9 GB
        index (measured). Resizing to the final size and back to 0 keeps the capacity,
        so the adds never reallocate: the peak is the index plus a batch.
        """
        if self._placement is not None or self.ntotal or n <= 0:
            return
        idx = faiss.downcast_index(self._index)
        if isinstance(idx, faiss.IndexHNSW):
            # HNSW: its flat storage, and the neighbour table (2M slots a vector at
            # level 0, M per upper level: about M/(M-1) more; 2% margin). Measured on
            # 1.28 M x 384, HNSW32: the build peaked at 3.7 GB for a 2.2 GB index.
            h = idx.hnsw
            m = int(h.nb_neighbors(1))
            h.neighbors.resize(int(n * (2 * m + m / max(m - 1, 1)) * 1.02))
            h.neighbors.resize(0)
            idx = faiss.downcast_index(idx.storage)
        if isinstance(idx, faiss.IndexFlatCodes) and getattr(idx.codes, "is_owned", True):
            idx.codes.resize(int(n) * int(idx.code_size))
            idx.codes.resize(0)

    def _reservable_ivf(self) -> Any:
        """The index as a plain, empty CPU IndexIVF with array lists, else None."""
        if self._placement is not None or self.ntotal:
            return None
        idx = faiss.downcast_index(self._index)
        if not isinstance(idx, faiss.IndexIVF):
            return None
        lists = faiss.downcast_InvertedLists(idx.invlists)
        return idx if isinstance(lists, faiss.ArrayInvertedLists) else None

    @classmethod
    def build(cls, source: VectorSource, spec: IndexSpec | None = None, *,
              device: str = "cpu", train_size: int | None = None, seed: int = 0,
              batch_size: int = 65_536, progress: bool | None = None,
              params: SearchParams | None = None, fp16: bool = False) -> VectorIndex:
        """Build an index from any :class:`~faissclass.source.VectorSource` (a store,
        :class:`~faissclass.source.ArraySource`, ...); see :func:`faissclass.index.build`."""
        from .build import build

        return build(source, spec, device=device, train_size=train_size, seed=seed,
                     batch_size=batch_size, progress=progress, params=params, fp16=fp16)

    # ------------------------------------------------------------------ searching

    def _effective(self, params: SearchParams | None) -> SearchParams:
        """The knobs of one search: ``params``, else the index's defaults, else ours."""
        p = self.params if params is None else params
        base = self._base_params
        merged = SearchParams(
            nprobe=next((v for v in (p.nprobe, self.params.nprobe, base.nprobe)
                         if v is not None), None),
            ef_search=next((v for v in (p.ef_search, self.params.ef_search, base.ef_search)
                            if v is not None), None),
            precision=next((v for v in (p.precision, self.params.precision)
                            if v is not None), None))
        self._check_params(p)
        self._check_params(merged)  # the index's own defaults too (they may be reassigned)
        return merged

    def _faiss_params(self, p: SearchParams) -> tuple[Any, list[Any]]:
        """(FAISS SearchParameters for this search or None, objects to keep alive).

        On CPU indexes the knobs travel with the call (concurrent searches with
        different knobs are safe). On a GPU, or for a structure FAISS has no
        parameter object for, they are set on the index (not thread-safe).
        """
        keep: list[Any] = []
        if self._placement is None:
            try:
                return search_parameters(self._index, p.nprobe, p.ef_search, keep), keep
            except TypeError:
                pass
        ps = faiss.ParameterSpace() if self._placement is None else faiss.GpuParameterSpace()
        if p.nprobe is not None:
            ps.set_index_parameter(self._index, "nprobe", int(p.nprobe))
        if p.ef_search is not None:
            ps.set_index_parameter(self._index, "efSearch", int(p.ef_search))
        return None, keep

    def search(self, queries: Any, k: int, params: SearchParams | None = None, *,
               batch_size: int = 16_384, progress: bool = False) -> SearchResult:
        """k nearest stored vectors of each query.

        Parameters
        ----------
        queries : array_like, shape (nq, dim), float (cast to float32)
        k : int
            Neighbours per query. Above ntotal, results are padded with id -1
            as FAISS does.
        params : SearchParams, optional
            Overrides ``self.params`` for this search.
        batch_size : int
            Queries per FAISS call (bounds FAISS's temporary memory).
        progress : bool
            Show a tqdm bar over queries.
        """
        k = check_int(k, "k")
        batch_size = check_int(batch_size, "batch_size")
        if params is not None and not isinstance(params, SearchParams):
            raise TypeError(f"params must be a SearchParams; got {type(params).__name__}")
        if not self.is_trained:
            raise ValueError("search before train(): this index is untrained and empty")
        q = self._vectors(queries, "queries")
        eff = self._effective(params)
        lowp = self._low_precision(eff)
        if lowp is not None:
            return self._certified(q, int(k), lowp)
        self.last_certified = None
        fparams, _keep = self._faiss_params(eff)
        nq = q.shape[0]
        # Exact flat search on the CPU keeps the library's tie order (equal scores:
        # smaller id first), the order of exact_search and merge_topk: one neighbour
        # more is searched to see ties at the k-th place (rare rows are redone exactly).
        exact = self._flat_cpu()
        kk = int(k) + 1 if exact and k < self.ntotal else int(k)
        dist = np.empty((nq, kk), np.float32)
        labels = np.empty((nq, kk), np.int64)
        with tqdm(total=nq, unit="query", unit_scale=True, disable=not progress,
                  desc="searching") as bar:
            for a in range(0, nq, max(1, int(batch_size))):
                b = min(a + max(1, int(batch_size)), nq)
                if fparams is None:
                    dist[a:b], labels[a:b] = self._index.search(q[a:b], kk)
                else:
                    dist[a:b], labels[a:b] = self._index.search(q[a:b], kk,
                                                                params=fparams)
                bar.update(b - a)
        if not self._native_ids:  # labels are positions: map them to ids, keep -1
            pos = self._positions()
            valid = labels >= 0
            labels = np.where(valid, pos[np.where(valid, labels, 0)] if pos.size else -1, -1)
        labels = labels.astype(np.int64, copy=False)
        if exact:
            dist, labels = self._ties_by_id(q, dist, labels, int(k))
        return SearchResult(dist, labels)

    def _low_precision(self, p: SearchParams) -> str | None:
        """The low-precision type a search runs its candidate GEMM in, or None (fp32)."""
        if p.precision in (None, "fp32"):
            return None
        if p.precision == "auto":
            from ..search.certified import lowp_supported

            return "bf16" if lowp_supported("cpu", "bf16") else None
        return p.precision

    def _certified(self, q: np.ndarray, k: int, precision: str) -> SearchResult:
        from ..search.certified import certified_search

        xb, ids = self._stored()
        res, stats = certified_search(xb, q, k, precision=precision, ids=ids)
        self.last_certified = stats
        return res

    def _flat_cpu(self) -> bool:
        return (self._placement is None and not self._native_ids
                and isinstance(faiss.downcast_index(self._index), faiss.IndexFlat))

    def _stored(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32, a view of the flat CPU index's memory; their ids)."""
        flat = faiss.downcast_index(self._index)
        xb = faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * self.dim).reshape(
            self.ntotal, self.dim) if self.ntotal else np.empty((0, self.dim), np.float32)
        return xb, self._positions()

    def self_knn(self, k: int, *, block: int | None = None, progress: bool | None = None,
                 precision: str | None = None) -> tuple[np.ndarray, SearchResult]:
        """Leave-one-out exact search: each stored vector's k nearest *other* stored
        vectors, by the symmetric self-join (half the arithmetic of searching the
        index with its own vectors; see :mod:`faissclass.search.self_join`).

        Flat indexes on CPU only (others raise NotImplementedError; search them with
        k + 1 and drop each query's own id). ``precision`` as in :class:`SearchParams`:
        "bf16"/"fp16" (inner product) run the certified low-precision self-join
        (:func:`~faissclass.search.certified_self_knn`; its statistics in
        ``last_certified``), "auto" does so where the CPU multiplies bf16 natively.

        Returns
        -------
        ids : numpy.ndarray, shape (n,), int64
            The stored ids, one per result row.
        result : SearchResult, shape (n, k)
            Row i: the neighbours of the vector with ``ids[i]``, best first, equal
            scores by smaller id, itself excluded.
        """
        from ..search.self_join import DEFAULT_BLOCK, self_knn

        if not self._flat_cpu():
            raise NotImplementedError(f"self_knn needs a flat index on CPU; this one is "
                                      f"{self.spec.factory_string(self.dim)!r} on {self.device}")
        if precision is None:  # the index's default search settings, as search() does
            precision = getattr(self.params, "precision", None)
        if precision not in (None, "fp32") and self.metric != "ip":
            raise ValueError(f"precision={precision!r} applies to flat inner-product "
                             f"indexes; this one is {self.metric}")
        lowp = self._low_precision(SearchParams(precision=precision))
        xb, ids = self._stored()
        self.last_certified = None
        if lowp is not None:
            from ..search.certified import certified_self_knn

            res, self.last_certified = certified_self_knn(
                xb, k, precision=lowp, ids=ids, block=block or DEFAULT_BLOCK,
                progress=progress)
            return ids, res
        res = self_knn(xb, k, self.metric, ids=ids, block=block or DEFAULT_BLOCK,
                       progress=progress)
        return ids, res

    def _ties_by_id(self, q: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut k+1 flat results to k with equal scores ordered by id (see :mod:`topk`)."""
        from ..topk import _select

        tied = (np.flatnonzero(dist[:, k - 1] == dist[:, k]) if dist.shape[1] > k
                else np.empty(0, np.int64))
        dist, ids = dist[:, :k].copy(), ids[:, :k].copy()
        if tied.size:
            xb, pos = self._stored()
            ip = self.metric == "ip"
            for r in tied:
                s = xb @ q[r] if ip else -((xb - q[r]) ** 2).sum(1)
                where, best = _select(s[None, :], pos[None, :], k)
                ids[r] = pos[where[0]]
                dist[r] = best[0] if ip else -best[0]
        key = dist if self.metric == "ip" else -dist
        order = np.lexsort((ids, -key), axis=1)
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    def _positions(self) -> np.ndarray:
        if self._pos_cache is None:
            self._pos_cache = (np.concatenate(self._pos_ids) if self._pos_ids
                               else np.empty(0, np.int64))
            self._pos_ids = [self._pos_cache] if self._pos_cache.size else []
        return self._pos_cache

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which ``ids`` are in the index."""
        arr = np.atleast_1d(np.asarray(ids))
        return self._idset.contains(check_int_vector(arr, n=arr.shape[0], name="ids"))

    # ------------------------------------------------------------------ removing

    def remove(self, ids: Any) -> int:
        """Remove vectors by id; returns how many were removed (unknown ids are ignored).

        Supported by flat and IVF indexes on the CPU. HNSW cannot remove in FAISS:
        rebuild without the ids instead.
        """
        arr = np.atleast_1d(np.asarray(ids))
        idv = check_int_vector(arr, n=arr.shape[0], name="ids")
        if hnsw_of(self._index) is not None:
            raise NotImplementedError("FAISS HNSW indexes do not support removal; rebuild the "
                                      "index without these ids (or use a flat or IVF index)")
        if self._placement is not None:
            raise NotImplementedError("remove() runs on CPU indexes; load the index on the "
                                      "CPU, remove, save, and reload it on the GPU")
        if idv.size == 0:
            return 0
        if self._native_ids:
            sel = faiss.IDSelectorBatch(idv)
        else:
            pos = self._positions()
            where = np.flatnonzero(np.isin(pos, idv)).astype(np.int64)
            sel = faiss.IDSelectorBatch(where)
        try:
            n = int(self._index.remove_ids(sel))
        except RuntimeError as exc:
            raise NotImplementedError(
                f"FAISS cannot remove from {self.spec.factory_string(self.dim)}: "
                f"{faiss_reason(exc)}") from exc
        if not self._native_ids:
            self._pos_cache = np.delete(self._positions(), where)
            self._pos_ids = [self._pos_cache] if self._pos_cache.size else []
        self._idset.remove(idv)
        return n

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the index to directory ``path``, atomically.

        Files: ``index.faiss`` (FAISS's format, the CPU form), ``ids.npy``
        (position -> id, for index types without ids of their own) and
        ``index.json`` (spec, search params, dim, metric, checksums, faiss version).

        Parameters
        ----------
        overwrite : bool
            Replace a previously saved index at ``path``. Without it an existing
            index is an error; anything that is not a saved index (a store, a
            folder of your files, a file) is never replaced, whatever this says.

        Raises
        ------
        FileExistsError
            ``path`` holds something that must not be replaced.
        """
        return atomic_save_dir(path, self._write_files, marker="index.json", kind="index",
                               own=_OWN_FILES, overwrite=bool(overwrite), format_name=_FORMAT)

    @staticmethod
    def check_save_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Raise now the error :meth:`save` would raise for ``path`` (e.g. before a long
        build); returns None if a save there would go ahead."""
        check_target(Path(path), marker="index.json", kind="index", own=_OWN_FILES,
                     overwrite=bool(overwrite), format_name=_FORMAT)

    def _write_files(self, d: Path) -> None:
        """The index's files into the (new, empty) directory ``d``."""
        faiss.write_index(self.cpu_index(), str(d / "index.faiss"))
        np.save(d / "ids.npy", self._positions() if not self._native_ids
                else np.empty(0, np.int64), allow_pickle=False)
        meta = {
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "dim": self.dim, "metric": self.metric, "spec": self.spec.to_dict(),
            "factory": self.spec.factory_string(self.dim),
            "params": self.params.to_dict(), "ntotal": self.ntotal,
            "next_id": self._next_id, "native_ids": self._native_ids,
            "checksums": {name: file_digest(d / name) for name in ("index.faiss", "ids.npy")},
            "faiss_version": faiss.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (d / "index.json").write_text(json.dumps(meta, indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu", fp16: bool = False,
             shard: bool = True) -> VectorIndex:
        """Load an index saved by :meth:`save`, onto ``device``.

        Everything is cross-checked before use: the files' checksums (before FAISS
        parses a byte), dim, metric, kind and size against ``index.json``, ids
        unique and never -1.

        Raises
        ------
        IndexFileError
            Naming the file that is missing, damaged or inconsistent.
        """
        path = Path(path)
        meta = _read_index_json(path)
        for name, want in meta["checksums"].items():
            f = path / name
            try:
                got = file_digest(f)
            except OSError as exc:
                raise IndexFileError(f"{f}: unreadable ({exc.strerror})") from None
            if got != want:
                raise IndexFileError(f"{f}: checksum {got}, index.json recorded {want} (the "
                                     "file is damaged or was replaced)")
        try:
            cpu = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as exc:
            raise IndexFileError(f"{path / 'index.faiss'}: unreadable FAISS index "
                                 f"({faiss_reason(exc)})") from exc
        spec = meta["spec"]
        _check_loaded(path / "index.faiss", cpu, meta, spec)
        self = cls.__new__(cls)
        self.dim = int(meta["dim"])
        self.spec = spec
        self.params = meta["params"]
        self.fp16, self.shard = bool(fp16), bool(shard)
        self._device = parse_device(device)
        self.device = str(self._device)
        self._gpus = faiss_gpus(self._device)
        self._init_from_cpu(cpu)
        if self._native_ids != meta["native_ids"]:
            raise IndexFileError(f"{path / 'index.json'}: says native_ids="
                                 f"{meta['native_ids']}, the index says otherwise")
        if self.params.precision not in (None, "fp32") and not (
                self._flat_cpu() and self.metric == "ip"):
            # a per-device choice, not damage: loaded on a device it does not apply to
            warnings.warn(f"{path}: saved precision={self.params.precision!r} applies to a "
                          f"flat index on CPU only; searching in fp32 on {self.device}",
                          stacklevel=2)
            self.params = dataclasses.replace(self.params, precision=None)
        try:
            self._check_params(self.params)
        except ValueError as exc:
            raise IndexFileError(f"{path / 'index.json'}: saved search params: {exc}") from None
        if self._native_ids:
            ids, where = native_ids_of(cpu), path / "index.faiss"
        else:
            where = path / "ids.npy"
            try:
                ids = np.load(where, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFileError(f"{where}: unreadable ({exc})") from exc
            if ids.dtype != np.int64 or ids.shape != (cpu.ntotal,):
                raise IndexFileError(f"{where}: holds {ids.dtype} of shape {ids.shape}; "
                                     f"expected int64 of shape ({cpu.ntotal},)")
        s, dup = sorted_unique(ids)
        if dup is not None:
            raise IndexFileError(f"{where}: id {dup} is stored twice")
        if (s.size and int(s[0]) == -1) or (s == -1).any():
            raise IndexFileError(f"{where}: holds id -1, FAISS's 'no result' marker")
        next_id = int(meta["next_id"])
        if s.size and next_id <= int(s[-1]):
            raise IndexFileError(f"{path / 'index.json'}: next_id={next_id} is not above the "
                                 f"largest stored id {int(s[-1])}")
        self._set_ids(ids, next_id=next_id)
        return self


_OWN_FILES = ("index.faiss", "ids.npy", "index.json")


def _read_index_json(path: Path) -> dict[str, Any]:
    """index.json of a saved index, every field checked; spec and params as objects."""
    f = path / "index.json"
    if not path.is_dir():
        old = sorted(path.parent.glob(f".{path.name}.faissclass-old-*"))
        hint = (f"; an interrupted save left the previous index at {old[-1]} (rename it "
                f"back to {path.name})") if old else ""
        raise IndexFileError(f"{path}: no such index directory{hint}")
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise IndexFileError(f"{path}: not a saved VectorIndex (no index.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IndexFileError(f"{f}: unreadable ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or \
            meta.get("format_version") != _FORMAT_VERSION:
        raise IndexFileError(f"{f}: not a faissclass index of format version "
                             f"{_FORMAT_VERSION}")
    try:
        check_int(meta.get("dim"), "dim", max_value=2**20)
        check_int(meta.get("ntotal"), "ntotal", min_value=0)
        check_int(meta.get("next_id"), "next_id", min_value=0)
        if not isinstance(meta.get("native_ids"), bool):
            raise ValueError(f"native_ids must be true or false; got {meta.get('native_ids')!r}")
        if not isinstance(meta.get("spec"), dict) or not isinstance(meta.get("params"), dict):
            raise ValueError("spec and params must be objects")
        spec = IndexSpec.from_dict(meta["spec"])
        params = SearchParams(**meta["params"])
        if meta.get("metric") != spec.metric:
            raise ValueError(f"metric {meta.get('metric')!r} disagrees with the spec's "
                             f"{spec.metric!r}")
        if meta.get("factory") != spec.factory_string(meta["dim"]):
            raise ValueError(f"factory {meta.get('factory')!r} is not what the spec builds "
                             f"({spec.factory_string(meta['dim'])!r})")
        sums = meta.get("checksums", {})  # indexes saved before 0.2 have none
        if not isinstance(sums, dict) or not set(sums) <= {"index.faiss", "ids.npy"} or \
                not all(isinstance(v, str) for v in sums.values()):
            raise ValueError("checksums must map index.faiss / ids.npy to strings")
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"{f}: {exc}") from None
    return {**meta, "spec": spec, "params": params, "checksums": sums}


def _check_loaded(where: Path, cpu: Any, meta: dict[str, Any], spec: IndexSpec) -> None:
    """The FAISS index read from ``where`` is what index.json describes: dim, size,
    metric, training, and the structure the spec's factory string builds (compared
    with an empty index built from it, so any kind or factory string is covered)."""
    problems = []
    if cpu.d != meta["dim"]:
        problems.append(f"dim {cpu.d} (index.json: {meta['dim']})")
    if cpu.ntotal != meta["ntotal"]:
        problems.append(f"{cpu.ntotal} vectors (index.json: {meta['ntotal']})")
    if cpu.metric_type != FAISS_METRICS[spec.metric]:
        problems.append(f"metric type {cpu.metric_type} (index.json: {spec.metric!r})")
    if not cpu.is_trained:
        problems.append("an untrained index")
    if not problems:
        want = faiss.index_factory(int(meta["dim"]), spec.factory_string(int(meta["dim"])),
                                   FAISS_METRICS[spec.metric])
        got_t, want_t = _structure(cpu), _structure(want)
        if got_t != want_t:
            problems.append(f"a {' > '.join(got_t)} index where the spec builds "
                            f"{' > '.join(want_t)}")
    if problems:
        raise IndexFileError(f"{where}: holds " + "; ".join(problems))


def _structure(index: Any) -> list[str]:
    """The nesting of an index's types with their main sizes, e.g. ['IndexIVFFlat(nlist=64)',
    'IndexFlatIP']."""
    out = []
    idx = faiss.downcast_index(index)
    for _ in range(6):
        # The metric is checked apart; a quantiser built as IndexFlat reads back as
        # IndexFlatIP / IndexFlatL2.
        name = re.sub(r"(IP|L2)$", "", type(idx).__name__)
        name = "IndexRefine" if name == "IndexRefineFlat" else name  # Refine(Flat) reads so
        if hasattr(idx, "nlist"):
            name += f"(nlist={idx.nlist})"
        if hasattr(idx, "hnsw"):
            name += f"(M={idx.hnsw.nb_neighbors(1)})"
        out.append(name)
        inner = getattr(idx, "quantizer", None) if hasattr(idx, "nlist") else getattr(
            idx, "index", None) or getattr(idx, "base_index", None)
        if inner is None:
            break
        idx = faiss.downcast_index(inner)
    return out
