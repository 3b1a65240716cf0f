"""Embedding pipeline throughput against the model's own forward pass, and models side by side.

1. Throughput: images/s of ``Embedder.embed_dataset`` on real Fashion-MNIST images
   (uint8 -> PIL -> timm transform -> DataLoader -> forward -> L2 norm -> store)
   against the same model's forward on ready tensors of the same batch and size,
   alternating, median of --repeats. Target: pipeline >= 0.85x forward.
2. --models: top-1 of prototypes and kNN for several models through
   ``faissclass demo`` (same images, sizes from --train / --test).

    python benchmarks/bench_embed.py --images 512
    python benchmarks/bench_embed.py --images 256 --models tf_efficientnet_lite0 \\
        tf_efficientnet_lite1 tf_efficientnet_lite2 --train 3000 --test 1000

Writes a JSON record to benchmarks/out/ and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faissclass as fc
from faissclass.bench import environment, markdown_table, median, save_record
from faissclass.data import load_fashion_mnist

OUT_DIR = Path(__file__).resolve().parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    a = ap.parse_args()

    import torch

    from faissclass.embed import ArrayDataset, Embedder

    images, labels = load_fashion_mnist("train")
    images, labels = images[:a.images], labels[:a.images]
    emb = Embedder(a.model)
    size = emb.data_config["input_size"]
    x = torch.randn(a.batch_size, *size, generator=torch.Generator().manual_seed(0))
    n_batches = -(-a.images // a.batch_size)

    def forward() -> float:
        t = time.perf_counter()
        for _ in range(n_batches):
            emb.embed_batch(x)
        return a.images / (time.perf_counter() - t)

    def pipeline(workers: int) -> float:
        tmp = Path(tempfile.mkdtemp(prefix="bench_embed-"))
        try:
            with fc.ShardWriter(tmp / "s", dim=emb.dim, dtype="float16", fsync=False) as w:
                st = emb.embed_dataset(ArrayDataset(images, labels), w,
                                       batch_size=a.batch_size, num_workers=workers,
                                       progress=False)
            return st["images_per_s"]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    forward()  # warm-up
    rates: dict[str, list[float]] = {"forward": []}
    for w in a.workers:
        rates[f"pipeline, {w} workers"] = []
    for rep in range(a.repeats):
        keys = list(rates) if rep % 2 == 0 else list(rates)[::-1]
        for k in keys:
            rates[k].append(forward() if k == "forward" else pipeline(int(k.split(", ")[1][0])))
        print(f"repeat {rep + 1}/{a.repeats}", file=sys.stderr)
    fwd = median(rates["forward"])
    rows = [{"path": k, "images/s": median(v), "× forward": median(v) / fwd}
            for k, v in rates.items()]
    record = {"env": {**environment(), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()},
              "args": vars(a), "throughput": rows, "all_rates": rates}
    print(markdown_table(rows, [("path", "path"), ("images/s", "images/s"),
                                ("× forward", "× forward")]))

    if a.models:
        from faissclass.cli import main as cli

        acc_rows = []
        work = Path(tempfile.mkdtemp(prefix="bench_embed-models-"))
        for m in a.models:
            out = work / m
            cli(["demo", "--model", m, "--out", str(out), "--train", str(a.train),
                 "--test", str(a.test), "--quiet"])
            res = json.loads((out / "results.json").read_text())
            by = {(r["classifier"], r["index"]): r for r in res["results"]}
            acc_rows.append({
                "model": m, "dim": fc.EmbeddingStore(out / "emb" / "train").dim,
                "embed s": sum(s["seconds"] for s in res["embedding"].values()),
                "prototype top-1": by[("prototype", "Flat")]["top1"],
                "kNN flat top-1": by[("kNN k=20 softmax", "Flat")]["top1"],
                "kNN flat top-5": by[("kNN k=20 softmax", "Flat")]["top5"]})
        record["models"] = acc_rows
        print()
        print(markdown_table(acc_rows, [(k, k) for k in acc_rows[0]]))
        shutil.rmtree(work, ignore_errors=True)
    print(f"record: {save_record('bench_embed', record, OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
