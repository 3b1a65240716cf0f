"""The store's on-disk format: the manifest (read, checked, written), shard files, checksums.

Everything read from disk is checked here before it is used, by the reader and
the writer alike: the manifest's types and ranges (before any allocation sized
by it), shard names (inside the store directory, regular files), and each
shard's HDF5 datasets (plain datasets reached by hard links: no external
storage, external or soft links, virtual datasets or filters).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import numbers
import os
import platform
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import xxhash

from .._validation import StoreError

__all__ = ["DTYPES", "MANIFEST_NAME", "MAX_DIM", "ShardInfo", "StoreError"]

log = logging.getLogger("faissclass.store")

MANIFEST_NAME = "store.json"
FORMAT_NAME = "faissclass.store"
FORMAT_VERSION = 1
DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
MAX_DIM = 2**20  # wider than any embedding; a bound on what a manifest can make us allocate
_MAX_ROWS = 2**48
DEFAULT_SHARD_BYTES = 64 * 2**20
PARTIAL = ".partial"
LOCK_NAME = ".lock"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
PARTIAL_RE = re.compile(r"^shard-(\d{5,})\.h5(?:\.[0-9a-f]{8})?\.partial$")
COPY_ROWS = 65_536  # block size when copying or checksumming a shard
_HASH_BLOCK = 256 * 2**10


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.h5"


# --------------------------------------------------------------------------- shard entries


@dataclass(frozen=True)
class ShardInfo:
    """One completed shard as recorded in the manifest.

    ``checksum`` holds XXH3-64 digests of each dataset's bytes in row order;
    ``file_checksum`` (stores written since faissclass 0.2) the XXH3-64 of the
    whole file, checked before HDF5 reads a byte of it.
    """

    file: str
    rows: int
    bytes: int
    checksum: dict[str, str]
    id_min: int | None
    id_max: int | None
    file_checksum: str | None = None

    @classmethod
    def from_json(cls, d: Any, manifest: Path, i: int = 0) -> ShardInfo:
        where = f"{manifest}: shard entry {i}"
        if not isinstance(d, dict):
            raise StoreError(f"{where} must be an object; got {type(d).__name__}")
        for key in ("file", "rows", "bytes", "checksum"):
            if key not in d:
                raise StoreError(f"{where} lacks {key!r}")
        file = d["file"]
        if not isinstance(file, str):
            raise StoreError(f"{where}: 'file' must be a string; got {type(file).__name__}")
        checksum = d["checksum"]
        if not isinstance(checksum, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in checksum.items()):
            raise StoreError(f"{where}: 'checksum' must map dataset names to strings")
        fc = d.get("file_checksum")
        if fc is not None and not isinstance(fc, str):
            raise StoreError(f"{where}: 'file_checksum' must be a string")
        return cls(
            file=file,
            rows=_int_field(d["rows"], f"{where}: 'rows'", 0, _MAX_ROWS),
            bytes=_int_field(d["bytes"], f"{where}: 'bytes'", 0, 2**62),
            checksum=dict(checksum),
            id_min=_opt_int(d.get("id_min"), f"{where}: 'id_min'"),
            id_max=_opt_int(d.get("id_max"), f"{where}: 'id_max'"),
            file_checksum=fc,
        )

    def to_json(self) -> dict[str, Any]:
        out = {"file": self.file, "rows": self.rows, "bytes": self.bytes,
               "checksum": self.checksum, "id_min": self.id_min, "id_max": self.id_max}
        if self.file_checksum is not None:
            out["file_checksum"] = self.file_checksum
        return out


def _int_field(v: Any, what: str, lo: int, hi: int) -> int:
    # JSON numbers such as 1e30 or 4.0 arrive as floats: refused, not truncated.
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise StoreError(f"{what} must be an integer; got {v!r}")
    if not lo <= int(v) <= hi:
        raise StoreError(f"{what} must be in [{lo}, {hi}]; got {v}")
    return int(v)


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int_field(v, what, -(2**63), 2**63 - 1)


# --------------------------------------------------------------------------- small helpers


def library_versions() -> dict[str, str]:
    from .._version import __version__

    return {
        "faissclass": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY on dirs
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, obj: Any, *, fsync: bool) -> None:
    """Replace ``path`` by ``obj`` as JSON: a temporary file, then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False).encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def json_roundtrip(obj: Any, what: str) -> Any:
    """``obj`` through strict JSON (no NaN or infinity, which JSON cannot hold)."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except ValueError as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc} (NaN and infinity are "
                         "not JSON; store them as null or a string)") from exc
    except TypeError as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc


# --------------------------------------------------------------------------- checksums

# XXH3-64: ~30 GB/s here, so hashing hides behind I/O (crc32 ran at 4 GB/s).
HASH = "xxh3_64"


def hasher() -> xxhash.xxh3_64:
    return xxhash.xxh3_64()


def hashed(h: xxhash.xxh3_64, buf: np.ndarray | bytes) -> xxhash.xxh3_64:
    """A copy of ``h`` updated with ``buf`` (``h`` itself is left as it was)."""
    h = h.copy()
    h.update(buf)
    return h


def paths_bytes(paths: Sequence[str]) -> bytes:
    return b"".join(p.encode("utf-8") + b"\0" for p in paths)


def fmt_hash(h: xxhash.xxh3_64) -> str:
    return f"{HASH}:{h.hexdigest()}"


def file_digest(path: Path) -> str:
    """XXH3-64 of a file's bytes, read in 256 KiB blocks into one reused buffer.

    ~6 GB/s from the page cache here (a memory map reached ~10 GB/s but counts the
    whole file in the process's resident memory, which bounded-memory reads
    must not); readers and the writer run it on a worker thread, behind other work.
    """
    h = hasher()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return fmt_hash(h)


# --------------------------------------------------------------------------- the manifest


def _classes(v: Any, path: Path) -> list[Any] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise StoreError(f"{path}: 'classes' must be a list or null; got {type(v).__name__}")
    for c in v:
        if isinstance(c, bool) or not isinstance(c, str | int):
            raise StoreError(f"{path}: class names must be strings or ints; got {c!r}")
        if isinstance(c, str) and "\0" in c:
            raise StoreError(f"{path}: a class name holds a NUL byte")
    if len(set(v)) != len(v):
        raise StoreError(f"{path}: class names repeat")
    return v


def read_manifest(root: Path) -> tuple[dict[str, Any], tuple[ShardInfo, ...]]:
    """The manifest of the store at ``root``, every field checked, and its shard entries.

    Reader and writer both open stores through this function, so they accept
    and refuse the same manifests. Shard files are not touched here (see
    :func:`check_shard_files`).

    Raises
    ------
    StoreError
        Naming the manifest and the field at fault.
    """
    path = root / MANIFEST_NAME
    if not root.exists():
        raise StoreError(f"{root}: no such store (the directory does not exist)")
    if not root.is_dir():
        raise StoreError(f"{root}: not a store (a store is a directory holding {MANIFEST_NAME})")
    if not path.is_file():
        raise StoreError(f"{root}: not a faissclass store (no {MANIFEST_NAME} in it)")

    def no_constants(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON")

    try:
        m = json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
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
    dim = _int_field(m["dim"], f"{path}: 'dim'", 1, MAX_DIM)
    if not isinstance(m["dtype"], str) or m["dtype"] not in DTYPES:
        raise StoreError(f"{path}: unknown dtype {m['dtype']!r} (expected one of {list(DTYPES)})")
    _int_field(m["shard_size"], f"{path}: 'shard_size'", 1, _MAX_ROWS)
    if not isinstance(m["shards"], list):
        raise StoreError(f"{path}: 'shards' must be a list; got {type(m['shards']).__name__}")
    for key, types in (("normalized", (bool,)), ("has_paths", (bool, type(None)))):
        if key in m and not isinstance(m[key], types):
            raise StoreError(f"{path}: {key!r} must be {' or '.join(t.__name__ for t in types)}"
                             f"; got {m[key]!r}")
    for key in ("metadata", "info", "provenance"):
        if key in m and not isinstance(m[key], dict):
            raise StoreError(f"{path}: {key!r} must be an object; got {type(m[key]).__name__}")
    _classes(m.get("classes"), path)
    pending = m.get("pending")
    if pending is not None:
        ok = isinstance(pending, dict) and isinstance(pending.get("file"), str) and \
            isinstance(pending.get("partial"), str)
        fm = ok and SHARD_RE.match(pending["file"])
        pm = ok and PARTIAL_RE.match(pending["partial"])
        if not (fm and pm and fm.group(1) == pm.group(1)
                and pending["partial"].startswith(pending["file"] + ".")):
            raise StoreError(f"{path}: 'pending' must be null or name one shard of this "
                             f"directory and its partial file; got {pending!r}")
    itemsize = np.dtype(DTYPES[m["dtype"]]).itemsize
    shards = tuple(ShardInfo.from_json(s, path, i) for i, s in enumerate(m["shards"]))
    seen: set[str] = set()
    for i, s in enumerate(shards):
        check_shard_name(s.file, path, i)
        if s.file in seen:
            raise StoreError(f"{path}: shard {s.file!r} is listed twice")
        seen.add(s.file)
        # A shard cannot hold more rows than its bytes: checked here, so that no
        # allocation sized by a damaged 'rows' happens before the shard is opened.
        if s.rows * dim * itemsize > s.bytes:
            raise StoreError(f"{path}: shard entry {i} ({s.file}) claims {s.rows} rows of "
                             f"{dim} × {m['dtype']}, more than its recorded size holds")
    total = sum(s.rows for s in shards)
    if "rows" in m:
        rows = _int_field(m["rows"], f"{path}: 'rows'", 0, _MAX_ROWS)
        if rows != total:
            raise StoreError(f"{path}: rows={rows} but the shards hold {total}")
    return m, shards


def check_shard_name(file: str, manifest: Path, i: int = 0) -> None:
    """Refuse a shard name that could leave the store directory (before touching it)."""
    where = f"{manifest}: shard entry {i}"
    if not file or "\0" in file or any(ord(ch) < 32 for ch in file):
        raise StoreError(f"{where} has an empty name or one with NUL/control characters")
    p = PurePosixPath(file)
    if p.is_absolute() or "\\" in file or any(part in ("", ".", "..") for part in
                                                file.split("/")):
        raise StoreError(f"{where} names {file!r}, which is not a plain path inside the store "
                         "directory (absolute paths and '..' are refused)")


def resolve_shard(root: Path, file: str, manifest: Path | None = None) -> Path:
    """The path of a listed shard, refusing anything outside ``root`` or not a regular file.

    Symlinks are followed only if they stay inside the store. Messages name the
    entry, never the size or contents of what lies outside.
    """
    manifest = root / MANIFEST_NAME if manifest is None else manifest
    check_shard_name(file, manifest)
    p = root / file
    try:
        real = p.resolve(strict=True)
    except FileNotFoundError:
        raise StoreError(f"{p}: shard listed in {MANIFEST_NAME} is missing") from None
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise StoreError(f"{p}: cannot resolve the shard path ({type(exc).__name__})") from None
    if not real.is_relative_to(root.resolve()):
        raise StoreError(f"{manifest}: shard {file!r} leads outside the store directory "
                         "(a symlink?); refusing to read it")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise StoreError(f"{p}: cannot stat the shard ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{p}: shard listed in {MANIFEST_NAME} is not a regular file "
                         "(a FIFO, device or directory); refusing to open it")
    return real  # the checked file itself: a symlink swapped in later is not followed


def check_shard_files(root: Path, shards: Sequence[ShardInfo]) -> list[Path]:
    """Cheap damage check: every shard is a regular file inside the store with the size
    the manifest recorded. Returns the shard paths."""
    out = []
    for s in shards:
        p = resolve_shard(root, s.file)
        size = p.stat().st_size
        if size != s.bytes:
            raise StoreError(
                f"{p}: shard is {size} bytes, the manifest recorded {s.bytes} "
                "(truncated or overwritten)"
            )
        out.append(p)
    return out


# --------------------------------------------------------------------------- HDF5 access

# What h5py raises for damaged files besides OSError: KeyError and RuntimeError
# from the C library, ValueError/TypeError/AttributeError from its wrappers,
# UnicodeDecodeError from string datasets.
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError,
             UnicodeDecodeError, IndexError)


@contextlib.contextmanager
def h5_errors(path: Path, doing: str) -> Iterator[None]:
    """Turn anything h5py raises inside the block into a StoreError naming ``path``."""
    try:
        yield
    except StoreError:
        raise
    except H5_ERRORS as exc:
        raise StoreError(f"{path}: {doing} failed ({type(exc).__name__}: {exc})") from exc


def open_h5(path: Path) -> h5py.File:
    with h5_errors(path, "opening the shard"):
        return h5py.File(path, "r", rdcc_nbytes=0)


def shard_datasets(f: h5py.File, path: Path, info: ShardInfo, dim: int, dtype: np.dtype,
                   has_paths: bool) -> dict[str, h5py.Dataset]:
    """The datasets of an open shard, checked against the manifest and for anything that
    would read outside the file (external storage or links, virtual datasets) or run
    code (HDF5 filter plugins)."""
    want: dict[str, tuple[tuple[int, ...], np.dtype | None]] = {
        "embeddings": ((info.rows, dim), dtype),
        "labels": ((info.rows,), np.dtype(np.int64)),
        "ids": ((info.rows,), np.dtype(np.int64)),
    }
    if has_paths:
        want["paths"] = ((info.rows,), None)
    out = {}
    with h5_errors(path, "reading the shard's structure"):
        for name, (shape, dt) in want.items():
            link = f.get(name, getlink=True)
            if link is None:
                raise StoreError(f"{path}: dataset {name!r} is missing")
            if not isinstance(link, h5py.HardLink):
                raise StoreError(f"{path}: {name!r} is a {type(link).__name__}, not a dataset "
                                 "stored in the shard; refusing to follow it")
            ds = f[name]
            if not isinstance(ds, h5py.Dataset):
                raise StoreError(f"{path}: {name!r} is not a dataset")
            if ds.is_virtual or ds.external:
                raise StoreError(f"{path}: dataset {name!r} keeps its data in other files "
                                 "(virtual or external storage); refusing to read it")
            if ds.id.get_create_plist().get_nfilters():
                raise StoreError(f"{path}: dataset {name!r} uses HDF5 filters, which "
                                 "faissclass never writes; refusing to read it")
            if ds.shape != shape:
                raise StoreError(
                    f"{path}: dataset {name!r} has shape {ds.shape}, the manifest says {shape}"
                )
            if dt is not None and ds.dtype != dt:
                raise StoreError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected {dt}")
            if dt is None:
                sd = h5py.check_string_dtype(ds.dtype)
                if sd is None or sd.length is not None:
                    raise StoreError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected "
                                     "variable-length strings")
            out[name] = ds
    return out
