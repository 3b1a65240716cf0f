"""ShardWriter: crash-safe, resumable appends of embeddings into a store.

Safety of the user's files: a writer deletes, renames or overwrites only files
it can prove are its own — the temporary manifest, and the shard the manifest
says was in progress (``pending``: recorded before the file is created, its
partial name carrying a random token) — and creates every new file under a
name that does not exist yet. It refuses a directory holding anything else
unless that directory is a store.
"""

from __future__ import annotations

import contextlib
import errno
import errno as _errno
import json
import logging
import os
import secrets
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
    check_choice,
    check_embeddings,
    check_id_vector,
    check_int,
    check_int_vector,
    check_str_sequence,
    first_nonfinite_row,
)
from ._manifest import (
    DEFAULT_SHARD_BYTES,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    PARTIAL,
    PARTIAL_RE,
    SHARD_RE,
    ShardInfo,
    atomic_write_json,
    check_shard_files,
    file_digest,
    fmt_hash,
    fsync_dir,
    h5_errors,
    hashed,
    hasher,
    json_roundtrip,
    library_versions,
    now,
    open_h5,
    paths_bytes,
    read_manifest,
    shard_datasets,
    shard_name,
)

try:  # POSIX advisory lock; absent on Windows, where the store is simply unlocked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["ShardWriter"]

log = logging.getLogger("faissclass.store")

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


def _neutralise(fd: int | None, inode: tuple[int, int] | None) -> None:
    """Point the descriptor of a shard being discarded at an anonymous in-memory file.

    After a failed write (a full disk), libhdf5 keeps dirty data it cannot
    write; every later flush fails again, and at interpreter exit it crashes the
    process (segfault) trying once more. The shard being discarded, its bytes do
    not matter: redirected to memory, the final flush succeeds and the file
    closes cleanly. ``fd`` was read when the file was healthy (asking libhdf5
    for it after a failure can itself crash); ``inode`` proves it still is the
    shard's descriptor, not a number reused by another file.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or fd is None or inode is None:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != inode:
            return
        mem = memfd_create("faissclass-discarded-shard")
        try:
            os.dup2(mem, fd)
        finally:
            os.close(mem)


class _OpenShard:
    """The shard being filled: a ``.partial`` HDF5 file, renamed when complete."""

    def __init__(self, root: Path, name: str, partial: str, *, capacity: int, dim: int,
                 dtype: np.dtype, has_paths: bool) -> None:
        self.name = name
        self.final = root / name
        self.tmp = root / partial
        self.capacity = capacity
        self.rows = 0
        names = ("embeddings", "labels", "ids", "paths") if has_paths else (
            "embeddings", "labels", "ids")
        self.hash = {name: hasher() for name in names}
        c_emb = _even_chunk(capacity, max(1, _CHUNK_BYTES // (dim * dtype.itemsize)))
        c_int = _even_chunk(capacity, max(c_emb, _MIN_CHUNK_ROWS))
        # "x": create, failing if the name exists; the writer never overwrites a file.
        self.file: h5py.File | None = h5py.File(self.tmp, "x")
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        try:
            with contextlib.suppress(Exception):  # the sec2 driver's descriptor
                self._fd = int(self.file.id.get_vfd_handle())
                st = os.fstat(self._fd)
                self._inode = (st.st_dev, st.st_ino)
            def column(name: str, row: tuple[int, ...], dt: Any, c: int) -> h5py.Dataset:
                assert self.file is not None
                return self.file.create_dataset(name, (capacity, *row), dtype=dt,
                                                maxshape=(None, *row), chunks=(c, *row))

            # On-disk byte order is little-endian; direct chunk writes copy bytes as-is.
            self.cols: dict[str, _Column] = {
                "embeddings": _Column(
                    column("embeddings", (dim,), dtype.newbyteorder("<"), c_emb), c_emb),
                "labels": _Column(column("labels", (), "<i8", c_int), c_int),
                "ids": _Column(column("ids", (), "<i8", c_int), c_int),
            }
            self.paths: h5py.Dataset | None = (
                column("paths", (), h5py.string_dtype("utf-8"), min(capacity, 4096))
                if has_paths else None)
        except BaseException:
            self.discard()
            raise

    def write(self, pool: ThreadPoolExecutor, emb: np.ndarray, labels: np.ndarray,
              ids: np.ndarray, paths: list[str] | None) -> dict[str, xxhash.xxh3_64]:
        """Write rows after the committed ones; returns the staged checksums.

        Nothing counts until :meth:`commit`; :meth:`rollback` forgets the write.
        """
        a = self.rows
        # The embeddings hash runs on the worker while h5py writes (both release
        # the GIL); the caller's buffer is not used after this returns.
        fut = pool.submit(hashed, self.hash["embeddings"], emb)
        try:
            for name, data in (("embeddings", emb), ("labels", labels), ("ids", ids)):
                self.cols[name].write(a, data.astype(self.cols[name].ds.dtype, copy=False))
            staged = {"labels": hashed(self.hash["labels"], labels),
                      "ids": hashed(self.hash["ids"], ids)}
            if paths is not None:
                assert self.paths is not None
                self.paths[a:a + len(paths)] = np.array(paths, dtype=object)
                staged["paths"] = hashed(self.hash["paths"], paths_bytes(paths))
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
        """Flush, shrink to the rows written, close, rename into place; (path, bytes)."""
        assert self.file is not None
        for col in self.cols.values():
            col.finish(self.rows)
        if self.paths is not None:
            self.paths.resize(self.rows, axis=0)
        # Everything reaches the file while it is healthy: a failure here leaves it
        # to discard() (redirect, drop datasets, close), in that order.
        self.file.flush()
        self.cols, self.paths = {}, None  # no dataset object outlives the file
        try:
            self.file.close()
        except Exception:
            _neutralise(self._fd, self._inode)
            raise
        self.file = None
        if fsync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if os.path.lexists(self.final):  # never replace a file that appeared meanwhile
            raise StoreError(f"{self.final}: a file of this name appeared in the store "
                             "directory while the shard was written; the shard was not "
                             "renamed over it and is dropped")
        os.replace(self.tmp, self.final)
        if fsync:
            fsync_dir(self.final.parent)
        return self.final, self.final.stat().st_size

    def discard(self) -> None:
        """Close and delete the partial file, whatever state libhdf5 is in.

        The descriptor is redirected to memory first (see :func:`_neutralise`), then
        the dataset objects are dropped, then the file is closed: after a failed
        write every flush on the way must succeed, or libhdf5 crashes later.
        """
        f, self.file = self.file, None
        if f is not None:
            _neutralise(self._fd, self._inode)
        self.cols, self.paths = {}, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class ShardWriter:
    """Append embeddings to a store on disk, in any batch sizes; atomic and resumable.

    Parameters
    ----------
    root : str or Path
        Store directory. Created if absent. If it already holds a store, the
        writer resumes it: appends continue after the last complete shard. Any
        other non-empty directory is refused, and nothing in it is touched.
    dim : int
        Embedding width.
    dtype : {"float16", "float32"}
        On-disk dtype of the embeddings. Input of any float dtype is cast to it.
    shard_size : int, optional
        Rows per shard; default: as many rows as fit in 64 MiB of embeddings.
    classes : sequence of str or int, optional
        Class names; labels are then indices into it (``-1`` = unlabelled).
    metadata : dict, optional
        Caller's provenance (model, transform, dataset...), strict JSON (no NaN).
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
        The existing store is damaged, or another writer holds it; a directory
        holding shard files but no manifest.

    Notes
    -----
    Default ids are global row numbers. ``stored_ids()`` / ``contains(ids)``
    tell a resumed run which items are done, so it can skip them. A write that
    fails (a full disk) drops the shard in progress, keeps every finished
    shard, and closes the writer; reopen it to resume.
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
        self.dim = check_int(dim, "dim")
        check_choice(dtype, "dtype", list(DTYPES))
        self.root = Path(root)
        self.dtype = str(dtype)
        self._np_dtype = np.dtype(DTYPES[dtype])
        if shard_size is None:
            shard_size = max(1024, DEFAULT_SHARD_BYTES // (self.dim * self._np_dtype.itemsize))
        self.shard_size = check_int(shard_size, "shard_size")
        self.normalized = bool(normalized)
        self._fsync = bool(fsync)
        classes_list = None if classes is None else _check_classes(classes)
        meta = {} if metadata is None else json_roundtrip(dict(metadata), "metadata")

        created_dir = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        created_lock = not (self.root / LOCK_NAME).exists()
        self._lock_fd = _acquire_lock(self.root)
        self._closed = False
        self._failed_at: Path | None = None
        self._digests: list[tuple[int, Any]] = []  # (shard entry, future file checksum)
        self._rows_open = 0
        self._shard: _OpenShard | None = None
        self._ids = IdSet()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="faissclass-store")
        # Its own thread: a shard's file checksum must not delay the next batch's checks.
        self._digest_pool = ThreadPoolExecutor(1, thread_name_prefix="faissclass-digest")
        try:
            if (self.root / MANIFEST_NAME).exists():
                self._manifest, shards = read_manifest(self.root)
                self._check_resume(classes_list, meta)
                self._clean_own_leftovers(shards)
                self._load_ids(shards)
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
                    "pending": None,
                    "metadata": meta,
                    "provenance": {"created": now(), "updated": now(),
                                   "versions": library_versions()},
                    "shards": [],
                }
                self._write_manifest()
        except BaseException:
            self._release()
            if not (self.root / MANIFEST_NAME).exists():  # refused: leave no trace
                if created_lock:
                    with contextlib.suppress(OSError):
                        (self.root / LOCK_NAME).unlink()
                if created_dir:
                    with contextlib.suppress(OSError):
                        self.root.rmdir()
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

    def _clean_own_leftovers(self, shards: Sequence[ShardInfo]) -> None:
        """Remove what an interrupted writer of this store left: the temporary manifest
        and the shard the manifest records as in progress (``pending``), whole or
        partial. Other files are not this writer's and stay, whatever their names."""
        listed = {s.file for s in shards}
        if "pending" in self._manifest:
            pending = self._manifest["pending"]
        else:  # written before 0.2: the shard in progress was named by the shard count
            name = shard_name(len(shards))
            pending = {"file": name, "partial": name + PARTIAL}
        # The whole-file checksums of shards finished just before a kill were never
        # recorded; the dataset checksums stand in for them (readers fall back).
        own = {MANIFEST_NAME + ".tmp"}
        if pending and pending["partial"] not in listed:
            # Only the partial file: its name carries a random token recorded before it
            # was created. A whole shard file left unlisted (killed between its rename
            # and the manifest update) is kept: its name could have been taken meanwhile.
            own.add(pending["partial"])
        for p in sorted(self.root.iterdir()):
            if p.name in own:
                if p.is_file() and not p.is_symlink():
                    log.info("removing %s, left by an interrupted writer of this store", p)
                    p.unlink()
            elif (SHARD_RE.match(p.name) or PARTIAL_RE.match(p.name)) and p.name not in listed:
                log.warning("leaving %s alone: it is not listed in %s (a shard an interrupted "
                            "writer finished but did not record, or not this store's); new "
                            "shards will not use its name", p, MANIFEST_NAME)
        self._manifest["pending"] = None

    def _check_empty_dir(self) -> None:
        entries = sorted(p.name for p in self.root.iterdir()
                         if p.name not in (LOCK_NAME, MANIFEST_NAME + ".tmp"))
        shard_like = [n for n in entries if SHARD_RE.match(n) or PARTIAL_RE.match(n)]
        if shard_like:
            raise StoreError(
                f"{self.root} holds shard files ({', '.join(shard_like[:3])}"
                f"{', ...' if len(shard_like) > 3 else ''}; {len(shard_like)} in all) but no "
                f"{MANIFEST_NAME}: it looks like a store whose manifest was lost. Nothing was "
                f"touched. To recover, restore {MANIFEST_NAME} from a backup (or "
                "merge_stores for per-rank parts); to start over, move or delete the shard "
                "files yourself, or write to a new directory."
            )
        if entries:
            raise ValueError(
                f"{self.root} is not empty and not a faissclass store (holds {entries[:3]}); "
                "refusing to write into it. Pick a new or empty directory."
            )
        with contextlib.suppress(FileNotFoundError):
            (self.root / (MANIFEST_NAME + ".tmp")).unlink()  # our own name, never a user's

    def _load_ids(self, shards: Sequence[ShardInfo]) -> None:
        paths = check_shard_files(self.root, shards)
        has_paths = bool(self._manifest.get("has_paths"))
        for s, p in zip(shards, paths, strict=True):
            with open_h5(p) as f, h5_errors(p, "reading ids"):
                ds = shard_datasets(f, p, s, self.dim, self._np_dtype, has_paths)
                ids = ds["ids"][:]
            ids.sort()
            self._ids.add_run(ids)

    def _open_new_shard(self) -> _OpenShard:
        """Start a shard under a name no file has (above every shard-like name in the
        directory), recording it in the manifest as pending before the file exists."""
        top = -1
        names = [p.name for p in self.root.iterdir()] + [
            s["file"] for s in self._manifest["shards"] if "/" not in s["file"]]
        for name in names:
            m = SHARD_RE.match(name) or PARTIAL_RE.match(name)
            if m:
                top = max(top, int(m.group(1)))
        name = shard_name(top + 1)
        partial = f"{name}.{secrets.token_hex(4)}{PARTIAL}"
        self._manifest["pending"] = {"file": name, "partial": partial}
        # No fsync: losing this record to a power cut only leaves the partial file
        # unclaimed (kept, not deleted, on resume); a kill cannot lose it.
        self._write_manifest(fsync=False)
        return _OpenShard(self.root, name, partial, capacity=self.shard_size, dim=self.dim,
                          dtype=self._np_dtype, has_paths=bool(self._manifest["has_paths"]))

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
        self._manifest.setdefault("info", {})[str(key)] = json_roundtrip(value, "info value")
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
            Unique within the store, never -1 (FAISS's "no result"); default: the
            global row numbers.
        paths : sequence of str, optional
            Source of each row. Either every append passes paths or none does.

        Raises
        ------
        OSError
            Writing failed (e.g. a full disk): the shard in progress was dropped,
            finished shards are intact, and the writer is closed; reopen to resume.
        """
        if self._closed:
            raise ValueError(f"ShardWriter for {self.root} is closed")
        emb = check_embeddings(embeddings, dim=self.dim, dtype=self._np_dtype)
        n = emb.shape[0]
        lab = np.array(check_int_vector(labels, n=n, name="labels"), dtype=np.int64)
        self._check_labels(lab)
        if self.normalized and n:
            norms = np.linalg.norm(emb.astype(np.float32, copy=False), axis=1)
            off = np.flatnonzero(~(np.abs(norms - 1.0) <= 1e-2))
            if off.size and np.isfinite(norms[off[0]]):
                raise ValueError(
                    f"embeddings row {int(off[0])} has L2 norm {norms[off[0]]:.4g} but the store "
                    "is declared normalized=True; normalise the rows first"
                )
        if ids is None:
            idv = np.arange(len(self), len(self) + n, dtype=np.int64)
        else:
            # A copy: the id set must not alias an array the caller may reuse.
            idv = np.array(check_id_vector(ids, n=n, name="ids"), dtype=np.int64)
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
                    self._shard = self._open_new_shard()
                take = min(n - off, self._shard.capacity - self._shard.rows)
                sl = slice(off, off + take)
                staged = self._shard.write(self._pool, emb[sl], lab[sl], idv[sl],
                                           None if plist is None else plist[sl])
                if not checked:
                    checked = True
                    bad = check.result()
                    if bad is not None:
                        raise _Rejected(self._nonfinite_message(embeddings, bad))
                self._shard.commit(staged, take)
                self._ids.add_open(idv[sl] if increasing else np.sort(idv[sl]))
                self._rows_open = self._shard.rows
                off += take
                if self._shard.rows == self._shard.capacity:
                    self._finish_shard()
        except BaseException as exc:
            if not checked:
                check.result()
            if len(self) == 0:
                self._manifest["has_paths"] = had_paths
            if isinstance(exc, OSError | RuntimeError | KeyError):
                # libhdf5 or the file system failed: the open shard is unusable.
                raise self._fail(exc) from exc
            # A rejected batch, or an interrupt: keep every committed row.
            if self._shard is not None:
                try:
                    self._shard.rollback()
                except Exception as exc2:
                    raise self._fail(exc2) from exc2
            if isinstance(exc, _Rejected):
                raise ValueError(str(exc)) from None
            raise  # an interrupt, or a bug of ours: the committed rows are kept

    def _fail(self, exc: BaseException) -> OSError:
        """Drop the shard in progress after an I/O error, close the writer, and say so."""
        dropped = self._rows_open
        where = self._shard.tmp if self._shard is not None else self._failed_at or self.root
        self.abort()
        code = getattr(exc, "errno", None)
        why = os.strerror(code) if code else (str(exc).splitlines() or [repr(exc)])[0]
        return OSError(code or _errno.EIO, (
            f"{where}: writing failed ({why}). The {dropped} rows of the unfinished shard are "
            f"not in the store; the {int(self._manifest['rows'])} rows of finished shards are "
            "intact. "
            "The writer is closed: free space (or fix the cause) and open a ShardWriter on "
            "the same directory to resume."))

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
            out = None if paths is None else _check_path_texts(
                check_str_sequence(paths, n=n, name="paths"))
            self._manifest["has_paths"] = given
            return out
        if has and not given:
            raise ValueError("this store records paths: pass paths= with every append")
        if given and not has:
            raise ValueError("this store was started without paths: omit paths= "
                             "(or write to a new store)")
        return None if paths is None else _check_path_texts(
            check_str_sequence(paths, n=n, name="paths"))

    def _finish_shard(self) -> None:
        shard = self._shard
        assert shard is not None
        rows = shard.rows
        try:
            path, size = shard.finish(fsync=self._fsync)
        except BaseException:
            self._failed_at = shard.tmp
            raise  # the caller drops the shard (abort), keeping the count for its message
        ids = self._ids.close_open()
        entry = ShardInfo(
            file=shard.name, rows=rows, bytes=size,
            checksum={k: fmt_hash(h) for k, h in shard.hash.items()},
            id_min=int(ids[0]) if ids.size else None,
            id_max=int(ids[-1]) if ids.size else None,
        ).to_json()
        self._manifest["shards"].append(entry)
        self._manifest["rows"] = int(self._manifest["rows"]) + rows
        pending, self._manifest["pending"] = self._manifest["pending"], None
        try:
            self._write_manifest()
        except BaseException:
            # Not recorded: the shard file stays on disk (a resumed writer keeps it, unlisted)
            # but its rows are not in the store, and the message must say so.
            self._manifest["shards"].pop()
            self._manifest["rows"] = int(self._manifest["rows"]) - rows
            self._manifest["pending"] = pending
            self._ids.remove(ids)
            self._shard = None
            self._rows_open = rows
            self._failed_at = path
            raise
        self._shard = None
        self._rows_open = 0
        self._digests.append((len(self._manifest["shards"]) - 1,
                              self._digest_pool.submit(file_digest, path)))
        log.debug("finished %s (%d rows)", path, rows)

    def _write_manifest(self, *, wait: bool = False, fsync: bool | None = None) -> None:
        left = []
        for i, fut in self._digests:
            if wait or fut.done():
                try:
                    self._manifest["shards"][i]["file_checksum"] = fut.result()
                except OSError as exc:  # left without one: dataset checksums stand in
                    log.warning("could not checksum %s: %s",
                                self._manifest["shards"][i]["file"], exc)
            else:
                left.append((i, fut))
        self._digests = left
        self._manifest["provenance"]["updated"] = now()
        atomic_write_json(self.root / MANIFEST_NAME, self._manifest,
                          fsync=self._fsync if fsync is None else fsync)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Finish the shard in progress (if any rows), write the manifest, release the lock."""
        if self._closed:
            return
        try:
            try:
                if self._shard is not None:
                    if self._shard.rows:
                        self._finish_shard()
                    else:
                        self._shard.discard()
                        self._shard = None
                        self._manifest["pending"] = None
                self._write_manifest(wait=True)
            except Exception as exc:
                raise self._fail(exc) from exc
        finally:
            self.abort()  # releases the lock; a no-op for a shard already finished

    def abort(self) -> None:
        """Drop the shard in progress; completed shards stay. Releases the lock."""
        if self._closed:
            return
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
            self._ids.discard_open()
            self._rows_open = 0
            self._manifest["pending"] = None
        if self._digests:  # record the checksums of finished shards, if the disk lets us
            with contextlib.suppress(Exception):
                self._write_manifest(wait=True)
        self._release()

    def _release(self) -> None:  # idempotent
        self._closed = True
        self._pool.shutdown(wait=True)
        self._digest_pool.shutdown(wait=True)
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


def _check_path_texts(paths: list[str]) -> list[str]:
    """Paths HDF5 can store as UTF-8: no NUL, nothing that does not encode (a lone
    surrogate from os.fsdecode of a non-UTF-8 name)."""
    for i, p in enumerate(paths):
        if "\0" in p:
            raise ValueError(f"paths[{i}] holds a NUL character; paths must be plain text")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"paths[{i}] = {p!r} is not valid UTF-8 (a file name in another "
                             "encoding?); pass os.fsencode(p).decode('utf-8', 'replace') or "
                             "a name of your own") from None
    return paths


class _Rejected(Exception):
    """A batch refused after its first chunk was written (non-finite values)."""


def _check_classes(classes: Sequence[Any]) -> list[Any]:
    if isinstance(classes, str | bytes):
        raise TypeError("classes must be a sequence of names, not a single string")
    out = list(classes)
    for c in out:
        if isinstance(c, bool) or not isinstance(c, str | int | np.integer):
            raise TypeError(f"class names must be str or int; got {c!r} ({type(c).__name__})")
        if isinstance(c, str) and "\0" in c:
            raise ValueError(f"class name {c!r} holds a NUL byte")
    out = [int(c) if isinstance(c, np.integer) else c for c in out]
    if len({type(c) for c in out}) > 1:
        raise TypeError("class names must be all str or all int, not a mix (numpy would "
                        "turn every one into a string)")
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
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"{root}: another ShardWriter has this store open") from None
        raise StoreError(f"{root}: cannot lock the store ({exc.strerror}); this file system "
                         "may not support flock (e.g. Lustre without -o flock)") from exc
    return fd
