"""The evaluation of ``faissclass eval`` and ``demo``: fit each classifier on each index
kind from a train store, score a test store; time, memory and top-1/top-5 per row."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..store import EmbeddingStore

__all__ = ["evaluate", "index_choices", "write_results"]


def index_choices(n: int) -> dict[str, tuple[str, Any, Any]]:
    """{kind: (label, IndexSpec, SearchParams)} for the default comparison on n vectors."""
    from ..index import IndexSpec, SearchParams, suggest_nlist

    nlist = suggest_nlist(n)
    return {
        "flat": ("Flat", IndexSpec(kind="flat"), None),
        "ivf": (f"IVF{nlist},Flat nprobe=8", IndexSpec(kind="ivf", nlist=nlist),
                SearchParams(nprobe=8)),
        "hnsw": ("HNSW32 ef=64", IndexSpec(kind="hnsw", M=32), SearchParams(ef_search=64)),
    }


def evaluate(train: EmbeddingStore, test: EmbeddingStore, classifiers: list[str],
             kinds: list[str], *, k: int, embed_s: float | None = None
             ) -> list[dict[str, Any]]:
    """Fit each classifier on each index kind from the train store; score the test store.

    Prototypes use a flat index only (a handful of vectors: flat is exact and
    fastest). Returns one dict per (classifier, index) row.
    """
    from ..classify import KNNClassifier, PrototypeClassifier
    from ..metrics import topk_accuracy

    Q, yq_codes, _ = test.load()
    yq = np.asarray(test.classes)[yq_codes] if test.classes is not None else yq_codes
    rows = []
    choices = index_choices(len(train))
    for cname in classifiers:
        for kind in (kinds if cname == "knn" else ["flat"]):
            index_name, spec, params = choices[kind]
            clf = (KNNClassifier(k=k, index=spec, search_params=params) if cname == "knn"
                   else PrototypeClassifier(index=spec))
            t = time.perf_counter()
            clf.fit(train)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            top5, _ = clf.predict_topk(Q, min(5, len(clf.classes_)))
            search_s = time.perf_counter() - t
            row: dict[str, Any] = {
                "classifier": f"kNN k={k} softmax" if cname == "knn" else "prototype",
                "index": index_name}
            if embed_s is not None:
                row["embed_s"] = round(embed_s, 1)
            row.update({"build_s": round(build_s, 3), "search_s": round(search_s, 3),
                        "index_MB": round(clf.index_.memory_bytes / 2**20, 2),
                        "top1": round(topk_accuracy(yq, top5, 1), 4),
                        "top5": round(topk_accuracy(yq, top5), 4)})
            rows.append(row)
    return rows


def write_results(out: str | Path, head: str, rows: list[dict[str, Any]],
                  extra: dict[str, Any]) -> str:
    """Write ``out/results.json`` and ``out/results.md``; returns the Markdown."""
    from .report import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**extra, "results": rows}, indent=1))
    md = head + "\n\n" + markdown_table(rows) + "\n"
    (out / "results.md").write_text(md)
    return md
