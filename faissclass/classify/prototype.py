"""PrototypeClassifier: class-mean prototypes (or k-means prototypes per class)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import (
    IndexFileError,
    check_int,
    check_positive_float,
    first_nonfinite_row,
)
from ..index import IndexSpec, VectorIndex, kmeans
from ..store import EmbeddingStore
from ._base import (
    BaseClassifier,
    check_labels,
    class_to_remove,
    json_labels,
    load_array,
    meta_check,
)

__all__ = ["PrototypeClassifier"]


class _State:
    """Everything a fitted PrototypeClassifier holds, built whole before it is committed."""

    def __init__(self, classes: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                 kprotos: list[np.ndarray] | None) -> None:
        self.classes, self.sums, self.counts, self.kprotos = classes, sums, counts, kprotos


class PrototypeClassifier(BaseClassifier):
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
        Softmax temperature of ``predict_proba`` (> 0).
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
    Each of them checks everything first and builds the new state whole: a
    refused call leaves the classifier exactly as it was.
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

    def _validate(self) -> None:
        check_positive_float(self.temperature, "temperature")
        check_int(self.n_prototypes, "n_prototypes")
        check_int(self.seed, "seed", min_value=None)
        if self.index is not None and not isinstance(self.index, IndexSpec):
            raise TypeError(f"index must be an IndexSpec or None; got "
                            f"{type(self.index).__name__}")

    def _prep(self, x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        if not self.center:
            return x
        z = x - (self.mean_ if mean is None else mean)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any = None) -> PrototypeClassifier:
        """Compute the prototypes from arrays (X, y) or a store (streamed)."""
        self._validate()
        if isinstance(X, EmbeddingStore):
            if y is not None:
                raise ValueError("fit(store) takes its labels from the store; pass y=None")
            store = X

            def batches() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
                start = 0
                for b in store.iter_batches(65_536):
                    yield b.embeddings, b.labels, start
                    start += len(b.labels)

            self._fit_batches(store.dim, batches, names=store.classes, source=str(store.root))
        else:
            x = self._fit_input(X)
            self._requires_y(y)
            classes, codes = np.unique(check_labels(y, x.shape[0]), return_inverse=True)
            codes = codes.reshape(-1)
            self._fit_batches(x.shape[1], lambda: iter([(x, codes, 0)]), names=classes,
                              source="X")
        return self

    def _fit_batches(self, dim: int,
                     batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, int]]],
                     names: Sequence[Any] | None, source: str) -> None:
        """Running sums per label code; ``names[code]`` is the class label (None: the code).
        Batches are (vectors, codes, first row); errors name the input row."""
        mean = None
        if self.center:
            total, count = np.zeros(dim), 0
            for x, _, start in batches():
                _finite(x, source, start)
                total += x.sum(axis=0, dtype=np.float64)
                count += x.shape[0]
            if count == 0:
                raise ValueError("fit() got no vectors")
            mean = (total / count).astype(np.float32)
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        members: dict[int, list[np.ndarray]] = {}
        for x, lab, start in batches():
            _finite(x, source, start)
            if lab.size and lab.min() < 0:
                row = start + int(np.flatnonzero(lab < 0)[0])
                raise ValueError(f"row {row} of {source} is unlabelled (label -1): it cannot "
                                 "make a prototype")
            z = self._prep(x, mean)
            for code in np.unique(lab).tolist():
                m = lab == code
                sums[code] = sums.get(code, 0) + z[m].sum(axis=0, dtype=np.float64)
                counts[code] = counts.get(code, 0) + int(m.sum())
                if self.n_prototypes > 1:
                    members.setdefault(code, []).append(z[m])
        if not sums:
            raise ValueError("fit() got no vectors")
        present = sorted(sums)
        state = _State(np.asarray(present) if names is None else np.asarray(names)[present],
                       np.stack([sums[c] for c in present]),
                       np.asarray([counts[c] for c in present], np.int64),
                       [self._cluster(np.concatenate(members[c])) for c in present]
                       if self.n_prototypes > 1 else None)
        built = self._build(state, dim)
        if self.center:
            self.mean_ = mean
        self.n_features_in_ = dim
        self._commit(state, built)

    def _cluster(self, z: np.ndarray) -> np.ndarray:
        return kmeans(z, int(self.n_prototypes), seed=int(self.seed),
                      spherical=self.renormalize)

    def _build(self, st: _State, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     VectorIndex]:
        """(prototypes, prototype -> class, first prototype of each class, index)."""
        if st.kprotos is not None:
            protos = np.concatenate(st.kprotos).astype(np.float32)
            sizes = [len(p) for p in st.kprotos]
        else:
            p = st.sums / st.counts[:, None]
            if self.renormalize:
                p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
            protos = p.astype(np.float32)
            sizes = [1] * len(p)
        owner = np.repeat(np.arange(len(sizes)), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        idx = VectorIndex(dim, self.index or IndexSpec(kind="flat"), device=self.device)
        if not idx.is_trained:
            idx.train(protos)
        idx.add(protos, np.arange(len(protos), dtype=np.int64))
        return protos, owner, starts, idx

    def _commit(self, st: _State, built: tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 VectorIndex]) -> None:
        self.classes_, self.sums_, self.counts_, self._kprotos = (
            st.classes, st.sums, st.counts, st.kprotos)
        self.prototypes_, self.prototype_class_, self._starts, self.index_ = built

    # ------------------------------------------------------------------ predicting

    def _scores(self, X: Any) -> np.ndarray:
        self._check_fitted()
        q = self._prep(self._queries(X))
        C = len(self.classes_)
        spec = self.index_.spec
        P = self.prototypes_
        if spec.kind == "flat" and self.index_.on_cpu:
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
        self._check_fitted()
        t = check_positive_float(self.temperature, "temperature")
        s = self._scores(X) / t
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ incremental

    def update(self, X: Any, y: Any) -> PrototypeClassifier:
        """Add samples to existing or new classes (running sums: O(rows))."""
        self._check_fitted()
        x = self._queries(X)
        codes, new = self._encode(y, x.shape[0], grow=True)
        classes = self._grown_classes(new)
        grow = len(classes) - len(self.counts_)
        sums = np.vstack([self.sums_, np.zeros((grow, self.n_features_in_))])
        counts = np.concatenate([self.counts_, np.zeros(grow, np.int64)])
        z = self._prep(x)
        kprotos = None
        if self._kprotos is not None:
            old = np.unique(codes[codes < len(self._kprotos)])
            if old.size:
                raise NotImplementedError(
                    f"n_prototypes={self.n_prototypes}: adding samples to existing class "
                    f"{classes[old[0]]!r} needs its earlier samples; refit instead")
            kprotos = list(self._kprotos) + [self._cluster(z[codes == c])
                                             for c in range(len(self._kprotos), len(classes))]
        np.add.at(sums, codes, z.astype(np.float64))
        counts += np.bincount(codes, minlength=len(counts))
        st = _State(classes, sums, counts, kprotos)
        self._commit(st, self._build(st, self.n_features_in_))
        return self

    def add_class(self, label: Any, X: Any) -> PrototypeClassifier:
        """Add a new class from its samples (n, dim)."""
        self._check_fitted()
        if label in set(json_labels(self.classes_)):
            raise ValueError(f"class {label!r} exists already; use update() to add samples")
        x = self._queries(X)
        if x.shape[0] == 0:
            raise ValueError(f"class {label!r} needs at least one sample")
        return self.update(x, [label] * x.shape[0])

    def remove_class(self, label: Any) -> PrototypeClassifier:
        """Drop a class and its prototype."""
        self._check_fitted()
        i = class_to_remove(self.classes_, label)
        keep = np.arange(len(self.classes_)) != i
        kprotos = None if self._kprotos is None else [
            p for j, p in enumerate(self._kprotos) if j != i]
        st = _State(self.classes_[keep], self.sums_[keep], self.counts_[keep], kprotos)
        self._commit(st, self._build(st, self.n_features_in_))
        return self

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Directory with running sums, counts, prototypes (npy) and parameters (JSON).

        Atomic, and never replaces anything but a saved classifier (with
        ``overwrite=True``); see :meth:`VectorIndex.save`.
        """
        self._check_fitted()

        def write(d: Path) -> dict[str, Any]:
            np.save(d / "sums.npy", self.sums_, allow_pickle=False)
            np.save(d / "counts.npy", self.counts_, allow_pickle=False)
            if self.center:
                np.save(d / "mean.npy", self.mean_, allow_pickle=False)
            if self._kprotos is not None:
                np.save(d / "kprotos.npy", np.concatenate(self._kprotos), allow_pickle=False)
                np.save(d / "kproto_sizes.npy",
                        np.asarray([len(p) for p in self._kprotos], np.int64),
                        allow_pickle=False)
            return {"center": bool(self.center), "renormalize": bool(self.renormalize),
                    "temperature": float(self.temperature),
                    "n_prototypes": int(self.n_prototypes), "seed": int(self.seed),
                    "index": None if self.index is None else self.index.to_dict()}

        return self._save_dir(path, write, ("sums.npy", "counts.npy", "mean.npy",
                                            "kprotos.npy", "kproto_sizes.npy"), overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> PrototypeClassifier:
        """Load a classifier saved by :meth:`save`; every array is cross-checked.

        Raises
        ------
        IndexFileError
            A file is missing, damaged or disagrees with the others.
        """
        path = Path(path)
        meta = cls._read_meta(path)
        f = path / "classifier.json"
        for key in ("center", "renormalize"):
            if not isinstance(meta.get(key), bool):
                raise IndexFileError(f"{f}: {key!r} must be true or false")
        spec = meta.get("index")
        self = meta_check(f, "parameters", lambda: cls(
            index=None if spec is None else IndexSpec.from_dict(spec),
            center=meta["center"], renormalize=meta["renormalize"],
            temperature=meta.get("temperature"), device=device,
            n_prototypes=meta.get("n_prototypes"), seed=meta.get("seed")))
        meta_check(f, "parameters", self._validate)
        classes = np.asarray(meta["classes"])
        sums = load_array(path / "sums.npy", dtype=np.float64, ndim=2)
        counts = load_array(path / "counts.npy", dtype=np.int64, ndim=1)
        C, dim = sums.shape
        if len(classes) != C or counts.shape != (C,) or dim < 1:
            raise IndexFileError(f"{path}: {len(classes)} classes, {C} running sums and "
                                 f"{counts.size} counts (they must agree)")
        if (counts < 1).any():
            raise IndexFileError(f"{path / 'counts.npy'}: every class needs a count >= 1")
        if self.center:
            mean = load_array(path / "mean.npy", dtype=np.float32, ndim=1)
            if mean.shape != (dim,):
                raise IndexFileError(f"{path / 'mean.npy'}: shape {mean.shape}, expected "
                                     f"({dim},)")
            self.mean_ = mean
        kprotos = None
        if self.n_prototypes > 1:
            flat = load_array(path / "kprotos.npy", dtype=np.float32, ndim=2)
            sizes = load_array(path / "kproto_sizes.npy", dtype=np.int64, ndim=1)
            if sizes.shape != (C,) or (sizes < 1).any() or (sizes > self.n_prototypes).any() \
                    or int(sizes.sum()) != flat.shape[0] or flat.shape[1] != dim:
                raise IndexFileError(f"{path / 'kprotos.npy'}: {flat.shape[0]} prototypes of "
                                     f"dim {flat.shape[1]} do not fit {C} classes of at most "
                                     f"{self.n_prototypes} prototypes of dim {dim}")
            kprotos = np.split(flat, np.cumsum(sizes)[:-1])
        self.n_features_in_ = dim
        st = _State(classes, sums, counts, kprotos)
        self._commit(st, self._build(st, dim))
        return self


def _finite(x: np.ndarray, source: str, start: int) -> None:
    bad = first_nonfinite_row(x)
    if bad is not None:
        raise ValueError(f"row {start + bad} of {source} holds NaN or inf")
