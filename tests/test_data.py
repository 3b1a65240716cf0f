"""Dataset readers."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import faissclass as fc
from faissclass.data import FASHION_MNIST_DIR, load_fashion_mnist, read_idx


def test_read_idx_round_trip_and_damage(tmp_path, rng):
    a = rng.integers(0, 255, (7, 3, 4), dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3i", *a.shape) + a.tobytes()
    (tmp_path / "x.idx.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx.gz"), a)
    (tmp_path / "t.idx").write_bytes(raw[:-5])
    with pytest.raises(fc.StoreError, match=r"t\.idx: holds \d+ data bytes"):
        read_idx(tmp_path / "t.idx")
    (tmp_path / "b.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(fc.StoreError, match="bad magic"):
        read_idx(tmp_path / "b.idx")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist absent")
def test_prototypes_on_real_fashion_mnist_match_sklearn():
    from sklearn.neighbors import NearestCentroid

    X, y = load_fashion_mnist("train")
    Q, yq = load_fashion_mnist("test")
    assert X.shape == (60_000, 28, 28) and Q.shape == (10_000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10
    f = X.reshape(len(X), -1).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    q = Q.reshape(len(Q), -1).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ours = fc.PrototypeClassifier().fit(f, y)
    nc = NearestCentroid().fit(f, y)
    nc.centroids_ /= np.linalg.norm(nc.centroids_, axis=1, keepdims=True)
    np.testing.assert_array_equal(ours.predict(q), nc.predict(q))
    assert ours.score(q, yq) > 0.65  # pixels, cosine to class means: measured 0.670


def test_splits_are_stratified_seeded_and_restorable(tmp_path, rng):
    from faissclass.data import load_splits, make_splits, save_splits

    y = np.repeat(np.arange(5), [100, 50, 30, 11, 9])
    s = make_splits(y, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    allrows = np.concatenate(list(s.values()))
    np.testing.assert_array_equal(np.sort(allrows), np.arange(y.size))  # a partition
    for c, n in enumerate([100, 50, 30, 11, 9]):
        got = [int((y[s[k]] == c).sum()) for k in ("train", "val", "test")]
        assert sum(got) == n and abs(got[0] - 0.8 * n) <= 1 and abs(got[1] - 0.1 * n) <= 1
    again = make_splits(y, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = make_splits(y, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    assert not np.array_equal(s["val"], other["val"])
    save_splits(tmp_path / "splits.json", s, dataset="toy", seed=3)
    back, meta = load_splits(tmp_path / "splits.json")
    assert meta == {"dataset": "toy", "seed": 3}
    assert all(np.array_equal(s[k], back[k]) for k in s)
    with pytest.raises(ValueError, match="sum to 1"):
        make_splits(y, {"a": 0.5, "b": 0.4})


def test_label_file_dataset(tmp_path):
    from faissclass.data import LabelFileDataset

    (tmp_path / "val.txt").write_text("b.JPEG n02\na.JPEG 0\n\nc.JPEG,n01\n")
    ds = LabelFileDataset(tmp_path, tmp_path / "val.txt", ["n01", "n02"])
    assert ds.paths == ["a.JPEG", "b.JPEG", "c.JPEG"] and list(ds.labels) == [0, 1, 0]
    (tmp_path / "bad.txt").write_text("a.JPEG n77\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: label 'n77' is not one of the 2"):
        LabelFileDataset(tmp_path, tmp_path / "bad.txt", ["n01", "n02"])


def test_image_modes_become_rgb(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    from faissclass.data import ArrayDataset, ImageFolder

    (tmp_path / "c").mkdir()
    rgba = PIL.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "c" / "a.png")
    pal = PIL.new("P", (4, 4), 3)
    pal.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    pal.save(tmp_path / "c" / "b.png")
    PIL.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c" / "c.jpg")
    PIL.new("L", (4, 4), 77).save(tmp_path / "c" / "d.png")
    ds = ImageFolder(tmp_path)
    imgs = [ds.image(i) for i in range(4)]
    assert all(im.mode == "RGB" for im in imgs)
    assert imgs[0].getpixel((0, 0)) == (255, 255, 255)
    assert imgs[1].getpixel((0, 0)) == (70, 80, 90)
    assert imgs[2].getpixel((0, 0))[0] > 200 and imgs[2].getpixel((0, 0))[1] < 60  # red
    assert imgs[3].getpixel((0, 0)) == (77, 77, 77)
    assert ArrayDataset(np.zeros((1, 5, 5), np.uint8), [0]).image(0).size == (5, 5)
