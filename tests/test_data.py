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
