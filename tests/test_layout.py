"""The reshaped house (issue 9): public names, import isolation, one place per concern."""

from __future__ import annotations

import copy
import importlib
import inspect
import itertools
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from conftest import write_store
from sklearn.base import clone

import faissclass as fc
from faissclass.data import clustered

faiss = pytest.importorskip("faiss")


def test_every_public_name_resolves_from_the_module_that_defines_it():
    from faissclass import _PUBLIC

    listed = {n for names in _PUBLIC.values() for n in names}
    assert listed <= set(fc.__all__)
    for module, names in _PUBLIC.items():
        mod = importlib.import_module(module, "faissclass")
        for name in names:
            obj = getattr(fc, name)
            assert obj is getattr(mod, name), name
            assert name in dir(fc), name
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__module__.startswith(mod.__name__), (name, obj.__module__)
    for name in fc.__all__:
        assert getattr(fc, name) is not None and name in dir(fc)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fc.nope  # noqa: B018


def test_the_store_topk_and_data_layers_import_neither_faiss_nor_torch():
    code = ("import sys\n"
            "import faissclass, faissclass.topk, faissclass.store, faissclass.source, "
            "faissclass.devices, faissclass.distributed, faissclass.data, faissclass.metrics\n"
            "faissclass.EmbeddingStore, faissclass.exact_search, faissclass.merge_topk\n"
            "print(sorted(m for m in ('faiss', 'torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


def test_embedder_is_exported_lazily():
    code = ("import sys, faissclass\n"
            "assert 'Embedder' in dir(faissclass) and 'torch' not in sys.modules\n"
            "print(faissclass.Embedder.__module__)")
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "faissclass.embed"


# --------------------------------------------------------------------------- topk


def test_exact_search_breaks_ties_by_id_and_merge_equals_one_search(rng):
    X = rng.integers(-2, 3, (300, 8)).astype(np.float32)  # many exactly equal scores
    Q = rng.integers(-2, 3, (40, 8)).astype(np.float32)
    ids = rng.permutation(10_000)[:300].astype(np.int64)
    for metric in ("ip", "l2"):
        ref = fc.exact_search(X, Q, 25, metric, ids=ids)
        # Ties are in id order: within equal scores, ids increase.
        for d, i in zip(ref.distances, ref.ids, strict=True):
            same = np.flatnonzero(np.diff(d) == 0)
            assert (i[same + 1] > i[same]).all()
        # Brute force, independently: sort by (score, id).
        s = Q @ X.T if metric == "ip" else -((Q[:, None, :] - X[None]) ** 2).sum(-1)
        want = np.array([ids[np.lexsort((ids, -row))][:25] for row in s])
        np.testing.assert_array_equal(ref.ids, want)
        # Shards of uneven size, one empty, k above a shard's size: the merge is exact.
        cuts = [0, 7, 7, 150, 300]
        parts = [fc.exact_search(X[a:b], Q, 25, metric, ids=ids[a:b]) if b > a else
                 fc.SearchResult(np.empty((40, 0), np.float32), np.empty((40, 0), np.int64))
                 for a, b in itertools.pairwise(cuts)]
        merged = fc.merge_topk(parts, 25, metric)
        np.testing.assert_array_equal(merged.ids, ref.ids)
        np.testing.assert_array_equal(merged.distances, ref.distances)
    padded = fc.merge_topk([fc.exact_search(X[:3], Q, 3)], 5)
    assert (padded.ids[:, 3:] == -1).all() and (padded.distances[:, 3:] < -1e38).all()


# --------------------------------------------------------------------------- sources


def test_build_from_any_vector_source_equals_build_from_a_store(tmp_path, rng):
    X, y, Q = clustered(3000, 16, 20, noise=2.0, seed=1, n_queries=50)
    ids = np.arange(3000, dtype=np.int64) * 3 + 7
    store = write_store(tmp_path / "s", X, y)
    spec = fc.IndexSpec(kind="ivf", nlist=32)
    from_store = fc.VectorIndex.build(store, spec, progress=False)
    from_arrays = fc.VectorIndex.build(fc.ArraySource(X, y), spec, progress=False)
    np.testing.assert_array_equal(from_store.search(Q, 10).ids, from_arrays.search(Q, 10).ids)
    src = fc.ArraySource(X, ids=ids)
    assert isinstance(src, fc.VectorSource) and isinstance(store, fc.VectorSource)
    flat = fc.VectorIndex.build(src, progress=False)
    assert set(flat.search(Q, 5).ids.ravel().tolist()) <= set(ids.tolist())
    with pytest.raises(TypeError, match="must be a VectorSource"):
        fc.VectorIndex.build(X)


def test_knn_accepts_a_ready_searcher(rng):
    X, y, Q = clustered(2000, 16, 8, noise=2.0, seed=2, n_queries=100)
    idx = fc.VectorIndex(16).add(X)
    a = fc.KNNClassifier(k=10, index=idx).fit(X, y)
    b = fc.KNNClassifier(k=10).fit(X, y)
    np.testing.assert_array_equal(a.predict(Q), b.predict(Q))
    assert a.index_ is idx
    c = clone(a)  # sklearn's clone deep-copies parameters: the index copies itself
    assert c.index is not idx and c.index.ntotal == idx.ntotal
    with pytest.raises(ValueError, match="holds 2000 vectors, but 100 were given"):
        fc.KNNClassifier(k=3, index=idx).fit(X[:100], y[:100])
    with pytest.raises(TypeError, match="index must be an IndexSpec, a searcher"):
        fc.KNNClassifier(index="flat").fit(X, y)


def test_deepcopy_of_an_index_is_independent(rng):
    X = rng.standard_normal((100, 8)).astype(np.float32)
    a = fc.VectorIndex(8).add(X)
    b = copy.deepcopy(a)
    b.add(X[:5] + 1)
    assert (a.ntotal, b.ntotal) == (100, 105)
    np.testing.assert_array_equal(a.search(X, 3).ids, copy.deepcopy(a).search(X, 3).ids)


# --------------------------------------------------------------------------- index internals


@pytest.mark.parametrize("spec", [
    fc.IndexSpec(kind="flat"), fc.IndexSpec(kind="flat", metric="l2"),
    fc.IndexSpec(kind="ivf", nlist=16), fc.IndexSpec(kind="ivf", nlist=16, storage="sq8"),
    fc.IndexSpec(kind="ivf", nlist=16, storage="pq", m=8), fc.IndexSpec(kind="hnsw", M=16),
    fc.IndexSpec(factory="PCA16,IVF16,Flat"), fc.IndexSpec(factory="IDMap,Flat"),
    fc.IndexSpec(factory="IVF16,Flat,Refine(Flat)"), fc.IndexSpec(factory="SQ8"),
], ids=lambda s: s.factory_string(32))
def test_memory_bytes_is_computed_not_serialised_and_matches_the_serialised_size(rng, spec):
    X = rng.standard_normal((2000, 32)).astype(np.float32)
    idx = fc.VectorIndex(32, spec)
    if not idx.is_trained:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PQ: few training vectors
            idx.train(X)
    idx.add(X)
    calls = []
    real = faiss.write_index
    faiss.write_index = lambda *a: calls.append(a) or real(*a)
    try:
        est = idx.memory_bytes
    finally:
        faiss.write_index = real
    assert calls == []  # cheap: nothing serialised
    ser = idx.serialized_bytes()
    assert abs(est - ser) <= 0.01 * ser + 2048, (est, ser)


def test_per_search_params_are_safe_across_threads(rng):
    X, _, Q = clustered(20_000, 32, 100, noise=3.0, seed=4, n_queries=400)
    idx = fc.VectorIndex(32, fc.IndexSpec(kind="ivf", nlist=128)).train(X).add(X)
    want = {p: idx.search(Q, 10, fc.SearchParams(nprobe=p)).ids for p in (1, 128)}
    assert (want[1] != want[128]).any()
    errors = []

    def run(p):
        for _ in range(20):
            got = idx.search(Q, 10, fc.SearchParams(nprobe=p)).ids
            if not np.array_equal(got, want[p]):
                errors.append(p)

    threads = [threading.Thread(target=run, args=(p,)) for p in (1, 128, 1, 128)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_progress_bars_default_to_a_terminal_on_rank_0(monkeypatch):
    from faissclass.distributed import show_progress

    assert show_progress(True) and not show_progress(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("RANK", "0")
    assert show_progress(None)
    monkeypatch.setenv("RANK", "1")
    assert not show_progress(None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setenv("RANK", "0")
    assert not show_progress(None)


def test_devices_parse_in_one_place():
    from faissclass.devices import Device, parse_device

    assert parse_device("cpu") == Device("cpu")
    assert parse_device("cuda:3") == Device("cuda", 3) and str(Device("cuda", 3)) == "cuda:3"
    assert parse_device("cuda:all").all and parse_device("cuda").gpu is None
    assert parse_device("cuda:all").for_rank(2) == Device("cuda", 2)
    assert parse_device("cpu").for_rank(5) == Device("cpu")
    assert str(parse_device("ranks:cuda")) == "ranks:cuda" and parse_device("ranks:cpu").ranks
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "CUDA", "ranks:all", "ranks:cuda:1"):
        with pytest.raises(ValueError, match="device must be"):
            parse_device(bad)
    with pytest.raises(TypeError):
        parse_device(0)


def test_dataset_layouts_are_one_table(tmp_path):
    from faissclass.data import LAYOUTS, make_dataset

    PIL = pytest.importorskip("PIL.Image")
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            PIL.new("L", (4, 4), 9).save(tmp_path / split / c / "a.png")
    assert set(LAYOUTS) >= {"imagefolder", "tiny-imagenet", "imagenet", "label-file",
                            "fashion-mnist"}
    assert make_dataset("imagefolder", tmp_path / "train").classes == ["cat", "dog"]
    assert len(make_dataset("imagefolder", tmp_path, "val")) == 2
    assert make_dataset("imagenet", tmp_path, "val").classes == ["cat", "dog"]
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        make_dataset("imagefolder", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset layout 'coco'"):
        make_dataset("coco", tmp_path)
    with pytest.raises(ValueError, match=r"has splits \['train', 'val'\]; got 'test'"):
        make_dataset("tiny-imagenet", tmp_path, "test")
