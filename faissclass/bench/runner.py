"""The benchmark runner: data, compatibility, cells, records.

``run(config)`` prepares the train and val stores (embedding images with the
distributed embedder, writing synthetic vectors, or taking given stores; a
seeded stratified fraction of the train split if asked), refuses stores that
were not embedded alike, plans the cells (each index on each device with its kNN
classifier and search sweep; prototypes and the linear probe per device), skips
those whose records exist, runs each in a fresh process, and appends one record
per cell to the JSONL file. Under torchrun every rank embeds its share and runs
its share of the cells on its own GPU; rank 0 writes the records.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed as dist
from ..devices import parse_device
from ..store import EmbeddingStore, ShardWriter, check_compatible
from .cell import run_cell
from .config import RunConfig
from .probes import Phases
from .provenance import environment
from .records import SCHEMA_VERSION, append_record, cell_key, done_keys

__all__ = ["plan_cells", "prepare_data", "run"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data


def _shaping(cfg: RunConfig) -> dict[str, Any]:
    """What shapes every record of the run: the data and the model."""
    d = cfg.to_dict()
    return {"dataset": d["dataset"], "model": d["model"] if cfg.dataset.layout not in (
        "synthetic", "stores") else None}


def _store_dir(cfg: RunConfig) -> Path:
    label = cfg.dataset.label
    if cfg.dataset.layout not in ("synthetic", "stores"):
        label += f"-{cfg.model.name}"
    if cfg.dataset.layout == "synthetic" and cfg.dataset.latent:
        # another generator is another store (the isotropic one keeps its old folder)
        import hashlib

        ds = cfg.dataset
        key = json.dumps([ds.n_train, ds.n_val, ds.dim, ds.classes, ds.generator],
                         sort_keys=True)
        label += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return Path(cfg.work_dir) / "stores" / label


def _subset_store(src: EmbeddingStore, dst: Path, fraction: float, seed: int) -> Path:
    """A store holding a seeded stratified ``fraction`` of ``src``'s rows (resumable)."""
    from ..data.splits import make_splits

    if (dst / "store.json").exists():
        st = EmbeddingStore(dst)
        if st.metadata.get("subset_of", {}).get("rows") == len(src) and \
                st.info.get("complete"):
            return dst
    rows = make_splits(src.labels(), {"keep": fraction, "rest": 1 - fraction}, seed)["keep"]
    meta = {**src.metadata, "subset_of": {"store": str(src.root), "rows": len(src),
                                          "fraction": fraction, "seed": seed}}
    with ShardWriter(dst, dim=src.dim, dtype=src.dtype, classes=src.classes,
                     normalized=src.normalized, metadata=meta, fsync=False) as w:
        for a in range(0, rows.size, 65_536):
            b = src.take(rows[a:a + 65_536])
            new = ~w.contains(b.ids)
            if new.any():
                w.append(b.embeddings[new], b.labels[new], b.ids[new],
                         paths=None if b.paths is None else
                         [p for p, keep in zip(b.paths, new, strict=True) if keep])
        w.set_info("complete", True)
    return dst


def prepare_data(cfg: RunConfig) -> tuple[Path, Path, list[dict[str, Any]]]:
    """(train store, val store, embed records) for the run, made if missing."""
    ds = cfg.dataset
    base = _store_dir(cfg)
    embed_records: list[dict[str, Any]] = []
    if ds.layout == "stores":
        train, val = Path(ds.train_store), Path(ds.val_store)  # type: ignore[arg-type]
    elif ds.layout == "synthetic":
        from ..data.synthetic import write_synthetic_store

        train, val = base / "train", base / "val"
        if dist.is_main():
            for path, n, split in ((train, ds.n_train, 0), (val, ds.n_val, 1)):
                write_synthetic_store(path, n, ds.dim, ds.classes, split=split,
                                      fsync=False, **ds.generator)
        dist.barrier()
    else:
        train, val, embed_records = _embed(cfg, base)
    if ds.fraction < 1:
        sub = base.parent / f"{base.name}-{round(100 * ds.fraction)}pct-seed{ds.seed}"
        if dist.is_main() and ds.layout in ("synthetic", "stores"):
            _subset_store(EmbeddingStore(train), sub / "train", ds.fraction, ds.seed)
        dist.barrier()
        if ds.layout in ("synthetic", "stores"):
            train = sub / "train"
    return train, val, embed_records


def _embed(cfg: RunConfig, base: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Embed the train (or its fraction) and val splits; one record per split."""
    from ..data import make_dataset
    from ..data.splits import make_splits
    from ..embed import Embedder, _Slice, embed_distributed

    ds, m = cfg.dataset, cfg.model
    device = str(dist.device_for_rank(cfg.devices[0]))
    emb = Embedder(m.name, checkpoint=m.checkpoint, device=device, img_size=m.img_size,
                   crop_pct=m.crop_pct, interpolation=m.interpolation, amp=m.amp)
    options = {"label_file": ds.label_file} if ds.label_file else {}
    records = []
    paths = {}
    for split_name, split in (("train", ds.train_split), ("val", ds.val_split)):
        data = make_dataset(ds.layout, ds.root, split, **options)
        if split_name == "train" and ds.fraction < 1:
            rows = make_splits(np.asarray(data.labels), {"keep": ds.fraction,
                                                          "rest": 1 - ds.fraction},
                               ds.seed)["keep"]
            data = _Slice(data, rows)
        root = base / split_name
        meta = {**emb.metadata(), "dataset": ds.layout, "root": str(ds.root),
                "split": split, "fraction": ds.fraction if split_name == "train" else 1.0}
        writer = {"dim": emb.dim, "dtype": m.dtype, "classes": getattr(data, "classes", None),
                  "normalized": True, "metadata": meta, "fsync": False}
        phases = Phases()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = phases.begin("embed")
        if dist.world_size() > 1:
            embed_distributed(emb, data, root, writer_kwargs=writer, batch_size=m.batch_size,
                              num_workers=m.workers, progress=None)
            stats = {"images": float(len(data)), "skipped": 0.0}
        else:
            with ShardWriter(root, **writer) as w:
                stats = emb.embed_dataset(data, w, batch_size=m.batch_size,
                                          num_workers=m.workers, progress=None)
        phases.end("embed", t0)
        summary = phases.summary({"embed": int(stats["images"])})
        if torch is not None and torch.cuda.is_available() and device.startswith("cuda"):
            summary["embed"]["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        paths[split_name] = root
        if stats["images"] > 0:  # nothing embedded now: the store was complete already
            store = EmbeddingStore(root)
            cell = {"dataset": ds.label, "device": device, "classifier": "embed",
                    "index": None, "factory": None, "params": {"split": split_name}}
            records.append({
                "schema": SCHEMA_VERSION, "run": cfg.name, "cell": cell,
                "key": cell_key(cell, _shaping(cfg)), "phases": summary,
                "index_bytes": None, "accuracy": {}, "recall": {},
                "embed": {"images_now": int(stats["images"]),
                          "reused": int(stats.get("skipped", 0)),
                          "unreadable": len(stats.get("unreadable", [])),
                          "model": m.name, "weights": emb.weights},
                "sizes": {"n_train": len(store), "n_val": 0, "dim": store.dim,
                          "classes": len(store.classes or [])},
                "provenance": environment(), "config": cfg.to_dict(),
                "world_size": dist.world_size(), "fresh_process": False})
    return paths["train"], paths["val"], records


# --------------------------------------------------------------------------- cells


def plan_cells(cfg: RunConfig, train: Path, val: Path) -> list[dict[str, Any]]:
    """Every cell of the run, flat indexes first (they are the recall reference), each
    with the keys of the records it will write."""
    shaping = _shaping(cfg)
    cells = []
    work = Path(cfg.work_dir)
    common = {"config": cfg.to_dict(), "train": str(train), "val": str(val),
              "dataset": cfg.dataset.label, "world_size": dist.world_size(),
              "shaping": shaping}
    for device in cfg.devices:
        dev = str(device)
        if cfg.knn is not None:
            order = sorted(cfg.indexes, key=lambda ix: ix.index_spec().kind != "flat")
            for ix in order:
                keys = []
                for params in ix.search:
                    cell = {"dataset": cfg.dataset.label, "device": dev, "index": ix.name,
                            "params": params, "classifier": "knn"}
                    keys.append(cell_key(cell, {**shaping, "index": json.loads(json.dumps(
                        ix.__dict__, default=list)), "knn": cfg.to_dict()["knn"]}))
                cells.append({**common, "kind": "knn", "device": dev, "index": ix.name,
                              "keys": keys, "reference_dir": str(
                                  work / "reference" / _safe(cfg.dataset.label)),
                              "flat": ix.index_spec().kind == "flat",
                              "shaping": {**shaping, "index": json.loads(json.dumps(
                                  ix.__dict__, default=list)), "knn": cfg.to_dict()["knn"]}})
        if parse_device(dev).ranks:
            continue  # prototypes and the linear probe run on a device, not sharded
        if cfg.prototype:
            cell = {"dataset": cfg.dataset.label, "device": dev, "index": None, "params": {},
                    "classifier": "prototype"}
            cells.append({**common, "kind": "prototype", "device": dev, "index": None,
                          "keys": [cell_key(cell, shaping)], "flat": False})
        if cfg.linear is not None:
            lin = {**shaping, "linear": cfg.to_dict()["linear"]}
            cell = {"dataset": cfg.dataset.label, "device": dev, "index": None, "params": {},
                    "classifier": "linear"}
            cells.append({**common, "kind": "linear", "device": dev, "index": None,
                          "keys": [cell_key(cell, lin)], "flat": False, "shaping": lin})
    return cells


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def _run_fresh(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a cell in a new Python process (its peak memory is its own)."""
    with tempfile.TemporaryDirectory(prefix="faissclass-cell-") as tmp:
        sp, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        sp.write_text(json.dumps(spec))
        env = dict(os.environ)
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)  # the child is a single process, not a rank
        # The child's stderr is the caller's: its warnings and errors show as they come.
        proc = subprocess.run([sys.executable, "-m", "faissclass.bench.cell", str(sp),
                               str(out)], env=env, stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"cell {spec['kind']} {spec.get('index') or ''} on "
                               f"{spec['device']} failed (exit {proc.returncode}; its error "
                               "is printed above)")
        return json.loads(out.read_text())


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns a summary (cells run, skipped,
    records path). Only rank 0 writes records."""
    train, val, embed_records = prepare_data(cfg)
    check_compatible(EmbeddingStore(train), EmbeddingStore(val),
                     allow_mismatch=cfg.allow_mismatch)
    rank, world = dist.rank(), dist.world_size()
    done = set(dist.broadcast_object(sorted(done_keys(cfg.records)) if dist.is_main()
                                     else None))
    if dist.is_main():
        for rec in embed_records:
            if rec["key"] not in done:
                append_record(cfg.records, rec)
    cells = plan_cells(cfg, train, val)
    todo = [c for c in cells if not all(k in done for k in c["keys"])]
    ran = 0
    # Flat cells first everywhere: the approximate cells measure recall against them.
    for stage in (True, False):
        stage_cells = [x for x in todo if x["flat"] == stage]
        # Cells on a "ranks:..." device run on every rank together (a sharded index), in
        # this process (it belongs to the job's process group); rank 0 records them.
        for spec in [c for c in stage_cells if parse_device(c["device"]).ranks]:
            recs = run_cell({**spec, "fresh_process": False})
            ran += 1
            if dist.is_main():
                for r in recs:
                    append_record(cfg.records, r)
            dist.barrier()
        stage_cells = [c for c in stage_cells if not parse_device(c["device"]).ranks]
        mine = [c for i, c in enumerate(stage_cells) if i % world == rank]
        results = []
        for spec in mine:
            if world > 1 and spec["device"] != "cpu":
                spec = {**spec, "device": str(dist.device_for_rank(spec["device"]))}
            recs = _run_fresh(spec) if cfg.fresh_process else run_cell(spec)
            ran += 1
            if world == 1:
                for r in recs:
                    append_record(cfg.records, r)
            else:
                results += recs
        if world > 1:
            gathered = dist.gather_objects(results)
            if dist.is_main():
                for part in gathered or []:
                    for r in part:
                        append_record(cfg.records, r)
            dist.barrier()
    return {"records": cfg.records, "cells": len(cells), "ran": ran,
            "skipped": len(cells) - len(todo), "train": str(train), "val": str(val)}
