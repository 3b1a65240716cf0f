"""Certified low-precision search against float32 exact search (plain numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unit_rows

import faissclass as fc
from faissclass.search.certified import certified_search, certified_self_knn, lowp_supported
from faissclass.topk import exact_search

pytest.importorskip("torch")


def assert_exact(got: fc.SearchResult, ref: fc.SearchResult, X: np.ndarray | None = None,
                 Q: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
    """Ids of float32 exact search; where a row differs, each returned neighbour's own
    score (float64) must equal the reference's score at that rank within float32
    rounding — a swap of near-equal scores, never a wrong neighbour."""
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-5, atol=1e-6)
    bad = np.flatnonzero((got.ids != ref.ids).any(axis=1))
    assert X is not None or bad.size == 0, "ids differ and no vectors to check them"
    pos = ({int(i): r for r, i in enumerate(np.arange(len(X)) if ids is None else ids)}
           if X is not None else {})
    for r in bad:
        true = X[[pos[int(i)] for i in got.ids[r]]].astype(np.float64) @ Q[r].astype(
            np.float64)
        np.testing.assert_allclose(true, ref.distances[r], rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_equals_exact_search_and_certifies_most_queries(precision):
    from faissclass.data.synthetic import synthetic_batches

    X = next(synthetic_batches(6000, 64, 50, noise=2.0, seed=0, split=0))[0]
    Q = next(synthetic_batches(300, 64, 50, noise=2.0, seed=0, split=1))[0]
    for k in (1, 10):
        got, stats = certified_search(X, Q, k, precision=precision, db_block=1000,
                                      query_block=128)
        assert_exact(got, exact_search(X, Q, k), X, Q)
        assert stats.queries == 300 and stats.certified + stats.fallback == 300
        assert stats.rate > 0.9, stats  # well-separated data: the proof goes through


def test_near_ties_below_bf16_resolution_fall_back_and_stay_exact(rng):
    """Adversarial: 300 vectors whose scores differ by 1e-5, far below bf16's ~2e-3 at
    0.5: the low-precision ranking among them is noise, the bound cannot certify the
    k-th place, and every query must fall back to float32 — and be exact."""
    d = 32
    q = np.zeros((4, d), np.float32)
    q[np.arange(4), np.arange(4)] = 1
    X = unit_rows(rng, 2000, d) * 0.1
    for j in range(4):
        near = np.zeros((300, d), np.float32)
        near[:, j] = 0.5 + 1e-5 * rng.permutation(300)
        near[:, 8:] = rng.standard_normal((300, d - 8)).astype(np.float32) * 0.01
        X = np.concatenate([X, near])
    got, stats = certified_search(X, q, 10, candidates=40)
    assert stats.fallback == 4 and stats.certified == 0
    assert_exact(got, exact_search(X, q, 10), X, q)


def test_exact_ties_keep_the_id_order(rng):
    X = rng.integers(-2, 3, (3000, 8)).astype(np.float32)
    Q = rng.integers(-2, 3, (100, 8)).astype(np.float32)
    ids = rng.permutation(10**6)[:3000]
    ref = exact_search(X, Q, 15, ids=ids)
    # small integers are exact in bf16: a wide candidate list holds every vector tied
    # at the k-th score and is certified; a narrow one cannot be and falls back
    for kc, certified in ((76, True), (16, False)):
        got, stats = certified_search(X, Q, 15, ids=ids, db_block=700, candidates=kc)
        np.testing.assert_array_equal(got.ids, ref.ids)  # exact scores, exact ties
        np.testing.assert_array_equal(got.distances, ref.distances)
        assert (stats.fallback == 0) is certified, stats


def test_k_above_n_and_every_candidate(rng):
    X, Q = unit_rows(rng, 30, 8), unit_rows(rng, 5, 8)
    got, stats = certified_search(X, Q, 40)
    assert got.ids.shape == (5, 40) and (got.ids[:, 30:] == -1).all()
    assert_exact(fc.SearchResult(got.distances[:, :30], got.ids[:, :30]),
                 exact_search(X, Q, 30), X, Q)
    assert stats.certified == 5  # all 30 were candidates: nothing left out


def test_a_flat_index_searches_with_a_precision(rng):
    X, Q = unit_rows(rng, 5000, 48), unit_rows(rng, 200, 48)
    ids = np.arange(5000) * 3 + 7
    index = fc.VectorIndex(48)
    index.add(X, ids)
    ref = index.search(Q, 20)
    assert index.last_certified is None
    got = index.search(Q, 20, fc.SearchParams(precision="bf16"))
    assert_exact(got, ref, X, Q, ids)
    assert index.last_certified.queries == 200
    auto = index.search(Q, 20, fc.SearchParams(precision="auto"))
    assert_exact(auto, ref, X, Q, ids)
    # "auto" is bf16 only on a CPU that multiplies it natively
    assert (index.last_certified is not None) == lowp_supported("cpu", "bf16")
    index.search(Q, 20)
    assert index.last_certified is None
    with pytest.raises(ValueError, match="precision must be one of"):
        fc.SearchParams(precision="int8")
    ivf = fc.VectorIndex(48, fc.IndexSpec(kind="ivf", nlist=4))
    ivf.train(X)
    ivf.add(X)
    with pytest.raises(ValueError, match="applies to flat inner-product"):
        ivf.search(Q, 5, fc.SearchParams(precision="bf16"))
    l2 = fc.VectorIndex(48, fc.IndexSpec(metric="l2"))
    l2.add(X)
    with pytest.raises(ValueError, match="applies to flat inner-product"):
        l2.search(Q, 5, fc.SearchParams(precision="bf16"))


def test_fp16_subnormal_scores_are_bounded():
    """Scores in fp16's subnormal range carry an absolute, not a relative, rounding
    error: the bound must cover it (a reviewer's reproducer: without the absolute term
    id 0 came back certified, and wrong)."""
    q = np.array([[2**-10, 0]], np.float32)
    a = 10 * 2**-14
    X = np.array([[a + 2**-21, 0], [a + 2 * 2**-21, 0], [0, 2**-10]], np.float32)
    got, _ = certified_search(X, q, 1, precision="fp16", candidates=1)
    assert got.ids[0, 0] == exact_search(X, q, 1).ids[0, 0] == 1


def test_small_magnitudes_stay_exact(rng):
    for scale in (1e-4, 2e-4, 3e-4):
        X = (rng.standard_normal((2000, 8)) * scale).astype(np.float32)
        Q = (rng.standard_normal((200, 8)) * scale).astype(np.float32)
        for precision in ("bf16", "fp16"):
            got, _ = certified_search(X, Q, 3, precision=precision, candidates=4)
            assert_exact(got, exact_search(X, Q, 3), X, Q)


def test_an_empty_database(rng):
    Q = unit_rows(rng, 3, 4)
    got, _ = certified_search(np.empty((0, 4), np.float32), Q, 3)
    assert (got.ids == -1).all() and got.ids.shape == (3, 3)
    index = fc.VectorIndex(4)
    res = index.search(Q, 3, fc.SearchParams(precision="bf16"))
    np.testing.assert_array_equal(res.ids, index.search(Q, 3).ids)


# ---------------------------------------------------------------- certified self-join

def _loo(X: np.ndarray, k: int, ids: np.ndarray | None = None) -> fc.SearchResult:
    """Leave-one-out reference: exact_search of X in X over all n, own id removed."""
    n = X.shape[0]
    idv = np.arange(n) if ids is None else ids
    e = exact_search(X, X, n, ids=idv)
    keep = e.ids != idv[:, None]
    return fc.SearchResult(e.distances[keep].reshape(n, n - 1)[:, :k],
                           e.ids[keep].reshape(n, n - 1)[:, :k])


@pytest.mark.parametrize("block,threads", [(256, None), (300, 1), (1000, 3), (4096, 2)])
def test_certified_self_join_equals_leave_one_out_search(block, threads):
    from faissclass.data.synthetic import synthetic_batches

    X = next(synthetic_batches(3000, 48, 30, noise=2.0, seed=1, split=0))[0]
    for k in (1, 10):
        got, stats = certified_self_knn(X, k, block=block, threads=threads, progress=False)
        assert not (got.ids == np.arange(3000)[:, None]).any()  # never itself
        assert_exact(got, _loo(X, k), X, X)
        assert stats.queries == 3000 and stats.certified + stats.fallback == 3000
        assert stats.rate > 0.9, stats  # well-separated data: the proof goes through


@pytest.mark.parametrize("shuffled", [False, True])
def test_certified_self_join_near_ties_fall_back_and_stay_exact(rng, shuffled):
    """300 vectors whose scores against a probe row differ by 1e-5: the probe rows'
    10th place cannot be certified in bf16; they fall back to float32, exactly (with
    ids in any order: the rows are joined where they lie)."""
    d = 32
    base = unit_rows(rng, 1500, d) * 0.1
    near = np.zeros((300, d), np.float32)
    near[:, 0] = 0.5 + 1e-5 * rng.permutation(300)
    near[:, 8:] = rng.standard_normal((300, d - 8)).astype(np.float32) * 0.01
    probes = np.zeros((4, d), np.float32)
    probes[:, 0] = 1
    probes[:, 1] = np.arange(4) * 1e-3
    X = np.concatenate([base, near, probes])
    ids = rng.permutation(len(X)) * 3 + 1 if shuffled else None
    got, stats = certified_self_knn(X, 10, candidates=40, block=512, ids=ids,
                                    progress=False)
    assert stats.fallback >= 4, stats
    ref = _loo(X, 10, ids)
    if ids is None:
        assert_exact(got, ref, X, X)
    else:  # rows of got are X's rows; their neighbours are ids
        to_row = np.argsort(ids)
        np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-6, atol=1e-6)
        bad = np.flatnonzero((got.ids != ref.ids).any(axis=1))
        for r in bad:  # only swaps of equal float32 scores: each neighbour's true score
            true = X[to_row[(got.ids[r] - 1) // 3]].astype(np.float64) @ X[r]
            np.testing.assert_allclose(true, ref.distances[r], rtol=1e-6, atol=1e-6)


def test_certified_self_join_ties_ids_and_small_sets(rng):
    # small integers are exact in bf16: exact scores, exact ties in id order
    X = rng.integers(-2, 3, (1200, 8)).astype(np.float32)
    ids = rng.permutation(10**6)[:1200]
    got, _ = certified_self_knn(X, 7, ids=ids, block=250, candidates=60, progress=False)
    ref = _loo(X, 7, ids)
    np.testing.assert_array_equal(got.ids, ref.ids)
    np.testing.assert_array_equal(got.distances, ref.distances)
    # every other vector a candidate (and k above n - 1): the float32 self-join, padded
    Y = unit_rows(rng, 12, 4)
    got, stats = certified_self_knn(Y, 20, progress=False)
    assert got.ids.shape == (12, 20) and (got.ids[:, 11:] == -1).all()
    assert_exact(fc.SearchResult(got.distances[:, :11], got.ids[:, :11]), _loo(Y, 11), Y, Y)
    assert stats.certified == 12
    with pytest.raises(ValueError, match="precision must be one of"):
        certified_self_knn(Y, 2, precision="int8")


def test_a_flat_index_self_join_with_a_precision(rng):
    X = unit_rows(rng, 3000, 32)
    ids = rng.permutation(10**5)[:3000]
    index = fc.VectorIndex(32)
    index.add(X, ids)
    ref_ids, ref = index.self_knn(10)
    assert index.last_certified is None
    got_ids, got = index.self_knn(10, precision="bf16")
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_array_equal(ref_ids, ids)  # result row i: the vector added i-th
    assert_exact(got, ref, X, X, ids)
    assert index.last_certified.queries == 3000 and index.last_certified.rate > 0.9
    l2 = fc.VectorIndex(32, fc.IndexSpec(metric="l2"))
    l2.add(X)
    with pytest.raises(ValueError, match="applies to flat inner-product"):
        l2.self_knn(5, precision="bf16")


def test_reduced_precision_reductions_beyond_their_bound_certify_nothing():
    """A reviewer's reproducer: with bf16 reductions (cuBLAS's default) the
    accumulation bound d·u/(1 − d·u) holds only for d·u < 1; at d = 384 it went
    negative and wrong neighbours came back certified. Simulated on CPU."""
    import torch

    from faissclass.search import certified as C

    rng = np.random.default_rng(7)
    d = 384
    b = rng.standard_normal(d).astype(np.float32)
    b /= np.linalg.norm(b)
    X = (b + 2e-3 * rng.standard_normal((2000, d))).astype(np.float32)
    Q = X[:200] + 1e-3 * rng.standard_normal((200, d)).astype(np.float32)
    assert C._Bound(X, torch.from_numpy(X).bfloat16(), "bf16", False).gamma == np.inf
    orig = C._fp32_accumulation
    C._fp32_accumulation = lambda dev, tdt: False
    try:
        got, stats = certified_search(X, Q, 10)
    finally:
        C._fp32_accumulation = orig
    assert stats.certified == 0
    assert_exact(got, exact_search(X, Q, 10), X, Q)


def test_self_join_precision_follows_the_index_and_refuses_l2_everywhere(rng):
    X = unit_rows(rng, 800, 16)
    ip = fc.VectorIndex(16, params=fc.SearchParams(precision="bf16"))
    ip.add(X)
    ip.self_knn(5)
    assert ip.last_certified is not None  # the index's own default precision
    ip.self_knn(5, precision="fp32")
    assert ip.last_certified is None
    l2 = fc.VectorIndex(16, fc.IndexSpec(metric="l2"))
    l2.add(X)
    for p in ("auto", "bf16"):  # whatever the CPU: refused, as search() refuses it
        with pytest.raises(ValueError, match="applies to flat inner-product"):
            l2.self_knn(5, precision=p)



def test_read_only_vectors_are_searched_without_a_warning(rng):
    """A read-only array (a memory map, a view of an index) is only read: no torch
    warning about writing to it, and the results of a writable copy."""
    import warnings

    X = unit_rows(rng, 400, 16)
    X.setflags(write=False)
    ids = rng.permutation(400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _ = certified_self_knn(X, 5, ids=ids, progress=False)
        res, _ = certified_search(X, X[:20], 5, ids=ids)
    assert_exact(got, _loo(X, 5, ids), X, X, ids=ids)
    assert_exact(res, exact_search(X, X[:20], 5, ids=ids), X, X[:20], ids=ids)
