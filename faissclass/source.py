"""Where vectors come from: the VectorSource protocol (a store, arrays, anything) and Batch.

An index is built from any :class:`VectorSource`: :class:`EmbeddingStore`
implements it, :class:`ArraySource` wraps arrays in memory, and a user's own
reader only needs ``dim``, ``len``, ``iter_batches`` and ``take``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ._validation import check_embeddings, check_id_vector, check_int, check_int_vector

__all__ = ["ArraySource", "Batch", "SliceSource", "VectorSource"]


class Batch(NamedTuple):
    """Rows read from a source.

    Attributes
    ----------
    embeddings : numpy.ndarray, shape (n, dim), float32 unless another dtype was asked for
    labels : numpy.ndarray, shape (n,), int64 (-1 = unlabelled)
    ids : numpy.ndarray, shape (n,), int64
    paths : list of str or None
        Source paths, when the source has them.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    paths: list[str] | None = None


@runtime_checkable
class VectorSource(Protocol):
    """What :func:`faissclass.index.build` reads vectors from."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def iter_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1
                     ) -> Iterator[Batch]: ...

    def take(self, rows: Any) -> Batch: ...


class ArraySource:
    """Arrays in memory as a :class:`VectorSource`.

    Parameters
    ----------
    embeddings : array_like, shape (n, dim), float
    labels : array_like, shape (n,), int, optional (default: -1, unlabelled)
    ids : array_like, shape (n,), int, optional (default: 0..n-1; never -1)
    """

    def __init__(self, embeddings: Any, labels: Any = None, ids: Any = None) -> None:
        self.embeddings = check_embeddings(embeddings, dim=None, name="embeddings",
                                           dtype=np.dtype(np.float32))
        n = self.embeddings.shape[0]
        self.labels = (np.full(n, -1, np.int64) if labels is None
                       else check_int_vector(labels, n=n, name="labels"))
        self.ids = (np.arange(n, dtype=np.int64) if ids is None
                    else check_id_vector(ids, n=n, name="ids"))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def iter_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1
                     ) -> Iterator[Batch]:
        batch_size = check_int(batch_size, "batch_size")
        world_size = check_int(world_size, "world_size")
        rank = check_int(rank, "rank", min_value=0, max_value=world_size - 1)
        n = len(self)
        start, stop = n * rank // world_size, n * (rank + 1) // world_size
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            yield Batch(self.embeddings[a:b], self.labels[a:b], self.ids[a:b])

    def take(self, rows: Any) -> Batch:
        r = check_int_vector(np.asarray(rows).reshape(-1), n=np.asarray(rows).size,
                             name="rows")
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}); got {int(r.min())}.."
                             f"{int(r.max())}")
        return Batch(self.embeddings[r], self.labels[r], self.ids[r])


class SliceSource:
    """Rows [start, stop) of another source, as a source (a rank's contiguous share)."""

    def __init__(self, source: VectorSource, start: int, stop: int) -> None:
        n = len(source)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"slice [{start}, {stop}) is not within the source's {n} rows")
        self.source, self.start, self.stop = source, int(start), int(stop)

    @property
    def dim(self) -> int:
        return int(self.source.dim)

    def __len__(self) -> int:
        return self.stop - self.start

    def iter_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1
                     ) -> Iterator[Batch]:
        batch_size = check_int(batch_size, "batch_size")
        world_size = check_int(world_size, "world_size")
        rank = check_int(rank, "rank", min_value=0, max_value=world_size - 1)
        n = len(self)
        a0 = self.start + n * rank // world_size
        b0 = self.start + n * (rank + 1) // world_size
        for a in range(a0, b0, batch_size):
            yield self.source.take(np.arange(a, min(a + batch_size, b0)))

    def take(self, rows: Any) -> Batch:
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)})")
        return self.source.take(r + self.start)
