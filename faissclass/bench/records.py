"""Benchmark records: one JSON object per cell, one line each in a JSONL file.

Appends are atomic (one ``write`` of a whole line under an exclusive lock, then
fsync), so a killed run never leaves half a record, and several jobs may append
to one file. A record's ``key`` names its cell (dataset, device, index, search
settings, classifier) and a digest of the configuration that shapes its numbers;
a resumed run skips cells whose key is already in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["SCHEMA", "SCHEMA_VERSION", "append_record", "cell_key", "done_keys",
           "load_records", "validate_record"]

SCHEMA_VERSION = "faissclass.bench/1"

_PHASE = {"type": "object", "required": ["seconds"], "properties": {
    "seconds": {"type": "number"}, "all_seconds": {"type": "array", "items": {"type": "number"}},
    "peak_rss_bytes": {"type": ["integer", "null"]},
    "start_rss_bytes": {"type": ["integer", "null"]},
    "gpu_peak_bytes": {"type": ["integer", "null"]},
    "items_per_s": {"type": ["number", "null"]}}}

#: The record format as a JSON Schema (draft 2020-12 subset), for other tools too.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "faissclass benchmark record",
    "type": "object",
    "required": ["schema", "key", "run", "cell", "phases", "accuracy", "sizes", "provenance",
                 "config"],
    "properties": {
        "schema": {"enum": [SCHEMA_VERSION]},
        "key": {"type": "string"},
        "run": {"type": "string"},
        "cell": {"type": "object", "required": ["dataset", "device", "classifier", "index"],
                 "properties": {
                     "dataset": {"type": "string"}, "device": {"type": "string"},
                     "classifier": {"enum": ["knn", "prototype", "linear", "embed"]},
                     "index": {"type": ["string", "null"]},
                     "factory": {"type": ["string", "null"]},
                     "params": {"type": "object"}}},
        "phases": {"type": "object", "additionalProperties": _PHASE},
        "index_bytes": {"type": ["integer", "null"]},
        "accuracy": {"type": "object", "properties": {
            "val": {"type": "object"}, "train": {"type": "object"}}},
        "recall": {"type": "object"},
        "sizes": {"type": "object", "required": ["n_train", "n_val", "dim"]},
        "provenance": {"type": "object", "required": ["faissclass", "cpu", "hostname"]},
        "config": {"type": "object"},
        "world_size": {"type": "integer"},
        "fresh_process": {"type": "boolean"},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float),
          "integer": int, "boolean": bool, "null": type(None)}


def _check(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("number", "integer") and
                                                        isinstance(value, bool))
                 for t in types)
        if not ok:
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"]
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errors.append(f"{where}: missing {k!r}")
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errors += _check(value[k], sub, f"{where}.{k}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                if k not in schema.get("properties", {}):
                    errors += _check(v, extra, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _check(v, schema["items"], f"{where}[{i}]")
    return errors


def validate_record(record: Any) -> None:
    """Raise ValueError listing every way ``record`` departs from :data:`SCHEMA`."""
    errors = _check(record, SCHEMA, "record")
    if errors:
        raise ValueError("invalid benchmark record: " + "; ".join(errors[:10]))


def cell_key(cell: dict[str, Any], shaping: dict[str, Any]) -> str:
    """The stable name of a cell: its coordinates and a digest of the configuration
    that shapes its numbers (dataset, model, the index spec, classifier settings)."""
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    params = json.dumps(cell.get("params") or {}, sort_keys=True, separators=(",", ":"))
    return "|".join([str(cell["dataset"]), str(cell["device"]), str(cell.get("index")),
                     params, str(cell["classifier"]), digest])


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one validated record as one line, atomically (see the module doc)."""
    validate_record(record)
    line = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # drops the lock


def load_records(paths: Iterable[str | os.PathLike[str]], *, validate: bool = True
                 ) -> list[dict[str, Any]]:
    """Every record of one or more JSONL files, in order. A last line cut short (a
    file copied while a job was appending) is skipped; any other bad line is an
    error naming the file and line."""
    out = []
    for path in paths:
        p = Path(path)
        lines = p.read_bytes().split(b"\n")
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                if i == len(lines):  # no newline after it: a cut-off append
                    continue
                raise ValueError(f"{p}:{i}: not a JSON record ({exc})") from None
            if validate:
                try:
                    validate_record(rec)
                except ValueError as exc:
                    raise ValueError(f"{p}:{i}: {exc}") from None
            out.append(rec)
    return out


def done_keys(path: str | os.PathLike[str]) -> set[str]:
    """Keys of the records already in ``path`` (empty if it does not exist)."""
    p = Path(path)
    if not p.exists():
        return set()
    return {r["key"] for r in load_records([p], validate=False) if "key" in r}
