"""HDF5 shard store for embeddings: crash-safe, resumable writing and bounded-memory reading.

Layout of a store directory (see DESIGN.md, "The store on disk")::

    root/
      store.json        manifest: format, dim, dtype, classes, metadata, provenance, shards
      shard-00000.h5    datasets: embeddings (rows, dim) float16|float32, labels int64,
      shard-00001.h5              ids int64, optional paths (utf-8 strings)

A shard is written under ``<name>.partial`` and renamed when complete; the
manifest is replaced atomically (temporary file + rename) after every shard. A
writer killed at any moment therefore leaves a store that opens and holds every
completed shard; the shard in progress is lost and a resumed writer rewrites it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import xxhash
from tqdm.auto import tqdm

from ._ids import IdSet, sorted_unique
from ._validation import (
    StoreError,
    check_embeddings,
    check_int_vector,
    check_str_sequence,
    first_nonfinite_row,
)

try:  # POSIX advisory lock; absent on Windows, where the store is simply unlocked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["Batch", "EmbeddingStore", "ShardInfo", "ShardWriter", "StoreError", "merge_stores"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "store.json"
FORMAT_NAME = "faissclass.store"
FORMAT_VERSION = 1
DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
DEFAULT_SHARD_BYTES = 64 * 2**20
_PARTIAL = ".partial"
_LOCK_NAME = ".lock"
_SHARD_RE = re.compile(r"^shard-\d{5}\.h5$")
_COPY_ROWS = 65_536  # block size when copying or checksumming a shard


class Batch(NamedTuple):
    """Rows read from a store.

    Attributes
    ----------
    embeddings : numpy.ndarray, shape (n, dim), float32 unless another dtype was asked for
    labels : numpy.ndarray, shape (n,), int64 (-1 = unlabelled)
    ids : numpy.ndarray, shape (n,), int64
    paths : list of str or None
        Source paths, when the store has them.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    paths: list[str] | None = None


@dataclass(frozen=True)
class ShardInfo:
    """One completed shard as recorded in the manifest."""

    file: str
    rows: int
    bytes: int
    checksum: dict[str, str]
    id_min: int | None
    id_max: int | None

    @classmethod
    def from_json(cls, d: dict[str, Any], manifest: Path) -> ShardInfo:
        try:
            return cls(
                file=str(d["file"]),
                rows=int(d["rows"]),
                bytes=int(d["bytes"]),
                checksum=dict(d["checksum"]),
                id_min=None if d.get("id_min") is None else int(d["id_min"]),
                id_max=None if d.get("id_max") is None else int(d["id_max"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{manifest}: malformed shard entry {d!r} ({exc})") from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": self.rows,
            "bytes": self.bytes,
            "checksum": self.checksum,
            "id_min": self.id_min,
            "id_max": self.id_max,
        }


# --------------------------------------------------------------------------- manifest I/O


def _library_versions() -> dict[str, str]:
    from . import __version__

    return {
        "faissclass": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY on dirs
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_json(path: Path, obj: Any, *, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(obj, indent=1, sort_keys=False).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _json_roundtrip(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not root.exists():
        raise StoreError(f"{root}: no such store (the directory does not exist)")
    if not root.is_dir():
        raise StoreError(f"{root}: not a store (a store is a directory holding {MANIFEST_NAME})")
    if not path.is_file():
        raise StoreError(f"{root}: not a faissclass store (no {MANIFEST_NAME} in it)")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a faissclass store manifest (format={m.get('format')!r})"
                         if isinstance(m, dict) else f"{path}: not a faissclass store manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format version {m.get('format_version')!r}; this faissclass reads "
            f"version {FORMAT_VERSION}"
        )
    for key in ("dim", "dtype", "shards", "shard_size"):
        if key not in m:
            raise StoreError(f"{path}: manifest lacks {key!r}")
    if m["dtype"] not in DTYPES:
        raise StoreError(f"{path}: unknown dtype {m['dtype']!r} (expected one of {list(DTYPES)})")
    return m


def _check_shard_files(root: Path, shards: Sequence[ShardInfo]) -> None:
    """Cheap damage check: every shard exists with the size the manifest recorded."""
    for s in shards:
        p = root / s.file
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{p}: shard listed in {MANIFEST_NAME} is missing") from None
        if size != s.bytes:
            raise StoreError(
                f"{p}: shard is {size} bytes, the manifest recorded {s.bytes} "
                "(truncated or overwritten)"
            )


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", rdcc_nbytes=0)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open shard ({exc})") from exc


def _shard_datasets(f: h5py.File, path: Path, info: ShardInfo, dim: int, dtype: np.dtype,
                    has_paths: bool) -> dict[str, h5py.Dataset]:
    """The datasets of an open shard, checked against the manifest."""
    want: dict[str, tuple[tuple[int, ...], np.dtype | None]] = {
        "embeddings": ((info.rows, dim), dtype),
        "labels": ((info.rows,), np.dtype(np.int64)),
        "ids": ((info.rows,), np.dtype(np.int64)),
    }
    if has_paths:
        want["paths"] = ((info.rows,), None)
    out = {}
    for name, (shape, dt) in want.items():
        if name not in f:
            raise StoreError(f"{path}: dataset {name!r} is missing")
        ds = f[name]
        if ds.shape != shape:
            raise StoreError(
                f"{path}: dataset {name!r} has shape {ds.shape}, the manifest says {shape}"
            )
        if dt is not None and ds.dtype != dt:
            raise StoreError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected {dt}")
        out[name] = ds
    return out


# Checksums are XXH3-64 over each dataset's bytes in row order (paths: utf-8,
# each followed by NUL). XXH3 runs at ~30 GB/s here, so hashing hides behind
# the write; crc32 (4 GB/s) was slower than writing to the page cache.
_HASH = "xxh3_64"


def _hasher() -> xxhash.xxh3_64:
    return xxhash.xxh3_64()


def _hashed(h: xxhash.xxh3_64, buf: np.ndarray | bytes) -> xxhash.xxh3_64:
    """A copy of ``h`` updated with ``buf`` (``h`` itself is left as it was)."""
    h = h.copy()
    h.update(buf)
    return h


def _paths_bytes(paths: Sequence[str]) -> bytes:
    return b"".join(p.encode("utf-8") + b"\0" for p in paths)


def _fmt_hash(h: xxhash.xxh3_64) -> str:
    return f"{_HASH}:{h.hexdigest()}"


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


# --------------------------------------------------------------------------- reader


class EmbeddingStore:
    """Read-only view of a store written by :class:`ShardWriter`.

    Opening reads the manifest and checks that every shard exists with the
    recorded size; data is read lazily. ``verify()`` checks every checksum.

    Parameters
    ----------
    root : str or Path
        Store directory.

    Raises
    ------
    StoreError
        Not a store, or a shard is missing or truncated (the message names the file).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._manifest = _read_manifest(self.root)
        mpath = self.root / MANIFEST_NAME
        self._shards = tuple(ShardInfo.from_json(s, mpath) for s in self._manifest["shards"])
        total = sum(s.rows for s in self._shards)
        if total != self._manifest.get("rows", total):
            raise StoreError(f"{mpath}: rows={self._manifest['rows']} but the shards hold {total}")
        _check_shard_files(self.root, self._shards)
        self._offsets = np.concatenate([[0], np.cumsum([s.rows for s in self._shards])]).astype(
            np.int64)
        self._np_dtype = np.dtype(DTYPES[self._manifest["dtype"]])

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

    def _datasets(self, f: h5py.File, i: int) -> dict[str, h5py.Dataset]:
        return _shard_datasets(f, self.root / self._shards[i].file, self._shards[i], self.dim,
                               self._np_dtype, self.has_paths)

    def row_range(self, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
        """Global rows [start, stop) that ``rank`` of ``world_size`` reads: contiguous,
        disjoint, covering every row once, sizes differing by at most one."""
        if isinstance(world_size, bool) or not isinstance(world_size, int | np.integer) \
                or world_size < 1:
            raise ValueError(f"world_size must be a positive int; got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer) \
                or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank!r}")
        n = len(self)
        return n * int(rank) // int(world_size), n * (int(rank) + 1) // int(world_size)

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
        dtype : numpy dtype or None
            Embedding dtype of the batches; None keeps the on-disk dtype.
        progress : bool
            Show a tqdm bar over rows.

        Yields
        ------
        Batch
            ``embeddings`` (b, dim), ``labels`` (b,) int64, ``ids`` (b,) int64, ``paths``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        start, stop = self.row_range(rank, world_size)
        out_dtype = self._np_dtype if dtype is None else np.dtype(dtype)
        with tqdm(total=stop - start, unit="row", unit_scale=True, disable=not progress,
                  desc=f"reading {self.root.name}") as bar, _ShardCursor(self) as cur:
            for a in range(start, stop, int(batch_size)):
                b = min(a + int(batch_size), stop)
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
        out_dtype = self._np_dtype if dtype is None else np.dtype(dtype)
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
        out_dtype = self._np_dtype if dtype is None else np.dtype(dtype)
        uniq, inverse = np.unique(r, return_inverse=True)
        emb = np.empty((uniq.size, self.dim), dtype=out_dtype)
        lab = np.empty(uniq.size, dtype=np.int64)
        ids = np.empty(uniq.size, dtype=np.int64)
        paths: list[str] | None = [""] * uniq.size if self.has_paths else None
        shard_of = np.searchsorted(self._offsets, uniq, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = uniq[sel] - self._offsets[s]
            path = self.root / self._shards[s].file
            with _open_h5(path) as f:
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
                try:
                    emb[sel] = get(ds["embeddings"])
                    lab[sel] = get(ds["labels"])
                    ids[sel] = get(ds["ids"])
                    if paths is not None:
                        for j, p in zip(sel.tolist(), get(ds["paths"].asstr()), strict=True):
                            paths[j] = p
                except OSError as exc:
                    raise StoreError(f"{path}: read failed ({exc})") from exc
        if uniq.size == r.size and (r.size < 2 or bool(np.all(r[1:] > r[:-1]))):
            return Batch(emb, lab, ids, paths)  # already in order: no reordering copy
        return Batch(
            emb[inverse], lab[inverse], ids[inverse],
            None if paths is None else [paths[i] for i in inverse.tolist()],
        )

    def labels(self) -> np.ndarray:
        """Every label, shape (n,) int64, reading only the labels (8 bytes a row)."""
        return self._column("labels")

    def ids(self) -> np.ndarray:
        """Every id, shape (n,) int64, reading only the ids (8 bytes a row)."""
        return self._column("ids")

    def _column(self, name: str) -> np.ndarray:
        out = np.empty(len(self), np.int64)
        for i, info in enumerate(self._shards):
            path = self.root / info.file
            with _open_h5(path) as f:
                ds = self._datasets(f, i)[name]
                try:
                    ds.read_direct(out, np.s_[0:info.rows],
                                   np.s_[int(self._offsets[i]):int(self._offsets[i + 1])])
                except OSError as exc:
                    raise StoreError(f"{path}: read failed ({exc})") from exc
        return out

    # ------------------------------------------------------------------ integrity

    def verify(self, *, progress: bool = False) -> None:
        """Check every shard: opens, shapes and dtypes match the manifest, checksums
        match, ids unique across the store.

        Raises
        ------
        StoreError
            Naming the first damaged file.
        """
        all_ids = []
        rows_total = int(self._offsets[-1])
        with tqdm(total=rows_total, unit="row", unit_scale=True, disable=not progress,
                  desc=f"verifying {self.root.name}") as bar:
            for i, info in enumerate(self._shards):
                path = self.root / info.file
                with _open_h5(path) as f:
                    ds = self._datasets(f, i)
                    hashes = {name: _hasher() for name in ds}
                    id_blocks = []  # kept from the checksum pass: ids are read once
                    try:
                        for a in range(0, info.rows, _COPY_ROWS):
                            b = min(a + _COPY_ROWS, info.rows)
                            for name, d in ds.items():
                                if name == "paths":
                                    block = d.asstr()[a:b].tolist()
                                    hashes[name].update(_paths_bytes(block))
                                else:
                                    arr = np.ascontiguousarray(d[a:b])
                                    hashes[name].update(arr)
                                    if name == "ids":
                                        id_blocks.append(arr)
                            bar.update(b - a)
                        ids = (np.concatenate(id_blocks) if id_blocks
                               else np.empty(0, np.int64))
                    except OSError as exc:
                        raise StoreError(f"{path}: read failed ({exc})") from exc
                for name, h in hashes.items():
                    want = info.checksum.get(name)
                    if want != _fmt_hash(h):
                        raise StoreError(
                            f"{path}: checksum of {name!r} is {_fmt_hash(h)}, the manifest "
                            f"recorded {want} (the shard is damaged)"
                        )
                all_ids.append(ids)
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

    def __enter__(self) -> _ShardCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _select(self, i: int) -> dict[str, h5py.Dataset]:
        if self._i != i:
            if self._f is not None:
                self._f.close()
            path = self.store.root / self.store.shards[i].file
            self._f = _open_h5(path)
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
                for j in range(lo, hi, _COPY_ROWS):
                    k = min(j + _COPY_ROWS, hi)
                    o = pos - a + (j - lo)
                    dst = np.s_[o:o + k - j]
                    src = np.s_[j:k]
                    try:
                        if same:
                            ds["embeddings"].read_direct(emb, src, dst)
                        else:
                            if buf is None:
                                buf = np.empty((min(_COPY_ROWS, n), st.dim), st._np_dtype)
                            ds["embeddings"].read_direct(buf, src, np.s_[0:k - j])
                            emb[dst] = buf[:k - j]
                        ds["labels"].read_direct(lab, src, dst)
                        ds["ids"].read_direct(ids, src, dst)
                        if paths is not None:
                            paths.extend(ds["paths"].asstr()[j:k].tolist())
                    except OSError as exc:
                        raise StoreError(
                            f"{st.root / st.shards[i].file}: read failed ({exc})") from exc
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
    shards, info = [], {}
    for st in stores:
        m = st._manifest
        for key in ("dim", "dtype", "classes", "normalized", "metadata"):
            if m.get(key) != ref.get(key):
                raise StoreError(f"{st.root}: {key} differs from {first.root}; cannot merge")
        rel = st.root.resolve().relative_to(root.resolve())
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
                "has_paths": has_paths.pop() if has_paths else None,
                "parts": [str(st.root.resolve().relative_to(root.resolve())) for st in stores]}
    manifest["provenance"] = {**ref.get("provenance", {}), "updated": _now()}
    _atomic_write_json(root / MANIFEST_NAME, manifest, fsync=fsync)
    return EmbeddingStore(root)
