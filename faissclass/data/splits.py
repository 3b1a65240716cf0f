"""Seeded stratified splits of a labelled set, saved to and restored from JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import StoreError

__all__ = ["load_splits", "make_splits", "save_splits"]


def make_splits(labels: Any, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded stratified split of rows 0..n-1 by fraction, e.g.
    ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (fractions must sum to 1).

    Each class is shuffled with the seed and cut in the given proportions
    (largest-remainder rounding), so every split holds every class that is
    large enough. Returns sorted row indices per split.
    """
    y = np.asarray(labels)
    names = list(fractions)
    f = np.asarray([float(fractions[k]) for k in names])
    if np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1; got {fractions}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        exact = f * rows.size
        counts = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - counts), kind="stable")[:rows.size - counts.sum()]:
            counts[j] += 1
        for k, part in zip(names, np.split(rows, np.cumsum(counts)[:-1]), strict=True):
            out[k].append(part)
    return {k: np.sort(np.concatenate(v)) if v else np.empty(0, np.int64)
            for k, v in out.items()}


def save_splits(path: str | os.PathLike[str], splits: dict[str, np.ndarray],
                **meta: Any) -> None:
    """Write splits (and what they were made from: dataset, seed, ...) to JSON."""
    doc = {"format": "faissclass.splits", "meta": meta,
           "splits": {k: np.asarray(v).tolist() for k, v in splits.items()}}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def load_splits(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(splits, meta) as saved by :func:`save_splits`."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable splits file ({exc})") from exc
    if doc.get("format") != "faissclass.splits":
        raise StoreError(f"{path}: not a faissclass splits file")
    return {k: np.asarray(v, np.int64) for k, v in doc["splits"].items()}, doc.get("meta", {})
