"""What to build and how to search it: IndexSpec, SearchParams, and the table of kinds.

No faiss here: a spec is configuration. Adding an index kind is one entry in
:data:`KINDS` (its factory string, whether FAISS can remove from it or put it on
a GPU, which search knobs it takes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._validation import check_int
from ..topk import METRICS, Metric

__all__ = [
    "DEFAULT_EF_SEARCH",
    "KINDS",
    "MIN_POINTS_PER_CENTROID",
    "IndexSpec",
    "Kind",
    "SearchParams",
    "check_factory",
    "default_nprobe",
    "default_pq_m",
]

_STORAGES = ("flat", "sq8", "pq")
# FAISS warns below 39 training points per centroid (Clustering::train).
MIN_POINTS_PER_CENTROID = 39
_MAX_NLIST = 2**28
_MAX_HNSW_M = 4096
# Below this, FAISS 1.15's NSG build never finishes (seen for R = 1..12 on 2,000 vectors).
_MIN_NSG_R = 16


@dataclass(frozen=True)
class Kind:
    """One index kind: how to build it and what it can do.

    Attributes
    ----------
    factory : callable (IndexSpec, dim) -> str
        The FAISS factory string.
    removal : bool
        FAISS can remove vectors by id.
    gpu : bool
        FAISS has a GPU implementation (asking for a GPU otherwise is an error).
    params : tuple of str
        The SearchParams fields it takes.
    """

    factory: Callable[[IndexSpec, int], str]
    removal: bool
    gpu: bool
    params: tuple[str, ...]


def _ivf_factory(spec: IndexSpec, dim: int) -> str:
    codes = {"flat": "Flat", "sq8": "SQ8"}.get(spec.storage)
    if codes is None:
        m = spec.m if spec.m is not None else default_pq_m(dim)
        if dim % m:
            raise ValueError(f"PQ m={m} must divide dim {dim}; pick m among "
                             f"{[x for x in range(1, dim + 1) if dim % x == 0 and x <= 96]}")
        # "np": no polysemous training. It only serves Hamming pre-filtering, which
        # plain IVF-PQ search never uses, and made training ~25x slower.
        codes = f"PQ{m}x{spec.nbits}np"
    return f"IVF{spec.nlist},{codes}"


KINDS: dict[str, Kind] = {
    "flat": Kind(lambda s, d: "Flat", removal=True, gpu=True, params=()),
    "ivf": Kind(_ivf_factory, removal=True, gpu=True, params=("nprobe",)),
    "hnsw": Kind(lambda s, d: f"HNSW{s.M}", removal=False, gpu=False, params=("ef_search",)),
}


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
        elif self.kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)} (or pass factory=); got "
                             f"{self.kind!r}")
        if self.metric not in METRICS:
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
        assert self.kind is not None
        return KINDS[self.kind].factory(self, dim)

    @property
    def kind_info(self) -> Kind | None:
        """The kind's entry in :data:`KINDS` (None for a factory string)."""
        return None if self.kind is None else KINDS[self.kind]

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


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


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
    precision : {"fp32", "bf16", "fp16", "auto"}, optional
        Flat inner-product indexes on CPU: "bf16"/"fp16" find candidates with a
        low-precision GEMM (torch) and re-rank them in float32, with a per-query proof
        of exactness and a float32 fallback (:mod:`faissclass.search.certified`): the
        same results as "fp32", faster only where the hardware multiplies bf16
        natively. "auto" picks "bf16" on such a CPU (AVX512-BF16 / AMX), else "fp32".
        Default: "fp32".
    """

    nprobe: int | None = None
    ef_search: int | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, check_int(v, name))
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["precision"] is None:  # unset: the dict (and index.json) of before it existed
            del d["precision"]
        return d


DEFAULT_EF_SEARCH = 64


def default_nprobe(nlist: int) -> int:
    """The nprobe an IVF index searches with when none is given: round(√nlist).

    FAISS's own default, 1, visits a single list: on all of Fashion-MNIST through
    EfficientNet-Lite0 it cost 2.6 (IVF256) to 2.9 (IVF1024) points of kNN top-1
    against flat; √nlist stayed within 0.07 points while visiting ~3% of the
    vectors at nlist = 1024 (README, "Indexes").
    """
    return max(1, min(int(nlist), round(math.sqrt(int(nlist)))))


