"""Error types and input checks shared by every layer.

Each check raises a ValueError or TypeError that says what was expected, what
came, and how to fix it. Nothing here imports faiss, torch or h5py.

Errors for damaged state (not bad arguments)::

    FaissclassError
    └── FormatError            a file faissclass wrote is damaged or not what it claims
        ├── StoreError         an embedding store (names the file at fault)
        └── IndexFileError     a saved index or classifier (names the file at fault)

Unfitted estimators raise scikit-learn's ``NotFittedError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FaissclassError",
    "FormatError",
    "IndexFileError",
    "StoreError",
    "check_choice",
    "check_embeddings",
    "check_finite_embeddings",
    "check_id_vector",
    "check_int",
    "check_int_vector",
    "check_positive_float",
    "first_nonfinite_row",
]


class FaissclassError(Exception):
    """Base class of the errors faissclass raises for damaged state (not bad arguments)."""


class FormatError(FaissclassError):
    """A file written by faissclass is damaged, tampered with, or of another format.

    The message names the file at fault.
    """


class StoreError(FormatError):
    """An embedding store on disk is missing, damaged or inconsistent.

    The message names the file at fault.
    """


class IndexFileError(FormatError):
    """A saved index or classifier directory is missing, damaged or inconsistent.

    The message names the file at fault.
    """


# --------------------------------------------------------------------------- scalars


def check_int(value: Any, name: str, *, min_value: int | None = 1,
              max_value: int | None = None) -> int:
    """``value`` as a Python int, if it is an integer (Python or numpy, not bool) in range.

    Parameters
    ----------
    value : Any
    name : str
        Name used in the error message.
    min_value, max_value : int or None
        Inclusive bounds; None leaves that side open. The default asks for a
        positive int.

    Raises
    ------
    ValueError
        Not an integer (floats such as ``4.0`` and bools are refused), or
        outside the bounds. The message says which range was expected.
    """
    if max_value is None:
        want = ("a positive int" if min_value == 1 else "an int" if min_value is None
                else f"an int >= {min_value}")
    elif min_value is None:
        want = f"an int <= {max_value}"
    elif min_value == 1:
        want = f"a positive int <= {max_value}"
    else:
        want = f"an int in [{min_value}, {max_value}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {want}; got {value!r} ({type(value).__name__})")
    v = int(value)
    if (min_value is not None and v < min_value) or (max_value is not None and v > max_value):
        raise ValueError(f"{name} must be {want}; got {v}")
    return v


def check_positive_float(value: Any, name: str) -> float:
    """``value`` as a finite float > 0 (ints accepted; bools, NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r} "
                         f"({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
    return v


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it equals one of ``choices`` (same type: ``True`` is not ``1``)."""
    for c in choices:
        if type(c) is type(value) and c == value:
            return value
    raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


# --------------------------------------------------------------------------- arrays


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
        if hasattr(x, "tocsr") and hasattr(x, "nnz"):  # scipy.sparse, without importing it
            raise TypeError(f"{name}: sparse input is not supported; pass a dense array "
                            "(X.toarray())")
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a 2-D array of floats; got {type(x).__name__}"
            ) from exc
    if arr.dtype.kind == "c":
        raise ValueError(f"{name}: Complex data not supported (got dtype {arr.dtype}); "
                         "embeddings are real vectors")
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(
            f"{name} must hold floating-point values (float16/32/64); got dtype {arr.dtype}. "
            "Cast explicitly if integer values really are coordinates."
        )
    if arr.ndim != 2:
        hint = (" (a single vector? Reshape your data with x[None, :])" if arr.ndim == 1
                else "")
        raise ValueError(f"{name} must be 2-D (rows, dim); got shape {arr.shape}{hint}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dim {arr.shape[1]}, expected {dim}")
    if dtype is not None and arr.dtype != dtype:
        with np.errstate(over="ignore"):  # overflow shows as inf; callers report it by row
            arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def check_finite_embeddings(x: Any, *, dim: int | None, name: str = "embeddings"
                            ) -> np.ndarray:
    """:func:`check_embeddings` as float32, and every value finite (names the first bad row)."""
    arr = check_embeddings(x, dim=dim, name=name, dtype=np.dtype(np.float32))
    bad = first_nonfinite_row(arr)
    if bad is not None:
        raise ValueError(f"{name} row {bad} holds NaN or inf")
    return arr


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
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # a huge finite sum can overflow
            total = np.add.reduce(x, axis=None, dtype=np.float64)
        if np.isfinite(total):
            return None
    bad = ~np.isfinite(x).all(axis=1)
    rows = np.flatnonzero(bad)
    return int(rows[0]) if rows.size else None


def check_int_vector(v: Any, *, n: int, name: str) -> np.ndarray:
    """Return ``v`` as an int64 vector of length ``n``.

    Integer dtypes are accepted; floats are accepted only when every value is
    integral and exactly representable (labels read from a float CSV column,
    say); NaN, inf and anything else is refused.
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
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{name} must be integers; element {i} is {float(arr[i])}")
        # Beyond 2**53 a float no longer holds every integer: refuse rather than truncate.
        if np.all(arr == np.round(arr)) and (arr.size == 0 or float(np.abs(arr).max()) <= 2**53):
            return arr.astype(np.int64)
        bad = int(np.flatnonzero((arr != np.round(arr)) | (np.abs(arr) > 2**53))[0])
        raise TypeError(f"{name} must be integers; got dtype {arr.dtype} with element {bad} = "
                        f"{float(arr[bad])}")
    raise TypeError(f"{name} must be integers; got dtype {arr.dtype}")


def check_id_vector(v: Any, *, n: int, name: str = "ids") -> np.ndarray:
    """:func:`check_int_vector`, refusing -1: FAISS's "no result" marker cannot be an id."""
    ids = check_int_vector(v, n=n, name=name)
    if ids.size and (ids == -1).any():
        i = int(np.flatnonzero(ids == -1)[0])
        raise ValueError(f"{name}[{i}] is -1, which FAISS uses for 'no result'; ids must not be "
                         "-1 (use ids >= 0)")
    return ids


def check_str_sequence(v: Any, *, n: int, name: str) -> list[str]:
    """Return ``v`` as a list of ``n`` strings (e.g. image paths)."""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of str, one per row; got {type(v).__name__}")
    out = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in v]
    if len(out) != n:
        raise ValueError(f"{name} have length {len(out)}, expected {n} (one per embedding row)")
    return out
