"""The store's on-disk format: manifest I/O and checks, shard files, checksums."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from .._validation import (
    StoreError,
)

try:  # POSIX advisory lock; absent on Windows, where the store is simply unlocked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DTYPES", "MANIFEST_NAME", "ShardInfo", "StoreError"]

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
    from .._version import __version__

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


