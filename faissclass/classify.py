"""Classifiers on frozen embeddings: class-mean prototypes and a kNN vote, over VectorIndex.

Both are scikit-learn estimators (``get_params``/``set_params``, ``fit``,
``predict``, ``predict_proba``, ``score``) and add ``predict_topk``. Labels
(``classes_``) may be any hashable values numpy can sort (ints, strings): sorted
when fitted from arrays, in the store's class order when fitted from a store;
classes added later are appended.

Ties in a vote break by (score descending, class order ascending): the class
that comes first in ``classes_`` wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ._validation import check_embeddings
from .index import IndexSpec, SearchParams, VectorIndex, kmeans
from .store import EmbeddingStore

__all__ = [
    "KNNClassifier",
    "PrototypeClassifier",
    "eigenvector_centrality",
    "hard_examples",
    "select_prototypes",
    "tune_per_class",
]

Weights = Literal["uniform", "distance", "softmax"]


def _as_queries(X: Any, dim: int) -> np.ndarray:
    return check_embeddings(X, dim=dim, name="queries", dtype=np.dtype(np.float32))


def _ranked(scores: np.ndarray, n: int) -> np.ndarray:
    """Column order of the n best scores per row: score descending, column ascending."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def _json_labels(classes: np.ndarray) -> list[Any]:
    return [c.item() if hasattr(c, "item") else c for c in classes]


class _Base(ClassifierMixin, BaseEstimator):
    """Shared label handling."""

    classes_: np.ndarray

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit() first")

    def _encode(self, y: Any, n: int, *, grow: bool) -> np.ndarray:
        """Class codes of labels ``y``; with ``grow``, unseen labels join classes_."""
        yy = np.asarray(y)
        if yy.ndim != 1 or yy.shape[0] != n:
            raise ValueError(f"y must be 1-D with one label per row ({n}); got shape {yy.shape}")
        pos = {c: i for i, c in enumerate(_json_labels(self.classes_))}
        # A Python loop over the distinct labels only, not over the rows.
        uniq, first, inverse = np.unique(yy, return_index=True, return_inverse=True)
        codes = np.empty(uniq.size, np.int64)
        new = []
        for j in np.argsort(first, kind="stable"):  # new classes in order of appearance
            v = _json_labels(uniq[j:j + 1])[0]
            code = pos.get(v)
            if code is None:
                if not grow:
                    raise ValueError(f"label {v!r} is not one of the fitted classes")
                code = pos[v] = len(pos)
                new.append(v)
            codes[j] = code
        if new:
            self.classes_ = np.asarray(_json_labels(self.classes_) + new)
        return codes[inverse.reshape(-1)]

    def predict(self, X: Any) -> np.ndarray:
        """Most likely class of each row, shape (n,)."""
        self._check_fitted()
        return self.classes_[self._scores(X).argmax(axis=1)]

    def predict_topk(self, X: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best classes per row and their scores, best first.

        Returns
        -------
        labels : numpy.ndarray, shape (rows, n)
        scores : numpy.ndarray, shape (rows, n), float
        """
        self._check_fitted()
        s = self._scores(X)
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= s.shape[1]:
            raise ValueError(f"n must be in 1..{s.shape[1]} (the number of classes); got {n!r}")
        order = _ranked(s, int(n))
        return self.classes_[order], np.take_along_axis(s, order, 1)

    def _scores(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_meta(self, path: Path, **meta: Any) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        meta = {"type": type(self).__name__, "classes": _json_labels(self.classes_), **meta}
        (path / "classifier.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def _read_meta(cls, path: Path) -> dict[str, Any]:
        try:
            meta = json.loads((path / "classifier.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: not a saved classifier (no classifier.json)") from None
        if meta.get("type") != cls.__name__:
            raise ValueError(f"{path} holds a {meta.get('type')}, not a {cls.__name__}")
        return meta


# --------------------------------------------------------------------------- kNN


class KNNClassifier(_Base):
    """k-nearest-neighbour vote over a VectorIndex (the DINO k-NN protocol by default).

    Parameters
    ----------
    k : int
        Neighbours per query.
    weights : {"uniform", "distance", "softmax"}
        Vote weight of a neighbour: 1; 1 / Euclidean distance (sklearn's
        "distance"; for unit vectors under "ip", d = sqrt(2 - 2·cos)); or
        exp(similarity / temperature), DINO's weighting.
    temperature : float
        Softmax temperature (DINO: 0.07).
    index : IndexSpec, optional
        Index over the fitted vectors (default: exact flat inner product).
    search_params : SearchParams, optional
        nprobe / ef_search for approximate indexes.
    device : str
        Device of the index ("cpu", "cuda", ...).
    batch_size : int
        Queries per search call.
    """

    def __init__(self, k: int = 20, weights: Weights = "softmax", temperature: float = 0.07,
                 index: IndexSpec | None = None, search_params: SearchParams | None = None,
                 device: str = "cpu", batch_size: int = 16_384) -> None:
        self.k = k
        self.weights = weights
        self.temperature = temperature
        self.index = index
        self.search_params = search_params
        self.device = device
        self.batch_size = batch_size

    # ------------------------------------------------------------------ fitting

    def _validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise ValueError(f"k must be a positive int; got {self.k!r}")
        if self.weights not in ("uniform", "distance", "softmax"):
            raise ValueError(f"weights must be 'uniform', 'distance' or 'softmax'; got "
                             f"{self.weights!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature!r}")

    def fit(self, X: Any, y: Any = None) -> KNNClassifier:
        """Index the labelled vectors.

        Parameters
        ----------
        X : array_like (n, dim) or EmbeddingStore
            A store is streamed (bounded memory); its labels and ids are used and
            ``classes_`` are its class names (or its label values).
        y : array_like (n,), optional
            Labels, required with arrays.
        """
        self._validate()
        spec = self.index or IndexSpec(kind="flat")
        if isinstance(X, EmbeddingStore):
            if y is not None:
                raise ValueError("fit(store) takes its labels from the store; pass y=None")
            labels = X.labels()
            if (labels < 0).any():
                raise ValueError("the store has unlabelled rows (label -1); KNNClassifier "
                                 "needs a label on every row")
            present = np.unique(labels)
            self.classes_ = (np.asarray(X.classes)[present] if X.classes is not None
                             else present)
            codes_by_label = np.full(int(labels.max()) + 1 if labels.size else 1, -1, np.int64)
            codes_by_label[present] = np.arange(present.size)
            self._set_labels(X.ids(), codes_by_label[labels])
            self.index_ = VectorIndex.build(X, spec, device=self.device, progress=False)
        else:
            x = check_embeddings(X, dim=None, name="X", dtype=np.dtype(np.float32))
            if y is None:
                raise ValueError("fit(X, y) needs labels y for an array X")
            self.classes_ = np.unique(np.asarray(y))
            codes = self._encode(y, x.shape[0], grow=False)
            self._set_labels(np.arange(x.shape[0], dtype=np.int64), codes)
            self.index_ = VectorIndex(x.shape[1], spec, device=self.device)
            if not self.index_.is_trained:
                self.index_.train(x)
            self.index_.add(x, np.arange(x.shape[0], dtype=np.int64))
        if self._ids.size == 0:
            raise ValueError("fit() got no vectors")
        if self.k > self._ids.size:
            raise ValueError(f"k={self.k} is larger than the fitted set ({self._ids.size} "
                             "vectors); lower k or fit more data")
        self.n_features_in_ = self.index_.dim
        return self

    def _set_labels(self, ids: np.ndarray, codes: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._codes = codes[order]

    def add(self, X: Any, y: Any, ids: Any = None) -> KNNClassifier:
        """Add labelled vectors without refitting; new labels become new classes."""
        self._check_fitted()
        x = _as_queries(X, self.index_.dim)
        codes = self._encode(y, x.shape[0], grow=True)
        start = int(self._ids[-1]) + 1 if self._ids.size else 0
        idv = np.arange(start, start + x.shape[0], dtype=np.int64) if ids is None \
            else np.asarray(ids, dtype=np.int64)
        self.index_.add(x, idv)
        self._set_labels(np.concatenate([self._ids, idv]), np.concatenate([self._codes, codes]))
        return self

    # ------------------------------------------------------------------ predicting

    def kneighbors(self, X: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """(similarities, class codes, ids) of the k nearest fitted vectors, each (n, k).

        Missing neighbours (k above the fitted count) have code -1 and id -1.
        """
        self._check_fitted()
        k = self.k if k is None else k
        if k > self._ids.size:
            raise ValueError(f"k={k} is larger than the fitted set ({self._ids.size} vectors)")
        res = self.index_.search(_as_queries(X, self.index_.dim), int(k), self.search_params,
                                 batch_size=self.batch_size)
        return res.distances, self._codes_of(res.ids), res.ids

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, self._ids.size - 1)
        return np.where((ids >= 0) & (self._ids[pos] == ids), self._codes[pos], -1)

    def _weights(self, sims: np.ndarray) -> np.ndarray:
        if self.weights == "uniform":
            return np.ones_like(sims, dtype=np.float64)
        metric = self.index_.metric
        s = sims.astype(np.float64)
        if self.weights == "softmax":
            return np.exp((s if metric == "ip" else -s) / self.temperature)
        d = np.sqrt(np.maximum(2.0 - 2.0 * s, 0.0)) if metric == "ip" else np.sqrt(
            np.maximum(s, 0.0))
        with np.errstate(divide="ignore"):
            w = 1.0 / d
        # An exact match outweighs everything else, as in sklearn.
        exact = ~np.isfinite(w)
        if exact.any():
            w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
        return w

    def vote(self, sims: np.ndarray, codes: np.ndarray, k: int | None = None) -> np.ndarray:
        """Class scores (n, n_classes) from the first ``k`` neighbours of a search."""
        k = sims.shape[1] if k is None else int(k)
        s, c = sims[:, :k], codes[:, :k]
        w = self._weights(s)
        valid = c >= 0
        n, C = c.shape[0], len(self.classes_)
        rows = np.broadcast_to(np.arange(n)[:, None], c.shape)
        flat = (rows * C + np.where(valid, c, 0))[valid]
        return np.bincount(flat, weights=w[valid], minlength=n * C).reshape(n, C)

    def _scores(self, X: Any) -> np.ndarray:
        sims, codes, _ = self.kneighbors(X)
        return self.vote(sims, codes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Vote shares per class, shape (n, n_classes), rows summing to 1."""
        s = self._scores(X)
        tot = s.sum(axis=1, keepdims=True)
        return np.divide(s, tot, out=np.full_like(s, 1.0 / s.shape[1]), where=tot > 0)

    def evaluate(self, X: Any, y: Any, ks: Iterable[int] = (10, 20, 100, 200)) -> dict[int, float]:
        """Top-1 accuracy for several k from one search at the largest k."""
        ks = sorted({int(k) for k in ks})
        sims, codes, _ = self.kneighbors(X, ks[-1])
        truth = self._encode(y, sims.shape[0], grow=False)
        return {k: float(np.mean(self.vote(sims, codes, k).argmax(1) == truth)) for k in ks}

    def loo_score(self, X: Any) -> float:
        """Leave-one-out accuracy on the fitted set: each fitted vector is classified by
        its k nearest *other* fitted vectors (its own id is excluded).

        Pass the vectors given to ``fit`` (the array, or the store).
        """
        self._check_fitted()
        if isinstance(X, EmbeddingStore):
            correct = total = 0
            for b in X.iter_batches(self.batch_size):
                correct += self._loo_correct(b.embeddings, b.ids)
                total += len(b.ids)
            return correct / total
        x = _as_queries(X, self.index_.dim)
        return self._loo_correct(x, np.arange(x.shape[0], dtype=np.int64)) / x.shape[0]

    def _loo_correct(self, x: np.ndarray, ids: np.ndarray) -> int:
        sims, codes, got = self.kneighbors(x, self.k + 1)
        own = got == ids[:, None]
        # Drop each row's own hit (or the last neighbour if the index missed it).
        drop = np.where(own.any(axis=1), own.argmax(axis=1), self.k)
        keep = np.ones_like(own)
        keep[np.arange(len(ids)), drop] = False
        sims = sims[keep].reshape(len(ids), self.k)
        codes = codes[keep].reshape(len(ids), self.k)
        truth = self._codes_of(ids)
        return int(np.sum(self.vote(sims, codes).argmax(1) == truth))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Directory with the index, labels (npy) and parameters (JSON); no pickle."""
        self._check_fitted()
        path = Path(path)
        self.index_.save(path / "index")
        np.save(path / "ids.npy", self._ids)
        np.save(path / "codes.npy", self._codes)
        return self._write_meta(
            path, k=int(self.k), weights=self.weights, temperature=self.temperature,
            search_params=None if self.search_params is None else self.search_params.to_dict(),
            batch_size=self.batch_size)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> KNNClassifier:
        path = Path(path)
        meta = cls._read_meta(path)
        index = VectorIndex.load(path / "index", device=device)
        sp = meta["search_params"]
        self = cls(k=meta["k"], weights=meta["weights"], temperature=meta["temperature"],
                   index=index.spec, search_params=None if sp is None else SearchParams(**sp),
                   device=device, batch_size=meta["batch_size"])
        self.index_ = index
        self.classes_ = np.asarray(meta["classes"])
        self._ids = np.load(path / "ids.npy")
        self._codes = np.load(path / "codes.npy")
        self.n_features_in_ = index.dim
        return self


# --------------------------------------------------------------------------- prototypes


class PrototypeClassifier(_Base):
    """One prototype per class: the mean of the class's (normalised) embeddings.

    Class score = cosine similarity of the query to the class prototype (inner
    product with ``renormalize=True``); ``predict_proba`` is a softmax of the
    scores at ``temperature``.

    Parameters
    ----------
    index : IndexSpec, optional
        Index over the prototypes (default: exact flat inner product).
    center : bool
        SimpleShot "CL2N": subtract the mean of the fitted set from every vector
        (fitted and query) and re-normalise before averaging. The mean is fixed
        at ``fit``; ``update``/``add_class`` keep it (refit to recompute it).
    renormalize : bool
        L2-normalise each prototype (cosine scores); off, raw means (inner product).
    temperature : float
        Softmax temperature of ``predict_proba``.
    device : str
        Device of the prototype index.
    n_prototypes : int
        Prototypes per class. Above 1, seeded k-means (FAISS, spherical when
        ``renormalize``) within each class; a class scores its best prototype.
        Fitting then holds the data in memory, and ``update`` on an existing
        class needs a refit (its samples are not kept).
    seed : int
        Seed of the k-means.

    Notes
    -----
    Running sums per class make ``update``, ``add_class`` and ``remove_class``
    cost O(rows added) plus rebuilding the small prototype index (O(classes·dim)).
    """

    def __init__(self, index: IndexSpec | None = None, center: bool = False,
                 renormalize: bool = True, temperature: float = 0.07,
                 device: str = "cpu", n_prototypes: int = 1, seed: int = 0) -> None:
        self.index = index
        self.center = center
        self.renormalize = renormalize
        self.temperature = temperature
        self.device = device
        self.n_prototypes = n_prototypes
        self.seed = seed

    def _prep(self, x: np.ndarray) -> np.ndarray:
        if not self.center:
            return x
        z = x - self.mean_
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z

    def fit(self, X: Any, y: Any = None) -> PrototypeClassifier:
        """Compute the prototypes from arrays (X, y) or a store (streamed)."""
        if isinstance(X, EmbeddingStore):
            if y is not None:
                raise ValueError("fit(store) takes its labels from the store; pass y=None")
            self._fit_batches(X.dim, lambda: ((b.embeddings, b.labels)
                                              for b in X.iter_batches(65_536)),
                              names=X.classes)
        else:
            x = check_embeddings(X, dim=None, name="X", dtype=np.dtype(np.float32))
            if y is None:
                raise ValueError("fit(X, y) needs labels y for an array X")
            yy = np.asarray(y)
            if yy.shape != (x.shape[0],):
                raise ValueError(f"y must be 1-D with one label per row ({x.shape[0]}); got "
                                 f"shape {yy.shape}")
            classes, codes = np.unique(yy, return_inverse=True)
            self._fit_batches(x.shape[1], lambda: iter([(x, codes)]), names=classes)
        return self

    def _fit_batches(self, dim: int, batches: Any, names: Sequence[Any] | None) -> None:
        """Running sums per label code; ``names[code]`` is the class label (None: the code)."""
        if self.center:
            total, count = np.zeros(dim), 0
            for x, _ in batches():
                total += x.sum(axis=0, dtype=np.float64)
                count += x.shape[0]
            if count == 0:
                raise ValueError("fit() got no vectors")
            self.mean_ = (total / count).astype(np.float32)
        if isinstance(self.n_prototypes, bool) or not isinstance(self.n_prototypes, int) \
                or self.n_prototypes < 1:
            raise ValueError(f"n_prototypes must be a positive int; got {self.n_prototypes!r}")
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        members: dict[int, list[np.ndarray]] = {}
        for x, lab in batches():
            z = self._prep(x)
            for code in np.unique(lab).tolist():
                if code < 0:
                    raise ValueError("unlabelled rows (label -1) cannot make a prototype")
                m = lab == code
                sums[code] = sums.get(code, 0) + z[m].sum(axis=0, dtype=np.float64)
                counts[code] = counts.get(code, 0) + int(m.sum())
                if self.n_prototypes > 1:
                    members.setdefault(code, []).append(z[m])
        if not sums:
            raise ValueError("fit() got no vectors")
        present = sorted(sums)
        self.classes_ = np.asarray(present) if names is None else np.asarray(names)[present]
        self.sums_ = np.stack([sums[c] for c in present])
        self.counts_ = np.asarray([counts[c] for c in present], np.int64)
        self.n_features_in_ = dim
        self._kprotos = [self._cluster(np.concatenate(members[c])) for c in present] \
            if self.n_prototypes > 1 else None
        self._rebuild()

    def _cluster(self, z: np.ndarray) -> np.ndarray:
        return kmeans(z, self.n_prototypes, seed=self.seed, spherical=self.renormalize)

    def _rebuild(self) -> None:
        if self._kprotos is not None:
            self.prototypes_ = np.concatenate(self._kprotos).astype(np.float32)
            sizes = [len(p) for p in self._kprotos]
        else:
            protos = self.sums_ / self.counts_[:, None]
            if self.renormalize:
                protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
            self.prototypes_ = protos.astype(np.float32)
            sizes = [1] * len(protos)
        self.prototype_class_ = np.repeat(np.arange(len(sizes)), sizes)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        spec = self.index or IndexSpec(kind="flat")
        idx = VectorIndex(self.n_features_in_, spec, device=self.device)
        if not idx.is_trained:
            idx.train(self.prototypes_)
        idx.add(self.prototypes_, np.arange(len(self.prototypes_), dtype=np.int64))
        self.index_ = idx

    def _scores(self, X: Any) -> np.ndarray:
        self._check_fitted()
        q = self._prep(_as_queries(X, self.n_features_in_))
        C = len(self.classes_)
        spec = self.index_.spec
        P = self.prototypes_
        if spec.kind == "flat" and self.index_.device == "cpu":
            # Exact flat search over every prototype is one GEMM; asking the index
            # for all of them would add a top-k selection and a scatter (4x slower).
            s = (q @ P.T).astype(np.float64)
            if spec.metric == "l2":
                s = -((q * q).sum(1)[:, None] - 2 * s + (P ** 2).sum(1)[None, :])
            return s if len(P) == C else np.maximum.reduceat(s, self._starts, axis=1)
        res = self.index_.search(q, len(P))
        scores = np.full((q.shape[0], C), -np.inf)
        rows = np.broadcast_to(np.arange(q.shape[0])[:, None], res.ids.shape)
        ok = res.ids >= 0
        sims = res.distances if self.index_.metric == "ip" else -res.distances
        np.maximum.at(scores, (rows[ok], self.prototype_class_[res.ids[ok]]), sims[ok])
        return scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the class scores at ``temperature``, shape (n, n_classes)."""
        s = self._scores(X) / self.temperature
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ incremental

    def update(self, X: Any, y: Any) -> PrototypeClassifier:
        """Add samples to existing or new classes (running sums: O(rows))."""
        self._check_fitted()
        x = _as_queries(X, self.n_features_in_)
        codes = self._encode(y, x.shape[0], grow=True)
        grow = len(self.classes_) - len(self.counts_)
        if grow:
            self.sums_ = np.vstack([self.sums_, np.zeros((grow, self.n_features_in_))])
            self.counts_ = np.concatenate([self.counts_, np.zeros(grow, np.int64)])
        z = self._prep(x)
        if self._kprotos is not None:
            old = np.unique(codes[codes < len(self._kprotos)])
            if old.size:
                raise NotImplementedError(
                    f"n_prototypes={self.n_prototypes}: adding samples to existing class "
                    f"{self.classes_[old[0]]!r} needs its earlier samples; refit instead")
            for c in range(len(self._kprotos), len(self.classes_)):
                self._kprotos.append(self._cluster(z[codes == c]))
        np.add.at(self.sums_, codes, z.astype(np.float64))
        self.counts_ += np.bincount(codes, minlength=len(self.counts_))
        self._rebuild()
        return self

    def add_class(self, label: Any, X: Any) -> PrototypeClassifier:
        """Add a new class from its samples (n, dim)."""
        self._check_fitted()
        if label in set(_json_labels(self.classes_)):
            raise ValueError(f"class {label!r} exists already; use update() to add samples")
        x = _as_queries(X, self.n_features_in_)
        if x.shape[0] == 0:
            raise ValueError(f"class {label!r} needs at least one sample")
        return self.update(x, [label] * x.shape[0])

    def remove_class(self, label: Any) -> PrototypeClassifier:
        """Drop a class and its prototype."""
        self._check_fitted()
        labels = _json_labels(self.classes_)
        if label not in labels:
            raise ValueError(f"unknown class {label!r}; classes are {labels[:10]}"
                             + (" ..." if len(labels) > 10 else ""))
        if len(labels) == 1:
            raise ValueError("cannot remove the last class")
        i = labels.index(label)
        keep = np.arange(len(labels)) != i
        self.classes_ = self.classes_[keep]
        self.sums_, self.counts_ = self.sums_[keep], self.counts_[keep]
        if self._kprotos is not None:
            del self._kprotos[i]
        self._rebuild()
        return self

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Directory with running sums, counts, prototypes (npy) and parameters (JSON)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "sums.npy", self.sums_)
        np.save(path / "counts.npy", self.counts_)
        if self.center:
            np.save(path / "mean.npy", self.mean_)
        if self._kprotos is not None:
            np.savez(path / "kprotos.npz", *self._kprotos)
        return self._write_meta(
            path, center=self.center, renormalize=self.renormalize,
            temperature=self.temperature, n_prototypes=self.n_prototypes, seed=self.seed,
            index=None if self.index is None else self.index.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> PrototypeClassifier:
        path = Path(path)
        meta = cls._read_meta(path)
        self = cls(index=None if meta["index"] is None else IndexSpec.from_dict(meta["index"]),
                   center=meta["center"], renormalize=meta["renormalize"],
                   temperature=meta["temperature"], device=device,
                   n_prototypes=meta["n_prototypes"], seed=meta["seed"])
        self.classes_ = np.asarray(meta["classes"])
        self.sums_ = np.load(path / "sums.npy")
        self.counts_ = np.load(path / "counts.npy")
        if self.center:
            self.mean_ = np.load(path / "mean.npy")
        self._kprotos = None
        if self.n_prototypes > 1:
            with np.load(path / "kprotos.npz") as z:
                self._kprotos = [z[f"arr_{i}"] for i in range(len(z.files))]
        self.n_features_in_ = self.sums_.shape[1]
        self._rebuild()
        return self


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
    classifier._check_fitted()
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


# --------------------------------------------------------------------------- prototype selection


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
