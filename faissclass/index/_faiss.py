"""What faissclass needs to know about FAISS's index types, in one place: where an index
keeps ids, its HNSW graph and k-means trainings, per-search parameter objects, its
size in memory, and FAISS's error messages."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import faiss
import numpy as np

__all__ = [
    "clusterings",
    "faiss_reason",
    "hnsw_of",
    "id_mode",
    "index_bytes",
    "ivf_ids",
    "native_ids_of",
    "search_parameters",
]


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


def id_mode(cpu: Any) -> str:
    """Where an index keeps ids: "idmap" (IndexIDMap/2), "ivf" (inverted lists), or
    "positions" (none: faissclass keeps position -> id, e.g. Flat, HNSW, Refine)."""
    idx = faiss.downcast_index(cpu)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return "idmap"
    if isinstance(idx, faiss.IndexIVF):
        return "ivf"
    if isinstance(idx, faiss.IndexPreTransform):
        return id_mode(idx.index)
    return "positions"


def ivf_ids(ivf: Any) -> np.ndarray:
    """All ids stored in the inverted lists of an IVF index."""
    ivf = faiss.extract_index_ivf(ivf)
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def native_ids_of(cpu: Any) -> np.ndarray:
    """Every id an index with ids of its own holds (IDMap or IVF lists)."""
    idx = faiss.downcast_index(cpu)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(idx.id_map).astype(np.int64)
    return ivf_ids(idx)


def hnsw_of(index: Any) -> Any:
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


def clusterings(index: Any) -> list[tuple[str, int, Any]]:
    """(what, centroids, ClusteringParameters) of the k-means FAISS runs when training
    ``index``: the IVF coarse quantiser and the PQ codebooks (one per sub-quantiser,
    hence FAISS's repeated warnings)."""
    out: list[tuple[str, int, Any]] = []
    with contextlib.suppress(Exception):  # a GPU index or an exotic type: nothing found
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            out.append((f"IVF{ivf.nlist}", int(ivf.nlist), ivf.cp))
            pq = getattr(faiss.downcast_index(ivf), "pq", None)
        else:
            pq = getattr(faiss.downcast_index(index), "pq", None)
        if pq is not None and hasattr(pq, "cp"):
            out.append((f"PQ{pq.M}x{pq.nbits} codebooks", 2 ** int(pq.nbits), pq.cp))
    return out


def search_parameters(index: Any, nprobe: int | None, ef_search: int | None,
                      keep: list[Any]) -> Any:
    """A FAISS SearchParameters object carrying ``nprobe`` / ``ef_search`` down to the
    right sub-index of a CPU index, or None where the index needs none.

    Passed to ``search(..., params=)``, the knobs apply to that call only, so
    concurrent searches on one index with different knobs are safe. Raises
    TypeError for structures FAISS has no parameter objects for (the caller then
    sets the knobs on the index instead). ``keep`` receives every object created
    (SWIG does not keep nested parameter objects alive).
    """
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexPreTransform):
        inner = search_parameters(idx.index, nprobe, ef_search, keep)
        if inner is None:
            return None
        p = faiss.SearchParametersPreTransform()
        p.index_params = inner
    elif isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return search_parameters(idx.index, nprobe, ef_search, keep)
    elif isinstance(idx, faiss.IndexRefine):
        inner = search_parameters(idx.base_index, nprobe, ef_search, keep)
        p = faiss.IndexRefineSearchParameters()
        if inner is not None:
            p.base_index_params = inner
        p.k_factor = float(idx.k_factor)
    elif isinstance(idx, faiss.IndexIVF):
        p = faiss.SearchParametersIVF()
        if nprobe is not None:
            p.nprobe = int(nprobe)
    elif isinstance(idx, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        if ef_search is not None:
            p.efSearch = int(ef_search)
    elif isinstance(idx, faiss.IndexFlatCodes):
        return None  # flat, SQ, PQ, LSH: no search knobs
    else:
        raise TypeError(f"no FAISS search-parameter object for {type(idx).__name__}")
    keep.append(p)
    return p


def index_bytes(index: Any) -> int | None:
    """Bytes an index's contents take in memory (vectors or codes, ids, lists, graph,
    trained tables), from its own sizes: cheap, whatever its size. None for a
    structure this function does not know (the caller may serialise it instead).

    Within a few hundred bytes of FAISS's serialised size for every kind the tests
    build (headers aside); ids of inverted lists count 8 bytes each.
    """
    idx = faiss.downcast_index(index)
    n = int(idx.ntotal)
    if isinstance(idx, faiss.IndexPreTransform):
        inner = index_bytes(idx.index)
        if inner is None:
            return None
        extra = 0
        for i in range(idx.chain.size()):
            vt = faiss.downcast_VectorTransform(idx.chain.at(i))
            for attr in ("A", "b", "mean", "eigenvalues", "PCAMat"):
                v = getattr(vt, attr, None)
                if v is not None and hasattr(v, "size"):
                    extra += int(v.size()) * 4
        return inner + extra
    if isinstance(idx, faiss.IndexIDMap2):
        inner = index_bytes(idx.index)
        return None if inner is None else inner + 8 * int(idx.id_map.size())
    if isinstance(idx, faiss.IndexIDMap):
        inner = index_bytes(idx.index)
        return None if inner is None else inner + 8 * int(idx.id_map.size())
    if isinstance(idx, faiss.IndexRefine):
        a, b = index_bytes(idx.base_index), index_bytes(idx.refine_index)
        return None if a is None or b is None else a + b
    if isinstance(idx, faiss.IndexIVF):
        q = index_bytes(idx.quantizer)
        if q is None:
            return None
        return q + n * (int(idx.code_size) + 8) + _codebook_bytes(idx)
    if isinstance(idx, faiss.IndexHNSW):
        storage = index_bytes(idx.storage)
        h = idx.hnsw
        if storage is None:
            return None
        return (storage + 4 * int(h.neighbors.size()) + 4 * int(h.levels.size())
                + 8 * int(h.offsets.size()))
    if isinstance(idx, faiss.IndexFlatCodes):
        return n * int(idx.code_size) + _codebook_bytes(idx)
    return None


def _codebook_bytes(idx: Any) -> int:
    """Trained tables of a quantiser: PQ centroids, SQ ranges."""
    total = 0
    pq = getattr(idx, "pq", None)
    if pq is not None and hasattr(pq, "centroids"):
        total += int(pq.centroids.size()) * 4
    sq = getattr(idx, "sq", None)
    if sq is not None and hasattr(sq, "trained"):
        total += int(sq.trained.size()) * 4
    return total
