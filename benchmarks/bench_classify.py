"""Classifier predict throughput against raw faiss, the DINO loop and scikit-learn.

On seeded clustered embeddings (L2-normalised), in one process, alternating the
methods in every repeat (median of --repeats after a warm-up):

- KNNClassifier(k, softmax) predict       vs  raw faiss.IndexFlatIP search alone (no vote)
- torch.mm + topk + softmax vote (DINO's eval_knn loop, on CPU tensors), if torch is installed
- sklearn KNeighborsClassifier(algorithm="brute", metric="cosine").predict
- PrototypeClassifier predict             vs  sklearn NearestCentroid.predict

    python benchmarks/bench_classify.py       # 100,000 x 384, 200 classes, 10,000 queries, k=20

Writes a JSON record to benchmarks/out/ and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import faissclass as fc
from faissclass.bench import environment, markdown_table, median, save_record
from faissclass.data import clustered

OUT_DIR = Path(__file__).resolve().parent / "out"


def data(n: int, nq: int, dim: int, classes: int, noise: float, seed: int):
    return clustered(n, dim, classes, noise=noise, seed=seed, n_queries=nq, query_labels=True)


def dino_knn(train: object, train_labels: object, q: np.ndarray, k: int, T: float,
             classes: int, torch: object, chunk: int = 1000) -> np.ndarray:
    """DINO eval_knn.py's knn_classifier loop (CPU tensors), returns predictions."""
    out = []
    features = torch.from_numpy(q)
    for a in range(0, q.shape[0], chunk):
        f = features[a:a + chunk]
        sim = torch.mm(f, train)
        d, idx = sim.topk(k, largest=True, sorted=True)
        cand = torch.gather(train_labels.view(1, -1).expand(f.shape[0], -1), 1, idx)
        one_hot = torch.zeros(f.shape[0] * k, classes)
        one_hot.scatter_(1, cand.view(-1, 1), 1)
        w = (d / T).exp_()
        probs = torch.sum(one_hot.view(f.shape[0], -1, classes) * w.view(f.shape[0], -1, 1), 1)
        out.append(probs.argmax(1).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--noise", type=float, default=3.0)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import faiss
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

    X, y, Q, yq = data(a.n, a.nq, a.dim, a.classes, a.noise, a.seed)
    knn = fc.KNNClassifier(k=a.k, weights="softmax", temperature=0.07).fit(X, y)
    proto = fc.PrototypeClassifier().fit(X, y)
    raw = faiss.IndexFlatIP(a.dim)
    raw.add(X)
    skn = KNeighborsClassifier(n_neighbors=a.k, algorithm="brute", metric="cosine").fit(X, y)
    snc = NearestCentroid().fit(X, y)
    methods = {
        "faissclass KNN predict": lambda: knn.predict(Q),
        "raw faiss search (no vote)": lambda: raw.search(Q, a.k),
        "sklearn KNN brute cosine": lambda: skn.predict(Q),
        "faissclass prototype predict": lambda: proto.predict(Q),
        "sklearn NearestCentroid": lambda: snc.predict(Q),
    }
    try:
        import torch

        tX, ty = torch.from_numpy(X).t().contiguous(), torch.from_numpy(y)
        methods["torch.mm + topk (DINO loop)"] = lambda: dino_knn(tX, ty, Q, a.k, 0.07,
                                                                  a.classes, torch)
        torch_info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    except ImportError:
        torch_info = {"torch": None}
        print("torch not installed: skipping the DINO loop", file=sys.stderr)

    accuracy = {
        "faissclass KNN predict": float(np.mean(knn.predict(Q) == yq)),
        "sklearn KNN brute cosine": float(np.mean(skn.predict(Q) == yq)),
        "faissclass prototype predict": float(np.mean(proto.predict(Q) == yq)),
        "sklearn NearestCentroid": float(np.mean(snc.predict(Q) == yq)),
    }
    if "torch.mm + topk (DINO loop)" in methods:
        accuracy["torch.mm + topk (DINO loop)"] = float(
            np.mean(methods["torch.mm + topk (DINO loop)"]() == yq))
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(a.repeats + 1):
        order = list(methods) if rep % 2 else list(methods)[::-1]
        for m in order:
            t = time.perf_counter()
            methods[m]()
            dt = time.perf_counter() - t
            if rep:
                times[m].append(dt)
    med = {m: median(v) for m, v in times.items()}
    knn_s = med["faissclass KNN predict"]
    rows = [{"method": m, "seconds": med[m], "queries/s": a.nq / med[m],
             "vs KNN predict": knn_s / med[m], "top-1": accuracy.get(m, "")} for m in methods]
    record = {"env": {**environment(), **torch_info}, "args": vars(a), "results": rows,
              "all_times_s": times,
              "targets": {
                  "knn_vs_raw_faiss": med["raw faiss search (no vote)"] / knn_s,
                  "knn_vs_sklearn": med["sklearn KNN brute cosine"] / knn_s,
                  "prototype_vs_knn": knn_s / med["faissclass prototype predict"],
              }}
    path = save_record("bench_classify", record, OUT_DIR)
    print(markdown_table(rows, [("method", "method"), ("seconds", "s (median)"),
                                ("queries/s", "queries/s"), ("vs KNN predict", "÷ KNN time"),
                                ("top-1", "top-1")]))
    t = record["targets"]
    print(f"\nKNN predict = {t['knn_vs_raw_faiss']:.3f}x raw faiss search speed (target >= 0.9); "
          f"{t['knn_vs_sklearn']:.1f}x sklearn (target >= 2.5); prototype predict "
          f"{t['prototype_vs_knn']:.0f}x KNN flat (target >= 20)")
    print(f"record: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
