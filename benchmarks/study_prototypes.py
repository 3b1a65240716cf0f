"""Seed study 003 on real data: do centrality-selected references beat the plain class mean?

Fashion-MNIST from the Debian package dataset-fashion-mnist, with L2-normalised
pixels as features (the embedding pipeline is not in faissclass yet; rerun with
real embeddings from a store with --store once it is). The 60,000 training
images are split (seeded, stratified) into 50,000 references and 10,000
validation images; everything is scored on the official 10,000 test images.

    python benchmarks/study_prototypes.py

Writes a JSON record to benchmarks/out/ and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

import faissclass as fc
from faissclass.bench import environment, markdown_table, save_record
from faissclass.data import load_fashion_mnist
from faissclass.metrics import per_class_accuracy

OUT_DIR = Path(__file__).resolve().parent / "out"

NAMES = {"centrality": "lowest centrality (seed study)", "central": "highest centrality",
         "random": "random"}


def features(images: np.ndarray) -> np.ndarray:
    f = images.reshape(len(images), -1).astype(np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 5, 10, 50, 100, 500])
    a = ap.parse_args()

    Xall, yall = load_fashion_mnist("train")
    Xt, yt = load_fashion_mnist("test")
    Xall, Xt = features(Xall), features(Xt)
    X, Xv, y, yv = train_test_split(Xall, yall, test_size=10_000, stratify=yall,
                                    random_state=a.seed)
    rows = []

    def report(name: str, refs: int, pred: np.ndarray, t: float) -> None:
        _, acc = per_class_accuracy(yt, pred)
        rows.append({"method": name, "references": refs, "top-1": float(np.mean(pred == yt)),
                     "worst class": float(np.nanmin(acc)), "seconds": round(t, 1)})
        print(f"{name}: {rows[-1]['top-1']:.4f}", file=sys.stderr)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    for name, clf in [("class mean (plain)", fc.PrototypeClassifier()),
                      ("class mean, CL2N centring", fc.PrototypeClassifier(center=True)),
                      ("k-means, 5 per class", fc.PrototypeClassifier(n_prototypes=5,
                                                                      seed=a.seed)),
                      ("k-means, 50 per class", fc.PrototypeClassifier(n_prototypes=50,
                                                                       seed=a.seed))]:
        pred, t = timed(lambda clf=clf: clf.fit(X, y).predict(Xt))
        report(name, len(clf.prototypes_), pred, t)

    def nn1(idx: np.ndarray) -> np.ndarray:
        return fc.KNNClassifier(k=1, weights="uniform").fit(X[idx], y[idx]).predict(Xt)

    for per in (10, 100):
        for method in ("centrality", "central", "random"):
            idx, t1 = timed(lambda per=per, method=method: fc.select_prototypes(
                X, y, per, method=method, seed=a.seed))
            pred, t2 = timed(lambda idx=idx: nn1(idx))
            report(f"{NAMES[method]}, {per} per class, 1-NN", idx.size, pred, t1 + t2)
    for method in ("centrality", "central", "random"):
        def tuned(method=method):
            counts = fc.tune_per_class(X, y, Xv, yv, candidates=a.candidates, method=method,
                                       seed=a.seed)
            return fc.select_prototypes(X, y, counts, method=method, seed=a.seed)
        idx, t1 = timed(tuned)
        pred, t2 = timed(lambda idx=idx: nn1(idx))
        report(f"{NAMES[method]}, count tuned per class on val, 1-NN", idx.size, pred,
               t1 + t2)
    pred, t = timed(lambda: fc.KNNClassifier(k=20).fit(X, y).predict(Xt))
    report("kNN k=20 softmax, all references", len(X), pred, t)

    record = {"env": environment(), "args": vars(a), "results": rows}
    path = save_record("study_prototypes", record, OUT_DIR)
    print(markdown_table(rows, [("method", "method"), ("references", "references"),
                                ("top-1", "test top-1"), ("worst class", "worst class"),
                                ("seconds", "s")]))
    print(f"record: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
