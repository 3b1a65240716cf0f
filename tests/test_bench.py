"""The benchmark suite (issue 10): config, records, cells, resume, report, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import faissclass as fc
from faissclass.bench.config import RunConfig, load_config
from faissclass.bench.records import (
    SCHEMA,
    append_record,
    done_keys,
    load_records,
    validate_record,
)
from faissclass.bench.report import render_report
from faissclass.bench.runner import run

pytest.importorskip("faiss")

SMALL = """
name = "t"
repeats = 2
[dataset]
layout = "synthetic"
n_train = 3000
n_val = 400
dim = 24
classes = 12
noise = 2.5
seed = 3
[[indexes]]
name = "flat"
[[indexes]]
name = "ivf"
spec = {{ kind = "ivf", nlist = 16 }}
search = [{{ nprobe = 1 }}, {{ nprobe = 16 }}]
[[indexes]]
name = "hnsw"
spec = {{ kind = "hnsw", M = 16 }}
[[indexes]]
name = "sq8"
spec = {{ factory = "IVF16,SQ8" }}
[knn]
ks = [1, 5, 20]
[linear]
epochs = 10
"""


def small_config(tmp_path: Path, **over) -> RunConfig:
    p = tmp_path / "cfg.toml"
    p.write_text(SMALL.format())
    sets = [f"records={json.dumps(str(tmp_path / 'runs.jsonl'))}",
            f"work_dir={json.dumps(str(tmp_path / 'work'))}"]
    sets += [f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}"
             for k, v in over.items()]
    return load_config(p, sets)


# --------------------------------------------------------------------------- config


def test_config_from_toml_and_overrides(tmp_path):
    cfg = small_config(tmp_path, repeats=5, fresh_process=False)
    assert cfg.repeats == 5 and not cfg.fresh_process
    assert [ix.name for ix in cfg.indexes] == ["flat", "ivf", "hnsw", "sq8"]
    assert cfg.indexes[1].search == ({"nprobe": 1}, {"nprobe": 16})
    assert cfg.knn.ks == (1, 5, 20) and cfg.linear.epochs == 10
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # saved into records, round trip
    cfg2 = load_config(None, ['devices=["cpu"]', "dataset.dim=8", "knn=false"])
    assert cfg2.dataset.dim == 8 and cfg2.knn is None


@pytest.mark.parametrize(("sets", "match"), [
    (["bogus=1"], r"unknown key\(s\) \['bogus'\]"),
    (["dataset.colour=1"], r"dataset: unknown key\(s\) \['colour'\]"),
    (["dataset.layout=\"coco\""], "dataset.layout must be one of"),
    (["dataset.fraction=0"], r"fraction must be in \(0, 1\]"),
    (["repeats=0"], "repeats must be a positive int"),
    (['devices=["tpu"]'], "device must be"),
    (['indexes=[{name="a", spec={kind="lsh"}}]'], "kind must be one of"),
    (['indexes=[{name="a", search=[{nprobe=0}]}]'], "nprobe must be a positive int"),
    (['indexes=[{name="a"}, {name="a"}]'], "index names must be unique"),
    (["knn.ks=[0]"], "knn.ks must be a positive int"),
    (["model.dtype=\"float64\""], "model.dtype must be one of"),
])
def test_bad_configs_fail_loudly(sets, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, sets)


# --------------------------------------------------------------------------- records


def _record(**over):
    rec = {"schema": "faissclass.bench/1", "key": "k", "run": "r",
           "cell": {"dataset": "d", "device": "cpu", "classifier": "knn", "index": "flat",
                    "params": {}},
           "phases": {"val_search": {"seconds": 0.5, "all_seconds": [0.5],
                                     "peak_rss_bytes": 1, "gpu_peak_bytes": None,
                                     "items_per_s": 2.0}},
           "accuracy": {"val": {"top1": {"20": 0.5}}}, "sizes": {"n_train": 1, "n_val": 1,
                                                                  "dim": 1},
           "provenance": {"faissclass": "0", "cpu": "x", "hostname": "h"}, "config": {}}
    rec.update(over)
    return rec


def test_records_validate_append_atomically_and_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, _record(key="a"))
    append_record(path, _record(key="b"))
    assert done_keys(path) == {"a", "b"}
    with open(path, "ab") as f:
        f.write(b'{"schema": "faissclass.bench/1", "key": "c", "cut off')  # killed mid-write
    assert [r["key"] for r in load_records([path])] == ["a", "b"]
    for bad, match in [(_record(schema="x/2"), "schema"),
                       (_record(cell={"dataset": "d"}), "missing 'device'"),
                       (_record(phases={"vote": {"seconds": "fast"}}), "expected number"),
                       (_record(accuracy=[]), "expected object")]:
        with pytest.raises(ValueError, match=match):
            append_record(path, bad)
    assert len(load_records([path])) == 2
    assert SCHEMA["properties"]["schema"]["enum"] == ["faissclass.bench/1"]


# --------------------------------------------------------------------------- the suite


def loo_top1_reference(X, y, k, T=0.07):
    """Leave-one-out kNN top-1 in plain numpy: each vector's k nearest others."""
    S = X.astype(np.float64) @ X.astype(np.float64).T
    np.fill_diagonal(S, -np.inf)
    nn = np.argsort(-S, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(S, nn, 1)
    w = np.exp((s - s[:, :1]) / T)
    C = int(y.max()) + 1
    scores = np.zeros((len(X), C))
    np.add.at(scores, (np.repeat(np.arange(len(X)), k), y[nn].ravel()), w.ravel())
    return float(np.mean(scores.argmax(1) == y))


def test_the_suite_records_every_cell_resumes_and_reports(tmp_path):
    cfg = small_config(tmp_path, fresh_process=False)
    out = run(cfg)
    assert (out["ran"], out["skipped"]) == (6, 0)  # 4 indexes (kNN), prototypes, linear
    recs = load_records([cfg.records])
    for r in recs:
        validate_record(r)
    knn = [r for r in recs if r["cell"]["classifier"] == "knn"]
    assert len(knn) == 5  # flat, ivf x2 settings, hnsw, sq8
    for r in knn:
        assert set(r["phases"]) >= {"index_train", "index_add", "val_search", "vote",
                                    "train_search"}
        assert len(r["phases"]["val_search"]["all_seconds"]) == 2
        vs = r["phases"]["val_search"]
        assert 0 < vs["start_rss_bytes"] <= vs["peak_rss_bytes"]
        assert r["index_bytes"] > 0 and r["provenance"]["cpu"]
        assert r["config"]["name"] == "t"
    flat = next(r for r in knn if r["cell"]["index"] == "flat")
    assert flat["recall"]["recall@20"] == 1.0
    ivf1 = next(r for r in knn if r["cell"]["params"] == {"nprobe": 1})
    ivf16 = next(r for r in knn if r["cell"]["params"] == {"nprobe": 16})
    assert ivf16["recall"]["recall@20"] == pytest.approx(1.0)  # every list: exact
    assert ivf1["recall"]["recall@20"] < ivf16["recall"]["recall@20"]
    # Leave-one-out top-1 equals a plain numpy computation that excludes each vector.
    X, y, _ = fc.EmbeddingStore(out["train"]).load()
    for k in (1, 5, 20):
        assert flat["accuracy"]["train"]["top1"][str(k)] == pytest.approx(
            loo_top1_reference(X, y, k), abs=1e-9)
    # Val accuracy equals the library's KNNClassifier on the same stores.
    Q, yq, _ = fc.EmbeddingStore(out["val"]).load()
    ref = fc.KNNClassifier(k=20).fit(X, y)
    assert flat["accuracy"]["val"]["top1"]["20"] == pytest.approx(ref.score(Q, yq))
    proto = next(r for r in recs if r["cell"]["classifier"] == "prototype")
    assert proto["accuracy"]["val"]["top1"]["-"] == pytest.approx(
        fc.PrototypeClassifier().fit(X, y).score(Q, yq))
    lin = next(r for r in recs if r["cell"]["classifier"] == "linear")
    assert lin["accuracy"]["val"]["top1"]["-"] > 0.5  # a trained head, far above chance
    # A second run skips every recorded cell.
    again = run(cfg)
    assert (again["ran"], again["skipped"]) == (0, 6)
    assert len(load_records([cfg.records])) == len(recs)
    # The report: Markdown in the study's layout and PNG plots.
    rep = render_report(recs, tmp_path / "report")
    md = rep["markdown"].read_text()
    assert "| dataset | device | method | embed s | build s | train search s |" in md
    assert "kNN k=20 · IVF16,Flat (nprobe=1)" in md and "linear probe" in md
    assert {p.name for p in rep["plots"]} == {"time_per_phase.png", "top1_vs_k.png",
                                             "recall_vs_qps.png"}
    assert all(p.stat().st_size > 5000 for p in rep["plots"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_a_phase_records_its_own_growth_apart_from_what_came_before():
    from faissclass.bench.probes import Phases

    ph = Phases()
    held = np.ones(48 * 2**20 // 8)  # 48 MiB held from before: not the next phases' own
    with ph("grows"):
        grown = np.ones(64 * 2**20 // 8)  # 64 MiB touched inside the phase
    del grown
    with ph("still"):
        pass
    g, st = ph.summary()["grows"], ph.summary()["still"]
    assert g["peak_rss_bytes"] - g["start_rss_bytes"] >= 60 * 2**20
    assert st["peak_rss_bytes"] - st["start_rss_bytes"] < 16 * 2**20
    assert st["start_rss_bytes"] >= held.nbytes


def test_a_changed_config_makes_new_cells(tmp_path):
    cfg = small_config(tmp_path, fresh_process=False)
    cfg = load_config(tmp_path / "cfg.toml", [f"records={json.dumps(cfg.records)}",
                                              f"work_dir={json.dumps(cfg.work_dir)}",
                                              "indexes=[{name=\"flat\"}]", "linear=false",
                                              "prototype=false"])
    assert run(cfg)["ran"] == 1
    more = load_config(tmp_path / "cfg.toml", [f"records={json.dumps(cfg.records)}",
                                               f"work_dir={json.dumps(cfg.work_dir)}",
                                               "indexes=[{name=\"flat\"}]", "linear=false",
                                               "prototype=false", "knn.ks=[3]"])
    assert run(more)["ran"] == 1  # other ks: another cell, not a skip


def test_cells_run_in_fresh_processes(tmp_path):
    cfg = load_config(None, [f"records={json.dumps(str(tmp_path / 'r.jsonl'))}",
                             f"work_dir={json.dumps(str(tmp_path / 'w'))}",
                             "dataset.n_train=2000", "dataset.n_val=200", "dataset.dim=16",
                             "dataset.classes=5", "repeats=1", "linear=false"])
    assert run(cfg)["ran"] == 2
    recs = load_records([cfg.records])
    assert all(r["fresh_process"] for r in recs)


def test_mismatched_stores_are_refused(tmp_path, rng):
    from faissclass.store import IncompatibleStoresError

    X = rng.standard_normal((200, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.integers(0, 3, 200)
    for name, model in (("a", "resnet50"), ("b", "vit_small_patch16_224")):
        with fc.ShardWriter(tmp_path / name, dim=8, normalized=True, classes=list("xyz"),
                            metadata={"model": model}, fsync=False) as w:
            w.append(X, y)
    sets = ["dataset.layout=\"stores\"", f"dataset.train_store={json.dumps(str(tmp_path / 'a'))}",
            f"dataset.val_store={json.dumps(str(tmp_path / 'b'))}",
            f"records={json.dumps(str(tmp_path / 'r.jsonl'))}",
            f"work_dir={json.dumps(str(tmp_path / 'w'))}", "fresh_process=false",
            "linear=false", "repeats=1"]
    with pytest.raises(IncompatibleStoresError, match="model 'resnet50' vs "
                                                      "'vit_small_patch16_224'"):
        run(load_config(None, sets))
    assert not (tmp_path / "r.jsonl").exists()
    assert run(load_config(None, [*sets, "allow_mismatch=true"]))["ran"] == 2


def test_the_command_line_runs_and_reports(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(SMALL.format())
    base = [sys.executable, "-m", "faissclass.cli"]
    r = subprocess.run([*base, "bench", "run", str(cfg), "--records", str(tmp_path / "r.jsonl"),
                        "--work-dir", str(tmp_path / "w"), "--set", "fresh_process=false",
                        "--set", 'indexes=[{name="flat"}]', "--set", "linear=false"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "2 cell(s) run, 0 already recorded" in r.stdout
    r = subprocess.run([*base, "bench", "report", str(tmp_path / "r.jsonl"), "--out",
                        str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.md").exists()


def test_topk_counts_and_chunked_votes_equal_a_full_sort(rng, monkeypatch):
    """The vote phase's counting (no argsort, queries in chunks) gives the counts of a
    stable argsort of the whole score matrix, ties by class code included."""
    from types import SimpleNamespace

    from faissclass.bench import cell
    from faissclass.classify.votes import class_scores

    s = rng.integers(0, 4, (500, 9)).astype(np.float64)  # many exact ties
    truth = rng.integers(-1, 9, 500)
    order = np.argsort(-s, axis=1, kind="stable")
    for n in (1, 3, 5, 9, 12):
        ref = int(((order[:, :n] == truth[:, None]).any(axis=1) & (truth >= 0)).sum())
        assert cell._topk_correct(s, truth, n) == ref

    dist = np.sort(rng.random((1000, 30)).astype(np.float32), axis=1)[:, ::-1]
    codes = rng.integers(-1, 7, (1000, 30))
    y = rng.integers(0, 7, 1000)
    knn = SimpleNamespace(ks=[1, 5, 30], weights="softmax", temperature=0.07)
    monkeypatch.setattr(cell, "_VOTE_ROWS", 128)  # 1000 rows: chunks that do not divide
    got = {k: {"top1": 0, "top5": 0} for k in knn.ks}
    cell._vote_correct(dist, codes, y, 7, knn, "ip", got)
    for k in knn.ks:
        full = class_scores(dist, codes, 7, weights="softmax", metric="ip",
                            temperature=0.07, k=k)
        o = np.argsort(-full, axis=1, kind="stable")
        assert got[k]["top1"] == int((o[:, 0] == y).sum())
        assert got[k]["top5"] == int((o[:, :5] == y[:, None]).any(axis=1).sum())


def test_train_search_for_chosen_settings_only():
    from faissclass.bench.config import IndexConfig

    ix = IndexConfig(name="ivf", spec={"kind": "ivf", "nlist": 8},
                     search=[{"nprobe": 1}, {"nprobe": 4}], train_search=[{"nprobe": 4}])
    assert not ix.loo_for({"nprobe": 1}) and ix.loo_for({"nprobe": 4})
    assert IndexConfig(name="f").loo_for({}) and not IndexConfig(
        name="f", train_search=False).loo_for({})
    with pytest.raises(ValueError, match=r"\{'nprobe': 2\} is not one of its search"):
        IndexConfig(name="ivf", spec={"kind": "ivf", "nlist": 8}, search=[{"nprobe": 1}],
                    train_search=[{"nprobe": 2}])
    cfg = RunConfig.from_dict({"name": "x", "dataset": {"layout": "synthetic"},
                               "indexes": [{"name": "ivf", "spec": {"kind": "ivf"},
                                            "search": [{"nprobe": 1}, {"nprobe": 4}],
                                            "train_search": [{"nprobe": 4}]}]})
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.indexes[0].loo_for({"nprobe": 4}) and not again.indexes[0].loo_for(
        {"nprobe": 1})


def test_the_synthetic_generator_knobs_reach_the_stores(tmp_path):
    from faissclass.bench.runner import prepare_data

    def cfg(sep):
        return RunConfig.from_dict({
            "name": "g", "work_dir": str(tmp_path / "w"),
            "dataset": {"layout": "synthetic", "n_train": 500, "n_val": 100, "dim": 16,
                        "classes": 5, "noise": 0.2, "latent": 4, "modes": 2,
                        "separation": sep}})
    train, val, _ = prepare_data(cfg(1.2))
    for path in (train, val):
        gen = fc.EmbeddingStore(path).metadata["generator"]
        assert (gen["latent"], gen["modes"], gen["separation"]) == (4, 2, 1.2)
    # another generator: other stores, never a resume of these
    train2, _, _ = prepare_data(cfg(2.0))
    assert train2 != train and fc.EmbeddingStore(train2).metadata["generator"]["separation"] == 2.0
    with pytest.raises(ValueError, match="latent"):
        RunConfig.from_dict({"name": "g", "dataset": {"layout": "synthetic", "dim": 8,
                                                      "latent": 9}})


def test_the_linear_probe_counts_chunk_by_chunk_like_a_plain_argsort():
    pytest.importorskip("torch")
    from faissclass.bench.config import LinearConfig
    from faissclass.bench.linear import LinearProbe
    from faissclass.data.synthetic import clustered

    X, y, Q, yq = clustered(2000, 16, 12, noise=1.0, seed=2, n_queries=300,
                            query_labels=True)
    probe = LinearProbe(LinearConfig(epochs=20)).fit(X, y, 12)
    s = probe.scores(Q)
    order = np.lexsort((np.broadcast_to(np.arange(12), s.shape), -s), axis=1)  # ties: class
    ref = {n: int((order[:, :n] == yq[:, None]).any(axis=1).sum()) for n in (1, 5)}
    assert probe.correct(Q, yq, chunk=7) == ref == probe.correct(Q, yq)
    assert ref[1] / 300 > 0.5  # trained


def test_the_linear_probe_standardises_with_numpys_mean_and_std():
    from faissclass.bench.linear import _mean_std

    X = (np.random.default_rng(0).standard_normal((70_001, 7)) * 3 + 1).astype(np.float32)
    X[:, 3] = 2.0  # a constant dimension: std floored, never a division by zero
    m, s = _mean_std(X, chunk=4096)
    np.testing.assert_allclose(m, X.mean(0, dtype=np.float64), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, np.maximum(X.std(0, dtype=np.float64), 1e-6), rtol=1e-5)
