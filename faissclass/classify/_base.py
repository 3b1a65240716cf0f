"""What both classifiers share: input checks, label encoding, top-k, saving and loading.

Labels (``classes_``) may be any hashable values numpy can sort (ints, strings):
sorted when fitted from arrays, in the store's class order when fitted from a
store; classes added later are appended. Ties break by (score descending,
class order ascending): the class that comes first in ``classes_`` wins.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .._atomic import atomic_save_dir
from .._validation import IndexFileError, check_finite_embeddings, check_int

CLASSIFIER_FORMAT = "faissclass.classifier"


def json_labels(classes: np.ndarray) -> list[Any]:
    return [c.item() if hasattr(c, "item") else c for c in classes]


def class_to_remove(classes: np.ndarray, label: Any) -> int:
    """The code of ``label`` among ``classes``, checked for ``remove_class``: known, and
    not the last class left."""
    labels = json_labels(classes)
    if label not in labels:
        raise ValueError(f"unknown class {label!r}; classes are {labels[:10]}"
                         + (" ..." if len(labels) > 10 else ""))
    if len(labels) == 1:
        raise ValueError("cannot remove the last class")
    return labels.index(label)


def ranked(scores: np.ndarray, n: int) -> np.ndarray:
    """Column order of the n best scores per row: score descending, column ascending."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def check_labels(y: Any, n: int, *, name: str = "y") -> np.ndarray:
    """Class labels as a 1-D array of ``n``: no NaN or inf, not continuous values.

    A column vector (n, 1) is flattened with sklearn's DataConversionWarning.
    """
    yy = np.asarray(y)
    if yy.ndim == 2 and yy.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected; flattened "
                      "to shape (n_samples,)", DataConversionWarning, stacklevel=3)
        yy = yy.ravel()
    if yy.ndim != 1 or yy.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one label per row ({n}); got shape "
                         f"{yy.shape}")
    if yy.dtype.kind == "f":
        bad = ~np.isfinite(yy)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} must not hold NaN or inf; element {i} is {yy[i]}")
    elif yy.dtype.kind == "O":
        for i, v in enumerate(yy.tolist()):
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                raise ValueError(f"{name} must not hold None, NaN or inf; element {i} is {v!r}")
    if n:
        check_classification_targets(yy)  # "Unknown label type: continuous" for regression y
    return yy


class BaseClassifier(ClassifierMixin, BaseEstimator):
    """Shared label handling and persistence."""

    classes_: np.ndarray
    n_features_in_: int

    # ------------------------------------------------------------------ checks

    def _check_fitted(self) -> None:
        check_is_fitted(self, "classes_")

    def _queries(self, X: Any, name: str = "X") -> np.ndarray:
        """``X`` as finite float32 (n, n_features_in_), with sklearn's messages."""
        x = check_finite_embeddings(X, dim=None, name=name)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input (queries "
                             f"have dim {x.shape[1]}, expected {self.n_features_in_})")
        return x

    @staticmethod
    def _fit_input(X: Any) -> np.ndarray:
        x = check_finite_embeddings(X, dim=None, name="X")
        if x.shape[1] == 0:
            raise ValueError(f"0 feature(s) (shape={x.shape}) while a minimum of 1 is "
                             "required.")
        if x.shape[0] == 0:
            raise ValueError(f"0 sample(s) (shape={x.shape}) while a minimum of 1 is "
                             "required.")
        return x

    def _requires_y(self, y: Any) -> None:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None (fit(X, y) with labels, or fit(store))")

    def _encode(self, y: Any, n: int, *, grow: bool) -> tuple[np.ndarray, list[Any]]:
        """(class codes of labels ``y``, new labels in order of appearance).

        Unseen labels get codes after the current classes when ``grow``; they are
        returned, not added: the caller commits them once everything else passed.
        """
        yy = check_labels(y, n)
        pos = {c: i for i, c in enumerate(json_labels(self.classes_))}
        # A Python loop over the distinct labels only, not over the rows.
        uniq, first, inverse = np.unique(yy, return_index=True, return_inverse=True)
        codes = np.empty(uniq.size, np.int64)
        new: list[Any] = []
        for j in np.argsort(first, kind="stable"):  # new classes in order of appearance
            v = json_labels(uniq[j:j + 1])[0]
            code = pos.get(v)
            if code is None:
                if not grow:
                    raise ValueError(f"label {v!r} is not one of the fitted classes")
                code = pos[v] = len(pos)
                new.append(v)
            codes[j] = code
        return codes[inverse.reshape(-1)], new

    def _grown_classes(self, new: list[Any]) -> np.ndarray:
        if not new:
            return self.classes_
        grown = np.asarray(json_labels(self.classes_) + new)
        if grown.dtype.kind != self.classes_.dtype.kind:
            raise ValueError(
                f"new label {new[0]!r} ({type(new[0]).__name__}) is not of the kind of the "
                f"fitted classes ({self.classes_.dtype}); numpy would turn every label into "
                "one type. Use labels of one type.")
        return grown

    # ------------------------------------------------------------------ prediction

    def predict(self, X: Any) -> np.ndarray:
        """Most likely class of each row, shape (n,)."""
        self._check_fitted()
        s = self._scores(X)
        return None if s is None else self.classes_[s.argmax(axis=1)]  # type: ignore

    def predict_topk(self, X: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best classes per row and their scores, best first.

        Returns
        -------
        labels : numpy.ndarray, shape (rows, n)
        scores : numpy.ndarray, shape (rows, n), float
        """
        self._check_fitted()
        n = check_int(n, "n", max_value=len(self.classes_))
        s = self._scores(X)
        if s is None:  # a rank a sharded searcher does not answer on
            return None  # type: ignore[return-value]
        order = ranked(s, n)
        return self.classes_[order], np.take_along_axis(s, order, 1)

    def _scores(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence

    def _save_dir(self, path: str | os.PathLike[str], write: Callable[[Path], dict[str, Any]],
                  own: tuple[str, ...], overwrite: bool) -> Path:
        """Save atomically: ``write(tmpdir)`` writes the arrays and returns the meta."""

        def write_all(d: Path) -> None:
            from ..store._manifest import file_digest

            meta = {"format": CLASSIFIER_FORMAT, "type": type(self).__name__,
                    "classes": json_labels(self.classes_), **write(d)}
            meta["checksums"] = {p.name: file_digest(p) for p in sorted(d.glob("*.npy"))}
            (d / "classifier.json").write_text(json.dumps(meta, indent=1, allow_nan=False))

        return atomic_save_dir(path, write_all, marker="classifier.json", kind="classifier",
                               own=("classifier.json", *own), overwrite=bool(overwrite),
                               format_name=CLASSIFIER_FORMAT)

    @classmethod
    def _read_meta(cls, path: Path) -> dict[str, Any]:
        f = path / "classifier.json"
        try:
            meta = json.loads(f.read_text())
        except FileNotFoundError:
            raise IndexFileError(f"{path}: not a saved classifier (no classifier.json)") \
                from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise IndexFileError(f"{f}: unreadable ({exc})") from exc
        if not isinstance(meta, dict):
            raise IndexFileError(f"{f}: not a saved classifier")
        if meta.get("type") != cls.__name__:
            raise IndexFileError(f"{path} holds a {meta.get('type')}, not a {cls.__name__}")
        classes = meta.get("classes")
        if not isinstance(classes, list) or not classes or len(set(map(repr, classes))) != \
                len(classes):
            raise IndexFileError(f"{f}: 'classes' must be a non-empty list of unique labels")
        sums = meta.get("checksums", {})  # classifiers saved before 0.2 have none
        if not isinstance(sums, dict):
            raise IndexFileError(f"{f}: 'checksums' must map file names to checksums")
        from ..store._manifest import file_digest

        for name, want in sums.items():
            if not isinstance(name, str) or "/" in name or not name.endswith(".npy"):
                raise IndexFileError(f"{f}: checksum entry {name!r} is not a file of it")
            try:
                got = file_digest(path / name)
            except OSError as exc:
                raise IndexFileError(f"{path / name}: unreadable ({exc.strerror})") from None
            if got != want:
                raise IndexFileError(f"{path / name}: checksum {got}, classifier.json "
                                     f"recorded {want} (the file is damaged or was replaced)")
        return meta


def load_array(f: Path, *, dtype: Any, ndim: int) -> np.ndarray:
    """A saved .npy array of the given dtype and rank (never unpickled)."""
    try:
        a = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise IndexFileError(f"{f}: missing") from None
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"{f}: unreadable ({exc})") from exc
    if a.dtype != np.dtype(dtype) or a.ndim != ndim:
        raise IndexFileError(f"{f}: holds {a.dtype} of shape {a.shape}; expected "
                             f"{np.dtype(dtype)} with {ndim} dimension(s)")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise IndexFileError(f"{f}: holds NaN or inf")
    return a


def meta_check(f: Path, what: str, check: Callable[[], Any]) -> Any:
    """Run a parameter check on a loaded value, turning its error into IndexFileError."""
    try:
        return check()
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"{f}: {what}: {exc}") from None
