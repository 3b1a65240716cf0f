"""Command line: ``faissclass embed | build | eval | predict | demo``.

Uses the public API only; prints results (the one place in faissclass that does).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    from sklearn.model_selection import train_test_split

    import faissclass as fc
    from faissclass.bench.evaluate import evaluate, write_results
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
                                                  progress=not args.quiet)
    train = fc.EmbeddingStore(out / "emb" / "train")
    test = fc.EmbeddingStore(out / "emb" / "test")
    embed_s = sum(s["seconds"] for s in stats.values())
    rows_out = evaluate(train, test, ["prototype", "knn"], ["flat", "ivf", "hnsw"], k=20,
                        embed_s=embed_s)
    head = (f"Fashion-MNIST, {args.model} ({embedder.weights}), {len(train)} train / "
            f"{len(test)} test images; embedded {int(sum(s['images'] for s in stats.values()))} "
            f"now, reused {int(sum(s['skipped'] for s in stats.values()))} from {out / 'emb'}")
    md = write_results(out, head, rows_out, {"model": args.model, "weights": embedder.weights,
                                             "train": len(train), "test": len(test),
                                             "embedding": stats})
    _print_results(md, out)
    return 0


def _print_results(md: str, out: Path) -> None:
    print(md)
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")


def _effective_split(args: argparse.Namespace) -> str | None:
    from faissclass.data import LAYOUTS

    splits = LAYOUTS[args.dataset].splits
    return args.split if args.split is not None else (splits[0] if splits else None)


def _dataset(args: argparse.Namespace) -> Any:
    from faissclass.data import make_dataset

    options = {}
    if args.dataset == "label-file":
        options = {"label_file": args.label_file, "classes_from": args.classes_from}
    return make_dataset(args.dataset, args.root, args.split, **options)


def _embed(args: argparse.Namespace) -> int:
    import faissclass as fc
    from faissclass.embed import Embedder

    ds = _dataset(args)
    emb = Embedder(args.model, checkpoint=args.checkpoint, device=args.device,
                   img_size=args.img_size, amp=args.amp)
    meta = {**emb.metadata(), "dataset": args.dataset,
            "root": str(args.root), "split": _effective_split(args)}
    with fc.ShardWriter(args.out, dim=emb.dim, dtype=args.dtype, classes=ds.classes,
                        normalized=True, metadata=meta) as w:
        st = emb.embed_dataset(ds, w, batch_size=args.batch_size, num_workers=args.workers,
                               progress=not args.quiet)
    print(f"{args.out}: {len(fc.EmbeddingStore(args.out))} rows; embedded {int(st['images'])} "
          f"now ({st['images_per_s']:.0f} images/s), {int(st['skipped'])} already stored, "
          f"{len(st['unreadable'])} unreadable")
    return 0


def _build(args: argparse.Namespace) -> int:
    import faissclass as fc

    store = fc.EmbeddingStore(args.store)
    spec = (fc.IndexSpec(factory=args.factory, metric=args.metric) if args.factory else
            fc.IndexSpec(kind=args.kind, nlist=args.nlist, storage=args.storage, m=args.m,
                         M=args.M, metric=args.metric))
    t = time.perf_counter()
    index = fc.VectorIndex.build(store, spec, device=args.device, seed=args.seed,
                                 train_size=args.train_size, progress=not args.quiet)
    index.save(args.out, overwrite=args.overwrite)
    print(f"{args.out}: {spec.factory_string(store.dim)}, {index.ntotal} vectors, "
          f"{index.memory_bytes / 2**20:.1f} MB, built in {time.perf_counter() - t:.1f} s")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import faissclass as fc

    train, test = fc.EmbeddingStore(args.train), fc.EmbeddingStore(args.test)
    from faissclass.bench.evaluate import evaluate, write_results

    rows = evaluate(train, test, args.classifiers, args.kinds, k=args.k)
    md = write_results(Path(args.out),
                       f"{args.train} ({len(train)}) -> {args.test} ({len(test)})",
                       rows, {"train": str(args.train), "test": str(args.test)})
    _print_results(md, Path(args.out))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    import faissclass as fc
    from faissclass.data import ArrayDataset
    from faissclass.embed import Embedder

    store = fc.EmbeddingStore(args.train)
    meta = store.metadata
    if "model" not in meta:
        raise SystemExit(f"{args.train} records no model in its metadata; embed it with "
                         "`faissclass embed`")
    dc = meta.get("data_config", {})
    emb = Embedder(meta["model"], checkpoint=args.checkpoint, device=args.device,
                   img_size=dc.get("input_size", [None, None])[-1],
                   crop_pct=dc.get("crop_pct"), interpolation=dc.get("interpolation"),
                   mean=dc.get("mean"), std=dc.get("std"))
    from PIL import Image

    imgs = []
    for p in args.images:
        with Image.open(p) as im:
            imgs.append(im.convert("RGB"))
    ds = ArrayDataset(imgs, np.zeros(len(imgs)), paths=[str(p) for p in args.images])
    import torch

    Q = emb.embed_batch(torch.stack([emb.transform(ds.image(i)) for i in range(len(ds))]))
    knn = fc.KNNClassifier(k=args.k).fit(store)
    labels, scores = knn.predict_topk(Q, 1)
    _, _, nn_ids = knn.kneighbors(Q, args.neighbours)
    id_to_row = {int(i): r for r, i in enumerate(store.ids())}
    for i, p in enumerate(args.images):
        near = store.take([id_to_row[int(j)] for j in nn_ids[i] if j >= 0])
        print(f"{p}: {labels[i, 0]} ({scores[i, 0]:.3f})")
        for path in near.paths or []:
            print(f"    {path}")
    return 0


def _bench_run(args: argparse.Namespace) -> int:
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
    from faissclass import distributed

    distributed.init_from_env()  # under torchrun / srun: join the job's process group
    summary = run(cfg)

    if distributed.is_main():
        print(f"{summary['ran']} cell(s) run, {summary['skipped']} already recorded; records: "
              f"{summary['records']}")
    return 0


def _bench_report(args: argparse.Namespace) -> int:
    from faissclass.bench.records import load_records
    from faissclass.bench.report import render_report

    out = render_report(load_records(args.records), args.out, plots=not args.no_plots)
    print(out["tables"]["main"])
    print(f"\nwritten: {out['markdown']}" + "".join(f", {p}" for p in out["plots"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faissclass",
                                description="Classification and similarity search on frozen "
                                            "embeddings.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST (Debian package "
                                    "dataset-fashion-mnist) with offline tf_efficientnet_lite0",
                       description="Embed a train and a test split of Fashion-MNIST, build flat, "
                                   "IVF and HNSW indexes, classify by prototypes and kNN, and "
                                   "print time, memory and top-1/top-5 per combination. A "
                                   "second run reuses the stored embeddings.")
    d.add_argument("--out", default="faissclass-demo", help="output directory")
    d.add_argument("--train", type=int, default=3000, help="training images (stratified)")
    d.add_argument("--test", type=int, default=1000, help="test images (stratified)")
    d.add_argument("--all", action="store_true", help="all 60,000 + 10,000 images")
    d.add_argument("--model", default="tf_efficientnet_lite0")
    d.add_argument("--device", default="cpu")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)

    e = sub.add_parser("embed", help="images -> an embedding store (resumable)",
                       description="Embed a dataset with any timm model into a store. "
                                   "Rerunning with the same arguments resumes.")
    e.add_argument("--dataset", required=True,
                   choices=["imagefolder", "tiny-imagenet", "label-file", "fashion-mnist"])
    e.add_argument("--root", help="dataset root (fashion-mnist: the Debian package's folder)")
    e.add_argument("--split", default=None,
                   help="train | val | test (layout-dependent; default: the layout's own, and "
                        "for imagefolder the --root folder itself)")
    e.add_argument("--label-file", help="label-file datasets: '<file> <label>' per line")
    e.add_argument("--classes-from", help="label-file datasets: folder whose sub-folders "
                                          "name the classes (e.g. ImageNet's train)")
    e.add_argument("--out", required=True, help="store directory")
    e.add_argument("--model", default="tf_efficientnet_lite0")
    e.add_argument("--checkpoint", help="local weights file")
    e.add_argument("--img-size", type=int)
    e.add_argument("--amp", choices=["bf16", "fp16"])
    e.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_embed)

    b = sub.add_parser("build", help="store -> a saved index",
                       description="Build a FAISS index from a store and save it.")
    b.add_argument("--store", required=True)
    b.add_argument("--out", required=True, help="index directory")
    b.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    b.add_argument("--factory", help="a raw FAISS factory string instead of --kind")
    b.add_argument("--metric", default="ip", choices=["ip", "l2"])
    b.add_argument("--nlist", type=int, default=1024)
    b.add_argument("--storage", default="flat", choices=["flat", "sq8", "pq"])
    b.add_argument("--m", type=int, help="PQ sub-quantisers")
    b.add_argument("--M", type=int, default=32, help="HNSW links per node")
    b.add_argument("--train-size", type=int)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an index previously saved at --out (never anything else)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_build)

    v = sub.add_parser("eval", help="train + test stores -> accuracy table",
                       description="Fit classifiers on the train store over each index kind and "
                                   "score the test store: time, memory, top-1/top-5.")
    v.add_argument("--train", required=True)
    v.add_argument("--test", required=True)
    v.add_argument("--classifiers", nargs="+", default=["prototype", "knn"],
                   choices=["prototype", "knn"])
    v.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"],
                   choices=["flat", "ivf", "hnsw"])
    v.add_argument("--k", type=int, default=20)
    v.add_argument("--out", default="faissclass-eval")
    v.set_defaults(func=_eval)

    r = sub.add_parser("predict", help="image files -> label, score and nearest stored images",
                       description="Embed images with the model recorded in the train store "
                                   "and classify them by kNN over it.")
    r.add_argument("images", nargs="+")
    r.add_argument("--train", required=True, help="train store (embedded by faissclass)")
    r.add_argument("--k", type=int, default=20)
    r.add_argument("--neighbours", type=int, default=3)
    r.add_argument("--checkpoint", help="local weights file, if the store's model needs one")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_predict)
    bench = sub.add_parser("bench", help="the benchmark suite: run cells, report records",
                           description="Run a benchmark config (records appended to a "
                                       "JSONL file; a rerun skips recorded cells) or render a "
                                       "report from records.")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    br = bsub.add_parser("run", help="run a benchmark config",
                         description="Embed (or generate) the data, build each index on each "
                                     "device, and record time, memory and accuracy per cell.")
    br.add_argument("config", nargs="?", help="TOML config (default: the built-in defaults)")
    br.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set repeats=5 "
                         "--set 'devices=[\"cpu\",\"cuda\"]' (repeatable)")
    br.add_argument("--records", help="JSONL file of records (overrides the config)")
    br.add_argument("--work-dir", help="stores and caches (overrides the config)")
    br.add_argument("--allow-mismatch", action="store_true",
                    help="run even if train and val stores were embedded differently")
    br.set_defaults(func=_bench_run)
    bp = bsub.add_parser("report", help="records -> Markdown tables and PNG plots",
                         description="Render the study-style report from any JSONL records.")
    bp.add_argument("records", nargs="+", help="JSONL record files")
    bp.add_argument("--out", default="bench-report", help="output directory")
    bp.add_argument("--no-plots", action="store_true", help="tables only")
    bp.set_defaults(func=_bench_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
