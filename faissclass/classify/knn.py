"""KNNClassifier: a k-nearest-neighbour vote over a VectorIndex (DINO's k-NN by default)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._ids import sorted_unique
from .._validation import (
    IndexFileError,
    check_id_vector,
    check_int,
    check_positive_float,
)
from ..index import IndexSpec, SearchParams, VectorIndex
from ..store import EmbeddingStore
from ._base import BaseClassifier, check_labels, class_to_remove, load_array, meta_check
from .votes import VOTES, class_scores, resolve_vote

__all__ = ["KNNClassifier"]


class KNNClassifier(BaseClassifier):
    """k-nearest-neighbour vote over a VectorIndex (the DINO k-NN protocol by default).

    Parameters
    ----------
    k : int
        Neighbours per query.
    weights : {"uniform", "distance", "softmax"} or callable
        Vote weight of a neighbour (see :mod:`faissclass.classify.votes`): 1;
        1 / Euclidean distance (sklearn's "distance"; for unit vectors under
        "ip", d = sqrt(2 - 2·cos)); or exp(similarity / temperature), DINO's
        weighting, computed relative to each query's best neighbour so that it
        never overflows. A callable receives Euclidean distances (n, k) and
        returns weights (n, k), as in sklearn.
    temperature : float
        Softmax temperature (DINO: 0.07).
    index : IndexSpec or searcher, optional
        Index over the fitted vectors (default: exact flat inner product). Or a
        ready searcher — any object with ``dim`` and ``search(Q, k) ->
        SearchResult`` (a built :class:`VectorIndex`, a sharded searcher) holding
        the fitted vectors under their ids (a store's ids; row numbers for arrays):
        ``fit`` then takes only the labels and uses it as is.
    search_params : SearchParams, optional
        nprobe / ef_search for approximate indexes (default: the index's own).
    device : str
        Device of the index ("cpu", "cuda", ...).
    batch_size : int
        Queries per search call.

    Notes
    -----
    ``predict_proba`` is the normalised vote: each class's share of the total
    weight of the k neighbours, in [0, 1].
    """

    def __init__(self, k: int = 20, weights: Any = "softmax", temperature: float = 0.07,
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
        check_int(self.k, "k")
        resolve_vote(self.weights)
        check_positive_float(self.temperature, "temperature")
        check_int(self.batch_size, "batch_size")
        if self.index is not None and not isinstance(self.index, IndexSpec) and not (
                callable(getattr(self.index, "search", None)) and hasattr(self.index, "dim")):
            raise TypeError(f"index must be an IndexSpec, a searcher (with dim and "
                            f"search(Q, k)) or None; got {type(self.index).__name__}")
        if self.search_params is not None and not isinstance(self.search_params, SearchParams):
            raise TypeError(f"search_params must be a SearchParams or None; got "
                            f"{type(self.search_params).__name__}")

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
        searcher = None if self.index is None or isinstance(self.index, IndexSpec) else \
            self.index
        spec = self.index if isinstance(self.index, IndexSpec) else IndexSpec(kind="flat")
        if isinstance(X, EmbeddingStore):
            if y is not None:
                raise ValueError("fit(store) takes its labels from the store; pass y=None")
            labels = X.labels()
            if (labels < 0).any():
                row = int(np.flatnonzero(labels < 0)[0])
                raise ValueError(f"row {row} of {X.root} is unlabelled (label -1); "
                                 "KNNClassifier needs a label on every row")
            n = labels.size
        else:
            x = self._fit_input(X)
            self._requires_y(y)
            yy = np.asarray(y)
            n = x.shape[0]
        k = int(self.k)
        if n and k > n:
            raise ValueError(f"k={k} is larger than the fitted set (n_samples={n}); lower k "
                             "or fit more data")
        if isinstance(X, EmbeddingStore):
            if n == 0:
                raise ValueError(f"{X.root} holds no vectors: 0 sample(s) while a minimum of "
                                 "1 is required.")
            present, codes = np.unique(labels, return_inverse=True)
            classes = (np.asarray(X.classes)[present] if X.classes is not None else present)
            ids, codes = X.ids(), codes.reshape(-1).astype(np.int64)
            index = searcher if searcher is not None else VectorIndex.build(
                X, spec, device=self.device, progress=False)
        else:
            classes, codes = np.unique(check_labels(yy, n), return_inverse=True)
            codes = codes.reshape(-1).astype(np.int64)
            ids = np.arange(n, dtype=np.int64)
            if searcher is not None:
                index = searcher
            else:
                index = VectorIndex(x.shape[1], spec, device=self.device)
                if not index.is_trained:
                    index.train(x)
                index.add(x, ids)
        if searcher is not None:
            dim = int(searcher.dim)
            if isinstance(X, EmbeddingStore) and dim != X.dim:
                raise ValueError(f"the store holds vectors of dim {X.dim}, the index of dim "
                                 f"{dim}")
            if not isinstance(X, EmbeddingStore) and dim != x.shape[1]:
                raise ValueError(f"X has {x.shape[1]} features, but the index holds vectors "
                                 f"of dim {dim}")
            if hasattr(searcher, "__len__") and len(searcher) != n:
                raise ValueError(f"the index holds {len(searcher)} vectors, but {n} were "
                                 "given to fit; it must hold exactly the fitted vectors")
            contains = getattr(searcher, "contains", None)
            if callable(contains) and not np.all(contains(ids)):
                missing = ids[~np.asarray(contains(ids), bool)][:3].tolist()
                raise ValueError(f"the index does not hold the fitted vectors' ids (e.g. "
                                 f"{missing}): with arrays it must use the row numbers 0..n-1, "
                                 "with a store the store's ids")
        self.classes_ = classes
        self._set_labels(ids, codes)
        self.index_ = index
        self.n_features_in_ = int(index.dim)
        return self

    def _set_labels(self, ids: np.ndarray, codes: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._codes = codes[order]

    def add(self, X: Any, y: Any, ids: Any = None) -> KNNClassifier:
        """Add labelled vectors without refitting; new labels become new classes.

        Everything is checked before anything changes: a refused call leaves the
        classifier as it was. ``ids`` (int, never -1; default: after the largest
        fitted id) must not be in the classifier already.
        """
        self._check_fitted()
        if not isinstance(self.index_, VectorIndex):
            raise NotImplementedError(f"add() needs a VectorIndex underneath; this classifier "
                                      f"searches a {type(self.index_).__name__}")
        x = self._queries(X)
        codes, new = self._encode(y, x.shape[0], grow=True)
        start = int(self._ids[-1]) + 1 if self._ids.size else 0
        idv = np.arange(start, start + x.shape[0], dtype=np.int64) if ids is None \
            else check_id_vector(ids, n=x.shape[0], name="ids")
        self.index_.add(x, idv)  # checks ids (duplicates, already present) before adding
        self.classes_ = self._grown_classes(new)
        self._set_labels(np.concatenate([self._ids, idv]), np.concatenate([self._codes, codes]))
        return self

    def remove_class(self, label: Any) -> KNNClassifier:
        """Drop a class: its vectors leave the index, its label leaves ``classes_``.

        Needs an index FAISS can remove from (flat or IVF, on the CPU); HNSW
        cannot (rebuild without the class instead). A refused call leaves the
        classifier as it was.
        """
        self._check_fitted()
        if not isinstance(self.index_, VectorIndex):
            raise NotImplementedError(f"remove_class() needs a VectorIndex underneath; this "
                                      f"classifier searches a {type(self.index_).__name__}")
        code = class_to_remove(self.classes_, label)
        gone = self._codes == code
        left = int((~gone).sum())
        if left < int(self.k):
            raise ValueError(f"removing class {label!r} leaves {left} vectors, fewer than "
                             f"k={self.k}; lower k first")
        self.index_.remove(self._ids[gone])  # refuses (HNSW, GPU) before changing anything
        codes = self._codes[~gone]
        self._ids, self._codes = self._ids[~gone], codes - (codes > code)
        self.classes_ = np.delete(self.classes_, code)
        return self

    # ------------------------------------------------------------------ predicting

    def kneighbors(self, X: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """(distances, class codes, ids) of the k nearest fitted vectors, each (n, k).

        Distances are the index's (inner products, larger is closer, or squared
        L2). Missing neighbours (k above the fitted count) have code -1 and id -1.
        With a searcher that answers on one rank only (a sharded searcher), the
        other ranks get None here and from every method built on it.
        """
        self._check_fitted()
        k = self.k if k is None else k
        k = check_int(k, "k")
        if k > self._ids.size:
            raise ValueError(f"k={k} is larger than the fitted set ({self._ids.size} vectors)")
        q = self._queries(X)
        if isinstance(self.index_, VectorIndex):
            res = self.index_.search(q, k, self.search_params, batch_size=self.batch_size)
        else:
            res = self.index_.search(q, k)
            if res is None:  # a rank other than the one the searcher answers on
                return None  # type: ignore[return-value]
        return res.distances, self._codes_of(res.ids), res.ids

    @property
    def _metric(self) -> str:
        return str(getattr(self.index_, "metric", "ip"))

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, self._ids.size - 1)
        return np.where((ids >= 0) & (self._ids[pos] == ids), self._codes[pos], -1)

    def vote(self, sims: np.ndarray, codes: np.ndarray, k: int | None = None) -> np.ndarray:
        """Class scores (n, n_classes) from the first ``k`` neighbours of a search.

        With ``weights="softmax"`` a class scores Σ exp((s - s_best) / T) over its
        neighbours, s_best the query's best neighbour: DINO's vote divided by a
        per-query constant (the same ranking and probabilities), in [0, k].
        """
        return class_scores(sims, codes, len(self.classes_), weights=self.weights,
                            metric=self._metric, temperature=float(self.temperature), k=k)

    def _scores(self, X: Any) -> np.ndarray:
        nn = self.kneighbors(X)
        if nn is None:
            return None  # type: ignore[return-value]
        return self.vote(nn[0], nn[1])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Vote shares per class, shape (n, n_classes), rows summing to 1."""
        self._check_fitted()
        s = self._scores(X)
        if s is None:
            return None  # type: ignore[return-value]
        tot = s.sum(axis=1, keepdims=True)
        return np.divide(s, tot, out=np.full_like(s, 1.0 / s.shape[1]), where=tot > 0)

    def evaluate(self, X: Any, y: Any, ks: Iterable[int] = (10, 20, 100, 200)
                 ) -> dict[int, float]:
        """Top-1 accuracy for several k from one search at the largest k."""
        self._check_fitted()
        ks = sorted({check_int(k, "each k in ks") for k in ks})
        if not ks:
            raise ValueError("ks must name at least one k")
        nn = self.kneighbors(X, ks[-1])
        if nn is None:
            return None  # type: ignore[return-value]
        sims, codes, _ = nn
        truth, _ = self._encode(y, sims.shape[0], grow=False)
        return {k: float(np.mean(self.vote(sims, codes, k).argmax(1) == truth)) for k in ks}

    def loo_score(self, X: Any) -> float:
        """Leave-one-out accuracy on the fitted set: each fitted vector is classified by
        its k nearest *other* fitted vectors (its own id is excluded).

        Pass the vectors given to ``fit`` (the array, or the store). With a flat
        index on CPU and exactly the fitted vectors, this is one symmetric self-join
        (:meth:`VectorIndex.self_knn`: exact, about half the time of searching every
        vector with k + 1); otherwise each vector is searched with k + 1 and its own
        id dropped.
        """
        self._check_fitted()
        fast = self._loo_self_join(X)
        if fast is not None:
            return fast
        if isinstance(X, EmbeddingStore):
            correct = total = 0
            answered = True
            for b in X.iter_batches(int(self.batch_size)):
                c = self._loo_correct(b.embeddings, b.ids)
                answered = c is not None
                correct += c or 0
                total += len(b.ids)
            return correct / total if answered else None  # type: ignore[return-value]
        x = self._queries(X)
        c = self._loo_correct(x, np.arange(x.shape[0], dtype=np.int64))
        return None if c is None else c / x.shape[0]  # type: ignore[return-value]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (sklearn's), or None on a rank a sharded searcher does not
        answer on."""
        pred = self.predict(X)
        if pred is None:
            return None  # type: ignore[return-value]
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, pred, sample_weight=sample_weight))

    def _loo_self_join(self, X: Any) -> float | None:
        """Leave-one-out by the symmetric self-join (exact, half the arithmetic), when
        the index is flat on CPU and ``X`` is exactly the set it holds; else None."""
        from ..search.self_join import self_join_available

        idx = self.index_
        if not (isinstance(idx, VectorIndex) and idx._flat_cpu() and self_join_available()):
            return None
        if self.k + 1 > self._ids.size:
            return None  # the search path raises the clear error
        xb, pos = idx._stored()
        if len(X) != xb.shape[0]:
            return None
        # X must be exactly the stored set, (id, vector) by (id, vector): compared in
        # batches (no copy of the set), each id looked up among the stored ones
        order = np.argsort(pos)
        spos = pos[order]
        if isinstance(X, EmbeddingStore):
            if X.dim != xb.shape[1]:
                return None
            batches = ((b.embeddings, b.ids) for b in X.iter_batches(65_536))
        else:
            x = self._queries(X)
            batches = ((x[a:a + 65_536], np.arange(a, min(a + 65_536, len(x)))
                        ) for a in range(0, len(x), 65_536))
        for xv, xid in batches:
            j = np.minimum(np.searchsorted(spos, xid), spos.size - 1)
            if not np.array_equal(spos[j], xid) or not np.array_equal(
                    np.asarray(xv, np.float32), xb[order[j]]):
                return None  # other vectors than the fitted ones: search them
        ids, res = idx.self_knn(self.k, progress=False)
        truth = self._codes_of(ids)
        correct = 0
        step = max(1, int(self.batch_size))
        for a in range(0, ids.size, step):  # votes in batches: (batch, classes) arrays
            codes = self._codes_of(res.ids[a:a + step])
            pred = self.vote(res.distances[a:a + step], codes).argmax(1)
            correct += int(np.sum(pred == truth[a:a + step]))
        return correct / ids.size

    def _loo_correct(self, x: np.ndarray, ids: np.ndarray) -> int:
        if self.k + 1 > self._ids.size:
            raise ValueError(f"leave-one-out with k={self.k} needs k + 1 = {self.k + 1} fitted "
                             f"vectors (each one's own is left out); the fitted set has "
                             f"{self._ids.size}")
        nn = self.kneighbors(x, self.k + 1)
        if nn is None:
            return None  # type: ignore[return-value]
        sims, codes, got = nn
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

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Directory with the index, labels (npy) and parameters (JSON); no pickle.

        Atomic, and never replaces anything but a saved classifier (with
        ``overwrite=True``); see :meth:`VectorIndex.save`.
        """
        self._check_fitted()
        if not isinstance(self.index_, VectorIndex):
            raise NotImplementedError(f"save() needs a VectorIndex underneath; this "
                                      f"classifier searches a {type(self.index_).__name__}")
        if not isinstance(self.weights, str):
            raise ValueError("a classifier with a callable weights= cannot be saved (it is "
                             "code, not data); save it with a named vote")

        def write(d: Path) -> dict[str, Any]:
            (d / "index").mkdir()
            self.index_._write_files(d / "index")
            np.save(d / "ids.npy", self._ids, allow_pickle=False)
            np.save(d / "codes.npy", self._codes, allow_pickle=False)
            return {"k": int(self.k), "weights": self.weights,
                    "temperature": float(self.temperature),
                    "search_params": None if self.search_params is None
                    else self.search_params.to_dict(),
                    "batch_size": int(self.batch_size)}

        return self._save_dir(path, write, ("index", "ids.npy", "codes.npy"), overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> KNNClassifier:
        """Load a classifier saved by :meth:`save`, its index onto ``device``.

        Raises
        ------
        IndexFileError
            A file is missing, damaged or disagrees with the others.
        """
        path = Path(path)
        meta = cls._read_meta(path)
        f = path / "classifier.json"
        k = meta_check(f, "k", lambda: check_int(meta.get("k"), "k"))
        weights = meta.get("weights")
        if weights not in VOTES:
            raise IndexFileError(f"{f}: unknown weights {weights!r} (known: {sorted(VOTES)})")
        temperature = meta_check(f, "temperature", lambda: check_positive_float(
            meta.get("temperature"), "temperature"))
        batch_size = meta_check(f, "batch_size", lambda: check_int(meta.get("batch_size"),
                                                                     "batch_size"))
        sp = meta.get("search_params")
        params = None if sp is None else meta_check(
            f, "search_params", lambda: SearchParams(**sp))
        index = VectorIndex.load(path / "index", device=device)
        ids = load_array(path / "ids.npy", dtype=np.int64, ndim=1)
        codes = load_array(path / "codes.npy", dtype=np.int64, ndim=1)
        n_classes = len(meta["classes"])
        if codes.shape != ids.shape:
            raise IndexFileError(f"{path / 'codes.npy'}: {codes.size} labels for {ids.size} ids")
        if codes.size and (codes.min() < 0 or codes.max() >= n_classes):
            raise IndexFileError(f"{path / 'codes.npy'}: class codes outside 0..{n_classes - 1}")
        s, dup = sorted_unique(ids)
        if dup is not None or (s == -1).any() or not np.array_equal(ids, s):
            raise IndexFileError(f"{path / 'ids.npy'}: ids must be sorted, unique and not -1")
        if index.ntotal != ids.size or not index.contains(ids).all():
            raise IndexFileError(f"{path / 'ids.npy'}: the ids do not match the "
                                 f"{index.ntotal} vectors of {path / 'index'}")
        if k > ids.size:
            raise IndexFileError(f"{f}: k={k} is larger than the fitted set ({ids.size})")
        self = cls(k=k, weights=weights, temperature=temperature, index=index.spec,
                   search_params=params, device=device, batch_size=batch_size)
        self.index_ = index
        self.classes_ = np.asarray(meta["classes"])
        self._ids, self._codes = ids, codes
        self.n_features_in_ = index.dim
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
