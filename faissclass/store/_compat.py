"""Whether two stores can meet: embedded by the same model, weights and preprocessing,
with the same width, normalisation and classes. Train a classifier on one and
score the other only if they agree; a mismatch otherwise gives chance-level
numbers without a word."""

from __future__ import annotations

from typing import Any

from .._validation import FaissclassError

__all__ = ["IncompatibleStoresError", "check_compatible", "store_differences"]

# Metadata that shapes the embedding: what model, which weights, how images were
# prepared (timm's data config: size, crop, interpolation, mean, std), and for
# synthetic stores the generator.
_SHAPING = ("model", "weights", "pretrained_cfg_id", "generator")
_DATA_CONFIG = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


class IncompatibleStoresError(FaissclassError, ValueError):
    """Two stores that must agree (train and test) were embedded differently."""


def _describe(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def store_differences(a: Any, b: Any) -> list[str]:
    """What differs between two stores in what shapes their embeddings (empty: they
    can meet). ``a`` and ``b`` are :class:`EmbeddingStore` objects."""
    diffs = []
    if a.dim != b.dim:
        diffs.append(f"dim {a.dim} vs {b.dim}")
    if a.normalized != b.normalized:
        diffs.append(f"normalized {a.normalized} vs {b.normalized}")
    if a.classes is not None and b.classes is not None and a.classes != b.classes:
        only = sorted(set(map(str, b.classes)) - set(map(str, a.classes)))[:3]
        diffs.append(f"classes ({len(a.classes)} vs {len(b.classes)}"
                     + (f"; e.g. {only} only in the second" if only else "; another order")
                     + ")")
    ma, mb = a.metadata, b.metadata
    for key in _SHAPING:
        if ma.get(key) != mb.get(key):
            diffs.append(f"{key} {_describe(ma.get(key))} vs {_describe(mb.get(key))}")
    ca, cb = ma.get("data_config") or {}, mb.get("data_config") or {}
    for key in _DATA_CONFIG:
        if ca.get(key) != cb.get(key):
            diffs.append(f"data_config.{key} {_describe(ca.get(key))} vs "
                         f"{_describe(cb.get(key))}")
    return diffs


def check_compatible(a: Any, b: Any, *, allow_mismatch: bool = False) -> list[str]:
    """Raise :class:`IncompatibleStoresError` naming every difference between the two
    stores (see :func:`store_differences`), unless ``allow_mismatch``; returns the
    differences either way."""
    diffs = store_differences(a, b)
    if diffs and not allow_mismatch:
        raise IncompatibleStoresError(
            f"{a.root} and {b.root} were not embedded alike: " + "; ".join(diffs)
            + ". Scores across them would be meaningless; embed both with the same model "
            "and preprocessing (or override knowingly: allow_mismatch / --allow-mismatch).")
    return diffs
