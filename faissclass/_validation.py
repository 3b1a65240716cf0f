"""Error types and input checks shared by every layer.

Each check raises a ValueError or TypeError that says what was expected, what
came, and how to fix it. Nothing here imports faiss, torch or h5py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FaissclassError",
    "StoreError",
    "check_embeddings",
    "check_int_vector",
    "first_nonfinite_row",
]


class FaissclassError(Exception):
    """Base class of the errors faissclass raises for damaged state (not bad arguments)."""


class StoreError(FaissclassError):
    """An embedding store on disk is missing, damaged or inconsistent.

    The message names the file at fault.
    """


_FLOAT_KINDS = "f"


def check_embeddings(
    x: Any, *, dim: int | None, name: str = "embeddings", dtype: np.dtype | None = None
) -> np.ndarray:
    """Return ``x`` as a C-contiguous 2-D float array of width ``dim``.

    Parameters
    ----------
    x : array_like, shape (n, dim)
        Floating-point values. Integer and boolean input is rejected rather than
        silently reinterpreted as coordinates.
    dim : int or None
        Required width; None accepts any width.
    name : str
        Name used in error messages.
    dtype : numpy dtype, optional
        Cast to this dtype (float64 -> float32, float32 -> float16 and so on).
        The cast is the only conversion done silently.

    Returns
    -------
    numpy.ndarray, shape (n, dim)
        Not a copy when ``x`` already has the requested dtype and layout.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a 2-D array of floats; got {type(x).__name__}"
            ) from exc
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(
            f"{name} must hold floating-point values (float16/32/64); got dtype {arr.dtype}. "
            "Cast explicitly if integer values really are coordinates."
        )
    if arr.ndim != 2:
        hint = " (a single vector? use x[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (rows, dim); got shape {arr.shape}{hint}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dim {arr.shape[1]}, expected {dim}")
    if dtype is not None and arr.dtype != dtype:
        with np.errstate(over="ignore"):  # overflow shows as inf; callers report it by row
            arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def first_nonfinite_row(x: np.ndarray) -> int | None:
    """Index of the first row of ``x`` holding NaN or +-inf, or None if all are finite.

    Fast path: for float32/64 a finite sum proves every element finite (a NaN or
    an infinity always propagates into the sum); for float16 the exponent bits
    are tested directly. Only when that fast test fails is the exact row found.
    """
    if x.size == 0:
        return None
    if x.dtype == np.float16:
        # Exponent all ones = inf/NaN. Blocks of 256 Ki values keep the
        # temporary in cache instead of allocating a batch-sized array.
        bits = x.reshape(-1).view(np.uint16)
        tmp = np.empty(min(bits.size, 1 << 18), np.uint16)
        for i in range(0, bits.size, tmp.size):
            blk = bits[i:i + tmp.size]
            if int(np.bitwise_and(blk, 0x7FFF, out=tmp[:blk.size]).max()) >= 0x7C00:
                break
        else:
            return None
    elif np.isfinite(np.add.reduce(x, axis=None)):
        return None
    bad = ~np.isfinite(x).all(axis=1)
    rows = np.flatnonzero(bad)
    return int(rows[0]) if rows.size else None


def check_int_vector(v: Any, *, n: int, name: str) -> np.ndarray:
    """Return ``v`` as an int64 vector of length ``n``.

    Integer dtypes are accepted; floats are accepted only when every value is
    integral (labels read from a float CSV column, say); anything else is a
    TypeError.
    """
    arr = np.asarray(v)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} have length {arr.shape[0]}, expected {n} (one per embedding row)")
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{name} exceed the int64 range")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise TypeError(f"{name} must be integers; got dtype {arr.dtype}")


def check_str_sequence(v: Any, *, n: int, name: str) -> list[str]:
    """Return ``v`` as a list of ``n`` strings (e.g. image paths)."""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of str, one per row; got {type(v).__name__}")
    out = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in v]
    if len(out) != n:
        raise ValueError(f"{name} have length {len(out)}, expected {n} (one per embedding row)")
    return out
