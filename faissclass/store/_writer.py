"""ShardWriter: crash-safe, resumable appends of embeddings into a store."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from .._ids import IdSet, sorted_unique
from .._validation import (
    StoreError,
    check_embeddings,
    check_int_vector,
    check_str_sequence,
    first_nonfinite_row,
)
from ._manifest import (
    _LOCK_NAME,
    _PARTIAL,
    _SHARD_RE,
    DEFAULT_SHARD_BYTES,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ShardInfo,
    _atomic_write_json,
    _check_shard_files,
    _fmt_hash,
    _fsync_dir,
    _hashed,
    _hasher,
    _json_roundtrip,
    _library_versions,
    _now,
    _open_h5,
    _paths_bytes,
    _read_manifest,
    _shard_datasets,
    fcntl,
    log,
)

# --------------------------------------------------------------------------- id bookkeeping


# --------------------------------------------------------------------------- writer


class _Column:
    """One numeric dataset of the open shard, written a whole HDF5 chunk at a time.

    Full chunks go straight from the caller's array to the file with
    ``write_direct_chunk`` (no HDF5 conversion or cache; as fast as writing one
    contiguous array); the rows of a partial chunk wait in ``stage``. Invariant:
    rows [floor(rows / C) * C, rows) of the committed rows are in ``stage``.
    Chunked datasets shrink to the exact row count at close, without a copy.
    """

    def __init__(self, ds: h5py.Dataset, chunk_rows: int) -> None:
        self.ds = ds
        self.C = chunk_rows
        self.stage = np.empty((chunk_rows, *ds.shape[1:]), ds.dtype)
        self._tail = (0,) * (ds.ndim - 1)
        self._flushed = False  # a chunk reached the file since the last commit

    def _put(self, row: int, chunk: np.ndarray) -> None:
        self.ds.id.write_direct_chunk((row, *self._tail), np.ascontiguousarray(chunk))

    def write(self, start: int, data: np.ndarray) -> None:
        """Write ``data`` as rows start, start + 1, ... (``start`` = committed rows)."""
        C, pos, i, k = self.C, start, 0, len(data)
        while i < k:
            off = pos % C
            if off == 0 and k - i >= C:
                n = (k - i) // C * C
                for c in range(0, n, C):
                    self._put(pos + c, data[i + c:i + c + C])
                self._flushed = True
            else:
                n = min(C - off, k - i)
                self.stage[off:off + n] = data[i:i + n]
                if off + n == C:
                    self._put(pos - off, self.stage)
                    self._flushed = True
            pos += n
            i += n

    def commit(self) -> None:
        self._flushed = False

    def rollback(self, rows: int) -> None:
        """Forget uncommitted writes: restore the committed part of the partial chunk."""
        a = rows - rows % self.C
        if self._flushed and rows > a:
            self.ds.read_direct(self.stage, np.s_[a:rows], np.s_[0:rows - a])
        self._flushed = False

    def finish(self, rows: int) -> None:
        a = rows - rows % self.C
        if rows > a:
            self.stage[rows - a:] = 0  # deterministic padding in the last chunk
            self._put(a, self.stage)
        self.ds.resize(rows, axis=0)


# HDF5 chunk sizes: each direct chunk write costs a fixed overhead, so chunks are
# large (about 4 MiB of embeddings; labels and ids at least 64 Ki rows).
_CHUNK_BYTES = 4 * 2**20
_MIN_CHUNK_ROWS = 65_536


def _even_chunk(capacity: int, target: int) -> int:
    """Chunk rows near ``target`` that split ``capacity`` into equal chunks, so a
    full shard ends on a full chunk."""
    n = -(-capacity // max(1, min(target, capacity)))
    return -(-capacity // n)


class _OpenShard:
    """The shard being filled: a ``.partial`` HDF5 file, renamed when complete."""

    def __init__(self, root: Path, index: int, *, capacity: int, dim: int, dtype: np.dtype,
                 has_paths: bool) -> None:
        self.name = f"shard-{index:05d}.h5"
        self.final = root / self.name
        self.tmp = root / (self.name + _PARTIAL)
        self.capacity = capacity
        self.rows = 0
        names = ("embeddings", "labels", "ids", "paths") if has_paths else (
            "embeddings", "labels", "ids")
        self.hash = {name: _hasher() for name in names}
        c_emb = _even_chunk(capacity, max(1, _CHUNK_BYTES // (dim * dtype.itemsize)))
        c_int = _even_chunk(capacity, max(c_emb, _MIN_CHUNK_ROWS))
        self.file = h5py.File(self.tmp, "w")

        def column(name: str, row: tuple[int, ...], dt: Any, c: int) -> h5py.Dataset:
            return self.file.create_dataset(name, (capacity, *row), dtype=dt,
                                            maxshape=(None, *row), chunks=(c, *row))

        # On-disk byte order is little-endian; direct chunk writes copy bytes as-is.
        self.cols = {
            "embeddings": _Column(
                column("embeddings", (dim,), dtype.newbyteorder("<"), c_emb), c_emb),
            "labels": _Column(column("labels", (), "<i8", c_int), c_int),
            "ids": _Column(column("ids", (), "<i8", c_int), c_int),
        }
        self.paths = (column("paths", (), h5py.string_dtype("utf-8"), min(capacity, 4096))
                      if has_paths else None)

    def write(self, pool: ThreadPoolExecutor, emb: np.ndarray, labels: np.ndarray,
              ids: np.ndarray, paths: list[str] | None) -> dict[str, xxhash.xxh3_64]:
        """Write rows after the committed ones; returns the staged checksums.

        Nothing counts until :meth:`commit`; :meth:`rollback` forgets the write.
        """
        a = self.rows
        # The embeddings hash runs on the worker while h5py writes (both release
        # the GIL); the caller's buffer is not used after this returns.
        fut = pool.submit(_hashed, self.hash["embeddings"], emb)
        try:
            for name, data in (("embeddings", emb), ("labels", labels), ("ids", ids)):
                self.cols[name].write(a, data.astype(self.cols[name].ds.dtype, copy=False))
            staged = {"labels": _hashed(self.hash["labels"], labels),
                      "ids": _hashed(self.hash["ids"], ids)}
            if paths is not None:
                assert self.paths is not None
                self.paths[a:a + len(paths)] = np.array(paths, dtype=object)
                staged["paths"] = _hashed(self.hash["paths"], _paths_bytes(paths))
        finally:
            h = fut.result()
        staged["embeddings"] = h
        return staged

    def commit(self, staged: dict[str, xxhash.xxh3_64], rows: int) -> None:
        self.hash = staged
        self.rows += rows
        for col in self.cols.values():
            col.commit()

    def rollback(self) -> None:
        for col in self.cols.values():
            col.rollback(self.rows)

    def finish(self, *, fsync: bool) -> tuple[Path, int]:
        """Flush, shrink to the rows written, close, rename into place; returns (path, bytes)."""
        for col in self.cols.values():
            col.finish(self.rows)
        if self.paths is not None:
            self.paths.resize(self.rows, axis=0)
        self.file.close()
        if fsync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.tmp, self.final)
        if fsync:
            _fsync_dir(self.final.parent)
        return self.final, self.final.stat().st_size

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class ShardWriter:
    """Append embeddings to a store on disk, in any batch sizes; atomic and resumable.

    Parameters
    ----------
    root : str or Path
        Store directory. Created if absent. If it already holds a store, the
        writer resumes it: appends continue after the last complete shard.
    dim : int
        Embedding width.
    dtype : {"float16", "float32"}
        On-disk dtype of the embeddings. Input of any float dtype is cast to it.
    shard_size : int, optional
        Rows per shard; default: as many rows as fit in 64 MiB of embeddings.
    classes : sequence of str or int, optional
        Class names; labels are then indices into it (``-1`` = unlabelled).
    metadata : dict, optional
        Caller's provenance (model, transform, dataset...), JSON-serialisable.
        Stored in the manifest with library versions and creation time.
    normalized : bool
        Declares the embeddings L2-normalised; every appended row is checked
        (|norm - 1| <= 1e-2) and the flag is recorded in the manifest.
    fsync : bool
        fsync each finished shard and the manifest, so a completed shard also
        survives a power loss. Off, a killed process still loses nothing finished.

    Raises
    ------
    ValueError
        Resuming a store with another dim, dtype, class list, normalisation or
        metadata; a non-empty directory that is not a store.
    StoreError
        The existing store is damaged, or another writer holds it.

    Notes
    -----
    Default ids are global row numbers. ``stored_ids()`` / ``contains(ids)``
    tell a resumed run which items are done, so it can skip them.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        dim: int,
        dtype: str = "float16",
        shard_size: int | None = None,
        classes: Sequence[str | int] | None = None,
        metadata: dict[str, Any] | None = None,
        normalized: bool = False,
        fsync: bool = True,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be a positive int; got {dim!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}")
        self.root = Path(root)
        self.dim = int(dim)
        self.dtype = str(dtype)
        self._np_dtype = np.dtype(DTYPES[dtype])
        if shard_size is None:
            shard_size = max(1024, DEFAULT_SHARD_BYTES // (self.dim * self._np_dtype.itemsize))
        if isinstance(shard_size, bool) or not isinstance(shard_size, int | np.integer) \
                or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int; got {shard_size!r}")
        self.shard_size = int(shard_size)
        self.normalized = bool(normalized)
        self._fsync = bool(fsync)
        classes_list = None if classes is None else _check_classes(classes)
        meta = {} if metadata is None else _json_roundtrip(dict(metadata), "metadata")

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(self.root)
        self._closed = False
        self._rows_open = 0
        self._shard: _OpenShard | None = None
        self._ids = IdSet()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="faissclass-crc")
        try:
            if (self.root / MANIFEST_NAME).exists():
                self._manifest = _read_manifest(self.root)
                self._check_resume(classes_list, meta)
                self._clean_stale()
                self._load_ids()
            else:
                self._check_empty_dir()
                self._manifest = {
                    "format": FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "dim": self.dim,
                    "dtype": self.dtype,
                    "normalized": self.normalized,
                    "classes": classes_list,
                    "has_paths": None,
                    "shard_size": self.shard_size,
                    "rows": 0,
                    "metadata": meta,
                    "provenance": {"created": _now(), "updated": _now(),
                                   "versions": _library_versions()},
                    "shards": [],
                }
                self._clean_stale()
                self._write_manifest()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ resume

    def _check_resume(self, classes: list[Any] | None, meta: dict[str, Any]) -> None:
        m, path = self._manifest, self.root / MANIFEST_NAME
        diffs = []
        if m["dim"] != self.dim:
            diffs.append(f"dim {m['dim']} (asked {self.dim})")
        if m["dtype"] != self.dtype:
            diffs.append(f"dtype {m['dtype']} (asked {self.dtype})")
        if m.get("classes") != classes:
            diffs.append(f"classes {_short(m.get('classes'))} (asked {_short(classes)})")
        if bool(m.get("normalized")) != self.normalized:
            diffs.append(f"normalized={m.get('normalized')} (asked {self.normalized})")
        if meta and m.get("metadata", {}) != meta:
            keys = sorted(set(meta) ^ set(m.get("metadata", {}))
                          | {k for k in meta if m.get("metadata", {}).get(k) != meta[k]})
            diffs.append(f"metadata differing in keys {keys}")
        if diffs:
            raise ValueError(
                f"cannot resume {path}: the store has " + "; ".join(diffs)
                + ". Write to a new directory, or pass the store's own settings."
            )
        self._manifest["shard_size"] = self.shard_size

    def _clean_stale(self) -> None:
        listed = {s["file"] for s in self._manifest["shards"]}
        for p in self.root.iterdir():
            if p.name.endswith(_PARTIAL) or p.name == MANIFEST_NAME + ".tmp":
                log.info("removing %s left by an interrupted writer", p)
                p.unlink()
            elif _SHARD_RE.match(p.name) and p.name not in listed:
                # Renamed into place but the manifest update never happened:
                # unverifiable, so it is rewritten by the resumed run.
                log.warning("removing %s: complete shard missing from the manifest", p)
                p.unlink()

    def _check_empty_dir(self) -> None:
        foreign = [p.name for p in self.root.iterdir()
                   if p.name != _LOCK_NAME and not p.name.endswith((_PARTIAL, ".tmp"))
                   and not _SHARD_RE.match(p.name)]
        if foreign:
            raise ValueError(
                f"{self.root} is not empty and not a faissclass store (holds {foreign[:3]}); "
                "refusing to write into it. Pick a new or empty directory."
            )

    def _load_ids(self) -> None:
        shards = [ShardInfo.from_json(s, self.root / MANIFEST_NAME)
                  for s in self._manifest["shards"]]
        _check_shard_files(self.root, shards)
        has_paths = bool(self._manifest.get("has_paths"))
        for s in shards:
            p = self.root / s.file
            with _open_h5(p) as f:
                ds = _shard_datasets(f, p, s, self.dim, self._np_dtype, has_paths)
                ids = ds["ids"][:]
            ids.sort()
            self._ids.add_run(ids)

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        """Rows appended so far, including the shard in progress."""
        return int(self._manifest["rows"]) + self._rows_open

    @property
    def classes(self) -> list[Any] | None:
        c = self._manifest.get("classes")
        return None if c is None else list(c)

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest.get("metadata", {})))

    @property
    def info(self) -> dict[str, Any]:
        """Run records (e.g. unreadable inputs); unlike metadata, not checked on resume."""
        return json.loads(json.dumps(self._manifest.get("info", {})))

    def set_info(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` in the manifest's ``info`` (written now)."""
        if self._closed:
            raise ValueError(f"ShardWriter for {self.root} is closed")
        self._manifest.setdefault("info", {})[str(key)] = _json_roundtrip(value, "info value")
        self._write_manifest()

    def stored_ids(self) -> np.ndarray:
        """Sorted int64 ids of every row appended so far (completed or in progress)."""
        return self._ids.all()

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which of ``ids`` (int, shape (n,)) are already stored."""
        arr = np.atleast_1d(np.asarray(ids))
        return self._ids.contains(check_int_vector(arr, n=arr.shape[0], name="ids"))

    # ------------------------------------------------------------------ writing

    def append(self, embeddings: Any, labels: Any, ids: Any = None,
               paths: Sequence[str] | None = None) -> None:
        """Append rows. All checks run before anything is written: a rejected batch
        leaves the store as it was.

        Parameters
        ----------
        embeddings : array_like, shape (n, dim), floating point
        labels : array_like, shape (n,), int
            Indices into ``classes`` when the store has classes; ``-1`` = unlabelled.
        ids : array_like, shape (n,), int, optional
            Unique within the store; default: the global row numbers.
        paths : sequence of str, optional
            Source of each row. Either every append passes paths or none does.
        """
        if self._closed:
            raise ValueError(f"ShardWriter for {self.root} is closed")
        emb = check_embeddings(embeddings, dim=self.dim, dtype=self._np_dtype)
        n = emb.shape[0]
        lab = check_int_vector(labels, n=n, name="labels")
        self._check_labels(lab)
        if self.normalized and n:
            norms = np.linalg.norm(emb.astype(np.float32, copy=False), axis=1)
            off = np.flatnonzero(np.abs(norms - 1.0) > 1e-2)
            if off.size:
                raise ValueError(
                    f"embeddings row {int(off[0])} has L2 norm {norms[off[0]]:.4g} but the store "
                    "is declared normalized=True; normalise the rows first"
                )
        if ids is None:
            idv = np.arange(len(self), len(self) + n, dtype=np.int64)
        else:
            idv = check_int_vector(ids, n=n, name="ids")
        increasing = self._check_new_ids(idv)
        had_paths = self._manifest.get("has_paths")
        plist = self._check_paths(paths, n)
        if n == 0:
            return
        # The finite check runs on the worker while the first chunk is written;
        # nothing is committed before it passes, so a rejected batch leaves no trace.
        check = self._pool.submit(first_nonfinite_row, emb)
        checked = False
        try:
            off = 0
            while off < n:
                if self._shard is None:
                    self._shard = _OpenShard(
                        self.root, len(self._manifest["shards"]), capacity=self.shard_size,
                        dim=self.dim, dtype=self._np_dtype,
                        has_paths=bool(self._manifest["has_paths"]),
                    )
                take = min(n - off, self._shard.capacity - self._shard.rows)
                sl = slice(off, off + take)
                staged = self._shard.write(self._pool, emb[sl], lab[sl], idv[sl],
                                           None if plist is None else plist[sl])
                if not checked:
                    checked = True
                    bad = check.result()
                    if bad is not None:
                        raise ValueError(self._nonfinite_message(embeddings, bad))
                self._shard.commit(staged, take)
                self._ids.add_open(idv[sl] if increasing else np.sort(idv[sl]))
                self._rows_open = self._shard.rows
                off += take
                if self._shard.rows == self._shard.capacity:
                    self._finish_shard()
        except BaseException:
            if not checked:
                check.result()
            if self._shard is not None:
                self._shard.rollback()
            if len(self) == 0:
                self._manifest["has_paths"] = had_paths
            raise

    def _nonfinite_message(self, embeddings: Any, bad: int) -> str:
        src = np.asarray(embeddings)[bad]
        why = (f"overflows {self.dtype} (largest |value| {np.abs(src).max():.4g})"
               if np.all(np.isfinite(src)) else "holds NaN or inf")
        return f"embeddings row {bad} of this batch {why}; nothing was written"

    def _check_labels(self, lab: np.ndarray) -> None:
        if lab.size == 0:
            return
        lo, hi = int(lab.min()), int(lab.max())
        classes = self._manifest.get("classes")
        if lo < -1:
            raise ValueError(f"labels must be >= 0 (or -1 for unlabelled); got {lo}")
        if classes is not None and hi >= len(classes):
            raise ValueError(
                f"label {hi} is outside classes (the store has {len(classes)} classes, "
                f"labels 0..{len(classes) - 1})"
            )

    def _check_new_ids(self, idv: np.ndarray) -> bool:
        """Reject duplicates; returns whether ``idv`` is strictly increasing."""
        s, dup = sorted_unique(idv)
        if dup is not None:
            raise ValueError(f"id {dup} appears twice in this batch; ids must be "
                             "unique within a store")
        hit = self._ids.contains(idv)
        if hit.any():
            i = int(np.flatnonzero(hit)[0])
            raise ValueError(
                f"id {int(idv[i])} (row {i} of this batch) is already stored in {self.root}; "
                "use contains(ids) to skip finished rows"
            )
        return s is idv

    def _check_paths(self, paths: Sequence[str] | None, n: int) -> list[str] | None:
        has = self._manifest.get("has_paths")
        given = paths is not None
        if has is None:
            if n == 0:
                return None if paths is None else check_str_sequence(paths, n=0, name="paths")
            self._manifest["has_paths"] = given
        elif has and not given:
            raise ValueError("this store records paths: pass paths= with every append")
        elif given and not has:
            raise ValueError("this store was started without paths: omit paths= "
                             "(or write to a new store)")
        return None if paths is None else check_str_sequence(paths, n=n, name="paths")

    def _finish_shard(self) -> None:
        shard = self._shard
        assert shard is not None
        rows = shard.rows
        try:
            path, size = shard.finish(fsync=self._fsync)
        except BaseException:
            shard.discard()
            raise
        finally:
            self._shard = None
            self._rows_open = 0
        ids = self._ids.close_open()
        self._manifest["shards"].append(ShardInfo(
            file=shard.name, rows=rows, bytes=size,
            checksum={k: _fmt_hash(h) for k, h in shard.hash.items()},
            id_min=int(ids[0]) if ids.size else None,
            id_max=int(ids[-1]) if ids.size else None,
        ).to_json())
        self._manifest["rows"] = int(self._manifest["rows"]) + rows
        self._write_manifest()
        log.debug("finished %s (%d rows)", path, rows)

    def _write_manifest(self) -> None:
        self._manifest["provenance"]["updated"] = _now()
        _atomic_write_json(self.root / MANIFEST_NAME, self._manifest, fsync=self._fsync)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Finish the shard in progress (if any rows), write the manifest, release the lock."""
        if self._closed:
            return
        try:
            if self._shard is not None:
                if self._shard.rows:
                    self._finish_shard()
                else:
                    self._shard.discard()
                    self._shard = None
            self._write_manifest()
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the shard in progress; completed shards stay. Releases the lock."""
        if self._closed:
            return
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
            self._ids.discard_open()
            self._rows_open = 0
        self._release()

    def _release(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # The rows appended before the error passed every check: keep them, so
        # a rerun resumes after them. If even that fails, drop the open shard.
        try:
            self.close()
        except Exception:
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"ShardWriter({str(self.root)!r}, dim={self.dim}, dtype={self.dtype!r}, "
                f"rows={len(self)}, {state})")


def _check_classes(classes: Sequence[Any]) -> list[Any]:
    if isinstance(classes, str | bytes):
        raise TypeError("classes must be a sequence of names, not a single string")
    out = list(classes)
    for c in out:
        if isinstance(c, bool) or not isinstance(c, str | int | np.integer):
            raise TypeError(f"class names must be str or int; got {c!r} ({type(c).__name__})")
    out = [int(c) if isinstance(c, np.integer) else c for c in out]
    if len(set(out)) != len(out):
        seen: set[Any] = set()
        dup = next(c for c in out if c in seen or seen.add(c))  # type: ignore[func-returns-value]
        raise ValueError(f"classes must be unique; {dup!r} appears twice")
    return out


def _short(x: Any, n: int = 4) -> str:
    if isinstance(x, list) and len(x) > n:
        return f"[{', '.join(map(repr, x[:n]))}, ... ({len(x)} in all)]"
    return repr(x)


def _acquire_lock(root: Path) -> int | None:
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(root / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"{root}: another ShardWriter has this store open") from None
    return fd

