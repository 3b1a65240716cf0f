"""Study tools: hard examples near a class, and reference selection by centrality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .._validation import check_embeddings, check_int
from ..store import EmbeddingStore
from ._base import json_labels as _json_labels
from .knn import KNNClassifier
from .prototype import PrototypeClassifier

__all__ = ["eigenvector_centrality", "hard_examples", "select_prototypes", "tune_per_class"]


def hard_examples(source: EmbeddingStore | KNNClassifier, classifier: PrototypeClassifier,
                  label: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` stored vectors of *other* classes nearest to ``label``'s prototype.

    These are the samples most likely to be confused with the class: the ones
    worth labelling or checking first (seed study 001).

    Parameters
    ----------
    source : EmbeddingStore or fitted KNNClassifier
        A store is scanned exactly, batch by batch (bounded memory); a KNN
        classifier is searched through its index (as exact as that index).
    classifier : fitted PrototypeClassifier
        Gives the prototype of ``label``.
    label : class label
    n : int

    Returns
    -------
    ids : numpy.ndarray, shape (m,), int64
        m = min(n, vectors of other classes), nearest first.
    similarities : numpy.ndarray, shape (m,)
    labels : numpy.ndarray, shape (m,)
        Their (true) classes.
    """
    if not isinstance(classifier, PrototypeClassifier):
        raise TypeError(f"classifier must be a fitted PrototypeClassifier; got "
                        f"{type(classifier).__name__}")
    classifier._check_fitted()
    n = check_int(n, "n")
    names = _json_labels(classifier.classes_)
    if label not in names:
        raise ValueError(f"unknown class {label!r}")
    if classifier.center:
        raise ValueError("hard_examples compares raw vectors with prototypes; refit the "
                         "classifier with center=False")
    proto = classifier.prototypes_[names.index(label)][None, :]
    if isinstance(source, KNNClassifier):
        source._check_fitted()
        total = source._ids.size
        k = min(total, max(4 * n, 64))
        while True:
            res = source.index_.search(proto, k, source.search_params)
            codes = source._codes_of(res.ids[0])
            labs = np.asarray(_json_labels(source.classes_), dtype=object)
            other = (res.ids[0] >= 0) & (codes >= 0)
            other[other] = labs[codes[other]] != label
            if other.sum() >= n or k >= total:
                sel = np.flatnonzero(other)[:n]
                return res.ids[0][sel], res.distances[0][sel], source.classes_[codes[sel]]
            k = min(total, 4 * k)
    if not isinstance(source, EmbeddingStore):
        raise TypeError("source must be an EmbeddingStore or a fitted KNNClassifier")
    store_names = source.classes
    best_s = np.empty(0)
    best_id = np.empty(0, np.int64)
    best_lab = np.empty(0, np.int64)
    for b in source.iter_batches(65_536):
        blab = b.labels
        own = (np.asarray(store_names, dtype=object)[blab] == label) if store_names is not None \
            else (blab == label)
        s = (b.embeddings @ proto[0])[~own]
        best_s = np.concatenate([best_s, s])
        best_id = np.concatenate([best_id, b.ids[~own]])
        best_lab = np.concatenate([best_lab, blab[~own]])
        if best_s.size > n:
            keep = np.argsort(-best_s, kind="stable")[:n]
            best_s, best_id, best_lab = best_s[keep], best_id[keep], best_lab[keep]
    order = np.argsort(-best_s, kind="stable")[:n]
    labs = best_lab[order]
    return best_id[order], best_s[order], (np.asarray(store_names)[labs]
                                           if store_names is not None else labs)


def eigenvector_centrality(Z: np.ndarray) -> np.ndarray:
    """Eigenvector centrality of the cosine self-similarity graph of rows ``Z``.

    Edge weights are max(cos, 0) without self-loops; the centrality is the
    Perron eigenvector of that matrix, scaled to unit L2 norm (networkx's
    ``eigenvector_centrality_numpy`` convention).
    """
    from scipy.sparse.linalg import eigsh

    z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    S = np.maximum(z @ z.T, 0.0).astype(np.float64)
    np.fill_diagonal(S, 0.0)
    n = S.shape[0]
    if n <= 2:
        return np.full(n, 1 / np.sqrt(n))
    _, vec = eigsh(S, k=1, which="LA", v0=np.ones(n))
    v = np.abs(vec[:, 0])
    return v / np.linalg.norm(v)


def select_prototypes(X: Any, y: Any, per_class: int | dict[Any, int],
                      method: Literal["centrality", "central", "random"] = "centrality",
                      seed: int = 0) -> np.ndarray:
    """Row indices of the references to keep, per class.

    ``method="centrality"`` keeps the samples with the *lowest* eigenvector
    centrality in the class's cosine self-similarity graph (seed study 003): the
    least typical ones. ``"central"`` keeps the *highest* (the most typical), and
    ``"random"`` is the seeded baseline. Classes smaller than their count keep
    every sample. On Fashion-MNIST pixels, "centrality" is far worse than the
    plain class mean (see benchmarks/RESULTS.md): the least central samples are
    outliers lying among other classes.

    Returns
    -------
    numpy.ndarray, int64, sorted
    """
    x = check_embeddings(X, dim=None, name="X", dtype=np.dtype(np.float32))
    yy = np.asarray(y)
    if yy.shape != (x.shape[0],):
        raise ValueError(f"y must be 1-D with one label per row ({x.shape[0]}); got {yy.shape}")
    if method not in ("centrality", "central", "random"):
        raise ValueError(f"method must be 'centrality', 'central' or 'random'; got {method!r}")
    if isinstance(per_class, dict):
        for c, v in per_class.items():
            check_int(v, f"per_class[{c!r}]", min_value=0)
    else:
        check_int(per_class, "per_class", min_value=0)
    ranking = _rankings(x, yy, method, seed)
    keep = []
    for c, rows in ranking.items():
        count = per_class.get(c, 0) if isinstance(per_class, dict) else per_class
        keep.append(rows[:count])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)


def _rankings(x: np.ndarray, y: np.ndarray, method: str, seed: int) -> dict[Any, np.ndarray]:
    """Per class, its rows in the order they are kept (least central / seeded shuffle)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if method == "random":
            out[c.item() if hasattr(c, "item") else c] = rng.permutation(rows)
        else:
            cent = eigenvector_centrality(x[rows])
            order = np.argsort(cent if method == "centrality" else -cent, kind="stable")
            out[c.item() if hasattr(c, "item") else c] = rows[order]
    return out


def tune_per_class(X: Any, y: Any, X_val: Any, y_val: Any,
                   candidates: Sequence[int] = (1, 5, 10, 50, 100),
                   method: Literal["centrality", "central", "random"] = "centrality",
                   seed: int = 0) -> dict[Any, int]:
    """Each class's reference count, picked by its accuracy on a validation split.

    For every candidate count, all classes keep that many references and the
    validation set is classified by its nearest reference (1-NN); each class
    then takes the count at which its own validation accuracy was highest
    (ties: the smallest count).
    """
    x = check_embeddings(X, dim=None, name="X", dtype=np.dtype(np.float32))
    candidates = [check_int(c, "each candidate count") for c in candidates]
    if not candidates:
        raise ValueError("candidates must name at least one count")
    yy, yv = np.asarray(y), np.asarray(y_val)
    classes = np.unique(yy)
    ranking = _rankings(x, yy, method, seed)  # once, then sliced per candidate
    acc = np.zeros((len(candidates), classes.size))
    for i, c in enumerate(candidates):
        idx = np.sort(np.concatenate([rows[:int(c)] for rows in ranking.values()]))
        pred = KNNClassifier(k=1, weights="uniform").fit(x[idx], yy[idx]).predict(X_val)
        for j, cls in enumerate(classes):
            m = yv == cls
            acc[i, j] = np.mean(pred[m] == cls) if m.any() else 0.0
    best = acc.argmax(axis=0)  # first maximum: the smallest count
    return {(cls.item() if hasattr(cls, "item") else cls): int(candidates[b])
            for cls, b in zip(classes, best, strict=True)}
