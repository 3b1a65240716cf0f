"""Command line: ``faissclass demo`` (more subcommands arrive with the pipeline).

Uses the public API only; prints results (the one place in faissclass that does).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    from sklearn.model_selection import train_test_split

    import faissclass as fc
    from faissclass.data import FASHION_MNIST_CLASSES, ArrayDataset, load_fashion_mnist
    from faissclass.embed import Embedder
    from faissclass.metrics import topk_accuracy

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
    Q, yq_codes, _ = test.load()
    names = np.asarray(FASHION_MNIST_CLASSES)
    yq = names[yq_codes]
    n = len(train)
    # FAISS: 4·√n cells, and at least 39 training points per cell.
    nlist = max(4, 2 ** int(math.log2(max(4.0, min(4 * math.sqrt(n), n / 39)))))
    embed_s = sum(s["seconds"] for s in stats.values())
    rows_out = []
    combos = [
        ("prototype", "Flat", fc.PrototypeClassifier(), None),
        ("kNN k=20 softmax", "Flat", fc.KNNClassifier(k=20), None),
        ("kNN k=20 softmax", f"IVF{nlist},Flat nprobe=8",
         fc.KNNClassifier(k=20, index=fc.IndexSpec(kind="ivf", nlist=nlist),
                          search_params=fc.SearchParams(nprobe=8)), None),
        ("kNN k=20 softmax", "HNSW32 ef=64",
         fc.KNNClassifier(k=20, index=fc.IndexSpec(kind="hnsw", M=32),
                          search_params=fc.SearchParams(ef_search=64)), None),
    ]
    for clf_name, index_name, clf, _ in combos:
        t = time.perf_counter()
        clf.fit(train)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        top5, _ = clf.predict_topk(Q, 5)
        search_s = time.perf_counter() - t
        rows_out.append({
            "classifier": clf_name, "index": index_name,
            "embed_s": round(embed_s, 1), "build_s": round(build_s, 3),
            "search_s": round(search_s, 3),
            "index_MB": round(clf.index_.memory_bytes / 2**20, 2),
            "top1": round(topk_accuracy(yq, top5, 1), 4),
            "top5": round(topk_accuracy(yq, top5, 5), 4)})
    result = {"model": args.model, "weights": embedder.weights, "train": len(train),
              "test": len(test), "embedding": stats, "results": rows_out}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    cols = ["classifier", "index", "embed_s", "build_s", "search_s", "index_MB", "top1", "top5"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows_out]
    head = (f"Fashion-MNIST, {args.model} ({embedder.weights}), {len(train)} train / "
            f"{len(test)} test images; embedded {int(sum(s['images'] for s in stats.values()))} "
            f"now, reused {int(sum(s['skipped'] for s in stats.values()))} from {out / 'emb'}")
    (out / "results.md").write_text(head + "\n\n" + "\n".join(md) + "\n")
    print(head + "\n")
    print("\n".join(md))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
