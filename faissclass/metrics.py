"""Accuracy measures: plain numpy, scipy and scikit-learn; nothing else from faissclass.

Conventions: ``y_true`` holds labels (any hashable dtype numpy can sort);
``topk`` / ``scores`` hold per-class columns in the order of ``classes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import confusion_matrix as _sk_confusion
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedShuffleSplit

__all__ = [
    "confusion",
    "cumulative_accuracy",
    "f1_scores",
    "least_accurate_classes",
    "mean_confidence_interval",
    "per_class_accuracy",
    "recall_at_k",
    "repeated_splits",
    "topk_accuracy",
]


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {t.shape[0]} rows, predictions have {p.shape[0]}")
    return t, p


def topk_accuracy(y_true: Any, topk_labels: Any, k: int | None = None) -> float:
    """Share of rows whose true label is among the first ``k`` predicted labels.

    Parameters
    ----------
    y_true : array_like, shape (n,)
    topk_labels : array_like, shape (n, m)
        Labels ranked best first (e.g. ``predict_topk(X, m)[0]``).
    k : int, optional
        Columns to use (default: all m).
    """
    t, p = _pair(y_true, topk_labels)
    if p.ndim != 2:
        raise ValueError(f"topk_labels must be 2-D (n, m); got shape {p.shape}")
    k = p.shape[1] if k is None else int(k)
    if not 1 <= k <= p.shape[1]:
        raise ValueError(f"k={k} outside 1..{p.shape[1]}")
    return float(np.mean((p[:, :k] == t[:, None]).any(axis=1))) if t.size else float("nan")


def per_class_accuracy(y_true: Any, y_pred: Any, classes: Sequence[Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(classes, accuracy of each) — recall per class. Classes absent from y_true get NaN."""
    t, p = _pair(y_true, y_pred)
    cls = np.unique(t) if classes is None else np.asarray(classes)
    acc = np.full(cls.shape[0], np.nan)
    for i, c in enumerate(cls):
        m = t == c
        if m.any():
            acc[i] = float(np.mean(p[m] == c))
    return cls, acc


def cumulative_accuracy(per_class: Any, levels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative accuracy function (CAF) of the seed study.

    For each accuracy level a in [0, 1], the share of classes whose accuracy is
    <= a. A classifier whose curve stays low until a is near 1 has few weak classes.

    Parameters
    ----------
    per_class : array_like, shape (C,)
        Per-class accuracies (NaN entries are ignored).
    levels : array_like, optional
        Accuracy levels (default: 101 points from 0 to 1).

    Returns
    -------
    (levels, share) : numpy.ndarray, numpy.ndarray
    """
    acc = np.asarray(per_class, dtype=float)
    acc = acc[~np.isnan(acc)]
    lv = np.linspace(0.0, 1.0, 101) if levels is None else np.asarray(levels, dtype=float)
    if acc.size == 0:
        return lv, np.full(lv.shape, np.nan)
    s = np.sort(acc)
    return lv, np.searchsorted(s, lv, side="right") / s.size


def least_accurate_classes(y_true: Any, y_pred: Any, n: int = 10) -> list[tuple[Any, float]]:
    """The ``n`` classes with the lowest accuracy, worst first (ties: class order)."""
    cls, acc = per_class_accuracy(y_true, y_pred)
    order = np.lexsort((np.arange(cls.size), acc))
    return [(cls[i].item() if hasattr(cls[i], "item") else cls[i], float(acc[i]))
            for i in order[:n]]


def confusion(y_true: Any, y_pred: Any, classes: Sequence[Any] | None = None,
              normalize: str | None = None) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted (sklearn's)."""
    t, p = _pair(y_true, y_pred)
    return _sk_confusion(t, p, labels=None if classes is None else list(classes),
                         normalize=normalize)


def f1_scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Macro and weighted F1 (sklearn; classes without predictions count as 0)."""
    t, p = _pair(y_true, y_pred)
    return {"macro": float(f1_score(t, p, average="macro", zero_division=0)),
            "weighted": float(f1_score(t, p, average="weighted", zero_division=0))}


def mean_confidence_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t interval: t(level, n-1) · s / √n.

    With one value the half-width is NaN (no spread can be estimated).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if v.size == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def repeated_splits(estimator: Any, X: Any, y: Any, n_splits: int = 5, test_size: float = 0.2,
                    seed: int = 0, level: float = 0.95,
                    scorer: Callable[[Any, Any, Any], float] | None = None) -> dict[str, Any]:
    """Score ``estimator`` on ``n_splits`` seeded stratified train/test splits.

    A fresh clone (``sklearn.base.clone``) is fitted on each split.

    Returns
    -------
    dict
        ``scores`` (list of floats), ``mean``, ``ci`` (half-width of the Student-t
        interval at ``level``), ``level``.
    """
    from sklearn.base import clone

    X, y = np.asarray(X), np.asarray(y)
    splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    scores = []
    for tr, te in splitter.split(X, y):
        est = clone(estimator).fit(X[tr], y[tr])
        scores.append(float(scorer(est, X[te], y[te]) if scorer else est.score(X[te], y[te])))
    mean, half = mean_confidence_interval(scores, level)
    return {"scores": scores, "mean": mean, "ci": half, "level": level}


def recall_at_k(result: Any, reference: Any, k: int | None = None) -> float:
    """Mean over queries of |top-k of result ∩ top-k of reference| / k.

    With k=1 this is the share of queries whose nearest neighbour is found.
    Reference slots holding -1 (fewer than k vectors) are not counted.
    """
    R, G = np.asarray(result.ids), np.asarray(reference.ids)
    if R.shape[0] != G.shape[0]:
        raise ValueError(f"result has {R.shape[0]} queries, reference {G.shape[0]}")
    k = min(R.shape[1], G.shape[1]) if k is None else int(k)
    if k < 1 or k > G.shape[1] or k > R.shape[1]:
        raise ValueError(f"k={k} must be in 1..{min(R.shape[1], G.shape[1])}")
    R, G = R[:, :k], G[:, :k]
    found = np.empty(R.shape[0], np.int64)
    step = max(1, 2**24 // (k * k))  # (step, k, k) comparisons at a time: <= 16 MB
    for a in range(0, R.shape[0], step):
        g = G[a:a + step, None, :]
        found[a:a + step] = ((R[a:a + step, :, None] == g) & (g >= 0)).any(axis=1).sum(1)
    denom = (G >= 0).sum(axis=1)
    ok = denom > 0
    return float(np.mean(found[ok] / denom[ok])) if ok.any() else 1.0
