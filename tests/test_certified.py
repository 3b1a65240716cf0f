"""Certified low-precision search against float32 exact search (plain numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unit_rows

import faissclass as fc
from faissclass.search.certified import certified_search, lowp_supported
from faissclass.topk import exact_search

pytest.importorskip("torch")


def assert_exact(got: fc.SearchResult, ref: fc.SearchResult) -> None:
    """Ids equal to float32 exact search; a row may differ only where two of its scores
    are within float32 rounding (the re-rank and the reference sum in other orders)."""
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-5, atol=1e-6)
    for r in np.flatnonzero((got.ids != ref.ids).any(axis=1)):
        assert np.abs(np.diff(ref.distances[r])).min() < 1e-5, r


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_equals_exact_search_and_certifies_most_queries(precision):
    from faissclass.data.synthetic import synthetic_batches

    X = next(synthetic_batches(6000, 64, 50, noise=2.0, seed=0, split=0))[0]
    Q = next(synthetic_batches(300, 64, 50, noise=2.0, seed=0, split=1))[0]
    for k in (1, 10):
        got, stats = certified_search(X, Q, k, precision=precision, db_block=1000,
                                      query_block=128)
        assert_exact(got, exact_search(X, Q, k))
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
    assert_exact(got, exact_search(X, q, 10))


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
                 exact_search(X, Q, 30))
    assert stats.certified == 5  # all 30 were candidates: nothing left out


def test_a_flat_index_searches_with_a_precision(rng):
    X, Q = unit_rows(rng, 5000, 48), unit_rows(rng, 200, 48)
    ids = np.arange(5000) * 3 + 7
    index = fc.VectorIndex(48)
    index.add(X, ids)
    ref = index.search(Q, 20)
    assert index.last_certified is None
    got = index.search(Q, 20, fc.SearchParams(precision="bf16"))
    assert_exact(got, ref)
    assert index.last_certified.queries == 200
    auto = index.search(Q, 20, fc.SearchParams(precision="auto"))
    assert_exact(auto, ref)
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
