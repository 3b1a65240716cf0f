"""The evaluation of ``faissclass eval`` and ``demo``: fit classifiers on a train store over
each index (built now, or saved by ``faissclass build``) and score a test store; time,
memory and top-1/top-5 per index, search setting and k."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..store import EmbeddingStore, check_compatible

__all__ = ["evaluate", "index_choices", "write_results"]


def index_choices(n: int) -> dict[str, tuple[str, Any, Any]]:
    """{kind: (label, IndexSpec, SearchParams)} for the default comparison on n vectors."""
    from ..index import IndexSpec, SearchParams, suggest_nlist

    nlist = suggest_nlist(n)
    return {
        "flat": ("Flat", IndexSpec(kind="flat"), None),
        "ivf": (f"IVF{nlist},Flat", IndexSpec(kind="ivf", nlist=nlist), SearchParams(nprobe=8)),
        "hnsw": ("HNSW32", IndexSpec(kind="hnsw", M=32), SearchParams(ef_search=64)),
    }


def _params_label(p: Any) -> str:
    if p is None:
        return ""
    d = {k: v for k, v in p.to_dict().items() if v is not None}
    return " ".join(f"{k}={v}" for k, v in d.items())


def evaluate(train: EmbeddingStore, test: EmbeddingStore, classifiers: list[str],
             kinds: list[str] | None = None, *, k: int | list[int] = 20,
             embed_s: float | None = None, indexes: list[tuple[str, Any]] | None = None,
             sweep: list[Any] | None = None, allow_mismatch: bool = False
             ) -> list[dict[str, Any]]:
    """One row per (classifier, index, search setting, k).

    Parameters
    ----------
    kinds : list of str, optional
        Index kinds to build now (see :func:`index_choices`).
    indexes : list of (label, VectorIndex), optional
        Saved indexes of the train store (loaded), searched as they are.
    sweep : list of SearchParams, optional
        Settings to search each index with, one row each; an index none of them applies
        to (a flat one under an nprobe sweep) is searched once with its own.
    k : int or list of int
        kNN neighbours; several k come from one search at the largest.
    """
    from ..classify import KNNClassifier, PrototypeClassifier
    from ..classify.votes import class_scores
    from ..metrics import topk_accuracy

    check_compatible(train, test, allow_mismatch=allow_mismatch)
    ks = sorted({int(x) for x in ([k] if isinstance(k, int) else k)})
    Q, yq_codes, _ = test.load()
    names = np.asarray(test.classes) if test.classes is not None else None
    yq = names[yq_codes] if names is not None else yq_codes
    rows: list[dict[str, Any]] = []
    built = []
    choices = index_choices(len(train))
    for kind in kinds or []:
        label, spec, params = choices[kind]
        built.append((label, spec, params))
    for label, idx in indexes or []:
        built.append((label, idx, None))

    def row(classifier: str, index: str, search: str, build_s: float, search_s: float,
            mb: float, top5: np.ndarray) -> dict[str, Any]:
        r: dict[str, Any] = {"classifier": classifier, "index": index, "search": search}
        if embed_s is not None:
            r["embed_s"] = round(embed_s, 1)
        r.update({"build_s": round(build_s, 3), "search_s": round(search_s, 3),
                  "index_MB": round(mb, 2), "top1": round(topk_accuracy(yq, top5, 1), 4),
                  "top5": round(topk_accuracy(yq, top5), 4)})
        return r

    if "prototype" in classifiers:
        t = time.perf_counter()
        proto = PrototypeClassifier().fit(train)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        top5, _ = proto.predict_topk(Q, min(5, len(proto.classes_)))
        rows.append(row("prototype", "Flat", "", build_s, time.perf_counter() - t,
                        proto.index_.memory_bytes / 2**20, top5))
    if "knn" not in classifiers:
        return rows
    for label, index, default in built:
        t = time.perf_counter()
        clf = KNNClassifier(k=ks[-1], index=index).fit(train)
        build_s = time.perf_counter() - t
        mb = clf.index_.memory_bytes / 2**20
        params_list = [p for p in sweep or [] if _applies(clf.index_, p)] or [default]
        for p in params_list:
            clf.search_params = p
            t = time.perf_counter()
            sims, codes, _ = clf.kneighbors(Q, ks[-1])
            search_s = time.perf_counter() - t
            for kk in ks:
                s = class_scores(sims, codes, len(clf.classes_), weights=clf.weights,
                                 metric=clf._metric, temperature=clf.temperature, k=kk)
                order = np.argsort(-s, axis=1, kind="stable")[:, :min(5, s.shape[1])]
                rows.append(row(f"kNN k={kk} softmax", label, _params_label(p), build_s,
                                search_s, mb, clf.classes_[order]))
    return rows


def _applies(index: Any, params: Any) -> bool:
    try:
        index._check_params(params)
        return True
    except (ValueError, AttributeError):
        return False


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
