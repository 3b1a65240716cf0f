"""Classifiers: no silent wrong answer, no half-applied change, checked files, and
scikit-learn's own estimator checks with every deviation declared (issue 8)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import write_store
from scipy.special import softmax as scipy_softmax
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import faissclass as fc
from faissclass.data import clustered

D = 16


@pytest.fixture(scope="module")
def split():
    X, y, _ = clustered(1500, D, 6, noise=2.0, seed=11)
    return X[:1200], y[:1200], X[1200:], y[1200:]


# --------------------------------------------------------------------------- sklearn's checks

# Deliberate deviations, each with its reason (sklearn's parametrize_with_checks runs
# every other check and fails the test if one of these starts to pass).
_INTEGER_X = ("embeddings are floats; integer arrays are refused rather than silently "
              "read as coordinates (cast explicitly)")
_OBJECT_X = "object arrays are refused: embeddings are float arrays (cast explicitly)"
_COMMON = {
    "check_estimators_dtypes": _INTEGER_X,
    "check_classifier_data_not_an_array": _INTEGER_X,
    "check_dtype_object": _OBJECT_X,
}


def expected_failed_checks(estimator):
    out = dict(_COMMON)
    if isinstance(estimator, fc.PrototypeClassifier):
        out["check_methods_subset_invariance"] = (
            "predict_proba is a softmax at T=0.07 of float32 GEMM scores; BLAS rounds a "
            "single row (gemv) differently from a block (gemm) by ~1e-7, which /T turns into "
            "differences above the check's 1e-7 tolerance. predict is invariant.")
    return out


@parametrize_with_checks([fc.KNNClassifier(k=3), fc.PrototypeClassifier()],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FAISS's training-size warning
        check(estimator)


# --------------------------------------------------------------------------- votes


def reference_softmax_vote(X, y, Q, k, T, metric):
    """From scratch, in float64: neighbours by exact distance, weights by scipy's
    numerically stable softmax over each query's k neighbours, summed per class."""
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    if metric == "ip":
        sim = Q64 @ X64.T
    else:
        sim = -((Q64 ** 2).sum(1)[:, None] - 2 * Q64 @ X64.T + (X64 ** 2).sum(1)[None, :])
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    w = scipy_softmax(np.take_along_axis(sim, nn, 1) / T, axis=1)
    classes = np.unique(y)
    scores = np.stack([(w * (y[nn] == c)).sum(1) for c in classes], axis=1)
    return classes[scores.argmax(1)], scores


@pytest.mark.parametrize(("metric", "scale", "T"), [("l2", 1.0, 0.07), ("l2", 10.0, 0.07),
                                                    ("ip", 30.0, 0.07), ("ip", 1.0, 0.001),
                                                    ("l2", 1.0, 0.001)])
def test_softmax_vote_is_stable_for_every_metric_scale_and_temperature(split, metric, scale,
                                                                       T):
    X, y, Q, yq = split
    X, Q = X * scale, Q * scale  # un-normalised vectors
    clf = fc.KNNClassifier(k=20, weights="softmax", temperature=T,
                           index=fc.IndexSpec(kind="flat", metric=metric)).fit(X, y)
    want, scores = reference_softmax_vote(X, y, Q, 20, T, metric)
    proba = clf.predict_proba(Q)
    assert np.isfinite(proba).all()
    # Before: exp(-d/T) underflowed or exp(s/T) overflowed; top-1 fell to 0.14 with
    # 97% of predictions in one class, and T = 0.001 gave NaN probabilities.
    np.testing.assert_array_equal(clf.predict(Q), want)
    # float32 distances against a float64 reference, amplified by 1/T: 1e-5 measured.
    np.testing.assert_allclose(proba, scores, atol=1e-4)
    assert clf.score(Q, yq) > 0.5


def test_a_callable_vote_is_accepted_as_in_sklearn(split):
    from sklearn.neighbors import KNeighborsClassifier

    X, y, Q, _ = split

    def inverse_square(d):
        return 1.0 / (d ** 2 + 1e-3)

    ours = fc.KNNClassifier(k=10, weights=inverse_square).fit(X, y)
    ref = KNeighborsClassifier(10, weights=inverse_square, algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q))
    np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q), atol=1e-4)


# --------------------------------------------------------------------------- prototypes


def test_prototype_fast_path_refuses_nan_queries(split):
    X, y, Q, _ = split
    clf = fc.PrototypeClassifier().fit(X, y)
    bad = Q[:5].copy()
    bad[3, 2] = np.nan
    for fn in (clf.predict, clf.predict_proba, lambda q: clf.predict_topk(q, 2)):
        with pytest.raises(ValueError, match="X row 3 holds NaN or inf"):
            fn(bad)  # before: class 0, silently


def test_prototype_fit_names_the_bad_input_row(tmp_path, split):
    X, y, _, _ = split
    bad = X.copy()
    bad[777, 1] = np.inf
    with pytest.raises(ValueError, match="X row 777 holds NaN or inf"):
        fc.PrototypeClassifier().fit(bad, y)
    store = write_store(tmp_path / "s", X, np.where(np.arange(1200) == 901, -1, y),
                        shard_size=500)
    with pytest.raises(ValueError, match=r"row 901 of .*s is unlabelled \(label -1\)"):
        fc.PrototypeClassifier().fit(store)


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), float("inf"), "hot", None])
def test_temperature_is_validated(split, T):
    X, y, _, _ = split
    for clf in (fc.PrototypeClassifier(temperature=T), fc.KNNClassifier(temperature=T)):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            clf.fit(X, y)


def _state(clf):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in vars(clf).items() if k.endswith("_") or k.startswith("_")}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        elif isinstance(a[k], list):
            assert len(a[k]) == len(b[k])
            for u, v in zip(a[k], b[k], strict=True):
                np.testing.assert_array_equal(u, v)
        elif k != "index_":
            assert a[k] == b[k], k


def test_refused_changes_leave_a_prototype_classifier_unchanged(split):
    X, y, Q, _ = split
    clf = fc.PrototypeClassifier().fit(X, y)
    before, pred = _state(clf), clf.predict(Q)
    nan = X[:4].copy()
    nan[2, 0] = np.nan
    for call, exc in [(lambda: clf.add_class(99, nan), ValueError),
                      (lambda: clf.update(nan, [0, 1, 99, 2]), ValueError),
                      (lambda: clf.update(X[:4, :5], [0, 1, 2, 3]), ValueError),
                      (lambda: clf.update(X[:4], [0, 1, np.nan, 2]), ValueError),
                      (lambda: clf.update(X[:4], [0, 1]), ValueError),
                      (lambda: clf.remove_class(1234), ValueError)]:
        with pytest.raises(exc):
            call()
        _same(before, _state(clf))
        np.testing.assert_array_equal(clf.predict(Q), pred)
    k2 = fc.PrototypeClassifier(n_prototypes=2).fit(X, y)
    before2 = _state(k2)
    with pytest.raises(NotImplementedError, match="needs its earlier samples"):
        k2.update(X[:6], [77, 77, 77, 0, 0, 0])  # a new class, then an old one
    _same(before2, _state(k2))
    assert 77 not in k2.classes_


def test_refused_adds_leave_a_knn_classifier_unchanged_and_ids_are_never_truncated(split):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=5).fit(X, y)
    before, pred = _state(clf), clf.predict(Q)
    for ids, match in [([5000, -1], r"ids\[1\] is -1"),
                       ([5000.5, 5001.0], "ids must be integers"),
                       ([3, 5001], "id 3 is already in the index"),
                       ([5000, 5000], "appears twice")]:
        with pytest.raises((ValueError, TypeError), match=match):
            clf.add(Q[:2], ["new", "new"], ids=ids)
        _same(before, _state(clf))
        assert clf.index_.ntotal == 1200 and "new" not in clf.classes_.tolist()
    np.testing.assert_array_equal(clf.predict(Q), pred)
    clf.add(Q[:2], [0, 0], ids=np.array([5000.0, 5001.0]))  # integral floats: exact
    assert clf.index_.contains([5000, 5001]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_labels_are_refused(split, bad):
    X, y, _, _ = split
    yf = y.astype(float)
    yf[10] = bad
    for clf in (fc.KNNClassifier(), fc.PrototypeClassifier()):
        with pytest.raises(ValueError, match=rf"y must not hold NaN or inf; element 10 is {bad}"):
            clf.fit(X, yf)


def test_unfitted_classifiers_raise_sklearns_not_fitted_error(split):
    Q = split[2]
    for clf in (fc.KNNClassifier(), fc.PrototypeClassifier()):
        for call in (clf.predict, clf.predict_proba,
                     lambda q, c=clf: c.predict_topk(q, 1)):
            with pytest.raises(NotFittedError):
                call(Q)
    with pytest.raises(NotFittedError):
        fc.KNNClassifier().add(Q, np.zeros(len(Q)))
    with pytest.raises(NotFittedError):
        fc.PrototypeClassifier().add_class("x", Q)


# --------------------------------------------------------------------------- small checks


def test_small_argument_checks(tmp_path, split):
    X, y, Q, yq = split
    knn = fc.KNNClassifier(k=5).fit(X, y)
    for ks in ([0], [5, 0], [-3], []):
        with pytest.raises(ValueError, match=r"k in ks|at least one k"):
            knn.evaluate(Q, yq, ks=ks)
    proto = fc.PrototypeClassifier().fit(X, y)
    for n in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="n must be a positive int"):
            fc.hard_examples(knn, proto, 0, n)
    with pytest.raises(ValueError, match="per_class must be an int >= 0"):
        fc.select_prototypes(X, y, per_class=-1)
    with pytest.raises(ValueError, match=r"per_class\[0\] must be an int >= 0"):
        fc.select_prototypes(X, y, per_class={0: -2})
    assert fc.select_prototypes(X, y, per_class=np.int64(2), method="random").size == 12


# --------------------------------------------------------------------------- saved files


def test_classifier_save_never_replaces_what_it_does_not_own(tmp_path, split):
    X, y, _, _ = split
    store = write_store(tmp_path / "emb", X, y)
    clf = fc.KNNClassifier(k=5).fit(X, y)
    with pytest.raises(FileExistsError, match="not a saved faissclass classifier"):
        clf.save(store.root, overwrite=True)
    fc.EmbeddingStore(store.root).verify()
    clf.save(tmp_path / "c")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        clf.save(tmp_path / "c")
    clf.save(tmp_path / "c", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "emb"]


def _edit(path, **changes):
    f = path / "classifier.json"
    meta = json.loads(f.read_text())
    meta.update(changes)
    f.write_text(json.dumps(meta))


def test_tampered_prototype_files_are_clear_errors(tmp_path, split):
    X, y, _, _ = split
    path = fc.PrototypeClassifier(center=True).fit(X, y).save(tmp_path / "p")
    fc.PrototypeClassifier.load(path)
    cases = [
        (lambda: _edit(path, classes=[0, 1, 2]), "3 classes, 6 running sums"),
        (lambda: np.save(path / "mean.npy", np.zeros(D + 1, np.float32)), r"mean\.npy: shape"),
        (lambda: np.save(path / "counts.npy", np.zeros(6, np.int64)), "count >= 1"),
        (lambda: np.save(path / "sums.npy", np.zeros((6, D), np.float32)), "float32"),
        (lambda: _edit(path, temperature=-1), "temperature"),
        (lambda: _edit(path, n_prototypes=0), "n_prototypes"),
        (lambda: (path / "sums.npy").unlink(), r"sums\.npy: missing"),
    ]
    for i, (damage, match) in enumerate(cases):
        fresh = fc.PrototypeClassifier(center=True).fit(X, y).save(tmp_path / f"p{i}")
        path = fresh
        _edit(path, checksums={})  # the content checks must hold without the checksums
        damage()
        with pytest.raises(fc.IndexFileError, match=match):
            fc.PrototypeClassifier.load(path)


def test_tampered_knn_files_are_clear_errors(tmp_path, split):
    X, y, _, _ = split
    cases = [
        (lambda p: _edit(p, weights="gaussian"), "unknown weights 'gaussian'"),
        (lambda p: _edit(p, k=0), "k must be a positive int"),
        (lambda p: _edit(p, k=5000), "k=5000 is larger than the fitted set"),
        (lambda p: np.save(p / "codes.npy", np.full(1200, 9, np.int64)), "class codes outside"),
        (lambda p: np.save(p / "ids.npy", np.arange(1200) + 1), "do not match"),
        (lambda p: np.save(p / "ids.npy", np.r_[-1, np.arange(1199)]), "not -1"),
        (lambda p: _edit(p, classes=["a"]), "class codes outside"),
    ]
    for i, (damage, match) in enumerate(cases):
        p = fc.KNNClassifier(k=5).fit(X, y).save(tmp_path / f"k{i}")
        _edit(p, checksums={})  # the content checks must hold without the checksums
        damage(p)
        with pytest.raises(fc.IndexFileError, match=match):
            fc.KNNClassifier.load(p)
    # With them, a flipped class code is caught before any array is used.
    p = fc.KNNClassifier(k=5).fit(X, y).save(tmp_path / "kc")
    raw = bytearray((p / "codes.npy").read_bytes())
    raw[-8] ^= 1  # one label changes class, still in range
    (p / "codes.npy").write_bytes(bytes(raw))
    with pytest.raises(fc.IndexFileError, match=r"codes\.npy: checksum .* damaged"):
        fc.KNNClassifier.load(p)


def test_refused_mixed_label_types_and_searchers_without_the_fitted_ids(split):
    X, y, Q, _ = split
    proto = fc.PrototypeClassifier().fit(X, y)
    with pytest.raises(ValueError, match=r"new label 'cat' .* not of the kind"):
        proto.add_class("cat", Q[:3])
    assert "cat" not in proto.classes_.tolist() and proto.classes_.dtype.kind == "i"
    idx = fc.VectorIndex(D).add(X, np.arange(len(X)) + 10_000)
    with pytest.raises(ValueError, match="does not hold the fitted vectors' ids"):
        fc.KNNClassifier(k=3, index=idx).fit(X, y)
    with pytest.raises(TypeError, match="all str or all int"):
        fc.ShardWriter("/tmp/never-created-faissclass", dim=4, classes=["a", 1])
