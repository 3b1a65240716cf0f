"""What each subcommand does: library calls, then printing (the CLI is the one place that
prints)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_report", "bench_run", "build", "demo", "embed", "evaluate", "predict"]


def _print_results(md: str, out: Path) -> None:
    print(md)
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")


# --------------------------------------------------------------------------- demo


def demo(args: argparse.Namespace) -> int:
    import numpy as np
    from sklearn.model_selection import train_test_split

    import faissclass as fc
    from faissclass.bench.evaluate import evaluate as run_eval
    from faissclass.bench.evaluate import write_results
    from faissclass.data import FASHION_MNIST_CLASSES, ArrayDataset, load_fashion_mnist
    from faissclass.embed import Embedder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
    sizes = {"train": None if args.all else args.train, "test": None if args.all else args.test}
    embedder = Embedder(args.model, device=args.device)
    stats: dict[str, Any] = {}
    for split, (images, labels) in splits.items():
        rows = np.arange(len(labels))
        if sizes[split] is not None and sizes[split] < len(labels):
            rows, _ = train_test_split(rows, train_size=sizes[split], stratify=labels,
                                       random_state=args.seed)
            rows = np.sort(rows)
        ds = ArrayDataset(images[rows], labels[rows], ids=rows,
                          paths=[f"fashion-mnist/{split}/{i}" for i in rows])
        with fc.ShardWriter(out / "emb" / split, dim=embedder.dim, dtype="float16",
                            classes=FASHION_MNIST_CLASSES, normalized=True,
                            metadata={**embedder.metadata(), "dataset": "fashion-mnist",
                                      "split": split}) as w:
            stats[split] = embedder.embed_dataset(ds, w, batch_size=args.batch_size,
                                                  num_workers=args.workers,
                                                  progress=False if args.quiet else None)
    train = fc.EmbeddingStore(out / "emb" / "train")
    test = fc.EmbeddingStore(out / "emb" / "test")
    embed_s = sum(s["seconds"] for s in stats.values())
    rows_out = run_eval(train, test, ["prototype", "knn"], ["flat", "ivf", "hnsw"], k=20,
                        embed_s=embed_s)
    head = (f"Fashion-MNIST, {args.model} ({embedder.weights}), {len(train)} train / "
            f"{len(test)} test images; embedded {int(sum(s['images'] for s in stats.values()))} "
            f"now, reused {int(sum(s['skipped'] for s in stats.values()))} from {out / 'emb'}")
    md = write_results(out, head, rows_out, {"model": args.model, "weights": embedder.weights,
                                             "train": len(train), "test": len(test),
                                             "embedding": stats})
    _print_results(md, out)
    return 0


# --------------------------------------------------------------------------- embed, build


def _effective_split(args: argparse.Namespace) -> str | None:
    from faissclass.data import LAYOUTS

    splits = LAYOUTS[args.dataset].splits
    return args.split if args.split is not None else (splits[0] if splits else None)


def embed(args: argparse.Namespace) -> int:
    import faissclass as fc
    from faissclass.data import make_dataset

    if args.root is None and args.dataset != "fashion-mnist":
        raise ValueError(f"--root is required for --dataset {args.dataset} (the folder the "
                         "images are in)")
    options = {}
    if args.dataset == "label-file":
        options = {"label_file": args.label_file, "classes_from": args.classes_from}
    ds = make_dataset(args.dataset, args.root, args.split, **options)
    from faissclass.embed import Embedder

    emb = Embedder(args.model, checkpoint=args.checkpoint, device=args.device,
                   img_size=args.img_size, amp=args.amp)
    root = str(Path(args.root).resolve()) if args.root else None
    meta = {**emb.metadata(), "dataset": args.dataset, "root": root,
            "split": _effective_split(args)}
    with fc.ShardWriter(args.out, dim=emb.dim, dtype=args.dtype, classes=ds.classes,
                        normalized=True, metadata=meta) as w:
        st = emb.embed_dataset(ds, w, batch_size=args.batch_size, num_workers=args.workers,
                               progress=False if args.quiet else None)
    print(f"{args.out}: {len(fc.EmbeddingStore(args.out))} rows; embedded {int(st['images'])} "
          f"now ({st['images_per_s']:.0f} images/s), {int(st['skipped'])} already stored, "
          f"{len(st['unreadable'])} unreadable")
    return 0


def build(args: argparse.Namespace) -> int:
    import faissclass as fc

    store = fc.EmbeddingStore(args.store)
    fc.VectorIndex.check_save_path(args.out, overwrite=args.overwrite)  # before the build
    spec = (fc.IndexSpec(factory=args.factory, metric=args.metric) if args.factory else
            fc.IndexSpec(kind=args.kind, nlist=args.nlist, storage=args.storage, m=args.m,
                         M=args.M, metric=args.metric))
    t = time.perf_counter()
    index = fc.VectorIndex.build(store, spec, device=args.device, seed=args.seed,
                                 train_size=args.train_size, progress=False if args.quiet else None)
    index.save(args.out, overwrite=args.overwrite)
    print(f"{args.out}: {spec.factory_string(store.dim)}, {index.ntotal} vectors, "
          f"{index.memory_bytes / 2**20:.1f} MB, built in {time.perf_counter() - t:.1f} s")
    return 0


# --------------------------------------------------------------------------- eval, predict


def _load_index_of(path: str, store: Any) -> Any:
    """A saved index, checked to hold the store's vectors (dim, count and metric)."""
    import faissclass as fc

    index = fc.VectorIndex.load(path)
    if index.dim != store.dim or index.ntotal != len(store):
        raise ValueError(f"{path}: an index of {index.ntotal} vectors of dim {index.dim}, but "
                         f"{store.root} holds {len(store)} of dim {store.dim}; build it from "
                         f"that store (faissclass build --store {store.root})")
    return index


def evaluate(args: argparse.Namespace) -> int:
    import faissclass as fc
    from faissclass.bench.evaluate import evaluate as run_eval
    from faissclass.bench.evaluate import write_results

    train, test = fc.EmbeddingStore(args.train), fc.EmbeddingStore(args.test)
    fc.check_compatible(train, test, allow_mismatch=args.allow_mismatch)
    indexes = [(Path(d).name, _load_index_of(d, train)) for d in args.index or []]
    sweep = [fc.SearchParams(nprobe=n) for n in args.nprobe or []] + \
        [fc.SearchParams(ef_search=e) for e in args.ef_search or []]
    kinds = args.kinds if args.kinds is not None else ([] if indexes else
                                                       ["flat", "ivf", "hnsw"])
    from faissclass.bench.evaluate import _applies

    for opt, values, kind in (("--nprobe", args.nprobe, "ivf"),
                              ("--ef-search", args.ef_search, "hnsw")):
        probe = fc.SearchParams(nprobe=1) if kind == "ivf" else fc.SearchParams(ef_search=1)
        if values and kind not in kinds and not any(_applies(ix, probe) for _, ix in indexes):
            raise ValueError(f"{opt} sweeps {'IVF' if kind == 'ivf' else 'HNSW'} indexes, and "
                             f"none is evaluated (--kinds {' '.join(kinds) or '-'}; "
                             f"--index {' '.join(d for d in args.index or []) or '-'})")
    rows = run_eval(train, test, args.classifiers, kinds, k=list(args.k), indexes=indexes,
                    sweep=sweep or None, allow_mismatch=args.allow_mismatch)
    md = write_results(Path(args.out),
                       f"{args.train} ({len(train)}) -> {args.test} ({len(test)})",
                       rows, {"train": str(args.train), "test": str(args.test)})
    _print_results(md, Path(args.out))
    return 0


def predict(args: argparse.Namespace) -> int:
    import numpy as np

    import faissclass as fc
    from faissclass.data import to_rgb
    from faissclass.embed import Embedder

    store = fc.EmbeddingStore(args.train)
    meta = store.metadata
    if "model" not in meta:
        raise ValueError(f"{args.train} records no model in its metadata: embed it with "
                         "`faissclass embed` (predict must use the same model)")
    index = _load_index_of(args.index, store) if args.index else None
    from PIL import Image

    imgs = []
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such image file")
        try:
            with Image.open(p) as im:
                im.load()
                imgs.append(to_rgb(im))
        except Exception as exc:  # one line for the user: which file and why
            raise OSError(f"{p}: not an image this can read ({type(exc).__name__}: "
                          f"{exc})") from exc
    dc = meta.get("data_config", {})
    emb = Embedder(meta["model"], checkpoint=args.checkpoint, device=args.device,
                   img_size=(dc.get("input_size") or [None])[-1],
                   crop_pct=dc.get("crop_pct"), interpolation=dc.get("interpolation"),
                   mean=dc.get("mean"), std=dc.get("std"))
    if emb.dim != store.dim:
        raise ValueError(f"{meta['model']} gives embeddings of dim {emb.dim}, the store holds "
                         f"dim {store.dim}")
    import torch

    Q = emb.embed_batch(torch.stack([emb.transform(im) for im in imgs]))
    k = min(args.k, len(store))
    knn = fc.KNNClassifier(k=k, index=index).fit(store)
    proba = knn.predict_proba(Q)
    top = min(args.top, proba.shape[1])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top]
    n_nb = min(args.neighbours, len(store))
    nb_dist, _, nb_ids = knn.kneighbors(Q, n_nb) if n_nb else (None, None, None)
    root = Path(meta["root"]) if meta.get("root") else None
    for i, path in enumerate(args.images):
        classes = [(str(knn.classes_[j]), float(proba[i, j])) for j in order[i]]
        best, p_best = classes[0]
        label = best if p_best >= args.min_prob else "unknown"
        neighbours = []
        if n_nb:
            rows = store.rows_of(nb_ids[i])
            got = store.take(rows[rows >= 0])
            names = store.classes
            for j, (nid, sim) in enumerate(zip(nb_ids[i][rows >= 0], nb_dist[i][rows >= 0],
                                               strict=True)):
                src = got.paths[j] if got.paths else None
                if src is not None and root is not None and not Path(src).is_absolute():
                    src = str(root / src)
                cls = names[got.labels[j]] if names else int(got.labels[j])
                neighbours.append({"id": int(nid), "similarity": float(sim), "class": cls,
                                   "path": src})
        if args.json:
            print(json.dumps({"image": str(path), "label": label, "probability": p_best,
                              "classes": [{"label": c, "probability": q} for c, q in classes],
                              "neighbours": neighbours}))
            continue
        why = "" if label != "unknown" else f" (best {best}, below --min-prob {args.min_prob})"
        print(f"{path}: {label}  p={p_best:.2f}{why}")
        if len(classes) > 1:
            print("    also: " + ", ".join(f"{c} {q:.2f}" for c, q in classes[1:]))
        for nb in neighbours:
            print(f"    {nb['similarity']:.3f}  {nb['class']}  {nb['path'] or nb['id']}")
    return 0


# --------------------------------------------------------------------------- bench


def bench_run(args: argparse.Namespace) -> int:
    from faissclass import distributed
    from faissclass.bench.config import load_config
    from faissclass.bench.runner import run

    overrides = list(args.set or [])
    if args.records:
        overrides.append(f"records={json.dumps(args.records)}")
    if args.work_dir:
        overrides.append(f"work_dir={json.dumps(args.work_dir)}")
    if args.allow_mismatch:
        overrides.append("allow_mismatch=true")
    cfg = load_config(args.config, overrides)
    distributed.init_from_env()  # under torchrun / srun: join the job's process group
    summary = run(cfg)
    if distributed.is_main():
        print(f"{summary['ran']} cell(s) run, {summary['skipped']} already recorded; records: "
              f"{summary['records']}")
    return 0


def bench_report(args: argparse.Namespace) -> int:
    from faissclass.bench.records import load_records
    from faissclass.bench.report import render_report

    out = render_report(load_records(args.records), args.out, plots=not args.no_plots)
    print(out["tables"]["main"])
    print(f"\nwritten: {out['markdown']}" + "".join(f", {p}" for p in out["plots"]))
    return 0
