"""The command line as a user meets it: every mistake is one line on stderr and an exit
code (2 for usage, 1 otherwise), never a traceback; --debug shows the traceback; the help
of every subcommand shows defaults and an example.

Each case runs the real command line (``python -m faissclass.cli``) in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_rows, write_store

import faissclass as fc
from faissclass.cli import build_parser

META = {"model": "tf_efficientnet_lite0", "weights": "offline",
        "data_config": {"input_size": [3, 224, 224], "crop_pct": 0.875,
                        "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Offline as CI is, also on a developer's connected machine.
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "faissclass.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Stores, an index, and the odd files a user points the command line at."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = unit_rows(rng, 90, 16)
    y = np.arange(90) % 3
    classes = ["cat", "dog", "fox"]
    write_store(root / "train", X, y, classes=classes, normalized=True, metadata=META)
    write_store(root / "test", X[:30], y[:30], classes=classes, normalized=True,
                metadata=META)
    other = {**META, "model": "resnet50"}
    write_store(root / "other", X[:30], y[:30], classes=classes, normalized=True,
                metadata=other)
    write_store(root / "nomodel", X[:30], y[:30], classes=classes, normalized=True)
    write_store(root / "wide", unit_rows(rng, 30, 8), y[:30], classes=classes,
                normalized=True, metadata=META)
    fc.VectorIndex.build(fc.EmbeddingStore(root / "train"), fc.IndexSpec(kind="flat"),
                         progress=False).save(root / "index")
    fc.VectorIndex.build(fc.EmbeddingStore(root / "wide"), fc.IndexSpec(kind="flat"),
                         progress=False).save(root / "wide-index")
    damaged = root / "damaged"
    write_store(damaged, X, y, classes=classes, normalized=True, metadata=META)
    shard = sorted(damaged.glob("*.h5"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    mine = root / "my-photos"
    mine.mkdir()
    (mine / "holiday.txt").write_text("keep me")
    (root / "notes.txt").write_text("not an image\n")
    (root / "notes.toml").write_text("this is = = not toml\n")
    (root / "records.jsonl").write_text("{not json\n")
    (root / "empty-folder").mkdir()
    (root / "tiny").mkdir()
    from PIL import Image

    for c in ("a", "b"):
        (root / "photos" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            root / "photos" / c / "1.png")
    return {"root": root, "train": root / "train", "test": root / "test",
            "other": root / "other", "nomodel": root / "nomodel", "wide": root / "wide",
            "index": root / "index", "wide_index": root / "wide-index",
            "damaged": damaged, "shard": shard, "mine": mine,
            "text": root / "notes.txt", "toml": root / "notes.toml",
            "records": root / "records.jsonl", "empty": root / "empty-folder",
            "tiny": root / "tiny", "photos": root / "photos"}


# (name, argv with {placeholders} from the world fixture, exit code, regex on the one line)
MISTAKES: list[tuple[str, list[str], int, str]] = [
    # --- usage: argparse, exit 2
    ("no command", [], 2, r"required: COMMAND"),
    ("unknown command", ["train"], 2, r"invalid choice: 'train'"),
    ("build without --store", ["build", "--out", "{root}/x"], 2,
     r"required: --store"),
    ("--k 0", ["eval", "--train", "{train}", "--test", "{test}", "--k", "0"], 2,
     r"--k: expected a positive integer; got 0"),
    ("--k text", ["predict", "a.jpg", "--train", "{train}", "--k", "five"], 2,
     r"--k: expected a positive integer; got 'five'"),
    ("--nlist 0", ["build", "--store", "{train}", "--out", "{root}/x", "--kind", "ivf",
                   "--nlist", "0"], 2, r"--nlist: expected a positive integer; got 0"),
    ("--min-prob 1.5", ["predict", "a.jpg", "--train", "{train}", "--min-prob", "1.5"], 2,
     r"--min-prob: expected a number in \[0, 1\]; got 1.5"),
    ("--kind typo", ["build", "--store", "{train}", "--out", "{root}/x", "--kind", "hsnw"],
     2, r"--kind: invalid choice: 'hsnw'"),
    ("--dataset typo", ["embed", "--dataset", "image-folder", "--root", "{empty}", "--out",
                        "{root}/x"], 2, r"--dataset: invalid choice"),
    ("--device tpu", ["build", "--store", "{train}", "--out", "{root}/x", "--device", "tpu"],
     2, r"--device: device must be 'cpu', 'cuda'"),
    ("--workers -1", ["embed", "--dataset", "imagefolder", "--root", "{empty}", "--out",
                      "{root}/x", "--workers", "-1"], 2, r"--workers: expected an integer >= 0"),
    ("--batch-size 0", ["embed", "--dataset", "imagefolder", "--root", "{empty}", "--out",
                        "{root}/x", "--batch-size", "0"], 2, r"--batch-size: expected a positive"),
    ("bench without a step", ["bench"], 2, r"required: STEP"),
    ("predict without images", ["predict", "--train", "{train}"], 2,
     r"required: images"),
    ("eval --kinds typo", ["eval", "--train", "{train}", "--test", "{test}", "--kinds", "ivfpq"],
     2, r"--kinds: invalid choice: 'ivfpq'"),
    # --- stores
    ("missing store", ["build", "--store", "{root}/nope", "--out", "{root}/x"], 1,
     r"nope.*(no such|does not exist|not found)"),
    ("a file as the store", ["build", "--store", "{text}", "--out", "{root}/x"], 1,
     r"notes\.txt"),
    ("a folder that is no store", ["build", "--store", "{mine}", "--out", "{root}/x"], 1,
     r"my-photos: not a faissclass store \(no store.json"),
    ("a damaged shard", ["build", "--store", "{damaged}", "--out", "{root}/x"], 1,
     r"damaged/.*\.h5"),
    ("eval missing test store", ["eval", "--train", "{train}", "--test", "{root}/nope"], 1,
     r"nope"),
    ("eval across models", ["eval", "--train", "{train}", "--test", "{other}"], 1,
     r"not embedded alike.*resnet50.*--allow-mismatch"),
    ("eval across dims", ["eval", "--train", "{train}", "--test", "{wide}"], 1,
     r"not embedded alike.*dim"),
    # --- build
    ("build over the user's folder", ["build", "--store", "{train}", "--out", "{mine}"], 1,
     r"my-photos holds files that are not a saved faissclass index \(holiday\.txt\); "
     r"refusing"),
    ("build over an index without --overwrite", ["build", "--store", "{train}", "--out",
                                                 "{index}"], 1, r"--overwrite|overwrite=True"),
    ("build on a GPU that is not there", ["build", "--store", "{train}", "--out", "{root}/x",
                                          "--kind", "ivf", "--nlist", "4", "--device", "cuda"],
     1, r"cuda.*(GPU|gpu)"),
    ("HNSW on the GPU", ["build", "--store", "{train}", "--out", "{root}/x", "--kind", "hnsw",
                         "--device", "cuda"], 1, r"HNSW has no GPU implementation|CPU-only"),
    ("a bad factory string", ["build", "--store", "{train}", "--out", "{root}/x", "--factory",
                              "IVF,Flat?"], 1, r"IVF,Flat\?"),
    ("HNSW with M 1", ["build", "--store", "{train}", "--out", "{root}/x", "--kind", "hnsw",
                       "--M", "1"], 1, r"M must be an int in \[2, 4096\]; got 1"),
    ("more lists than vectors", ["build", "--store", "{train}", "--out", "{root}/x",
                                 "--kind", "ivf", "--nlist", "1000"], 1,
     r"nlist.*1000.*90|90.*1000"),
    # --- eval with indexes
    ("eval --index that is no index", ["eval", "--train", "{train}", "--test", "{test}",
                                       "--index", "{mine}"], 1, r"my-photos"),
    ("eval --index of another store", ["eval", "--train", "{train}", "--test", "{test}",
                                       "--index", "{wide_index}"], 1,
     r"wide-index.*(dim|8).*16|16.*8"),
    ("eval --nprobe without an IVF", ["eval", "--train", "{train}", "--test", "{test}",
                                      "--kinds", "flat", "--nprobe", "4"], 1,
     r"--nprobe.*IVF"),
    # --- predict
    ("predict a missing image", ["predict", "{root}/nope.jpg", "--train", "{train}"], 1,
     r"nope\.jpg"),
    ("predict a text file", ["predict", "{text}", "--train", "{train}"], 1,
     r"notes\.txt: not an image"),
    ("predict on a store without a model", ["predict", "{text}", "--train", "{nomodel}"], 1,
     r"records no model"),
    ("predict with an index of another store", ["predict", "{text}", "--train", "{train}",
                                                "--index", "{wide_index}"], 1,
     r"wide-index"),
    # --- embed
    ("embed without --root", ["embed", "--dataset", "imagefolder", "--out", "{root}/x"], 1,
     r"--root is required"),
    ("embed a missing root", ["embed", "--dataset", "imagefolder", "--root", "{root}/nope",
                              "--out", "{root}/x"], 1, r"nope"),
    ("embed an empty folder", ["embed", "--dataset", "imagefolder", "--root", "{empty}",
                               "--out", "{root}/x"], 1, r"empty-folder.*(no class|empty)"),
    ("embed a split that is not there", ["embed", "--dataset", "imagefolder", "--root",
                                         "{empty}", "--split", "val", "--out", "{root}/x"], 1,
     r"no split 'val'"),
    ("embed tiny-imagenet split typo", ["embed", "--dataset", "tiny-imagenet", "--root",
                                        "{tiny}", "--split", "valid", "--out", "{root}/x"], 1,
     r"splits \['train', 'val'\]; got 'valid'"),
    ("embed tiny-imagenet wrong folder", ["embed", "--dataset", "tiny-imagenet", "--root",
                                          "{tiny}", "--out", "{root}/x"], 1, r"wnids\.txt"),
    ("label-file without its file", ["embed", "--dataset", "label-file", "--root", "{empty}",
                                     "--out", "{root}/x"], 1, r"label_file"),
    ("an unknown model", ["embed", "--dataset", "imagefolder", "--root", "{photos}", "--out",
                          "{root}/x", "--model", "resnet5O"], 1,
     r"unknown timm model 'resnet5O'; did you mean .*resnet50"),
    ("a model without offline weights", ["embed", "--dataset", "imagefolder", "--root",
                                         "{photos}", "--out", "{root}/x", "--model",
                                         "resnet50"], 1,
     r"resnet50.*--checkpoint PATH.*efficientnet-lite"),
    ("a missing checkpoint", ["embed", "--dataset", "imagefolder", "--root", "{photos}",
                              "--out", "{root}/x", "--model", "resnet18", "--checkpoint",
                              "{root}/nope.pth"], 1, r"nope\.pth"),
    ("embed into a store of other embeddings", ["embed", "--dataset", "imagefolder", "--root",
                                                "{photos}", "--out", "{train}"], 1,
     r"train.*(dim|metadata|classes)"),
    # --- bench
    ("bench run a missing config", ["bench", "run", "{root}/nope.toml"], 1, r"nope\.toml"),
    ("bench run a broken config", ["bench", "run", "{toml}"], 1, r"notes\.toml"),
    ("bench run --set without =", ["bench", "run", "--set", "repeats"], 1,
     r"KEY=VALUE|repeats"),
    ("bench run --set an unknown key", ["bench", "run", "--set", "repeatz=3"], 1,
     r"repeatz"),
    ("bench report missing records", ["bench", "report", "{root}/nope.jsonl"], 1,
     r"nope\.jsonl"),
    ("bench report a broken record", ["bench", "report", "{records}", "--out",
                                      "{root}/rep"], 1, r"records\.jsonl:1"),
]


def _fill(argv: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]


@pytest.fixture(scope="module")
def outcomes(world) -> dict[str, subprocess.CompletedProcess[str]]:
    """All mistakes, run two at a time (each is a fresh interpreter)."""
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(lambda m: _cli(*_fill(m[1], world), cwd=world["root"]), MISTAKES)
        return {m[0]: r for m, r in zip(MISTAKES, done, strict=True)}


@pytest.mark.parametrize("name,argv,code,pattern", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_an_exit_code(name, argv, code, pattern, outcomes, world):
    r = outcomes[name]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    assert lines[0].startswith("faissclass"), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    if code == 2:
        assert lines[0].endswith("--help)")
    else:
        assert lines[0].endswith("(--debug shows the traceback)")


def test_nothing_of_the_users_is_touched_by_the_mistakes(outcomes, world):
    assert (world["mine"] / "holiday.txt").read_text() == "keep me"
    assert sorted(p.name for p in world["mine"].iterdir()) == ["holiday.txt"]
    assert fc.VectorIndex.load(world["index"]).ntotal == 90
    assert not (world["root"] / "x").exists()  # no failed command left a half-made output
    assert not list(world["root"].glob("x.*")) and not list(world["root"].glob(".x*"))


def test_debug_shows_the_traceback(world):
    r = _cli("build", "--store", world["root"] / "nope", "--out", world["root"] / "x",
             "--debug")
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr


@pytest.mark.parametrize("command", [["demo"], ["embed"], ["build"], ["eval"], ["predict"],
                                     ["bench"], ["bench", "run"], ["bench", "report"]])
def test_help_shows_every_option_with_text_and_an_example(command):
    r = _cli(*command, "--help")
    assert r.returncode == 0 and r.stderr == ""
    text = r.stdout
    assert "example:\n  faissclass " in text or "example:\n  torchrun" in text
    block = text.split("options:", 1)[-1].split("example:")[0]
    # One entry per option: its line and the help lines wrapped under it.
    entries = re.split(r"\n(?=  -)", block.strip("\n"))
    assert len(entries) >= 2  # -h and --debug at least
    parser = build_parser()
    sub = parser
    for word in command:  # the subcommand's parser, for its actions
        sub = next(a for a in sub._actions
                   if isinstance(a, argparse._SubParsersAction)).choices[word]
    for action in sub._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        opt = action.option_strings[-1]
        entry = next((e for e in entries if re.match(rf"\s*(-\w, )?{re.escape(opt)}\b", e)),
                     None)
        assert entry is not None, f"{command}: {opt} not in --help"
        words = entry.split(None, 1)
        assert action.help and action.help.strip(), f"{command}: {opt} has no help text"
        d = action.default
        if not (d is None or d is False or isinstance(d, bool)):
            assert "(default:" in " ".join(entry.split()), f"{command}: {opt} hides its default"
        assert len(words) == 2
    if command == ["build"]:
        assert "(default: 1024)" in text and "(default: flat)" in text


def test_the_console_script_is_the_same_command():
    exe = Path(sys.executable).with_name("faissclass")
    if not exe.exists():
        pytest.skip("faissclass console script not installed next to this Python")
    r = subprocess.run([exe, "build", "--nlist", "0"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_eval_takes_saved_indexes_and_sweeps(tmp_path, world):
    """eval scores saved indexes (any factory) with search-parameter sweeps, one row per
    setting; the flat row equals a plain numpy kNN."""
    train = fc.EmbeddingStore(world["train"])
    fc.VectorIndex.build(train, fc.IndexSpec(kind="ivf", nlist=4), progress=False).save(
        tmp_path / "ivf")
    fc.VectorIndex.build(train, fc.IndexSpec(factory="IVF4,SQ8"), progress=False).save(
        tmp_path / "sq8")
    r = _cli("eval", "--train", world["train"], "--test", world["test"], "--index",
             world["index"], "--index", tmp_path / "ivf", "--index", tmp_path / "sq8",
             "--nprobe", "1", "4", "--k", "1", "5", "--classifiers", "knn", "--out",
             tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    settings = {(row["index"], row.get("search"), row["classifier"]) for row in rows}
    assert len(settings) == len(rows)
    ivf_rows = [row for row in rows if row["index"] in ("ivf", "sq8")]
    assert {row.get("search") for row in ivf_rows} == {"nprobe=1", "nprobe=4"}
    assert len(ivf_rows) == 2 * 2 * 2  # two indexes x two nprobe x two k
    # the flat index at k=1: each test row is also in train -> its own label, exactly
    flat_k1 = [row for row in rows if row["index"] == "index" and "k=1 " in
               row["classifier"] + " "]
    assert len(flat_k1) == 1 and flat_k1[0]["top1"] == 1.0
    # nprobe=4 of 4 lists is exhaustive: equal to flat
    ivf_all = [row for row in rows if row["index"] == "ivf" and row["search"] == "nprobe=4"]
    flat = {row["classifier"]: row["top1"] for row in rows if row["index"] == "index"}
    assert all(row["top1"] == flat[row["classifier"]] for row in ivf_all)
    # k=5 over the flat index, on test rows that are not in train, against DINO's vote
    # in plain numpy: the class with the largest sum of exp(s / 0.07)
    rng = np.random.default_rng(7)
    X_te = unit_rows(rng, 40, 16)
    y_te = rng.integers(0, 3, 40)
    write_store(tmp_path / "fresh", X_te, y_te, classes=["cat", "dog", "fox"],
                normalized=True, metadata=META)
    r = _cli("eval", "--train", world["train"], "--test", tmp_path / "fresh", "--index",
             world["index"], "--k", "5", "--classifiers", "knn", "--out", tmp_path / "ev5")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "ev5" / "results.json").read_text())["results"]
    X_tr, y_tr, _ = train.load()
    X_te = fc.EmbeddingStore(tmp_path / "fresh").load()[0]  # as stored (float16 or 32)
    S = X_te.astype(np.float64) @ X_tr.astype(np.float64).T
    nn = np.argsort(-S, axis=1, kind="stable")[:, :5]
    w = np.exp(np.take_along_axis(S, nn, 1) / 0.07)
    votes = np.zeros((40, 3))
    for c in range(3):
        votes[:, c] = (w * (y_tr[nn] == c)).sum(1)
    expect = float(np.mean(votes.argmax(1) == y_te))
    assert [row["top1"] for row in got] == [pytest.approx(expect, abs=1e-6)]
    assert 0.0 < expect < 1.0  # random rows: a table that is neither all right nor all wrong


def test_allow_mismatch_scores_across_models_knowingly(world):
    """The error above names the override; with it the same command runs."""
    r = _cli("eval", "--train", world["train"], "--test", world["other"], "--kinds", "flat",
             "--allow-mismatch", "--out", world["root"] / "ev-mismatch")
    assert r.returncode == 0, r.stderr
