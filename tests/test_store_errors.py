"""Bad input to the writer and damage to a store: each a clear error, nothing lost."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import write_store

import faissclass as fc
from faissclass.store import MANIFEST_NAME
from faissclass.store._manifest import file_digest


@pytest.fixture
def writer(tmp_path):
    w = fc.ShardWriter(tmp_path / "s", dim=4, dtype="float16", shard_size=10,
                       classes=["a", "b", "c"], fsync=False)
    yield w
    w.close()


GOOD = np.ones((3, 4), np.float32)


@pytest.mark.parametrize(
    ("emb", "labels", "exc", "match"),
    [
        (np.ones(4, np.float32), [0], ValueError, r"must be 2-D .* got shape \(4,\).*x\[None, :\]"),
        (np.ones((2, 2, 4)), [0, 0], ValueError, r"must be 2-D"),
        (np.ones((3, 5), np.float32), [0, 0, 0], ValueError, "have dim 5, expected 4"),
        (np.ones((3, 4), np.int64), [0, 0, 0], TypeError, "floating-point .* got dtype int64"),
        ("abc", [0], TypeError, "floating-point"),
        (GOOD, [0, 0], ValueError, "labels have length 2, expected 3"),
        (GOOD, [0, 1, 3], ValueError, "label 3 is outside classes .*3 classes"),
        (GOOD, [0, -2, 1], ValueError, "labels must be >= 0 .* got -2"),
        (GOOD, [0.0, 1.5, 2.0], TypeError, "labels must be integers"),
        (GOOD, [[0, 1, 2]], ValueError, "labels must be 1-D"),
    ],
)
def test_bad_batches_are_rejected(writer, emb, labels, exc, match):
    with pytest.raises(exc, match=match):
        writer.append(emb, labels)
    assert len(writer) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_report_the_first_bad_row(writer, bad):
    X = np.ones((25, 4), np.float32)
    X[17, 2] = bad
    X[21, 0] = bad
    with pytest.raises(ValueError, match="embeddings row 17 of this batch holds NaN or inf"):
        writer.append(X, np.zeros(25, int))
    assert len(writer) == 0  # the batch spans shard boundaries; none of it landed


def test_float16_overflow_is_reported(writer):
    X = np.ones((3, 4), np.float32)
    X[1, 1] = 1e6
    with pytest.raises(ValueError, match="row 1 of this batch overflows float16"):
        writer.append(X, [0, 0, 0])


def test_float_labels_holding_integers_are_accepted(writer):
    writer.append(GOOD, np.array([0.0, 2.0, 1.0]))
    assert len(writer) == 3


def test_unlabelled_rows_use_minus_one(writer):
    writer.append(GOOD, [-1, 0, -1])
    writer.close()
    np.testing.assert_array_equal(fc.EmbeddingStore(writer.root).load()[1], [-1, 0, -1])


def test_paths_must_be_given_always_or_never(tmp_path):
    with fc.ShardWriter(tmp_path / "s", dim=4, fsync=False) as w:
        w.append(GOOD, [0, 0, 0], paths=["a", "b", "c"])
        with pytest.raises(ValueError, match="pass paths= with every append"):
            w.append(GOOD, [0, 0, 0])
        with pytest.raises(ValueError, match="paths have length 2, expected 3"):
            w.append(GOOD, [0, 0, 0], paths=["a", "b"])
        with pytest.raises(TypeError, match="sequence of str"):
            w.append(GOOD, [0, 0, 0], paths="abc")
    with fc.ShardWriter(tmp_path / "t", dim=4, fsync=False) as w:
        w.append(GOOD, [0, 0, 0])
        with pytest.raises(ValueError, match="started without paths"):
            w.append(GOOD, [0, 0, 0], paths=["a", "b", "c"])


def test_normalized_store_rejects_unnormalised_rows(tmp_path):
    with fc.ShardWriter(tmp_path / "s", dim=4, normalized=True, fsync=False) as w:
        X = np.full((3, 4), 0.5, np.float32)  # unit rows
        w.append(X, [0, 0, 0])
        X[2] *= 2
        with pytest.raises(ValueError, match=r"row 2 has L2 norm 2 .* normalized=True"):
            w.append(X, [0, 0, 0])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dim": 0}, ValueError, "dim must be a positive int"),
        ({"dim": 4.0}, ValueError, "dim must be a positive int"),
        ({"dim": 4, "dtype": "float64"}, ValueError, r"dtype must be one of \['float16'"),
        ({"dim": 4, "shard_size": 0}, ValueError, "shard_size must be a positive int"),
        ({"dim": 4, "classes": "abc"}, TypeError, "not a single string"),
        ({"dim": 4, "classes": ["a", "a"]}, ValueError, "'a' appears twice"),
        ({"dim": 4, "classes": [1.5]}, TypeError, "class names must be str or int"),
        ({"dim": 4, "metadata": {"f": object()}}, TypeError, "metadata must be JSON"),
    ],
)
def test_bad_writer_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fc.ShardWriter(tmp_path / "s", fsync=False, **kwargs)


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty and not a faissclass store"):
        fc.ShardWriter(tmp_path / "photos", dim=4)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"x"


# --------------------------------------------------------------------------- damage


@pytest.fixture
def store_dir(tmp_path, rng):
    X = rng.standard_normal((250, 8)).astype(np.float32)
    write_store(tmp_path / "s", X, rng.integers(0, 3, 250), shard_size=100)
    return tmp_path / "s"


def test_not_a_store(tmp_path):
    with pytest.raises(fc.StoreError, match="does not exist"):
        fc.EmbeddingStore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fc.StoreError, match=r"not a faissclass store \(no store.json"):
        fc.EmbeddingStore(tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(fc.StoreError, match="not a store"):
        fc.EmbeddingStore(tmp_path / "f")


def test_unreadable_or_foreign_manifest(store_dir):
    m = store_dir / MANIFEST_NAME
    text = m.read_text()
    m.write_text(text[: len(text) // 2])
    with pytest.raises(fc.StoreError, match=r"store\.json: unreadable manifest"):
        fc.EmbeddingStore(store_dir)
    m.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(fc.StoreError, match="not a faissclass store manifest"):
        fc.EmbeddingStore(store_dir)
    d = json.loads(text)
    d["format_version"] = 99
    m.write_text(json.dumps(d))
    with pytest.raises(fc.StoreError, match="format version 99"):
        fc.EmbeddingStore(store_dir)


def test_missing_shard_is_named(store_dir):
    (store_dir / "shard-00001.h5").unlink()
    with pytest.raises(fc.StoreError, match=r"shard-00001\.h5: shard listed in .* is missing"):
        fc.EmbeddingStore(store_dir)


def test_truncated_shard_is_named(store_dir):
    p = store_dir / "shard-00002.h5"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(fc.StoreError, match=r"shard-00002\.h5: shard is \d+ bytes, the manifest"):
        fc.EmbeddingStore(store_dir)
    # A writer refuses to resume onto the damage, too.
    with pytest.raises(fc.StoreError, match=r"shard-00002\.h5"):
        fc.ShardWriter(store_dir, dim=8, dtype="float32", fsync=False)


def test_corrupted_bytes_fail_verify(store_dir):
    p = store_dir / "shard-00001.h5"
    with h5py.File(p) as f:
        offset = f["embeddings"].id.get_chunk_info(0).byte_offset
    raw = bytearray(p.read_bytes())
    raw[offset + 100] ^= 0xFF  # same size, one flipped byte inside the embeddings
    p.write_bytes(bytes(raw))
    store = fc.EmbeddingStore(store_dir)  # size unchanged: opening succeeds
    with pytest.raises(fc.StoreError,
                       match=r"shard-00001\.h5: the file's checksum is xxh3_64:.*damaged"):
        store.verify()
    # A store written before file checksums: the per-dataset checksums catch it.
    m = store_dir / MANIFEST_NAME
    d = json.loads(m.read_text())
    for s in d["shards"]:
        del s["file_checksum"]
    m.write_text(json.dumps(d))
    with pytest.raises(fc.StoreError,
                       match=r"shard-00001\.h5: checksum of 'embeddings' is xxh3_64:.*damaged"):
        fc.EmbeddingStore(store_dir).verify()


def test_manifest_disagreeing_with_shard(store_dir):
    m = store_dir / MANIFEST_NAME
    d = json.loads(m.read_text())
    d["shards"][0]["rows"] = 90
    d["rows"] = 240
    m.write_text(json.dumps(d))
    store = fc.EmbeddingStore(store_dir)
    with pytest.raises(fc.StoreError, match=r"shard-00000\.h5: dataset 'embeddings' has shape "
                                            r"\(100, 8\), the manifest says \(90, 8\)"):
        store.load()
    d["rows"] = 999
    m.write_text(json.dumps(d))
    with pytest.raises(fc.StoreError, match="rows=999 but the shards hold 240"):
        fc.EmbeddingStore(store_dir)


def test_shard_swapped_for_another_file(store_dir, tmp_path):
    shutil.copy(store_dir / "shard-00000.h5", tmp_path / "x.h5")
    with h5py.File(tmp_path / "x.h5", "a") as f:
        del f["labels"]
    size = (tmp_path / "x.h5").stat().st_size
    m = store_dir / MANIFEST_NAME
    d = json.loads(m.read_text())
    d["shards"][0]["bytes"] = size
    d["shards"][0]["file_checksum"] = file_digest(tmp_path / "x.h5")  # consistent swap
    m.write_text(json.dumps(d))
    shutil.copy(tmp_path / "x.h5", store_dir / "shard-00000.h5")
    with pytest.raises(fc.StoreError, match=r"shard-00000\.h5: dataset 'labels' is missing"):
        fc.EmbeddingStore(store_dir).load()


def test_duplicate_ids_across_shards_fail_verify(store_dir):
    p = store_dir / "shard-00001.h5"
    with h5py.File(p, "a") as f:
        f["ids"][0] = 5  # also stored in shard 0
    # Keep the checksum consistent so that only the id check can catch it.
    import xxhash
    with h5py.File(p) as f:
        h = xxhash.xxh3_64(f["ids"][:]).hexdigest()
    m = store_dir / MANIFEST_NAME
    d = json.loads(m.read_text())
    d["shards"][1]["checksum"]["ids"] = f"xxh3_64:{h}"
    d["shards"][1]["file_checksum"] = file_digest(p)
    m.write_text(json.dumps(d))
    with pytest.raises(fc.StoreError, match="id 5 is stored more than once"):
        fc.EmbeddingStore(store_dir).verify()


def test_rejected_batch_after_a_chunk_flush_leaves_committed_rows_intact(tmp_path, rng,
                                                                        monkeypatch):
    import faissclass.store._writer as store_mod

    # 25-row HDF5 chunks, 100-row shards: a rejected batch that has already
    # pushed a chunk to the file must restore the committed part of that chunk.
    monkeypatch.setattr(store_mod, "_CHUNK_BYTES", 25 * 4 * 4)
    monkeypatch.setattr(store_mod, "_MIN_CHUNK_ROWS", 1)
    X = rng.standard_normal((150, 4)).astype(np.float32)
    bad = rng.standard_normal((50, 4)).astype(np.float32)
    bad[45, 0] = np.nan
    with fc.ShardWriter(tmp_path / "s", dim=4, dtype="float32", shard_size=100,
                        fsync=False) as w:
        w.append(X[:30], np.zeros(30, int))
        with pytest.raises(ValueError, match="row 45 of this batch holds NaN"):
            w.append(bad, np.ones(50, int), ids=np.arange(1000, 1050))
        assert len(w) == 30
        w.append(X[30:], np.zeros(120, int))
    store = fc.EmbeddingStore(tmp_path / "s")
    X2, y2, ids = store.load()
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, np.zeros(150))
    np.testing.assert_array_equal(ids, np.arange(150))
    store.verify()
    with h5py.File(tmp_path / "s" / "shard-00000.h5") as f:
        assert f["embeddings"].chunks == (25, 4)
