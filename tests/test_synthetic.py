"""The synthetic generator: its isotropic stream, the latent model's structure, stores."""

from __future__ import annotations

import numpy as np
import pytest

import faissclass as fc
from faissclass.data.synthetic import synthetic_batches, write_synthetic_store
from faissclass.topk import exact_search


def _all(n, dim, classes, **kw):
    parts = list(synthetic_batches(n, dim, classes, **kw))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_the_isotropic_stream_is_centres_plus_noise_draw_for_draw():
    """latent = 0 is the original generator: recomputed here from its definition."""
    X, y = _all(5000, 16, 7, noise=2.0, seed=3, split=1, block=2048)
    rng0 = np.random.default_rng([3, 0])
    c = rng0.standard_normal((7, 16)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng([3, 2])
    for a in range(0, 5000, 2048):
        b = min(a + 2048, 5000)
        lab = np.arange(a, b) % 7
        rng.shuffle(lab)
        x = c[lab] + 2.0 * rng.standard_normal((b - a, 16), dtype=np.float32) / np.float32(4)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_array_equal(X[a:b], x)
        np.testing.assert_array_equal(y[a:b], lab)


@pytest.mark.parametrize("kw", [{}, {"latent": 8, "modes": 3, "separation": 1.2}])
def test_blocks_splits_and_balance(kw):
    X, y = _all(3000, 32, 10, noise=0.5, seed=0, split=0, block=1000, **kw)
    assert X.dtype == np.float32 and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    assert np.bincount(y, minlength=10).tolist() == [300] * 10
    V, _ = _all(3000, 32, 10, noise=0.5, seed=0, split=1, **kw)
    assert not np.allclose(V, X)  # another split: other samples
    X3, _ = _all(3000, 32, 10, noise=0.5, seed=0, split=0, block=1000, **kw)
    np.testing.assert_array_equal(X, X3)  # seeded


def test_the_latent_model_has_neighbours_an_ivf_index_finds():
    """Isotropic noise makes every point nearly equidistant from every other, so IVF
    misses the neighbours; the latent model has the local structure of real
    embeddings. Same index, same nprobe, same accuracy regime."""
    def ivf_recall(X, Q):
        index = fc.VectorIndex(64, fc.IndexSpec(kind="ivf", nlist=64))
        index.train(X).add(X)
        got = index.search(Q, 10, fc.SearchParams(nprobe=4))
        return fc.metrics.recall_at_k(got, exact_search(X, Q, 10), 10)

    iso, _ = _all(20_000, 64, 100, noise=3.0, seed=0, split=0)
    iq, _ = _all(300, 64, 100, noise=3.0, seed=0, split=1)
    lat, _ = _all(20_000, 64, 100, noise=0.2, seed=0, split=0, latent=8, modes=2,
                  separation=1.2, mode_spread=0.8)
    lq, _ = _all(300, 64, 100, noise=0.2, seed=0, split=1, latent=8, modes=2,
                 separation=1.2, mode_spread=0.8)
    r_iso, r_lat = ivf_recall(iso, iq), ivf_recall(lat, lq)
    assert r_lat > 0.85 and r_iso < 0.5, (r_lat, r_iso)  # measured: 0.94 and 0.33


def test_separation_sets_the_difficulty():
    def knn_top1(sep):
        X, y = _all(10_000, 32, 50, noise=0.2, seed=1, split=0, latent=8, separation=sep)
        Q, yq = _all(500, 32, 50, noise=0.2, seed=1, split=1, latent=8, separation=sep)
        ids = exact_search(X, Q, 10).ids
        votes = np.array([np.bincount(y[r], minlength=50).argmax() for r in ids])
        return float((votes == yq).mean())

    hard, easy = knn_top1(0.5), knn_top1(3.0)
    assert hard < 0.6 and easy > 0.95, (hard, easy)


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="latent must be at most dim"):
        next(synthetic_batches(10, 8, 2, noise=1.0, seed=0, split=0, latent=9))
    with pytest.raises(ValueError, match="modes"):
        next(synthetic_batches(10, 8, 2, noise=1.0, seed=0, split=0, latent=4, modes=0))


def test_a_store_records_the_generator_and_resumes(tmp_path):
    kw = dict(noise=0.2, seed=0, split=0, latent=8, modes=2, separation=1.2)
    st = write_synthetic_store(tmp_path / "s", 2500, 32, 10, block=1000, progress=False, **kw)
    gen = st.metadata["generator"]
    assert gen["latent"] == 8 and gen["modes"] == 2 and gen["separation"] == 1.2
    X, y, _ = st.load()
    Xr, yr = _all(2500, 32, 10, block=1000, **kw)
    np.testing.assert_allclose(X, Xr, atol=1e-3)  # float16 storage
    np.testing.assert_array_equal(y, yr)
    with pytest.raises(ValueError, match=r"metadata differing in keys \[.generator.\]"):
        write_synthetic_store(tmp_path / "s", 2500, 32, 10, block=1000, progress=False,
                              **{**kw, "separation": 2.0})
