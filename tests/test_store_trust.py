"""The store never deletes what it does not own, reads only its own files, and turns
every damaged or odd input into a StoreError naming the file (issue 8)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_store

import faissclass as fc
from faissclass.store import MANIFEST_NAME
from faissclass.store._manifest import file_digest

# --------------------------------------------------------------------------- helpers


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def rewrite_manifest(root: Path, d: dict) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(d))


@pytest.fixture
def store_dir(tmp_path, rng):
    X = rng.standard_normal((250, 8)).astype(np.float32)
    write_store(tmp_path / "s", X, rng.integers(0, 3, 250), shard_size=100)
    return tmp_path / "s"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- never delete


def test_writer_refuses_shards_without_a_manifest_and_touches_nothing(store_dir):
    (store_dir / MANIFEST_NAME).unlink()  # a store whose manifest was lost
    (store_dir / "shard-00003.h5.partial").write_bytes(b"someone's partial")
    before = snapshot(store_dir)
    with pytest.raises(fc.StoreError, match=r"holds shard files \(shard-00000\.h5, "
                                            r"shard-00001\.h5, .*no store\.json.*restore"):
        fc.ShardWriter(store_dir, dim=8, dtype="float32", fsync=False)
    assert snapshot(store_dir) == before


def _killed_mid_shard(root: Path, rng) -> str:
    """A writer killed while writing its fourth shard: returns that shard's partial name."""
    child = textwrap.dedent("""
        import os, sys, numpy as np, faissclass as fc
        w = fc.ShardWriter(sys.argv[1], dim=8, dtype="float32", shard_size=100, fsync=False)
        w.append(np.ones((350, 8)), np.zeros(350, int))
        os._exit(0)  # no close(): the 50 rows of shard 3 stay in its partial file
    """)
    subprocess.run([sys.executable, "-c", child, str(root)], check=True, timeout=120)
    partial = manifest(root)["pending"]["partial"]
    assert (root / partial).exists() and partial.startswith("shard-00003.h5.")
    return partial


def test_resumed_writer_removes_only_its_own_partial(tmp_path, rng):
    root = tmp_path / "s"
    partial = _killed_mid_shard(root, rng)
    (root / "notes.partial").write_bytes(b"the user's")
    (root / "shard-00003.h5.partial").write_bytes(b"same shard number, not this writer's")
    (root / "shard-00009.h5.partial").write_bytes(b"not this store's shard in progress")
    (root / "shard-00007.h5").write_bytes(b"unlisted, not ours")
    with fc.ShardWriter(root, dim=8, dtype="float32", shard_size=100, fsync=False) as w:
        assert len(w) == 300
        w.append(rng.standard_normal((150, 8)), np.zeros(150, int))
    assert not (root / partial).exists()
    assert (root / "notes.partial").read_bytes() == b"the user's"
    assert (root / "shard-00003.h5.partial").read_bytes().startswith(b"same shard")
    assert (root / "shard-00009.h5.partial").read_bytes().startswith(b"not this")
    assert (root / "shard-00007.h5").read_bytes() == b"unlisted, not ours"
    store = fc.EmbeddingStore(root)
    store.verify()
    assert len(store) == 450
    # New shards take names above every shard-like name in the directory.
    assert [s.file for s in store.shards][3:] == ["shard-00010.h5", "shard-00011.h5"]
    assert manifest(root)["pending"] is None


def test_a_shard_renamed_before_the_manifest_update_is_kept_not_deleted(tmp_path, rng):
    root = tmp_path / "s"
    partial = _killed_mid_shard(root, rng)
    os.replace(root / partial, root / "shard-00003.h5")  # killed right after the rename
    before = (root / "shard-00003.h5").read_bytes()
    with fc.ShardWriter(root, dim=8, dtype="float32", shard_size=100, fsync=False) as w:
        assert len(w) == 300  # its rows are not in the store: rewritten by the caller
        w.append(np.ones((50, 8)), np.zeros(50, int))
    store = fc.EmbeddingStore(root)
    store.verify()
    assert [s.file for s in store.shards] == ["shard-00000.h5", "shard-00001.h5",
                                              "shard-00002.h5", "shard-00004.h5"]
    # The unlisted file is kept: its name could have been taken by someone else's file.
    assert (root / "shard-00003.h5").read_bytes() == before


def test_a_foreign_file_named_like_a_shard_is_never_taken_or_deleted(store_dir, rng):
    (store_dir / "shard-00003.h5").write_bytes(b"foreign")
    with fc.ShardWriter(store_dir, dim=8, dtype="float32", shard_size=100, fsync=False) as w:
        w.append(rng.standard_normal((100, 8)), np.zeros(100, int))
    assert (store_dir / "shard-00003.h5").read_bytes() == b"foreign"
    assert fc.EmbeddingStore(store_dir).shards[-1].file == "shard-00004.h5"


def test_resume_with_gaps_in_the_shard_list_never_overwrites_a_listed_shard(tmp_path, rng):
    root = tmp_path / "s"
    X = rng.standard_normal((300, 8)).astype(np.float32)
    write_store(root, X, np.zeros(300, int), shard_size=100)
    m = manifest(root)
    # A manifest written before next_shard existed, listing shards 0 and 2 only
    # (shard 1 deleted by hand): the old writer named its next shard by the count
    # of listed shards, "shard-00002.h5", and overwrote a listed shard.
    del m["pending"]
    m["shards"] = [m["shards"][0], m["shards"][2]]
    m["rows"] = 200
    (root / "shard-00001.h5").unlink()
    rewrite_manifest(root, m)
    listed = {n: (root / n).read_bytes() for n in ("shard-00000.h5", "shard-00002.h5")}
    with fc.ShardWriter(root, dim=8, dtype="float32", shard_size=100, fsync=False) as w:
        w.append(rng.standard_normal((100, 8)), np.ones(100, int),
                 ids=np.arange(1000, 1100))
    for name, data in listed.items():
        assert (root / name).read_bytes() == data
    store = fc.EmbeddingStore(root)
    store.verify()
    assert [s.file for s in store.shards] == ["shard-00000.h5", "shard-00002.h5",
                                              "shard-00003.h5"]


def test_writer_and_reader_refuse_the_same_bad_manifest(store_dir):
    m = manifest(store_dir)
    m["rows"] = 999  # disagrees with the shards
    rewrite_manifest(store_dir, m)
    with pytest.raises(fc.StoreError, match="rows=999 but the shards hold 250") as r:
        fc.EmbeddingStore(store_dir)
    with pytest.raises(fc.StoreError, match="rows=999 but the shards hold 250") as w:
        fc.ShardWriter(store_dir, dim=8, dtype="float32", fsync=False)
    assert str(r.value) == str(w.value)


def test_a_refused_writer_leaves_no_lock_file_or_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a faissclass store"):
        fc.ShardWriter(tmp_path / "photos", dim=4)
    assert sorted(os.listdir(tmp_path / "photos")) == ["cat.jpg"]
    with pytest.raises(ValueError, match="dim must be a positive int"):
        fc.ShardWriter(tmp_path / "new", dim=0)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- own files only


def _point_shard_at(store_dir: Path, target: str) -> None:
    m = manifest(store_dir)
    m["shards"][1]["file"] = target
    rewrite_manifest(store_dir, m)


@pytest.mark.parametrize("target", ["../secret.h5", "/etc/passwd", "a/../../secret.h5",
                                    "./shard-00001.h5", "", "sub\\..\\x"])
def test_shard_names_outside_the_store_are_refused(store_dir, target):
    (store_dir.parent / "secret.h5").write_bytes(b"secret contents" * 1000)
    _point_shard_at(store_dir, target)
    with pytest.raises(fc.StoreError, match=r"store\.json: shard entry 1") as e:
        fc.EmbeddingStore(store_dir)
    assert "15000" not in str(e.value) and "secret contents" not in str(e.value)


def test_a_symlink_out_of_the_store_is_refused(store_dir):
    secret = store_dir.parent / "secret.h5"
    shutil.copy(store_dir / "shard-00001.h5", secret)  # even a valid shard
    (store_dir / "shard-00001.h5").unlink()
    (store_dir / "shard-00001.h5").symlink_to(secret)
    with pytest.raises(fc.StoreError, match="leads outside the store directory") as e:
        fc.EmbeddingStore(store_dir)
    assert str(secret.stat().st_size) not in str(e.value)
    # A symlink that stays inside the store is followed.
    (store_dir / "shard-00001.h5").unlink()
    shutil.move(secret, store_dir / "real.h5")
    (store_dir / "shard-00001.h5").symlink_to("real.h5")
    fc.EmbeddingStore(store_dir).verify()


def test_a_fifo_or_directory_is_refused_without_blocking(store_dir):
    (store_dir / "shard-00001.h5").unlink()
    os.mkfifo(store_dir / "shard-00001.h5")  # opening it would block forever
    t = time.monotonic()
    with pytest.raises(fc.StoreError, match="not a regular file"):
        fc.EmbeddingStore(store_dir)
    assert time.monotonic() - t < 10
    (store_dir / "shard-00001.h5").unlink()
    (store_dir / "shard-00001.h5").mkdir()
    with pytest.raises(fc.StoreError, match="not a regular file"):
        fc.EmbeddingStore(store_dir)


def _rebuild_shard(store_dir: Path, build) -> None:
    """Replace shard 0 by a file made by ``build(h5file, original)`` and make the manifest
    agree on its size and checksum, so only the structural checks can catch it."""
    p = store_dir / "shard-00000.h5"
    with h5py.File(p) as f:
        orig = {k: f[k][:] for k in f}
    p.unlink()
    with h5py.File(p, "w") as f:
        build(f, orig, store_dir)
    m = manifest(store_dir)
    m["shards"][0]["bytes"] = p.stat().st_size
    m["shards"][0]["file_checksum"] = file_digest(p)
    rewrite_manifest(store_dir, m)


def test_external_storage_links_virtual_datasets_and_filters_are_refused(store_dir):
    def external(f, orig, d):
        raw = d.parent / "outside.bin"
        orig["embeddings"].astype("<f4").tofile(raw)
        f.create_dataset("embeddings", orig["embeddings"].shape, "<f4",
                         external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
        f["labels"], f["ids"] = orig["labels"], orig["ids"]

    def external_link(f, orig, d):
        with h5py.File(d.parent / "outside.h5", "w") as g:
            g["embeddings"] = orig["embeddings"]
        f["embeddings"] = h5py.ExternalLink(str(d.parent / "outside.h5"), "embeddings")
        f["labels"], f["ids"] = orig["labels"], orig["ids"]

    def soft_link(f, orig, d):
        f["hidden"] = orig["embeddings"]
        f["embeddings"] = h5py.SoftLink("/hidden")
        f["labels"], f["ids"] = orig["labels"], orig["ids"]

    def virtual(f, orig, d):
        with h5py.File(d.parent / "outside.h5", "w") as g:
            g["e"] = orig["embeddings"]
        layout = h5py.VirtualLayout(orig["embeddings"].shape, "<f4")
        layout[:] = h5py.VirtualSource(str(d.parent / "outside.h5"), "e",
                                       shape=orig["embeddings"].shape)
        f.create_virtual_dataset("embeddings", layout)
        f["labels"], f["ids"] = orig["labels"], orig["ids"]

    def filtered(f, orig, d):
        f.create_dataset("embeddings", data=orig["embeddings"], compression="gzip")
        f["labels"], f["ids"] = orig["labels"], orig["ids"]

    cases = [(external, "external storage"), (external_link, "ExternalLink"),
             (soft_link, "SoftLink"), (virtual, "virtual or external"),
             (filtered, "HDF5 filters")]
    backup = store_dir.parent / "backup"
    shutil.copytree(store_dir, backup)
    for build, match in cases:
        shutil.rmtree(store_dir)
        shutil.copytree(backup, store_dir)
        _rebuild_shard(store_dir, build)
        store = fc.EmbeddingStore(store_dir)
        with pytest.raises(fc.StoreError, match=rf"shard-00000\.h5: .*{match}"):
            store.load()
        with pytest.raises(fc.StoreError, match=rf"shard-00000\.h5: .*{match}"):
            fc.EmbeddingStore(store_dir, verify_reads=False).take([0])


@pytest.mark.parametrize(("field", "value", "match"), [
    ("rows", 1e30, "'rows' must be an integer"),
    ("rows", -1, r"'rows' must be in \[0"),
    ("shards", None, "'shards' must be a list"),
    ("shards", {"a": 1}, "'shards' must be a list"),
    ("shards", ["shard-00000.h5"], "shard entry 0 must be an object"),
    ("dim", 1e12, "'dim' must be an integer"),
    ("dim", 10**12, r"'dim' must be in \[1, 1048576\]"),
    ("dim", -8, r"'dim' must be in \[1"),
    ("dim", True, "'dim' must be an integer"),
    ("dtype", ["float32"], "unknown dtype"),
    ("classes", "abc", "'classes' must be a list"),
    ("classes", ["a\x00b"], "NUL byte"),
    ("metadata", [1], "'metadata' must be an object"),
    ("normalized", "yes", "'normalized' must be bool"),
    ("shard_size", 0, r"'shard_size' must be in \[1"),
])
def test_malformed_manifest_values_name_the_manifest(store_dir, field, value, match):
    m = manifest(store_dir)
    m[field] = value
    rewrite_manifest(store_dir, m)
    with pytest.raises(fc.StoreError, match=rf"store\.json: .*{match}"):
        fc.EmbeddingStore(store_dir)
    with pytest.raises(fc.StoreError, match=rf"store\.json: .*{match}"):
        fc.ShardWriter(store_dir, dim=8, dtype="float32", fsync=False)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("rows", 10**12, "claims 1000000000000 rows"),
    ("rows", 10**15, r"'rows' must be in \[0, 281474976710656\]"),
    ("rows", 100.0, "'rows' must be an integer"),
    ("file", "shard\x00.h5", "NUL/control"),
    ("file", 7, "'file' must be a string"),
    ("checksum", "x", "'checksum' must map"),
    ("bytes", -5, r"'bytes' must be in \[0"),
])
def test_malformed_shard_entries_are_refused_before_any_allocation(store_dir, key, value,
                                                                     match):
    m = manifest(store_dir)
    m["shards"][0][key] = value
    if key == "rows" and isinstance(value, int):
        m["rows"] = sum(s["rows"] for s in m["shards"])
    rewrite_manifest(store_dir, m)
    with pytest.raises(fc.StoreError, match=rf"store\.json: shard entry 0.*{match}"):
        fc.EmbeddingStore(store_dir)


def test_nan_tokens_and_binary_garbage_in_the_manifest(store_dir):
    text = (store_dir / MANIFEST_NAME).read_text()
    (store_dir / MANIFEST_NAME).write_text(text.replace('"rows": 250', '"rows": NaN'))
    with pytest.raises(fc.StoreError, match=r"store\.json: unreadable manifest.*NaN"):
        fc.EmbeddingStore(store_dir)
    (store_dir / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(fc.StoreError, match=r"store\.json: unreadable manifest"):
        fc.EmbeddingStore(store_dir)


# --------------------------------------------------------------------------- damaged shards


def test_a_flipped_byte_is_caught_on_the_read_path(store_dir):
    p = store_dir / "shard-00001.h5"
    with h5py.File(p) as f:
        offset = f["embeddings"].id.get_chunk_info(0).byte_offset
    raw = bytearray(p.read_bytes())
    raw[offset + 100] ^= 0x40  # a plausible float, silently different
    p.write_bytes(bytes(raw))
    for read in (lambda s: s.load(), lambda s: list(s.iter_batches(64)),
                 lambda s: s.take([150]), lambda s: s.ids()):
        with pytest.raises(fc.StoreError, match=r"shard-00001\.h5: the file's checksum"):
            read(fc.EmbeddingStore(store_dir))
    # Opted out, the damage goes through: the cost of speed, documented.
    X, _, _ = fc.EmbeddingStore(store_dir, verify_reads=False).load()
    assert X.shape == (250, 8)


def test_the_read_path_checks_each_shard_once_per_store_object(store_dir, monkeypatch):
    import faissclass.store._reader as reader

    calls = []
    real = reader.file_digest
    monkeypatch.setattr(reader, "file_digest", lambda p: calls.append(p) or real(p))
    store = fc.EmbeddingStore(store_dir)
    store.load()
    list(store.iter_batches(50))
    store.take([0, 120, 240])
    assert len(calls) == 3  # three shards, each hashed on its first read only


FUZZ_CHILD = textwrap.dedent("""
    import sys, shutil, numpy as np
    from pathlib import Path
    import faissclass as fc
    src, work, seed, trials, verify = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), sys.argv[5] == "1"
    rng = np.random.default_rng(seed)
    outcomes = {}
    for t in range(trials):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        p = work / "shard-00000.h5"
        raw = bytearray(p.read_bytes())
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(raw))
        try:
            s = fc.EmbeddingStore(work, verify_reads=verify)
            s.load(); s.take([3, 1]); list(s.iter_batches(7)); s.labels()
            kind = "ok"
        except fc.StoreError as e:
            kind = "StoreError" if "shard-00000.h5" in str(e) else "StoreError-unnamed"
        except Exception as e:
            kind = f"{type(e).__name__}: {e}"[:200]
        outcomes[kind] = outcomes.get(kind, 0) + 1
    print(outcomes)
""")


@pytest.mark.parametrize("verify", [True, False])
def test_byte_flip_fuzz_raises_only_store_errors_naming_the_file(tmp_path, rng, verify):
    src = tmp_path / "src"
    with fc.ShardWriter(src, dim=8, dtype="float16", fsync=False, classes=list("abc")) as w:
        w.append(rng.standard_normal((60, 8)), rng.integers(0, 3, 60),
                 paths=[f"img/{i}.jpg" for i in range(60)])
    trials = 150
    out = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(src), str(tmp_path / "w"),
                          "7", str(trials), "1" if verify else "0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"the fuzz child crashed (rc {out.returncode}): {out.stderr}"
    outcomes = eval(out.stdout.strip())  # a dict literal printed by the child
    assert set(outcomes) <= {"ok", "StoreError"}, outcomes
    if verify:  # every flip changes the file: always caught, before libhdf5 parses it
        assert outcomes == {"StoreError": trials}


# --------------------------------------------------------------------------- disk full

DISK_FULL_CHILD = textwrap.dedent("""
    import json, os, subprocess, sys, numpy as np
    import faissclass as fc
    mnt, size, copy = sys.argv[1], sys.argv[2], sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
    root = os.path.join(mnt, "s")
    rng = np.random.default_rng(0)
    msg = "no error"
    try:
        with fc.ShardWriter(root, dim=64, dtype="float16", shard_size=3000,
                            fsync=True) as w:
            for i in range(200):
                w.append(rng.standard_normal((500, 64)), np.zeros(500, int),
                         paths=[f"images/{i}/{j}.jpg" * 4 for j in range(500)])
    except OSError as e:
        msg = str(e)
    store = fc.EmbeddingStore(root)
    store.verify()
    leftovers = [p for p in os.listdir(root) if p.endswith(".partial")]
    subprocess.run(["cp", "-a", root, copy], check=True)
    print(json.dumps({"msg": msg, "rows": len(store), "leftovers": leftovers}))
""")


def _private_tmpfs_prefix() -> list[str] | None:
    """A command prefix giving the child its own mount namespace (to mount a small
    tmpfs: a real full disk), or None where that is not allowed."""
    import shutil as sh

    if sh.which("unshare") is None:
        return None
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


@pytest.mark.parametrize("size", ["300k", "1m", "3m"])
def test_a_full_disk_is_a_clear_error_leaves_the_store_consistent_and_no_crash(
        tmp_path, size):
    prefix = _private_tmpfs_prefix()
    if prefix is None:
        pytest.skip("no mount namespace here (unshare -m) to make a small file system")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run([*prefix, sys.executable, "-c", DISK_FULL_CHILD, str(mnt), size,
                          str(tmp_path / "copy")], capture_output=True, text=True, timeout=300)
    # Before the fix, libhdf5 crashed the process (segfault) after the failed write.
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "No space left on device" in res["msg"] and "finished shards are intact" in res["msg"]
    assert res["rows"] % 3000 == 0 and res["leftovers"] == []
    # The copy resumes to completion: nothing finished was lost or damaged.
    store = fc.EmbeddingStore(tmp_path / "copy")
    store.verify()
    assert len(store) == res["rows"]


# --------------------------------------------------------------------------- small checks


def test_nan_in_metadata_is_refused_not_written_as_non_standard_json(tmp_path):
    with pytest.raises(ValueError, match=r"metadata must be JSON-serialisable.*NaN"):
        fc.ShardWriter(tmp_path / "s", dim=4, metadata={"lr": float("nan")})
    assert not (tmp_path / "s").exists()


def test_iter_batches_refuses_a_non_float_dtype(store_dir):
    store = fc.EmbeddingStore(store_dir)
    with pytest.raises(TypeError, match="dtype must be float16, float32, float64"):
        next(store.iter_batches(10, dtype=np.int32))
    with pytest.raises(TypeError, match="dtype must be float16"):
        store.load(dtype="int64")
    assert next(store.iter_batches(10, dtype=np.float64)).embeddings.dtype == np.float64


def test_id_minus_one_and_nan_labels_are_refused(tmp_path):
    with fc.ShardWriter(tmp_path / "s", dim=4, fsync=False) as w:
        with pytest.raises(ValueError, match=r"ids\[1\] is -1"):
            w.append(np.ones((2, 4)), [0, 0], ids=[5, -1])
        with pytest.raises(ValueError, match="labels must be integers; element 1 is nan"):
            w.append(np.ones((2, 4)), [0.0, np.nan])
        with pytest.raises(ValueError, match="element 0 is inf"):
            w.append(np.ones((2, 4)), [np.inf, 0.0])
        assert len(w) == 0


def test_numpy_integers_are_accepted_everywhere_python_ints_are(tmp_path, rng):
    X = rng.standard_normal((20, 4))
    with fc.ShardWriter(tmp_path / "s", dim=np.int64(4), shard_size=np.int32(8),
                        fsync=False) as w:
        w.append(X, np.zeros(20, int))
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(list(store.iter_batches(np.int64(7), rank=np.int64(1),
                                       world_size=np.int32(2)))) == 2


def test_every_shard_gets_a_file_checksum_and_reads_check_ahead(store_dir, monkeypatch):
    m = manifest(store_dir)
    assert all(s["file_checksum"] == file_digest(store_dir / s["file"]) for s in m["shards"])
    import faissclass.store._reader as reader

    seen = []
    real = reader.EmbeddingStore._check_bytes
    monkeypatch.setattr(reader.EmbeddingStore, "_check_bytes",
                        lambda self, i: seen.append(i) or real(self, i))
    store = fc.EmbeddingStore(store_dir)
    first = next(store.iter_batches(10))  # shard 0 checked, shard 1 checked ahead
    assert first.ids.tolist() == list(range(10))
    list(store.iter_batches(10))
    assert sorted(seen) == [0, 1, 2]


def test_bad_input_midway_never_costs_the_rows_already_written(tmp_path, rng):
    root = tmp_path / "s"
    X = rng.standard_normal((120, 8)).astype(np.float32)
    y = rng.integers(0, 3, (120, 2))
    with fc.ShardWriter(root, dim=8, dtype="float32", shard_size=100, fsync=False) as w:
        w.append(X[:30], y[:30, 0], paths=[f"a/{i}" for i in range(30)])
        # Strided labels and ids (a column of a table): accepted, not a "disk failure".
        ids = np.arange(30, 150).reshape(60, 2)
        w.append(X[30:90], y[30:90, 1], ids=ids[:, 0], paths=[f"b/{i}" for i in range(60)])
        for bad in (["ok"] * 9 + ["bad\udcff"], ["ok"] * 9 + ["nul\0"]):
            with pytest.raises(ValueError, match=r"paths\[9\]"):
                w.append(X[90:100], y[90:100, 0], ids=np.arange(1000, 1010), paths=bad)
        assert len(w) == 90
        buf = np.arange(500, 510)
        w.append(X[90:100], y[90:100, 0], ids=buf, paths=[f"c/{i}" for i in range(10)])
        buf[:] = np.arange(2000, 2010)  # the caller reuses its buffer: the writer kept a copy
        assert w.contains([505]).all() and not w.contains([2005]).any()
    store = fc.EmbeddingStore(root)
    store.verify()
    assert len(store) == 100


def test_a_pending_record_naming_a_listed_shard_is_refused_before_anything_is_deleted(
        store_dir):
    m = manifest(store_dir)
    m["pending"] = {"file": "shard-00001.h5", "partial": "shard-00001.h5"}
    rewrite_manifest(store_dir, m)
    before = snapshot(store_dir)
    with pytest.raises(fc.StoreError, match="'pending' must be null or name one shard"):
        fc.ShardWriter(store_dir, dim=8, dtype="float32", fsync=False)
    assert snapshot(store_dir) == before
