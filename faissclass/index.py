"""FAISS indexes (flat, IVF, HNSW; CPU or GPU) behind one class: VectorIndex.

This is the only module of faissclass that imports faiss. Everything takes and
returns numpy arrays: vectors float32 (float16/float64 input is cast silently;
integer input is refused), ids int64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ._atomic import atomic_save_dir
from ._ids import IdSet, sorted_unique
from ._validation import (
    IndexFileError,
    check_embeddings,
    check_finite_embeddings,
    check_id_vector,
    check_int,
    check_int_vector,
)
from .store._manifest import file_digest

if TYPE_CHECKING:
    from .store import EmbeddingStore

try:
    import faiss
except ImportError as _exc:  # pragma: no cover - exercised only without faiss
    raise ImportError(
        "faissclass.index needs faiss: pip install 'faissclass[cpu]' (faiss-cpu) or "
        "'faissclass[gpu]' (faiss-gpu-cu12)"
    ) from _exc

__all__ = [
    "IndexSpec",
    "SearchParams",
    "SearchResult",
    "VectorIndex",
    "exact_search",
    "recall_at_k",
    "suggest_spec",
    "sweep",
]

log = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_KINDS = ("flat", "ivf", "hnsw")
_STORAGES = ("flat", "sq8", "pq")
# FAISS warns below 39 training points per centroid (Clustering::train).
MIN_POINTS_PER_CENTROID = 39
_MAX_NLIST = 2**28
_MAX_HNSW_M = 4096
# Below this, FAISS 1.15's NSG build never finishes (seen for R = 1..12 on 2,000 vectors).
_MIN_NSG_R = 16
_FORMAT = "faissclass.index"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class IndexSpec:
    """What index to build.

    Parameters
    ----------
    kind : {"flat", "ivf", "hnsw"}, optional
        ``flat``: exact search. ``ivf``: inverted lists over ``nlist`` k-means
        cells, vectors stored as ``storage``. ``hnsw``: graph with ``M`` links
        per node. Leave None when ``factory`` is given.
    factory : str, optional
        A raw FAISS ``index_factory`` string (e.g. ``"PCA128,IVF4096,PQ32"``)
        for anything the kinds do not cover.
    metric : {"ip", "l2"}
        Inner product (cosine on L2-normalised vectors; the default) or L2.
    nlist : int
        IVF cells. FAISS suggests 4·√n to 16·√n for n vectors.
    storage : {"flat", "sq8", "pq"}
        IVF codes: raw float32, 8-bit scalar quantisation, or product
        quantisation with ``m`` sub-quantisers of ``nbits`` bits.
    m, nbits : int
        PQ code size: ``m * nbits / 8`` bytes per vector; ``m`` must divide dim.
        ``m=None`` picks the largest of FAISS's GPU-supported code sizes that
        divides dim and is at most dim / 4.
    M, ef_construction : int
        HNSW links per node and construction beam width.
    """

    kind: Literal["flat", "ivf", "hnsw"] | None = "flat"
    factory: str | None = None
    metric: Metric = "ip"
    nlist: int = 1024
    storage: Literal["flat", "sq8", "pq"] = "flat"
    m: int | None = None
    nbits: int = 8
    M: int = 32
    ef_construction: int = 40

    def __post_init__(self) -> None:
        if self.factory is not None:
            if not isinstance(self.factory, str) or not self.factory.strip():
                raise ValueError(f"factory must be a non-empty FAISS factory string; got "
                                 f"{self.factory!r}")
            if self.kind not in (None, "flat"):
                raise ValueError(f"give either kind= or factory=, not both (kind={self.kind!r})")
            object.__setattr__(self, "kind", None)
            check_factory(self.factory)
        elif self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS} (or pass factory=); got {self.kind!r}")
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be 'ip' or 'l2'; got {self.metric!r}")
        if self.storage not in _STORAGES:
            raise ValueError(f"storage must be one of {_STORAGES}; got {self.storage!r}")
        check_int(self.nlist, "nlist", max_value=_MAX_NLIST)
        check_int(self.nbits, "nbits", max_value=16)
        # FAISS's HNSW crashes the process for M < 2 (a segfault for 1, an abort for 0).
        check_int(self.M, "M", min_value=2, max_value=_MAX_HNSW_M)
        check_int(self.ef_construction, "ef_construction")
        if self.m is not None:
            check_int(self.m, "m")

    def factory_string(self, dim: int) -> str:
        """The FAISS factory string this spec builds for vectors of ``dim``."""
        if self.factory is not None:
            return self.factory
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.M}"
        codes = {"flat": "Flat", "sq8": "SQ8"}.get(self.storage)
        if codes is None:
            m = self.m if self.m is not None else default_pq_m(dim)
            if dim % m:
                raise ValueError(f"PQ m={m} must divide dim {dim}; pick m among "
                                 f"{[x for x in range(1, dim + 1) if dim % x == 0 and x <= 96]}")
            # "np": no polysemous training. It only serves Hamming pre-filtering,
            # which plain IVF-PQ search never uses, and made training ~25x slower.
            codes = f"PQ{m}x{self.nbits}np"
        return f"IVF{self.nlist},{codes}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexSpec:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown IndexSpec keys {sorted(unknown)}")
        return cls(**d)


_GPU_PQ_BYTES = (96, 64, 56, 48, 32, 28, 24, 20, 16, 12, 8, 4, 3, 2, 1)


def default_pq_m(dim: int) -> int:
    """Largest GPU-supported PQ code size (bytes at 8 bits) dividing ``dim``, <= dim / 4."""
    for m in _GPU_PQ_BYTES:
        if m <= max(1, dim // 4) and dim % m == 0:
            return m
    return 1


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**62


def check_factory(factory: str, dim: int | None = None) -> str:
    """Refuse FAISS factory strings that crash or hang FAISS instead of raising.

    FAISS 1.15 segfaults, aborts or loops forever on some parameters before any
    error can reach Python: a size of 0 anywhere (``PQ4x0``, ``PCA0``, ``HNSW0``,
    ``Refine(SQ0)``), HNSW with fewer than 2 links (``HNSW1``), NSG with a graph
    degree below 16 (its build never ends), and IVF with more lists than memory
    holds. Everything else is left to FAISS, whose errors are reported whole.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a non-empty FAISS factory string; got {factory!r}")
    bad = re.search(r"(?<![0-9])0+(?![0-9])", factory)
    if bad:
        raise ValueError(f"factory {factory!r}: a size of 0 at position {bad.start()} is not "
                         "valid (FAISS would crash on it)")
    for m in re.finditer(r"HNSW(\d+)", factory):
        if int(m.group(1)) < 2:
            raise ValueError(f"factory {factory!r}: HNSW needs at least 2 links per node "
                             f"(M >= 2); got {m.group(0)} (FAISS would crash on it)")
    for m in re.finditer(r"NSG(\d+)", factory):
        if int(m.group(1)) < _MIN_NSG_R:
            raise ValueError(f"factory {factory!r}: NSG needs a graph degree of at least "
                             f"{_MIN_NSG_R}; got {m.group(0)} (FAISS's build does not finish)")
    for m in re.finditer(r"PQ\d+x(\d+)", factory):
        if int(m.group(1)) > 16:
            raise ValueError(f"factory {factory!r}: PQ codes of more than 16 bits are not "
                             f"supported; got {m.group(0)}")
    for m in re.finditer(r"IVF(\d+)", factory):
        nlist = int(m.group(1))
        need = nlist * (48 + 4 * (dim or 1))  # empty lists + centroids
        if nlist > _MAX_NLIST or need > _physical_memory():
            raise ValueError(f"factory {factory!r}: {m.group(0)} needs about {need / 2**30:.1f}"
                             f" GiB for its lists and centroids, more than this machine has")
    return factory


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """Per-search knobs. None means the index's default.

    Parameters
    ----------
    nprobe : int, optional
        IVF cells visited per query; recall and cost grow with it. Above nlist,
        every cell is visited (as FAISS does). Default: :func:`default_nprobe`
        (√nlist), not FAISS's 1.
    ef_search : int, optional
        HNSW search beam width (>= k is sensible); recall and cost grow with it.
        Default: :data:`DEFAULT_EF_SEARCH` (64), not FAISS's 16.
    """

    nprobe: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, check_int(v, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_EF_SEARCH = 64


def default_nprobe(nlist: int) -> int:
    """The nprobe an IVF index searches with when none is given: round(√nlist).

    FAISS's own default, 1, visits a single list: on real embeddings (Fashion-MNIST
    through EfficientNet-Lite0, IVF256) it cost 10 points of kNN top-1. √nlist
    visits ~3% of the vectors at nlist = 1024 (see the README for measured recall).
    """
    return max(1, min(int(nlist), round(math.sqrt(int(nlist)))))


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


# --------------------------------------------------------------------------- devices


def _has_gpu_faiss() -> bool:
    return hasattr(faiss, "StandardGpuResources")


def _parse_device(device: str) -> tuple[str, list[int]]:
    """("cpu", []) or ("cuda", [gpu ids])."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu', 'cuda', 'cuda:1', 'cuda:all'; "
                        f"got {device!r}")
    if device == "cpu":
        return "cpu", []
    if device != "cuda" and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'cuda:all'; got {device!r}")
    if not _has_gpu_faiss():
        raise RuntimeError(
            f"device={device!r} needs a faiss build with GPU support, but the installed faiss "
            f"{faiss.__version__} is CPU-only. Install faiss-gpu-cu12 instead of faiss-cpu: "
            "pip uninstall faiss-cpu && pip install 'faissclass[gpu]'"
        )
    n = faiss.get_num_gpus()
    if n < 1:
        raise RuntimeError(f"device={device!r}: faiss has GPU support but sees no GPU "
                           "(check CUDA_VISIBLE_DEVICES and the driver)")
    if device == "cuda":
        return "cuda", [0]
    tail = device.split(":", 1)[1]
    if tail == "all":
        return "cuda", list(range(n))
    if not tail.isdigit() or int(tail) >= n:
        raise ValueError(f"device={device!r}: faiss sees {n} GPU(s), ids 0..{n - 1}")
    return "cuda", [int(tail)]


# --------------------------------------------------------------------------- the index


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
    CPU fallback. Not thread-safe: search parameters are set on the index.
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
        self.device = device
        self._kind, self._gpus = _parse_device(device)
        factory = check_factory(spec.factory_string(self.dim), self.dim)
        try:
            cpu = faiss.index_factory(self.dim, factory, _METRICS[spec.metric])
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot build {factory!r} for dim {self.dim}: "
                             f"{faiss_reason(exc)}") from exc
        hnsw = _hnsw_of(cpu)
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
        self._id_mode = _id_mode(cpu)
        self._native_ids = self._id_mode != "positions"
        ivf = faiss.try_extract_index_ivf(cpu)
        self._nlist: int | None = None if ivf is None else int(ivf.nlist)
        hnsw = _hnsw_of(cpu)
        # The defaults every search starts from, so one search's parameters never leak
        # into the next. Not FAISS's own (nprobe 1, efSearch 16): see default_nprobe.
        self._base_params = SearchParams(
            nprobe=None if ivf is None else default_nprobe(int(ivf.nlist)),
            ef_search=None if hnsw is None else DEFAULT_EF_SEARCH)
        if self._kind == "cpu":
            self._index = cpu
            return
        if _hnsw_of(cpu) is not None:
            raise ValueError("HNSW has no GPU implementation in FAISS; use device='cpu' for "
                             "HNSW, or an IVF kind on the GPU")
        self._index = self._to_gpu(cpu)

    def _check_params(self, params: SearchParams) -> None:
        if params.nprobe is not None and self._nlist is None:
            raise ValueError(f"nprobe applies to IVF indexes; this one is "
                             f"{self.spec.factory_string(self.dim)}")
        if params.ef_search is not None and self._base_params.ef_search is None:
            raise ValueError(f"ef_search applies to HNSW indexes; this one is "
                             f"{self.spec.factory_string(self.dim)}")

    def _to_gpu(self, cpu: Any) -> Any:
        if len(self._gpus) == 1:
            self._res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.useFloat16 = self.fp16
            try:
                return faiss.index_cpu_to_gpu(self._res, self._gpus[0], cpu, co)
            except RuntimeError as exc:
                raise ValueError(f"this index cannot go to the GPU: {faiss_reason(exc)}") from exc
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = self.fp16
        co.shard = self.shard
        try:
            return faiss.index_cpu_to_all_gpus(cpu, co=co, ngpu=len(self._gpus))
        except RuntimeError as exc:
            raise ValueError(f"this index cannot go to the GPUs: {faiss_reason(exc)}") from exc

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
        return self._index if self._kind == "cpu" else faiss.index_gpu_to_cpu(self._index)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the index as FAISS serialises it (vectors, codes, lists, graph) plus
        the id map; on a GPU, of its CPU copy."""
        n = [0]

        def count(b: bytes) -> int:
            n[0] += len(b)
            return len(b)

        faiss.write_index(self.cpu_index(), faiss.PyCallbackIOWriter(count))
        return n[0] + sum(a.nbytes for a in self._pos_ids)

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
        for what, centroids, params in _clusterings(self._index):
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
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            if self._native_ids:
                self._index.add_with_ids(x[a:b], idv[a:b])
            else:
                self._index.add(x[a:b])
        self._record_ids(idv, s)
        return self

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

    def _reservable_ivf(self) -> Any:
        """The index as a plain, empty CPU IndexIVF with array lists, else None."""
        if self._kind != "cpu" or self.ntotal:
            return None
        idx = faiss.downcast_index(self._index)
        if not isinstance(idx, faiss.IndexIVF):
            return None
        lists = faiss.downcast_InvertedLists(idx.invlists)
        return idx if isinstance(lists, faiss.ArrayInvertedLists) else None

    def _build_ivf_reserved(self, ivf: Any, store: EmbeddingStore, batch_size: int,
                            bar: Any) -> None:
        """Add a store to an empty IVF index with every inverted list sized exactly.

        Pass 1 assigns every vector to its list (8 bytes a vector kept); each list
        then gets exactly its capacity (``resize`` up then down keeps it), and pass 2
        adds with the assignments already known. Adding batch by batch instead grows
        each list's std::vector geometrically: ~28% more memory than the index needs
        (measured: 1.96 GB resident for a 1.47 GB IVF-Flat).
        """
        assign = np.empty(len(store), np.int64)
        a = 0
        for batch in store.iter_batches(batch_size):
            x = self._vectors(batch.embeddings, "vectors")
            assign[a:a + len(x)] = ivf.quantizer.assign(x, 1).ravel()
            a += len(x)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        for lst, count in enumerate(np.bincount(assign, minlength=ivf.nlist).tolist()):
            lists.resize(lst, count)
            lists.resize(lst, 0)
        a = 0
        batches = store.iter_batches(batch_size)
        while (batch := next(batches, None)) is not None:
            x, idv, s = self._prepare_add(batch.embeddings, batch.ids)
            n = len(idv)
            coarse = np.ascontiguousarray(assign[a:a + n])
            ivf.add_core(n, faiss.swig_ptr(x), faiss.swig_ptr(idv), faiss.swig_ptr(coarse))
            self._record_ids(idv, s)
            a += n
            bar.update(n)
            del batch, x

    @classmethod
    def build(cls, store: EmbeddingStore, spec: IndexSpec | None = None, *,
              device: str = "cpu", train_size: int | None = None, seed: int = 0,
              batch_size: int = 65_536, progress: bool = True,
              params: SearchParams | None = None, fp16: bool = False) -> VectorIndex:
        """Build an index from a store: train on a seeded sample drawn across all
        shards, then add shard by shard with the store's ids.

        Memory: the training sample, then one batch plus the index. Plain CPU IVF
        indexes are filled in two passes (assign, then add) so that every inverted
        list is allocated at its exact size.

        Parameters
        ----------
        train_size : int, optional
            Training vectors; default min(n, 64 · nlist) for IVF (FAISS asks for
            39–256 per cell; 64 keeps the sample small next to the index), none
            for flat/HNSW.
        seed : int
            Seed of the training sample (see :func:`training_rows`).
        """
        index = cls(store.dim, spec, device=device, params=params, fp16=fp16)
        if not index.is_trained:
            n_train = train_size if train_size is not None else min(
                len(store), 64 * (index._nlist or 1))
            rows = training_rows(len(store), n_train, seed)
            index.train(store.take(rows).embeddings)
        with tqdm(total=len(store), unit="vec", unit_scale=True, disable=not progress,
                  desc=f"adding to {index.spec.factory_string(index.dim)}") as bar:
            ivf = index._reservable_ivf()
            if ivf is not None:
                index._build_ivf_reserved(ivf, store, batch_size, bar)
                return index
            batches = store.iter_batches(batch_size)
            while (batch := next(batches, None)) is not None:
                index.add(batch.embeddings, batch.ids, batch_size=batch_size)
                bar.update(len(batch.ids))
                del batch  # not alive while the next batch is read: one batch at a time
        return index

    # ------------------------------------------------------------------ searching

    def _apply(self, params: SearchParams) -> None:
        self._check_params(params)
        ps = faiss.ParameterSpace() if self._kind == "cpu" else faiss.GpuParameterSpace()
        base = self._base_params
        if base.nprobe is not None:
            ps.set_index_parameter(self._index, "nprobe",
                                   int(params.nprobe if params.nprobe is not None
                                       else base.nprobe))
        if base.ef_search is not None:
            ps.set_index_parameter(self._index, "efSearch",
                                   int(params.ef_search if params.ef_search is not None
                                       else base.ef_search))

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
        p = self.params if params is None else params
        merged = SearchParams(
            nprobe=p.nprobe if p.nprobe is not None else self.params.nprobe,
            ef_search=p.ef_search if p.ef_search is not None else self.params.ef_search)
        self._apply(merged)
        nq = q.shape[0]
        dist = np.empty((nq, int(k)), np.float32)
        labels = np.empty((nq, int(k)), np.int64)
        with tqdm(total=nq, unit="query", unit_scale=True, disable=not progress,
                  desc="searching") as bar:
            for a in range(0, nq, max(1, int(batch_size))):
                b = min(a + max(1, int(batch_size)), nq)
                dist[a:b], labels[a:b] = self._index.search(q[a:b], int(k))
                bar.update(b - a)
        if not self._native_ids:  # labels are positions: map them to ids, keep -1
            pos = self._positions()
            valid = labels >= 0
            labels = np.where(valid, pos[np.where(valid, labels, 0)] if pos.size else -1, -1)
        return SearchResult(dist, labels.astype(np.int64, copy=False))

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
        if _hnsw_of(self._index) is not None:
            raise NotImplementedError("FAISS HNSW indexes do not support removal; rebuild the "
                                      "index without these ids (or use a flat or IVF index)")
        if self._kind != "cpu":
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
        self.fp16, self.shard, self.device = bool(fp16), bool(shard), device
        self._kind, self._gpus = _parse_device(device)
        self._init_from_cpu(cpu)
        if self._native_ids != meta["native_ids"]:
            raise IndexFileError(f"{path / 'index.json'}: says native_ids="
                                 f"{meta['native_ids']}, the index says otherwise")
        try:
            self._check_params(self.params)
        except ValueError as exc:
            raise IndexFileError(f"{path / 'index.json'}: saved search params: {exc}") from None
        if self._native_ids:
            ids, where = _native_ids_of(cpu), path / "index.faiss"
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
    """The FAISS index read from ``where`` is what index.json describes."""
    problems = []
    if cpu.d != meta["dim"]:
        problems.append(f"dim {cpu.d} (index.json: {meta['dim']})")
    if cpu.ntotal != meta["ntotal"]:
        problems.append(f"{cpu.ntotal} vectors (index.json: {meta['ntotal']})")
    if cpu.metric_type != _METRICS[spec.metric]:
        problems.append(f"metric type {cpu.metric_type} (index.json: {spec.metric!r})")
    if not cpu.is_trained:
        problems.append("an untrained index")
    ivf = faiss.try_extract_index_ivf(cpu)
    if spec.kind == "flat" and not isinstance(faiss.downcast_index(cpu), faiss.IndexFlat):
        problems.append(f"a {type(faiss.downcast_index(cpu)).__name__}, not a flat index")
    if spec.kind == "ivf" and (ivf is None or int(ivf.nlist) != spec.nlist):
        problems.append("not the IVF index of the spec" if ivf is None else
                        f"nlist {ivf.nlist} (spec: {spec.nlist})")
    if spec.kind == "hnsw" and _hnsw_of(cpu) is None:
        problems.append("no HNSW graph")
    if problems:
        raise IndexFileError(f"{where}: holds " + "; ".join(problems))


def _ivf_ids(cpu: Any) -> np.ndarray:
    """All ids stored in the inverted lists of an IVF index."""
    ivf = faiss.extract_index_ivf(cpu)
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _clusterings(index: Any) -> list[tuple[str, int, Any]]:
    """(what, centroids, ClusteringParameters) of the k-means FAISS runs when training
    ``index``: the IVF coarse quantiser and the PQ codebooks (one per sub-quantiser,
    hence FAISS's repeated warnings)."""
    out: list[tuple[str, int, Any]] = []
    with contextlib.suppress(Exception):  # a GPU index or an exotic type: nothing found
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            out.append((f"IVF{ivf.nlist}", int(ivf.nlist), ivf.cp))
            ivf = faiss.downcast_index(ivf)
            pq = getattr(ivf, "pq", None)
        else:
            pq = getattr(faiss.downcast_index(index), "pq", None)
        if pq is not None and hasattr(pq, "cp"):
            out.append((f"PQ{pq.M}x{pq.nbits} codebooks", 2 ** int(pq.nbits), pq.cp))
    return out


def _hnsw_of(index: Any) -> Any:
    """The HNSW structure inside ``index`` (through wrappers), or None."""
    idx = index
    for _ in range(4):
        idx = faiss.downcast_index(idx)
        if hasattr(idx, "hnsw"):
            return idx.hnsw
        inner = getattr(idx, "index", None)
        if inner is None:
            return None
        idx = inner
    return None


def faiss_reason(exc: BaseException) -> str:
    """FAISS's own reason from a C++ exception, whole.

    FAISS messages read "Error in <C++ signature> at <file>:<line>: <reason>";
    the signature is dropped (it holds colons of its own, e.g. ``faiss::PCAMatrix::
    prepare_Ab()``) and everything after the source location is kept.
    """
    text = str(exc).strip()
    m = re.search(r" at \S+?:\d+: (.*)", text, re.DOTALL)
    if m and m.group(1).strip():
        return m.group(1).strip()
    return text or repr(exc)


def _id_mode(cpu: Any) -> str:
    """Where an index keeps ids: "idmap" (IndexIDMap/2), "ivf" (inverted lists), or
    "positions" (none: faissclass keeps position -> id, e.g. Flat, HNSW, Refine)."""
    idx = faiss.downcast_index(cpu)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return "idmap"
    if isinstance(idx, faiss.IndexIVF):
        return "ivf"
    if isinstance(idx, faiss.IndexPreTransform):
        return _id_mode(idx.index)
    return "positions"


def _native_ids_of(cpu: Any) -> np.ndarray:
    """Every id an index with ids of its own holds (IDMap or IVF lists)."""
    idx = faiss.downcast_index(cpu)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(idx.id_map).astype(np.int64)
    return _ivf_ids(idx)


# --------------------------------------------------------------------------- reference & tools


def kmeans(x: Any, k: int, *, seed: int = 0, niter: int = 20, spherical: bool = True
           ) -> np.ndarray:
    """Seeded FAISS k-means: centroids (min(k, n), dim) float32, L2-normalised if spherical.

    With n <= k every point is its own centroid. Small n is accepted knowingly
    (FAISS's 39-points-per-centroid warning is switched off).
    """
    arr = check_embeddings(x, dim=None, name="k-means input", dtype=np.dtype(np.float32))
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


def training_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted global row numbers of a seeded sample of ``size`` of ``n`` rows (all if
    size >= n): the sample ``VectorIndex.build`` trains on."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def exact_search(database: Any, queries: Any, k: int, metric: Metric = "ip", *,
                 block: int | None = None) -> SearchResult:
    """Exact k-NN by plain numpy (blocked matmul + partial sort), the reference for
    recall. Independent of faiss.

    Parameters
    ----------
    database : array_like, shape (n, d)
    queries : array_like, shape (nq, d)
    k : int
        Clipped to n; the result has min(k, n) columns.
    metric : {"ip", "l2"}
        Inner product (larger first) or squared L2 (smaller first).
    """
    X = check_finite_embeddings(database, dim=None, name="database")
    Q = check_finite_embeddings(queries, dim=X.shape[1], name="queries")
    if metric not in _METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2'; got {metric!r}")
    k = check_int(k, "k")
    if block is not None:
        block = check_int(block, "block")
    kk = min(int(k), X.shape[0])
    if block is None:  # queries per block: keep the (block, n) score matrix near 256 MB
        block = max(1, min(4096, 2**26 // max(1, X.shape[0])))
    dist = np.empty((Q.shape[0], kk), np.float32)
    ids = np.empty((Q.shape[0], kk), np.int64)
    xnorm = (X * X).sum(1) if metric == "l2" else None
    for a in range(0, Q.shape[0], block):
        q = Q[a:a + block]
        s = q @ X.T
        if metric == "l2":
            s = (q * q).sum(1)[:, None] - 2 * s + xnorm[None, :]
            s = -s  # larger is better below
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < X.shape[0] else np.tile(
            np.arange(X.shape[0]), (q.shape[0], 1))
        sc = np.take_along_axis(s, part, 1)
        order = np.argsort(-sc, axis=1, kind="stable")
        ids[a:a + block] = np.take_along_axis(part, order, 1)
        best = np.take_along_axis(sc, order, 1)
        dist[a:a + block] = -best if metric == "l2" else best
    return SearchResult(dist, ids)


def recall_at_k(result: SearchResult, reference: SearchResult, k: int | None = None) -> float:
    """Mean over queries of |top-k of result ∩ top-k of reference| / k.

    With k=1 this is the share of queries whose nearest neighbour is found.
    Reference slots holding -1 (fewer than k vectors) are not counted.
    """
    R, G = np.asarray(result.ids), np.asarray(reference.ids)
    if R.shape[0] != G.shape[0]:
        raise ValueError(f"result has {R.shape[0]} queries, reference {G.shape[0]}")
    k = min(R.shape[1], G.shape[1]) if k is None else int(k)
    if k < 1 or k > G.shape[1] or k > R.shape[1]:
        raise ValueError(f"k={k} must be in 1..{min(R.shape[1], G.shape[1])}")
    R, G = R[:, :k], G[:, :k]
    hits = (R[:, :, None] == G[:, None, :]) & (G[:, None, :] >= 0)
    found = hits.any(axis=1).sum(axis=1)
    denom = (G >= 0).sum(axis=1)
    ok = denom > 0
    return float(np.mean(found[ok] / denom[ok])) if ok.any() else 1.0


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
    if n < 1_000_000:
        nlist = 2 ** max(4, round(math.log2(4 * math.sqrt(n))))
    elif n < 10_000_000:
        nlist = 65_536
    elif n < 100_000_000:
        nlist = 262_144
    else:
        nlist = 1_048_576
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

