"""The symmetric self-join (leave-one-out exact kNN) against exact search with each
vector's own row removed, by plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unit_rows, write_store

import faissclass as fc
from faissclass.search.self_join import self_knn
from faissclass.topk import exact_search


def loo_reference(X: np.ndarray, k: int, metric: str = "ip", ids: np.ndarray | None = None
                  ) -> fc.SearchResult:
    """exact_search of X in X over *all* n (not k+1: with exact duplicates tied at the
    top, a row's own hit can fall past k+1 under ties by id), its own id removed."""
    n = X.shape[0]
    idv = np.arange(n) if ids is None else ids
    e = exact_search(X, X, n, metric, ids=idv)
    keep = e.ids != idv[:, None]
    assert (keep.sum(axis=1) == n - 1).all()
    return fc.SearchResult(e.distances[keep].reshape(n, n - 1)[:, :k],
                           e.ids[keep].reshape(n, n - 1)[:, :k])


def assert_same(got: fc.SearchResult, ref: fc.SearchResult, *, exact_ties: bool = False,
                X: np.ndarray | None = None, metric: str = "ip",
                ids: np.ndarray | None = None) -> None:
    """Ids equal; where a row differs (two scores within float rounding, computed by
    different GEMM tilings), each returned neighbour's own score (float64) must equal
    the reference's score at that rank within rounding — never a wrong neighbour."""
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-5, atol=1e-5)
    if exact_ties:
        np.testing.assert_array_equal(got.ids, ref.ids)
        np.testing.assert_array_equal(got.distances, ref.distances)
        return
    bad = np.flatnonzero((got.ids != ref.ids).any(axis=1))
    assert X is not None or bad.size == 0, "ids differ and no vectors to check them"
    idv = np.arange(len(X)) if ids is None else ids
    row_of = {int(i): r for r, i in enumerate(idv)} if X is not None else {}
    for r in bad:
        nb = X[[row_of[int(i)] for i in got.ids[r]]].astype(np.float64)
        x = X[row_of[int(idv[r])] if ids is not None else r].astype(np.float64)
        true = nb @ x if metric == "ip" else ((nb - x) ** 2).sum(1)
        np.testing.assert_allclose(true, ref.distances[r], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,block,threads", [(1000, 250, None), (1000, 333, 3),
                                             (1000, 1000, 2), (1000, 4096, None),
                                             (997, 64, 1), (997, 100, 5)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_equals_exact_search_without_self(rng, n, block, threads, metric):
    """Any block size (dividing n or not) and any number of selection threads (the
    threads split each block's rows and columns, including parts shorter than a
    column chunk)."""
    X = unit_rows(rng, n, 24) if metric == "ip" else rng.standard_normal((n, 24)).astype(
        np.float32) * 3
    for k in (1, 7, 20):
        got = self_knn(X, k, metric, block=block, threads=threads, progress=False)
        assert got.ids.shape == (n, k) and got.ids.dtype == np.int64
        assert got.distances.dtype == np.float32
        assert not (got.ids == np.arange(n)[:, None]).any()  # never itself
        assert_same(got, loo_reference(X, k, metric), X=X, metric=metric)


@pytest.mark.parametrize("block", [16, 64, 200])
def test_exact_ties_are_ordered_by_id(rng, block):
    """Adversarial: small-integer vectors, so hundreds of exactly equal scores sit at
    the k-th place; the result must be exact_search's (equal scores by smaller id),
    bit for bit, whatever the block size."""
    X = rng.integers(-1, 2, (200, 4)).astype(np.float32)
    X[10] = X[50] = 5  # a unique pair of duplicates: each is the other's nearest (l2)
    for k in (1, 5, 30):
        for metric in ("ip", "l2"):
            got = self_knn(X, k, metric, block=block, progress=False)
            assert_same(got, loo_reference(X, k, metric), exact_ties=True)
    got = self_knn(X, 3, "l2", block=block, progress=False)
    assert got.ids[10, 0] == 50 and got.ids[50, 0] == 10 and got.distances[10, 0] == 0


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("block,threads", [(64, None), (37, 3), (300, 1)])
def test_unsorted_ids_and_ties_by_id(rng, metric, block, threads):
    """Rows are joined where they lie and equal scores ordered by the ids' ranks, in the
    row direction and the column direction (blocks off the diagonal)."""
    X = rng.integers(-1, 2, (300, 3)).astype(np.float32)
    ids = rng.permutation(10_000)[:300].astype(np.int64)
    for k in (1, 10, 40):
        got = self_knn(X, k, metric, ids=ids, block=block, threads=threads, progress=False)
        ref = loo_reference(X, k, metric, ids=ids)
        assert_same(got, ref, exact_ties=True)
    with pytest.raises(ValueError, match="unique"):
        self_knn(X, 3, ids=np.zeros(300, np.int64), progress=False)
    with pytest.raises(ValueError, match="one id per row"):
        self_knn(X, 3, ids=np.arange(5), progress=False)


def test_unsorted_ids_do_not_copy_the_vectors(rng):
    """Memory: the heaps (n·k·8 bytes) and the result's ids (n·k·8; the distances are
    the heaps' scores), never a permuted copy of the vectors or of the result."""
    import tracemalloc

    n, d, k = 20_000, 64, 10
    X = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64) * 7
    self_knn(X[:50], 3, ids=ids[:50], progress=False)  # compiled outside the measure
    tracemalloc.start()
    got = self_knn(X, k, ids=ids, block=256, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * n * k * 8 + 8 * n + 3 * 8192 * k * 8 + 2**20, (peak, X.nbytes)
    ref = exact_search(X, X[:100], k + 1, "ip", ids=ids)
    np.testing.assert_array_equal(got.ids[:100], ref.ids[:, 1:])


def test_k_at_or_above_n_is_padded_like_faiss(rng):
    X = unit_rows(rng, 6, 8)
    got = self_knn(X, 9, block=4, progress=False)
    assert got.ids.shape == (6, 9)
    assert (got.ids[:, 5:] == -1).all() and (got.distances[:, 5:] < -1e38).all()
    ref = loo_reference(X, 5)
    assert_same(fc.SearchResult(got.distances[:, :5], got.ids[:, :5]), ref, X=X)
    one = self_knn(X[:1], 3, progress=False)
    assert (one.ids == -1).all()


def test_a_store_uses_its_own_ids(tmp_path, rng):
    X = unit_rows(rng, 500, 16)
    y = rng.integers(0, 5, 500)
    store = write_store(tmp_path / "s", X, y)
    got = self_knn(store, 8, block=128, progress=False)
    Xs, _, ids = store.load()
    assert_same(got, loo_reference(Xs, 8, ids=ids), X=Xs, ids=ids)


def test_bad_input_is_refused(rng):
    with pytest.raises(ValueError, match=r"finite|NaN"):
        self_knn(np.full((4, 3), np.nan, np.float32), 2, progress=False)
    with pytest.raises(ValueError, match="metric"):
        self_knn(unit_rows(rng, 4, 3), 2, "cosine", progress=False)
    with pytest.raises(ValueError, match="k"):
        self_knn(unit_rows(rng, 4, 3), 0, progress=False)
    with pytest.raises(ValueError, match="threads"):
        self_knn(unit_rows(rng, 4, 3), 2, threads=0, progress=False)


def test_equals_faiss_flat_self_search(rng):
    """The baseline it replaces: FAISS's flat search of X in X with k + 1, self dropped."""
    faiss = pytest.importorskip("faiss")
    X = unit_rows(rng, 3000, 64)
    index = faiss.IndexFlatIP(64)
    index.add(X)
    D, Ii = index.search(X, 21)
    own = Ii == np.arange(3000)[:, None]
    keep = ~own
    keep[~own.any(axis=1), -1] = False
    ref = fc.SearchResult(D[keep].reshape(3000, 20), Ii[keep].reshape(3000, 20))
    assert_same(self_knn(X, 20, block=1024, progress=False), ref, X=X)


@pytest.mark.slow
def test_real_fashion_mnist_embeddings(tmp_path):
    """Real lite0 embeddings of 1,000 Fashion-MNIST images (float16 in the store, as
    users keep them): the self-join equals exact search without self."""
    from faissclass.data import FASHION_MNIST_DIR, load_fashion_mnist
    from faissclass.data.arrays import ArrayDataset

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist absent")
    images, labels = load_fashion_mnist("test")
    ds = ArrayDataset(images[:1000], labels[:1000])
    emb = fc.Embedder("tf_efficientnet_lite0")
    with fc.ShardWriter(tmp_path / "s", dim=emb.dim, dtype="float16", fsync=False) as w:
        emb.embed_dataset(ds, w, batch_size=100, progress=False)
    store = fc.EmbeddingStore(tmp_path / "s")
    X, _, ids = store.load()
    for metric in ("ip", "l2"):
        got = self_knn(store, 20, metric, block=512, progress=False)
        assert_same(got, loo_reference(X, 20, metric, ids=ids), X=X, metric=metric, ids=ids)
    # the certified low-precision search on the same real vectors: exact, and it
    # certifies (does not fall back for) most queries
    pytest.importorskip("torch")
    from faissclass.search.certified import certified_search

    got, stats = certified_search(X[200:], X[:200], 20, ids=ids[200:])
    ref = exact_search(X[200:], X[:200], 20, ids=ids[200:])
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-5, atol=1e-5)
    for r in np.flatnonzero((got.ids != ref.ids).any(axis=1)):  # near-equal swaps only
        pos = np.searchsorted(ids, got.ids[r])
        np.testing.assert_allclose(X[pos].astype(np.float64) @ X[r].astype(np.float64),
                                   ref.distances[r], rtol=0, atol=1e-5)
    assert stats.rate > 0.5, stats


def test_overflowing_scores_are_padding_not_neighbours():
    """Finite vectors whose l2 rank scores overflow (NaN never enters a heap): the slot
    stays empty (-1), never a made-up neighbour."""
    X = np.array([[1e20, 0], [1e20, 1], [0, 1]], np.float32)
    got = self_knn(X, 2, "l2", progress=False)
    for r in range(3):
        real = got.ids[r][got.ids[r] >= 0]
        assert len(set(real.tolist())) == real.size and r not in real


def test_warm_up_compiles_both_kernels():
    from faissclass.search import _kernels
    from faissclass.search.self_join import warm_up

    warm_up()
    assert _kernels.rows.signatures and _kernels.cols.signatures
