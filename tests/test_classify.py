"""Classifiers against independent references: sklearn and plain numpy votes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

import faissclass as fc
from faissclass.data import clustered

D = 32


@pytest.fixture(scope="module")
def split():
    X, y, _ = clustered(3000, D, 12, noise=2.5, seed=5)
    return X[:2400], y[:2400], X[2400:], y[2400:]


def numpy_vote(X, y, Q, k, weights, T=0.07):
    """Reference kNN vote written from scratch: cosine similarity, per-class sums."""
    sims = Q @ X.T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, nn, 1)
    w = {"uniform": np.ones_like(s), "softmax": np.exp(s / T)}[weights]
    classes = np.unique(y)
    scores = np.zeros((len(Q), len(classes)))
    for c_i, c in enumerate(classes):
        scores[:, c_i] = (w * (y[nn] == c)).sum(1)
    return classes[scores.argmax(1)], scores


# --------------------------------------------------------------------------- references


def test_prototypes_match_nearest_centroid_on_normalised_data(split):
    X, y, Q, _ = split
    ours = fc.PrototypeClassifier().fit(X, y).predict(Q)
    nc = NearestCentroid().fit(X, y)
    nc.centroids_ = nc.centroids_ / np.linalg.norm(nc.centroids_, axis=1, keepdims=True)
    np.testing.assert_array_equal(ours, nc.predict(Q))


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_matches_sklearn_brute(split, weights):
    X, y, Q, _ = split
    ours = fc.KNNClassifier(k=15, weights=weights).fit(X, y)
    ref = KNeighborsClassifier(n_neighbors=15, weights=weights, algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q))
    np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q), atol=1e-5)


def test_knn_softmax_matches_a_numpy_weighted_vote(split):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=20, weights="softmax", temperature=0.07).fit(X, y)
    want, scores = numpy_vote(X, y, Q, 20, "softmax")
    np.testing.assert_array_equal(clf.predict(Q), want)
    np.testing.assert_allclose(clf.predict_proba(Q), scores / scores.sum(1, keepdims=True),
                               rtol=1e-4)


def test_ties_break_by_class_order():
    # Two neighbours each of classes "b" and "a", symmetric around the query.
    X = np.array([[1, 0.1], [1, -0.1], [1, 0.1], [1, -0.1]], np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array(["b", "b", "a", "a"])
    clf = fc.KNNClassifier(k=4, weights="uniform").fit(X, y)
    q = np.array([[1.0, 0.0]], np.float32)
    assert clf.predict(q)[0] == "a"  # classes_ = ["a", "b"]: "a" comes first
    labels, scores = clf.predict_topk(q, 2)
    assert list(labels[0]) == ["a", "b"] and scores[0, 0] == scores[0, 1]
    proto = fc.PrototypeClassifier().fit(X, y)
    assert proto.predict(q)[0] == "a"  # identical prototypes: class order decides


# --------------------------------------------------------------------------- protocols


def test_loo_score_equals_refitting_without_each_point(rng):
    X, y, _ = clustered(60, 8, 3, noise=3.0, seed=2)
    clf = fc.KNNClassifier(k=5, weights="softmax").fit(X, y)
    correct = 0
    for i in range(60):
        keep = np.arange(60) != i
        one = fc.KNNClassifier(k=5, weights="softmax").fit(X[keep], y[keep])
        correct += int(one.predict(X[i:i + 1])[0] == y[i])
    assert clf.loo_score(X) == pytest.approx(correct / 60)
    assert clf.loo_score(X) < clf.score(X, y)  # including itself would inflate it


def test_loo_score_takes_the_self_join_only_for_the_fitted_set(rng, monkeypatch):
    """A flat CPU index and exactly the fitted vectors: one symmetric self-join, the
    same score as searching with k + 1; other vectors (or another index) search."""
    from faissclass.index import VectorIndex

    X, y, _ = clustered(700, 16, 5, noise=2.0, seed=3)
    clf = fc.KNNClassifier(k=7, batch_size=128).fit(X, y)
    calls = []
    real = VectorIndex.self_knn
    monkeypatch.setattr(VectorIndex, "self_knn",
                        lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    fast = clf.loo_score(X)
    assert calls == [1]
    ids = np.arange(700)
    slow = clf._loo_correct(clf._queries(X), ids) / 700  # the k + 1 search path
    assert fast == pytest.approx(slow)
    # rows in another order are other (id, vector) pairs; nearby vectors are not the
    # fitted ones: both search, and score what the k + 1 search scores
    for other in (X[rng.permutation(700)], X + np.float32(1e-3)):
        assert clf.loo_score(other) == pytest.approx(
            clf._loo_correct(clf._queries(other), ids) / 700)
    assert calls == [1]
    ivf = fc.KNNClassifier(k=7, index=fc.IndexSpec(kind="ivf", nlist=4)).fit(X, y)
    ivf.loo_score(X)
    assert calls == [1]


def test_evaluate_several_k_from_one_search(split):
    X, y, Q, yq = split
    got = fc.KNNClassifier(k=50).fit(X, y).evaluate(Q, yq, ks=(1, 10, 50))
    for k in (1, 10, 50):
        assert got[k] == pytest.approx(fc.KNNClassifier(k=k).fit(X, y).score(Q, yq))


def test_predict_topk_matches_proba_order(split):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=20).fit(X, y)
    labels, scores = clf.predict_topk(Q, 3)
    proba = clf.predict_proba(Q)
    assert (labels[:, 0] == clf.predict(Q)).all()
    assert np.all(np.diff(scores, axis=1) <= 0)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(labels, clf.classes_[order])
    acc5 = fc.metrics.topk_accuracy(split[3], clf.predict_topk(Q, 5)[0])
    assert acc5 >= clf.score(Q, split[3])


# --------------------------------------------------------------------------- incremental


def test_prototype_updates_equal_a_refit(split):
    X, y, Q, _ = split
    a, b, c = np.isin(y, [0, 1, 2, 3, 4, 5]), y == 6, y == 7
    clf = fc.PrototypeClassifier().fit(X[a], y[a])
    clf.add_class(6, X[b])
    clf.update(X[c], y[c])  # a new class through update
    clf.update(X[a][:50], y[a][:50])  # more samples for existing classes
    XX = np.concatenate([X[a], X[b], X[c], X[a][:50]])
    yy = np.concatenate([y[a], y[b], y[c], y[a][:50]])
    ref = fc.PrototypeClassifier().fit(XX, yy)
    np.testing.assert_allclose(clf.prototypes_, ref.prototypes_, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(Q), ref.predict(Q))
    clf.remove_class(3)
    keep = yy != 3
    ref = fc.PrototypeClassifier().fit(XX[keep], yy[keep])
    np.testing.assert_array_equal(clf.classes_, ref.classes_)
    np.testing.assert_array_equal(clf.predict(Q), ref.predict(Q))


def test_knn_add_equals_fit_on_everything(split):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=10).fit(X[:1200], y[:1200]).add(X[1200:], y[1200:])
    ref = fc.KNNClassifier(k=10).fit(X, y)
    np.testing.assert_array_equal(clf.predict(Q), ref.predict(Q))


@pytest.mark.parametrize("spec", [fc.IndexSpec(kind="flat"), fc.IndexSpec(kind="ivf", nlist=16)])
def test_knn_remove_class_equals_fit_without_it(split, spec):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=10, index=spec).fit(X, y)
    gone = y[0]
    clf.remove_class(gone)
    keep = y != gone
    assert gone not in clf.classes_ and len(clf.index_) == keep.sum()
    np.testing.assert_array_equal(clf.classes_, np.unique(y[keep]))
    if spec.kind == "flat":  # exact: equal to a classifier that never saw the class
        ref, _ = numpy_vote(X[keep], y[keep], Q, 10, "softmax")
        np.testing.assert_array_equal(clf.predict(Q), ref)
    else:  # same trained IVF, same lists minus the class: equal to the flat answer mostly
        assert not np.isin(clf.predict(Q), [gone]).any()
    # and back again, under new ids: the class votes as before
    clf.add(X[~keep], y[~keep])
    ref_all, _ = numpy_vote(X, y, Q, 10, "softmax")
    if spec.kind == "flat":
        np.testing.assert_array_equal(clf.predict(Q), ref_all)


def test_knn_remove_class_refusals_leave_it_unchanged(split):
    X, y, Q, _ = split
    hnsw = fc.KNNClassifier(k=5, index=fc.IndexSpec(kind="hnsw", M=16)).fit(X, y)
    before = hnsw.predict_proba(Q)
    with pytest.raises(NotImplementedError, match="HNSW"):
        hnsw.remove_class(y[0])
    np.testing.assert_array_equal(hnsw.predict_proba(Q), before)
    assert len(hnsw.classes_) == 12
    flat = fc.KNNClassifier(k=5).fit(X, y)
    with pytest.raises(ValueError, match="unknown class 99"):
        flat.remove_class(99)
    two = fc.KNNClassifier(k=300).fit(X[np.isin(y, [0, 1])], y[np.isin(y, [0, 1])])
    with pytest.raises(ValueError, match="fewer than k=300"):
        two.remove_class(0)
    one = fc.KNNClassifier(k=1).fit(X[:5], np.zeros(5, int))
    with pytest.raises(ValueError, match="last class"):
        one.remove_class(0)


def test_centering_cl2n_matches_a_manual_computation(split):
    X, y, Q, _ = split
    clf = fc.PrototypeClassifier(center=True).fit(X, y)
    mu = X.mean(0)
    Z = (X - mu) / np.linalg.norm(X - mu, axis=1, keepdims=True)
    P = np.stack([Z[y == c].mean(0) for c in np.unique(y)])
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    Zq = (Q - mu) / np.linalg.norm(Q - mu, axis=1, keepdims=True)
    np.testing.assert_array_equal(clf.predict(Q), np.unique(y)[(Zq @ P.T).argmax(1)])


# --------------------------------------------------------------------------- indexes, stores


@pytest.mark.parametrize(("spec", "params"), [
    (fc.IndexSpec(kind="ivf", nlist=32), fc.SearchParams(nprobe=4)),
    (fc.IndexSpec(kind="ivf", nlist=32, storage="sq8"), fc.SearchParams(nprobe=4)),
    (fc.IndexSpec(kind="hnsw", M=16), fc.SearchParams(ef_search=32)),
    (fc.IndexSpec(kind="ivf", nlist=32, storage="pq", m=8), fc.SearchParams(nprobe=4)),
], ids=["ivf", "ivf-sq8", "hnsw", "ivf-pq"])
def test_approximate_indexes_stay_close_to_flat(split, spec, params):
    X, y, Q, yq = split
    flat = fc.KNNClassifier(k=20).fit(X, y).score(Q, yq)
    approx = fc.KNNClassifier(k=20, index=spec, search_params=params).fit(X, y).score(Q, yq)
    # measured: flat 0.567; IVF 0.562, SQ8 0.560, HNSW 0.568, PQ8 0.577
    assert abs(approx - flat) <= 0.025, (approx, flat)


def test_fit_from_store_equals_fit_from_arrays(tmp_path, split):
    X, y, Q, _ = split
    names = [f"class-{i:02d}" for i in range(12)]  # sorted order == store order
    with fc.ShardWriter(tmp_path / "s", dim=D, dtype="float32", shard_size=500, classes=names,
                        fsync=False) as w:
        w.append(X, y)
    store = fc.EmbeddingStore(tmp_path / "s")
    yn = np.asarray(names)[y]
    for make in (lambda: fc.KNNClassifier(k=10), fc.PrototypeClassifier):
        a, b = make().fit(store), make().fit(X, yn)
        np.testing.assert_array_equal(a.classes_, b.classes_)
        np.testing.assert_array_equal(a.predict(Q), b.predict(Q))
    assert fc.KNNClassifier(k=10).fit(store).loo_score(store) == pytest.approx(
        fc.KNNClassifier(k=10).fit(X, yn).loo_score(X))


def test_knn_save_load_round_trip(tmp_path, split):
    X, y, Q, _ = split
    clf = fc.KNNClassifier(k=7, weights="distance").fit(X, np.asarray(["x", "y", "z"])[y % 3])
    clf.save(tmp_path / "clf")
    again = fc.KNNClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(again.predict(Q), clf.predict(Q))
    np.testing.assert_allclose(again.predict_proba(Q), clf.predict_proba(Q))
    assert again.get_params()["k"] == 7


def test_sklearn_estimator_protocol(split):
    X, y, _, _ = split
    clf = fc.KNNClassifier(k=5)
    assert clf.set_params(k=9).get_params()["k"] == 9
    c2 = clone(clf)
    assert c2.k == 9 and not hasattr(c2, "classes_")
    res = fc.metrics.repeated_splits(fc.PrototypeClassifier(), X, y, n_splits=4, seed=0)
    assert len(res["scores"]) == 4 and 0 < res["mean"] <= 1 and res["ci"] > 0
    assert res == fc.metrics.repeated_splits(fc.PrototypeClassifier(), X, y, n_splits=4, seed=0)


# --------------------------------------------------------------------------- bad input


def test_bad_input(split):
    X, y, Q, _ = split
    with pytest.raises(ValueError, match="not fitted yet"):
        fc.KNNClassifier().predict(Q)
    with pytest.raises(ValueError, match="not fitted yet"):
        fc.PrototypeClassifier().predict(Q)
    clf = fc.KNNClassifier(k=5).fit(X, y)
    with pytest.raises(ValueError, match="queries have dim 3, expected 32"):
        clf.predict(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="k=50 is larger than the fitted set"):
        fc.KNNClassifier(k=50).fit(X[:10], y[:10])
    with pytest.raises(ValueError, match=r"one label per row \(2400\)"):
        fc.KNNClassifier().fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"one label per row \(2400\)"):
        fc.PrototypeClassifier().fit(X, y[:-1])
    proto = fc.PrototypeClassifier().fit(X, y)
    with pytest.raises(ValueError, match="unknown class 99"):
        proto.remove_class(99)
    with pytest.raises(ValueError, match="needs at least one sample"):
        proto.add_class(42, np.empty((0, D), np.float32))
    with pytest.raises(ValueError, match="exists already"):
        proto.add_class(0, X[:3])
    with pytest.raises(ValueError, match="weights must be"):
        fc.KNNClassifier(weights="gaussian").fit(X, y)
    with pytest.raises(ValueError, match="label 'zzz' is not one of the fitted classes"):
        clf.evaluate(Q[:2], ["zzz", 0])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_prototype_gemm_shortcut_equals_index_search(split, metric):
    X, y, Q, _ = split
    fast = fc.PrototypeClassifier(index=fc.IndexSpec(kind="flat", metric=metric)).fit(X, y)
    via_index = fc.PrototypeClassifier(index=fc.IndexSpec(factory="Flat", metric=metric)).fit(X, y)
    np.testing.assert_allclose(fast.predict_proba(Q), via_index.predict_proba(Q), atol=1e-4)
    np.testing.assert_array_equal(fast.predict(Q), via_index.predict(Q))
    hnsw = fc.PrototypeClassifier(index=fc.IndexSpec(kind="hnsw", M=8)).fit(X, y)
    assert np.mean(hnsw.predict(Q) == fast.predict(Q)) >= 0.99  # 12 prototypes: ~exact


def test_prototype_save_load_round_trip(tmp_path, split):
    X, y, Q, _ = split
    for clf in (fc.PrototypeClassifier().fit(X, y), fc.PrototypeClassifier(center=True).fit(X, y)):
        clf.save(tmp_path / "p", overwrite=True)
        again = fc.PrototypeClassifier.load(tmp_path / "p")
        np.testing.assert_array_equal(again.predict(Q), clf.predict(Q))
        again.update(Q[:5], again.predict(Q[:5]))  # still incremental after loading


def test_hard_examples_are_the_nearest_other_class_vectors(tmp_path, split):
    X, y, _, _ = split
    proto = fc.PrototypeClassifier().fit(X, y)
    p = proto.prototypes_[3]
    sims = X @ p
    sims[y == 3] = -np.inf
    want = np.argsort(-sims, kind="stable")[:15]
    with fc.ShardWriter(tmp_path / "s", dim=D, dtype="float32", shard_size=700,
                        fsync=False) as w:
        w.append(X, y)
    ids, s, labels = fc.hard_examples(fc.EmbeddingStore(tmp_path / "s"), proto, 3, 15)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(s, sims[want], rtol=1e-5)
    assert not (labels == 3).any()
    ids2, _, labels2 = fc.hard_examples(fc.KNNClassifier(k=5).fit(X, y), proto, 3, 15)
    np.testing.assert_array_equal(ids2, want)
    np.testing.assert_array_equal(labels2, y[want])


def test_several_prototypes_per_class(tmp_path):
    # Each class is three separate modes: one mean prototype sits between them.
    d = 8  # few dimensions: the modes of a class are far from their mean
    rng = np.random.default_rng(3)
    modes = rng.standard_normal((4 * 3, d)).astype(np.float32)
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    m = rng.integers(0, 12, 3000)
    X = modes[m] + 0.6 / np.sqrt(d) * rng.standard_normal((3000, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = m // 3
    Xtr, ytr, Q, yq = X[:2400], y[:2400], X[2400:], y[2400:]
    one = fc.PrototypeClassifier().fit(Xtr, ytr)
    three = fc.PrototypeClassifier(n_prototypes=3, seed=1).fit(Xtr, ytr)
    assert three.prototypes_.shape == (12, d)
    assert three.score(Q, yq) > one.score(Q, yq) + 0.25  # measured 0.963 vs 0.590
    # reference: faiss k-means per class and the best-prototype rule, in numpy
    import faiss
    P, owner = [], []
    for c in range(4):
        km = faiss.Kmeans(d, 3, niter=20, seed=1, spherical=True, verbose=False)
        km.cp.min_points_per_centroid = 1
        km.train(Xtr[ytr == c])
        P.append(km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True))
        owner += [c] * 3
    s = Q @ np.concatenate(P).T
    best = np.stack([s[:, np.array(owner) == c].max(1) for c in range(4)], 1)
    np.testing.assert_array_equal(three.predict(Q), best.argmax(1))
    via_index = fc.PrototypeClassifier(n_prototypes=3, seed=1,
                                       index=fc.IndexSpec(factory="Flat")).fit(Xtr, ytr)
    np.testing.assert_array_equal(via_index.predict(Q), three.predict(Q))
    three.save(tmp_path / "p")
    np.testing.assert_array_equal(fc.PrototypeClassifier.load(tmp_path / "p").predict(Q),
                                  three.predict(Q))
    with pytest.raises(NotImplementedError, match="refit instead"):
        three.update(Q[:3], yq[:3])
    three.add_class(9, Q[:20]).remove_class(0)
    assert list(three.classes_) == [1, 2, 3, 9] and three.prototypes_.shape == (12, d)


def test_eigenvector_centrality_matches_networkx(rng):
    import networkx as nx

    from faissclass.classify import eigenvector_centrality

    Z = rng.standard_normal((40, 6)) + 1.0  # mostly positive cosines
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    S = np.maximum(Zn @ Zn.T, 0)
    np.fill_diagonal(S, 0)
    ref = nx.eigenvector_centrality_numpy(nx.from_numpy_array(S), weight="weight")
    np.testing.assert_allclose(eigenvector_centrality(Z), [ref[i] for i in range(40)],
                               rtol=1e-6, atol=1e-9)


def test_select_prototypes_keeps_the_least_central(split):
    from faissclass.classify import eigenvector_centrality

    X, y, Q, yq = split
    idx = fc.select_prototypes(X, y, 5)
    assert idx.size == 12 * 5 and np.all(np.diff(idx) > 0)
    rows = np.flatnonzero(y == 4)
    cent = eigenvector_centrality(X[rows])
    want = rows[np.argsort(cent, kind="stable")[:5]]
    np.testing.assert_array_equal(idx[np.isin(idx, rows)], np.sort(want))
    top = fc.select_prototypes(X, y, 5, method="central")
    np.testing.assert_array_equal(top[np.isin(top, rows)],
                                  np.sort(rows[np.argsort(-cent, kind="stable")[:5]]))
    rnd = fc.select_prototypes(X, y, 5, method="random", seed=1)
    assert rnd.size == 60 and not np.array_equal(rnd, idx)
    counts = fc.tune_per_class(X, y, Q, yq, candidates=(1, 5, 20))
    assert set(counts) == set(range(12)) and set(counts.values()) <= {1, 5, 20}
    sel = fc.select_prototypes(X, y, counts)
    assert sel.size == sum(min(c, int((y == k).sum())) for k, c in counts.items())


def test_loading_the_wrong_classifier_type_is_an_error(tmp_path, split):
    X, y, _, _ = split
    fc.PrototypeClassifier().fit(X, y).save(tmp_path / "p")
    with pytest.raises(fc.IndexFileError, match="holds a PrototypeClassifier, not a KNNClassifier"):
        fc.KNNClassifier.load(tmp_path / "p")
    with pytest.raises(fc.IndexFileError, match="not a saved classifier"):
        fc.PrototypeClassifier.load(tmp_path / "nothing")
