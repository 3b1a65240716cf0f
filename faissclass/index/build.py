"""Building an index from any VectorSource: a seeded training sample across the whole
source, then its batches in order, in bounded memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from .._validation import check_int
from ..distributed import show_progress
from ..source import VectorSource
from .spec import IndexSpec, SearchParams
from .vector_index import VectorIndex

__all__ = ["build", "training_rows"]


def training_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted global row numbers of a seeded sample of ``size`` of ``n`` rows (all if
    size >= n): the sample :func:`build` trains on."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def build(source: VectorSource, spec: IndexSpec | None = None, *, device: str = "cpu",
          train_size: int | None = None, seed: int = 0, batch_size: int = 65_536,
          progress: bool | None = None, params: SearchParams | None = None,
          fp16: bool = False, on_phase: Callable[[str, bool], None] | None = None
          ) -> VectorIndex:
    """Build an index from a source: train on a seeded sample drawn across all of it,
    then add it batch by batch with its ids.

    Memory: the training sample, then one batch plus the index. Plain CPU IVF
    indexes are filled in two passes (assign, then add) so that every inverted
    list is allocated at its exact size.

    Parameters
    ----------
    source : VectorSource
        An :class:`~faissclass.EmbeddingStore`, an :class:`~faissclass.source.ArraySource`,
        or anything with ``dim``, ``len``, ``iter_batches`` and ``take``.
    train_size : int, optional
        Training vectors; default min(n, 64 · nlist) for IVF (FAISS asks for
        39–256 per cell; 64 keeps the sample small next to the index), none
        for flat/HNSW.
    seed : int
        Seed of the training sample (see :func:`training_rows`).
    progress : bool, optional
        A progress bar; default: on a terminal, on rank 0 only.
    on_phase : callable (name, starting), optional
        Called at the start (True) and end (False) of "index_train" and "index_add",
        e.g. to time them apart.
    """
    if not isinstance(source, VectorSource):
        raise TypeError(f"source must be a VectorSource (an EmbeddingStore, an ArraySource, "
                        f"or anything with dim, len, iter_batches and take); got "
                        f"{type(source).__name__}")
    batch_size = check_int(batch_size, "batch_size")
    index = VectorIndex(source.dim, spec, device=device, params=params, fp16=fp16)
    n = len(source)

    def phase(name: str, starting: bool) -> None:
        if on_phase is not None:
            on_phase(name, starting)

    phase("index_train", True)
    if not index.is_trained:
        n_train = (check_int(train_size, "train_size") if train_size is not None
                   else min(n, 64 * (index._nlist or 1)))
        index.train(source.take(training_rows(n, n_train, seed)).embeddings)
    phase("index_train", False)
    phase("index_add", True)
    with tqdm(total=n, unit="vec", unit_scale=True, disable=not show_progress(progress),
              desc=f"adding to {index.spec.factory_string(index.dim)}") as bar:
        ivf = index._reservable_ivf()
        if ivf is not None:
            _add_ivf_reserved(index, ivf, source, batch_size, bar)
        else:
            index._reserve_codes(n)
            batches = source.iter_batches(batch_size)
            while (batch := next(batches, None)) is not None:
                index.add(batch.embeddings, batch.ids, batch_size=batch_size)
                bar.update(len(batch.ids))
                del batch  # not alive while the next batch is read: one batch at a time
    phase("index_add", False)
    return index


def _add_ivf_reserved(index: VectorIndex, ivf: Any, source: VectorSource, batch_size: int,
                      bar: Any) -> None:
    """Add a source to an empty IVF index with every inverted list sized exactly.

    Pass 1 assigns every vector to its list (8 bytes a vector kept); each list
    then gets exactly its capacity (``resize`` up then down keeps it), and pass 2
    adds with the assignments already known. Adding batch by batch instead grows
    each list's std::vector geometrically: ~28% more memory than the index needs
    (measured: 1.96 GB resident for a 1.47 GB IVF-Flat).
    """
    assign = np.empty(len(source), np.int64)
    a = 0
    for batch in source.iter_batches(batch_size):
        x = index._vectors(batch.embeddings, "vectors")
        assign[a:a + len(x)] = ivf.quantizer.assign(x, 1).ravel()
        a += len(x)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    for lst, count in enumerate(np.bincount(assign, minlength=ivf.nlist).tolist()):
        lists.resize(lst, count)
        lists.resize(lst, 0)
    a = 0
    batches = source.iter_batches(batch_size)
    while (batch := next(batches, None)) is not None:
        x, idv, s = index._prepare_add(batch.embeddings, batch.ids)
        n = len(idv)
        coarse = np.ascontiguousarray(assign[a:a + n])
        ivf.add_core(n, faiss.swig_ptr(x), faiss.swig_ptr(idv), faiss.swig_ptr(coarse))
        index._record_ids(idv, s)
        a += n
        bar.update(n)
        del batch, x
