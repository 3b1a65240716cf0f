"""EmbeddingStore: bounded-memory reads of a store; merge_stores for per-rank parts.

Reads are checked: on its first read through a store object, each shard's
bytes are hashed and compared with the manifest before libhdf5 parses them
(``verify_reads=True``, the default), so a damaged or swapped shard is an error
naming the file, never silently different data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from .._validation import StoreError, check_int, check_int_vector
from ..source import Batch
from ._manifest import (
    COPY_ROWS,
    DTYPES,
    MANIFEST_NAME,
    ShardInfo,
    atomic_write_json,
    check_shard_files,
    file_digest,
    fmt_hash,
    h5_errors,
    hasher,
    now,
    open_h5,
    paths_bytes,
    read_manifest,
    shard_datasets,
)

__all__ = ["Batch", "EmbeddingStore", "merge_stores"]

_READ_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- reader


class EmbeddingStore:
    """Read-only view of a store written by :class:`ShardWriter`.

    Opening reads and checks the manifest (every field, before any allocation
    it sizes) and checks that every shard is a regular file inside the store
    directory with the recorded size; data is read lazily.

    Parameters
    ----------
    root : str or Path
        Store directory.
    verify_reads : bool
        Hash each shard's bytes on its first read through this object and compare
        with the manifest before using them (XXH3, ~30 GB/s; the cost is one
        extra sequential read of each shard, usually from the page cache, once
        per object: see the README for measured figures). Off, a damaged shard
        may be read as wrong numbers; structural damage is still an error.

    Raises
    ------
    StoreError
        Not a store, a malformed manifest, or a shard that is missing, truncated,
        outside the store or not a regular file (the message names the file).
    """

    def __init__(self, root: str | os.PathLike[str], *, verify_reads: bool = True) -> None:
        self.root = Path(root)
        self.verify_reads = bool(verify_reads)
        self._manifest, self._shards = read_manifest(self.root)
        self._paths = check_shard_files(self.root, self._shards)
        self._offsets = np.concatenate([[0], np.cumsum([s.rows for s in self._shards])]).astype(
            np.int64)
        self._np_dtype = np.dtype(DTYPES[self._manifest["dtype"]])
        self._verified: set[int] = set()
        self._checking: dict[int, Future[None]] = {}  # verifications running ahead

    # ------------------------------------------------------------------ description

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def dtype(self) -> str:
        """On-disk embedding dtype, "float16" or "float32"."""
        return str(self._manifest["dtype"])

    @property
    def classes(self) -> list[Any] | None:
        c = self._manifest.get("classes")
        return None if c is None else list(c)

    @property
    def normalized(self) -> bool:
        return bool(self._manifest.get("normalized"))

    @property
    def has_paths(self) -> bool:
        return bool(self._manifest.get("has_paths"))

    @property
    def metadata(self) -> dict[str, Any]:
        """The caller's metadata (a copy)."""
        return json.loads(json.dumps(self._manifest.get("metadata", {})))

    @property
    def info(self) -> dict[str, Any]:
        """Run records set by the writer (e.g. ``unreadable`` inputs), a copy."""
        return json.loads(json.dumps(self._manifest.get("info", {})))

    @property
    def provenance(self) -> dict[str, Any]:
        """Creation/update times and library versions (a copy)."""
        return json.loads(json.dumps(self._manifest.get("provenance", {})))

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self._shards

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.root)!r}, rows={len(self)}, dim={self.dim}, "
                f"dtype={self.dtype!r}, shards={len(self._shards)})")

    # ------------------------------------------------------------------ reading

    def _open_shard(self, i: int, prefetch: int | None = None,
                    pool: ThreadPoolExecutor | None = None) -> h5py.File:
        """Shard ``i`` opened for reading; verified first when ``verify_reads``.

        With ``pool``, shard ``prefetch`` is verified on the pool's thread while
        the caller reads shard ``i`` (a sequential read then pays for the check of
        its first shard only).
        """
        if self.verify_reads:
            self._ensure_verified(i)
            if (pool is not None and prefetch is not None and prefetch < len(self._shards)
                    and prefetch not in self._verified and prefetch not in self._checking):
                self._checking[prefetch] = pool.submit(self._check_bytes, prefetch)
        return open_h5(self._paths[i])

    def _ensure_verified(self, i: int) -> None:
        if i in self._verified:
            return
        fut = self._checking.pop(i, None)
        if fut is not None:
            fut.result()  # re-raises the StoreError of a damaged shard
        else:
            self._check_bytes(i)
        self._verified.add(i)

    def _check_bytes(self, i: int) -> None:
        info, path = self._shards[i], self._paths[i]
        if info.file_checksum is None:  # stores written before file checksums
            self._verify_datasets(i)
            return
        try:
            got = file_digest(path)
        except OSError as exc:
            raise StoreError(f"{path}: read failed ({exc.strerror})") from exc
        if got != info.file_checksum:
            raise StoreError(f"{path}: the file's checksum is {got}, the manifest recorded "
                             f"{info.file_checksum} (the shard is damaged or was replaced)")

    def _datasets(self, f: h5py.File, i: int) -> dict[str, h5py.Dataset]:
        return shard_datasets(f, self._paths[i], self._shards[i], self.dim, self._np_dtype,
                              self.has_paths)

    def row_range(self, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
        """Global rows [start, stop) that ``rank`` of ``world_size`` reads: contiguous,
        disjoint, covering every row once, sizes differing by at most one."""
        world_size = check_int(world_size, "world_size")
        rank = check_int(rank, "rank", min_value=None)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        n = len(self)
        return n * rank // world_size, n * (rank + 1) // world_size

    def _out_dtype(self, dtype: Any) -> np.dtype:
        if dtype is None:
            return self._np_dtype
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must be a float dtype or None; got {dtype!r}") from exc
        if dt not in _READ_DTYPES:
            raise TypeError(f"dtype must be float16, float32, float64 or None (the on-disk "
                            f"dtype); got {dt}")
        return dt

    def iter_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     dtype: Any = np.float32, progress: bool = False) -> Iterator[Batch]:
        """Yield consecutive batches across shard boundaries.

        Memory is bounded by one batch (plus one batch-sized read buffer when
        the on-disk dtype differs from ``dtype``), not by the store.

        Parameters
        ----------
        batch_size : int
            Rows per batch; the last batch may be smaller.
        rank, world_size : int
            Read only this rank's contiguous slice (see :meth:`row_range`).
        dtype : {float16, float32, float64} or None
            Embedding dtype of the batches; None keeps the on-disk dtype.
        progress : bool
            Show a tqdm bar over rows.

        Yields
        ------
        Batch
            ``embeddings`` (b, dim), ``labels`` (b,) int64, ``ids`` (b,) int64, ``paths``.
        """
        batch_size = check_int(batch_size, "batch_size")
        start, stop = self.row_range(rank, world_size)
        out_dtype = self._out_dtype(dtype)
        with tqdm(total=stop - start, unit="row", unit_scale=True, disable=not progress,
                  desc=f"reading {self.root.name}") as bar, _ShardCursor(self) as cur:
            for a in range(start, stop, batch_size):
                b = min(a + batch_size, stop)
                yield cur.read(a, b, out_dtype)
                bar.update(b - a)

    def load(self, *, dtype: Any = np.float32, progress: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row in memory.

        Returns
        -------
        X : numpy.ndarray, shape (n, dim), ``dtype`` (float32 by default; None = on-disk)
        y : numpy.ndarray, shape (n,), int64
        ids : numpy.ndarray, shape (n,), int64
        """
        n = len(self)
        out_dtype = self._out_dtype(dtype)
        with _ShardCursor(self) as cur:
            batch = cur.read(0, n, out_dtype, with_paths=False, progress=progress)
        return batch.embeddings, batch.labels, batch.ids

    def take(self, rows: Any, *, dtype: Any = np.float32) -> Batch:
        """Random access by global row number, in the order given (repeats allowed).

        Parameters
        ----------
        rows : array_like of int, shape (m,)
            Row numbers in [0, len(store)).
        """
        r = np.asarray(rows)
        if r.ndim != 1:
            raise ValueError(f"rows must be 1-D; got shape {r.shape}")
        r = check_int_vector(r, n=r.shape[0], name="rows")
        n = len(self)
        if r.size and (r.min() < 0 or r.max() >= n):
            badv = int(r[(r < 0) | (r >= n)][0])
            raise IndexError(f"row {badv} is out of range for a store of {n} rows")
        out_dtype = self._out_dtype(dtype)
        uniq, inverse = np.unique(r, return_inverse=True)
        emb = np.empty((uniq.size, self.dim), dtype=out_dtype)
        lab = np.empty(uniq.size, dtype=np.int64)
        ids = np.empty(uniq.size, dtype=np.int64)
        paths: list[str] | None = [""] * uniq.size if self.has_paths else None
        shard_of = np.searchsorted(self._offsets, uniq, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = uniq[sel] - self._offsets[s]
            path = self._paths[int(s)]
            with self._open_shard(int(s)) as f, h5_errors(path, "reading rows"):
                ds = self._datasets(f, int(s))
                lo, hi = int(local[0]), int(local[-1]) + 1
                if hi - lo <= max(4 * local.size, 4096):  # dense: one slice read
                    idx = local - lo
                    def get(d: h5py.Dataset, idx: np.ndarray = idx, lo: int = lo,
                            hi: int = hi) -> np.ndarray:
                        return d[lo:hi][idx]
                else:  # sparse: h5py point selection (indices must increase)
                    def get(d: h5py.Dataset, local: np.ndarray = local) -> np.ndarray:
                        return d[local]
                emb[sel] = get(ds["embeddings"])
                lab[sel] = get(ds["labels"])
                ids[sel] = get(ds["ids"])
                if paths is not None:
                    for j, p in zip(sel.tolist(), get(ds["paths"].asstr()), strict=True):
                        paths[j] = p
        if uniq.size == r.size and (r.size < 2 or bool(np.all(r[1:] > r[:-1]))):
            return Batch(emb, lab, ids, paths)  # already in order: no reordering copy
        return Batch(
            emb[inverse], lab[inverse], ids[inverse],
            None if paths is None else [paths[i] for i in inverse.tolist()],
        )

    def rows_of(self, ids: Any) -> np.ndarray:
        """The row number of each id (int64, shape like ``ids``); -1 for ids not stored."""
        q = np.asarray(ids, dtype=np.int64)
        all_ids = self.ids()
        order = np.argsort(all_ids, kind="stable")
        s = all_ids[order]
        pos = np.minimum(np.searchsorted(s, q), max(s.size - 1, 0))
        found = (s.size > 0) & (s[pos] == q) if s.size else np.zeros(q.shape, bool)
        return np.where(found, order[pos] if s.size else -1, -1).astype(np.int64)

    def labels(self) -> np.ndarray:
        """Every label, shape (n,) int64, reading only the labels (8 bytes a row)."""
        return self._column("labels")

    def ids(self) -> np.ndarray:
        """Every id, shape (n,) int64, reading only the ids (8 bytes a row)."""
        return self._column("ids")

    def _column(self, name: str) -> np.ndarray:
        out = np.empty(len(self), np.int64)
        with _ShardCursor(self) as cur:  # its pool checks shard i + 1 while i is read
            for i, info in enumerate(self._shards):
                path = self._paths[i]
                with self._open_shard(i, prefetch=i + 1, pool=cur._pool) as f, \
                        h5_errors(path, f"reading {name}"):
                    ds = self._datasets(f, i)[name]
                    ds.read_direct(out, np.s_[0:info.rows],
                                   np.s_[int(self._offsets[i]):int(self._offsets[i + 1])])
        return out

    # ------------------------------------------------------------------ integrity

    def _verify_datasets(self, i: int, bar: Any = None) -> np.ndarray:
        """Check shard ``i``'s dataset checksums; returns its ids."""
        info, path = self._shards[i], self._paths[i]
        with open_h5(path) as f, h5_errors(path, "reading the shard"):
            ds = self._datasets(f, i)
            hashes = {name: hasher() for name in ds}
            id_blocks = []  # kept from the checksum pass: ids are read once
            for a in range(0, info.rows, COPY_ROWS):
                b = min(a + COPY_ROWS, info.rows)
                for name, d in ds.items():
                    if name == "paths":
                        hashes[name].update(paths_bytes(d.asstr()[a:b].tolist()))
                    else:
                        arr = np.ascontiguousarray(d[a:b])
                        hashes[name].update(arr)
                        if name == "ids":
                            id_blocks.append(arr)
                if bar is not None:
                    bar.update(b - a)
            ids = np.concatenate(id_blocks) if id_blocks else np.empty(0, np.int64)
        for name, h in hashes.items():
            want = info.checksum.get(name)
            if want != fmt_hash(h):
                raise StoreError(
                    f"{path}: checksum of {name!r} is {fmt_hash(h)}, the manifest "
                    f"recorded {want} (the shard is damaged)"
                )
        return ids

    def verify(self, *, progress: bool = False) -> None:
        """Check every shard: the file's checksum (before libhdf5 parses it), datasets
        opening with the manifest's shapes and dtypes, their checksums, and ids unique
        across the store.

        Raises
        ------
        StoreError
            Naming the first damaged file.
        """
        all_ids = []
        with tqdm(total=len(self), unit="row", unit_scale=True, disable=not progress,
                  desc=f"verifying {self.root.name}") as bar:
            for i in range(len(self._shards)):
                if self._shards[i].file_checksum is not None:
                    self._check_bytes(i)
                all_ids.append(self._verify_datasets(i, bar))
                self._verified.add(i)
        if all_ids:
            s = np.sort(np.concatenate(all_ids))
            dup = np.flatnonzero(s[1:] == s[:-1])
            if dup.size:
                raise StoreError(f"{self.root}: id {int(s[dup[0]])} is stored more than once")


class _ShardCursor:
    """Reads global row ranges, keeping at most one shard file open."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self._i: int | None = None
        self._f: h5py.File | None = None
        self._ds: dict[str, h5py.Dataset] = {}
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="faissclass-verify")
                      if store.verify_reads and len(store.shards) > 1 else None)

    def __enter__(self) -> _ShardCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ds = {}
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            # A check left running ahead is finished; its result is kept for later.
            for j, fut in list(self.store._checking.items()):
                if fut.done() and fut.exception() is None:
                    self.store._verified.add(j)
                    del self.store._checking[j]

    def _select(self, i: int) -> dict[str, h5py.Dataset]:
        if self._i != i:
            self._ds = {}
            if self._f is not None:
                self._f.close()
                self._f = None
            self._f = self.store._open_shard(i, prefetch=i + 1, pool=self._pool)
            self._i = i
            self._ds = self.store._datasets(self._f, i)
        return self._ds

    def read(self, a: int, b: int, dtype: np.dtype, *, with_paths: bool = True,
             progress: bool = False) -> Batch:
        st = self.store
        n = b - a
        emb = np.empty((n, st.dim), dtype=dtype)
        lab = np.empty(n, dtype=np.int64)
        ids = np.empty(n, dtype=np.int64)
        paths: list[str] | None = [] if (with_paths and st.has_paths) else None
        same = dtype == st._np_dtype
        buf: np.ndarray | None = None
        offsets = st._offsets
        i = int(np.searchsorted(offsets, a, side="right") - 1)
        pos = a
        with tqdm(total=n, unit="row", unit_scale=True, disable=not progress,
                  desc=f"loading {st.root.name}") as bar:
            while pos < b:
                ds = self._select(i)
                lo = pos - int(offsets[i])
                hi = min(b, int(offsets[i + 1])) - int(offsets[i])
                # Within a shard, read in blocks so a dtype conversion needs only
                # a block-sized buffer.
                with h5_errors(st._paths[i], "reading rows"):
                    for j in range(lo, hi, COPY_ROWS):
                        k = min(j + COPY_ROWS, hi)
                        o = pos - a + (j - lo)
                        dst = np.s_[o:o + k - j]
                        src = np.s_[j:k]
                        if same:
                            ds["embeddings"].read_direct(emb, src, dst)
                        else:
                            if buf is None:
                                buf = np.empty((min(COPY_ROWS, n), st.dim), st._np_dtype)
                            ds["embeddings"].read_direct(buf, src, np.s_[0:k - j])
                            emb[dst] = buf[:k - j]
                        ds["labels"].read_direct(lab, src, dst)
                        ds["ids"].read_direct(ids, src, dst)
                        if paths is not None:
                            paths.extend(ds["paths"].asstr()[j:k].tolist())
                        bar.update(k - j)
                pos += hi - lo
                i += 1
        return Batch(emb, lab, ids, paths)


def merge_stores(root: str | os.PathLike[str], parts: Sequence[str | os.PathLike[str]], *,
                 fsync: bool = True) -> EmbeddingStore:
    """Write ``root/store.json`` listing the shards of the stores in ``parts``
    (sub-directories of ``root``, e.g. one per rank of a distributed run).

    The parts must agree on dim, dtype, classes, normalisation and metadata, and
    their ids must not overlap. Shards are not copied: the merged manifest points
    into the parts. Rewriting it after the parts grow (a resumed run) is safe.
    """
    root = Path(root)
    stores = [EmbeddingStore(p) for p in parts]
    if not stores:
        raise ValueError("merge_stores needs at least one part")
    first = stores[0]
    ref = first._manifest
    shards, info, rels = [], {}, []
    for st in stores:
        m = st._manifest
        for key in ("dim", "dtype", "classes", "normalized", "metadata"):
            if m.get(key) != ref.get(key):
                raise StoreError(f"{st.root}: {key} differs from {first.root}; cannot merge")
        try:
            rel = st.root.resolve().relative_to(root.resolve())
        except ValueError:
            raise ValueError(f"part {st.root} is not inside {root}; parts must be "
                             "sub-directories of the merged store") from None
        rels.append(str(rel))
        shards += [{**s.to_json(), "file": str(rel / s.file)} for s in st.shards]
        for k, v in m.get("info", {}).items():
            info[k] = sorted(set(info.get(k, [])) | set(v)) if isinstance(v, list) else v
    ids = np.concatenate([st.ids() for st in stores]) if shards else np.empty(0, np.int64)
    s = np.sort(ids)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        raise StoreError(f"{root}: id {int(s[dup[0]])} is in more than one part")
    has_paths = {st._manifest.get("has_paths") for st in stores if len(st)}
    if len(has_paths) > 1:
        raise StoreError(f"{root}: some parts have paths and some do not")
    manifest = {**ref, "shards": shards, "rows": int(ids.size), "info": info,
                "has_paths": has_paths.pop() if has_paths else None, "parts": rels}
    manifest["pending"] = None
    manifest["provenance"] = {**ref.get("provenance", {}), "updated": now()}
    atomic_write_json(root / MANIFEST_NAME, manifest, fsync=fsync)
    return EmbeddingStore(root)
