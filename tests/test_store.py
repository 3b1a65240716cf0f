"""ShardWriter / EmbeddingStore: round trips, sharding, streaming, resume, bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import unit_rows, write_store

import faissclass as fc
from faissclass.store import MANIFEST_NAME

# --------------------------------------------------------------------------- round trips


def test_float32_round_trip_is_exact(tmp_path, rng):
    X = rng.standard_normal((523, 24)).astype(np.float32)
    y = rng.integers(0, 7, 523)
    store = write_store(tmp_path / "s", X, y, dtype="float32")
    X2, y2, ids = store.load()
    assert X2.dtype == np.float32
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(ids, np.arange(523))  # default ids: global row numbers


def test_float16_round_trip_is_float16_rounding(tmp_path, rng):
    X = unit_rows(rng, 400, 32)
    y = rng.integers(0, 3, 400)
    store = write_store(tmp_path / "s", X, y, dtype="float16")
    X2, _, _ = store.load()
    # Exactly the float16 rounding of the input, widened back to float32 ...
    np.testing.assert_array_equal(X2, X.astype(np.float16).astype(np.float32))
    # ... which is within half an ulp of float16 (2**-11 relative).
    np.testing.assert_allclose(X2, X, rtol=2**-11, atol=2**-25)
    native, _, _ = store.load(dtype=None)
    assert native.dtype == np.float16


def test_float64_input_is_cast(tmp_path, rng):
    X = rng.standard_normal((10, 4))
    store = write_store(tmp_path / "s", X, np.zeros(10, int), dtype="float32")
    np.testing.assert_array_equal(store.load()[0], X.astype(np.float32))


def test_manifest_records_settings_metadata_and_versions(tmp_path, rng):
    X = unit_rows(rng, 50, 8)
    meta = {"model": "tf_efficientnet_lite0", "img_size": [224, 224]}
    with fc.ShardWriter(tmp_path / "s", dim=8, classes=["cat", "dog"], metadata=meta,
                        normalized=True, fsync=False) as w:
        w.append(X, rng.integers(0, 2, 50), paths=[f"img/{i}.jpg" for i in range(50)])
    store = fc.EmbeddingStore(tmp_path / "s")
    assert (len(store), store.dim, store.dtype) == (50, 8, "float16")
    assert store.classes == ["cat", "dog"]
    assert store.metadata == meta
    assert store.normalized and store.has_paths
    prov = store.provenance
    assert prov["versions"]["h5py"] == h5py.version.version
    assert prov["versions"]["faissclass"] == fc.__version__
    assert prov["created"].startswith("20")
    raw = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert raw["shards"][0]["file"] == "shard-00000.h5"
    assert raw["shards"][0]["checksum"]["embeddings"].startswith("xxh3_64:")


def test_paths_and_explicit_ids_round_trip(tmp_path, rng):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    ids = rng.permutation(10_000)[:30] * 3 + 1
    paths = [f"dir/é{i}.png" for i in range(30)]  # non-ASCII survives utf-8
    with fc.ShardWriter(tmp_path / "s", dim=4, dtype="float32", shard_size=7, fsync=False) as w:
        for i in range(0, 30, 4):
            w.append(X[i:i + 4], np.zeros(len(X[i:i + 4]), int), ids=ids[i:i + 4],
                     paths=paths[i:i + 4])
    store = fc.EmbeddingStore(tmp_path / "s")
    batches = list(store.iter_batches(11))
    assert [p for b in batches for p in b.paths] == paths
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), ids)


# --------------------------------------------------------------------------- sharding


def test_shards_roll_every_shard_size_rows(tmp_path, rng):
    X = rng.standard_normal((1234, 4)).astype(np.float32)
    sizes = [1, 0, 99, 100, 250, 3, 781]  # includes an empty append and batches > shard
    assert sum(sizes) == 1234
    with fc.ShardWriter(tmp_path / "s", dim=4, dtype="float32", shard_size=100,
                        fsync=False) as w:
        pos = 0
        for s in sizes:
            w.append(X[pos:pos + s], np.zeros(s, int))
            pos += s
            assert len(w) == pos
    store = fc.EmbeddingStore(tmp_path / "s")
    assert [s.rows for s in store.shards] == [100] * 12 + [34]
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == [".lock", *[f"shard-{i:05d}.h5" for i in range(13)], MANIFEST_NAME]
    for s in store.shards:  # each shard is an ordinary HDF5 file of exactly its rows
        with h5py.File(tmp_path / "s" / s.file) as f:
            assert f["embeddings"].shape == (s.rows, 4)
    np.testing.assert_array_equal(store.load()[0], X)
    store.verify()


def test_default_shard_size_is_64_mib_of_embeddings(tmp_path):
    with fc.ShardWriter(tmp_path / "a", dim=384, dtype="float16", fsync=False) as w:
        assert w.shard_size == 64 * 2**20 // (384 * 2)


def test_empty_store_opens(tmp_path):
    with fc.ShardWriter(tmp_path / "s", dim=4, fsync=False):
        pass
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(store) == 0
    X, y, ids = store.load()
    assert X.shape == (0, 4) and y.shape == (0,) and ids.shape == (0,)
    assert list(store.iter_batches(10)) == []
    store.verify()


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("batch_size", [1, 64, 100, 333, 5000])
def test_iter_batches_concatenates_to_load(tmp_path, rng, dtype, batch_size):
    X = unit_rows(rng, 1001, 8)
    y = rng.integers(0, 5, 1001)
    store = write_store(tmp_path / "s", X, y, dtype=dtype, shard_size=128)
    batches = list(store.iter_batches(batch_size))
    assert all(len(b.ids) == batch_size for b in batches[:-1])
    assert all(b.embeddings.dtype == np.float32 for b in batches)
    Xl, yl, il = store.load()
    np.testing.assert_array_equal(np.concatenate([b.embeddings for b in batches]), Xl)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), yl)
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), il)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 16])
def test_ranks_cover_every_row_exactly_once(tmp_path, rng, world_size):
    n = 1000
    X = rng.standard_normal((n, 4)).astype(np.float32)
    store = write_store(tmp_path / "s", X, rng.integers(0, 3, n), shard_size=90)
    seen = []
    for rank in range(world_size):
        part = [b for b in store.iter_batches(64, rank=rank, world_size=world_size)]
        ids = np.concatenate([b.ids for b in part]) if part else np.empty(0, np.int64)
        emb = np.concatenate([b.embeddings for b in part]) if part else np.empty((0, 4))
        np.testing.assert_array_equal(emb, X[ids])  # each row's data travels with its id
        seen.append(ids)
    allids = np.concatenate(seen)
    assert allids.size == n
    np.testing.assert_array_equal(np.sort(allids), np.arange(n))
    sizes = [s.size for s in seen]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_rank_arguments_are_checked(tmp_path, rng):
    store = write_store(tmp_path / "s", rng.standard_normal((10, 4)), np.zeros(10, int))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        next(store.iter_batches(4, rank=2, world_size=2))
    with pytest.raises(ValueError, match="world_size"):
        next(store.iter_batches(4, world_size=0))
    with pytest.raises(ValueError, match="batch_size"):
        next(store.iter_batches(0))


def test_take_returns_rows_in_requested_order(tmp_path, rng):
    n = 5000
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(0, 9, n)
    with fc.ShardWriter(tmp_path / "s", dim=6, dtype="float32", shard_size=700,
                        fsync=False) as w:
        w.append(X, y, paths=[str(i) for i in range(n)])
    store = fc.EmbeddingStore(tmp_path / "s")
    dense = rng.integers(0, n, 3000)  # many rows per shard -> slice reads
    sparse = np.array([4999, 3, 3, 2100, 0, 1400])  # few rows -> point reads
    for rows in (dense, sparse):
        b = store.take(rows)
        np.testing.assert_array_equal(b.embeddings, X[rows])
        np.testing.assert_array_equal(b.labels, y[rows])
        np.testing.assert_array_equal(b.ids, rows)
        assert b.paths == [str(r) for r in rows]
    with pytest.raises(IndexError, match="row 5000 is out of range for a store of 5000 rows"):
        store.take([1, 5000])
    with pytest.raises(IndexError, match="row -1"):
        store.take([-1])


# --------------------------------------------------------------------------- resume


def test_resume_continues_after_last_shard(tmp_path, rng):
    X = rng.standard_normal((700, 4)).astype(np.float32)
    y = rng.integers(0, 2, 700)
    root = tmp_path / "s"
    with fc.ShardWriter(root, dim=4, dtype="float32", shard_size=100, classes=["a", "b"],
                        fsync=False) as w:
        w.append(X[:250], y[:250])
    with fc.ShardWriter(root, dim=4, dtype="float32", shard_size=100, classes=["a", "b"],
                        fsync=False) as w:
        assert len(w) == 250
        np.testing.assert_array_equal(w.stored_ids(), np.arange(250))
        np.testing.assert_array_equal(w.contains([0, 249, 250, 10**9]),
                                      [True, True, False, False])
        w.append(X[250:], y[250:])
    store = fc.EmbeddingStore(root)
    np.testing.assert_array_equal(store.load()[0], X)
    np.testing.assert_array_equal(store.load()[2], np.arange(700))
    assert [s.rows for s in store.shards] == [100, 100, 50, 100, 100, 100, 100, 50]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 5}, "dim 4"),
        ({"dtype": "float16"}, "dtype float32"),
        ({"classes": ["a", "c"]}, "classes"),
        ({"classes": None}, "classes"),
        ({"metadata": {"model": "other"}}, r"metadata differing in keys \['model'\]"),
        ({"normalized": True}, "normalized"),
    ],
)
def test_resume_with_other_settings_is_an_error(tmp_path, rng, kwargs, match):
    root = tmp_path / "s"
    base = {"dim": 4, "dtype": "float32", "classes": ["a", "b"],
            "metadata": {"model": "m"}, "fsync": False}
    with fc.ShardWriter(root, **base) as w:
        w.append(rng.standard_normal((5, 4)), np.zeros(5, int))
    with pytest.raises(ValueError, match=match):
        fc.ShardWriter(root, **{**base, **kwargs})
    # The failed open left the store untouched and unlocked.
    with fc.ShardWriter(root, **base) as w:
        assert len(w) == 5


def test_ids_already_stored_are_rejected_across_shards(tmp_path, rng):
    root = tmp_path / "s"
    with fc.ShardWriter(root, dim=4, dtype="float32", shard_size=3, fsync=False) as w:
        w.append(rng.standard_normal((5, 4)), np.zeros(5, int), ids=[10, 20, 30, 40, 50])
        for dup in (20, 50):  # 20 is in a finished shard, 50 in the open one
            with pytest.raises(ValueError, match=f"id {dup} .* is already stored"):
                w.append(rng.standard_normal((2, 4)), np.zeros(2, int), ids=[99, dup])
        with pytest.raises(ValueError, match="id 7 appears twice in this batch"):
            w.append(rng.standard_normal((2, 4)), np.zeros(2, int), ids=[7, 7])
        assert len(w) == 5  # rejected batches wrote nothing
    with fc.ShardWriter(root, dim=4, dtype="float32", fsync=False) as w:
        with pytest.raises(ValueError, match=r"id 30 .* is already stored"):
            w.append(rng.standard_normal((1, 4)), np.zeros(1, int), ids=[30])
        w.append(rng.standard_normal((1, 4)), np.zeros(1, int), ids=[31])
    store = fc.EmbeddingStore(root)
    np.testing.assert_array_equal(store.load()[2], [10, 20, 30, 40, 50, 31])
    store.verify()


def test_exception_inside_with_keeps_appended_rows(tmp_path, rng):
    X = rng.standard_normal((150, 4)).astype(np.float32)
    with pytest.raises(RuntimeError, match="boom"), \
            fc.ShardWriter(tmp_path / "s", dim=4, dtype="float32", shard_size=100,
                           fsync=False) as w:
        w.append(X, np.zeros(150, int))
        raise RuntimeError("boom")
    np.testing.assert_array_equal(fc.EmbeddingStore(tmp_path / "s").load()[0], X)


def test_abort_drops_only_the_shard_in_progress(tmp_path, rng):
    X = rng.standard_normal((150, 4)).astype(np.float32)
    w = fc.ShardWriter(tmp_path / "s", dim=4, dtype="float32", shard_size=100, fsync=False)
    w.append(X, np.zeros(150, int))
    w.abort()
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(store) == 100
    assert not list((tmp_path / "s").glob("*.partial"))


def test_second_writer_on_same_store_is_refused(tmp_path):
    with fc.ShardWriter(tmp_path / "s", dim=4, fsync=False), \
            pytest.raises(fc.StoreError, match="another ShardWriter has this store open"):
        fc.ShardWriter(tmp_path / "s", dim=4, fsync=False)
    with fc.ShardWriter(tmp_path / "s", dim=4, fsync=False):  # released on close
        pass


def test_append_after_close_is_an_error(tmp_path, rng):
    w = fc.ShardWriter(tmp_path / "s", dim=4, fsync=False)
    w.close()
    with pytest.raises(ValueError, match="is closed"):
        w.append(rng.standard_normal((1, 4)), [0])


def test_merge_stores_lists_every_part_and_refuses_conflicts(tmp_path, rng):
    from faissclass.store import merge_stores

    X = rng.standard_normal((30, 4)).astype(np.float32)
    for r, rows in enumerate((slice(0, 10), slice(10, 30))):
        with fc.ShardWriter(tmp_path / "m" / f"rank-{r}", dim=4, dtype="float32",
                            shard_size=7, fsync=False) as w:
            w.append(X[rows], np.zeros(len(X[rows]), int), ids=np.arange(30)[rows])
    merged = merge_stores(tmp_path / "m", [tmp_path / "m" / "rank-0", tmp_path / "m" / "rank-1"])
    np.testing.assert_array_equal(merged.load()[0], X)
    merged.verify()
    with fc.ShardWriter(tmp_path / "m" / "rank-2", dim=4, dtype="float32", fsync=False) as w:
        w.append(X[:2], [0, 0], ids=[5, 99])
    with pytest.raises(fc.StoreError, match="id 5 is in more than one part"):
        merge_stores(tmp_path / "m", [tmp_path / "m" / f"rank-{r}" for r in range(3)])
    with fc.ShardWriter(tmp_path / "m" / "rank-3", dim=4, dtype="float16", fsync=False) as w:
        w.append(X[:1], [0], ids=[1000])
    with pytest.raises(fc.StoreError, match="dtype differs"):
        merge_stores(tmp_path / "m", [tmp_path / "m" / "rank-0", tmp_path / "m" / "rank-3"])
