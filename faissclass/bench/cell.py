"""One benchmark cell, measured in one process: an index on a device with its kNN
classifier over every search setting, or the prototype classifier, or the linear
probe. ``python -m faissclass.bench.cell SPEC.json OUT.json`` runs one in a fresh
process (its peak memory is its own); the runner collects the records.

Phases (see :class:`~faissclass.bench.probes.Phases`): ``index_train``,
``index_add``, ``val_search`` (warm-up, then ``repeats`` timed searches, median),
``vote`` (every k from the one search), ``train_search`` (leave-one-out: each
train vector's k nearest *other* vectors, by id, in bounded batches; timed once),
``fit`` / ``predict`` for prototypes and the linear probe.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..classify.votes import class_scores
from ..metrics import recall_at_k
from ..store import EmbeddingStore
from .config import IndexConfig, RunConfig
from .probes import Phases
from .provenance import environment
from .records import SCHEMA_VERSION, cell_key

__all__ = ["run_cell"]

_QUERY_BATCH = 16_384
_VOTE_ROWS = 2_048


def _topk_correct(scores: np.ndarray, truth: np.ndarray, n: int) -> int:
    """Rows whose true class is among the ``n`` best (score descending, class asc).

    Counts, per row, the classes ranked before the true one (a higher score, or an equal
    score and a smaller class code) instead of sorting: O(rows x classes) memory of
    booleans, no argsort of the whole score matrix. A truth outside the classes is wrong.
    """
    truth = np.asarray(truth)
    ok = (truth >= 0) & (truth < scores.shape[1])
    if scores.shape[1] <= n:
        return int(ok.sum())
    rows = np.flatnonzero(ok)
    t = truth[rows]
    s = scores[rows]
    st = s[np.arange(rows.size), t][:, None]
    before = (s > st) | ((s == st) & (np.arange(s.shape[1]) < t[:, None]))
    return int((before.sum(axis=1) < n).sum())


def _vote_correct(dist: np.ndarray, codes: np.ndarray, truth: np.ndarray, C: int, knn: Any,
                  metric: str, correct: dict[int, dict[str, int]]) -> None:
    """Add each k's top-1/top-5 counts of a search's votes to ``correct``, in chunks of
    queries so that the (queries x classes) score arrays stay small whatever the number
    of queries (at 1,000 classes, 50,000 queries would take 400 MB per array)."""
    for a in range(0, len(truth), _VOTE_ROWS):
        d, c, y = dist[a:a + _VOTE_ROWS], codes[a:a + _VOTE_ROWS], truth[a:a + _VOTE_ROWS]
        for k in knn.ks:
            s = class_scores(d, c, C, weights=knn.weights, metric=metric,
                             temperature=knn.temperature, k=k)
            correct[k]["top1"] += _topk_correct(s, y, 1)
            correct[k]["top5"] += _topk_correct(s, y, 5)


class _Labels:
    """Class code of each train id (ids sorted once; lookups by binary search)."""

    def __init__(self, store: EmbeddingStore) -> None:
        ids, labels = store.ids(), store.labels()
        order = np.argsort(ids, kind="stable")
        self.ids, self.codes = ids[order], labels[order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        return np.where((ids >= 0) & (self.ids[pos] == ids), self.codes[pos], -1)


def _accuracy(correct: dict[int, dict[str, int]], total: int) -> dict[str, dict[str, float]]:
    return {"top1": {str(k): c["top1"] / total for k, c in correct.items()},
            "top5": {str(k): c["top5"] / total for k, c in correct.items()}}


def _loo_batches(store: EmbeddingStore, fraction: float, seed: int, batch: int):
    """(vectors, labels, ids) of the train queries: all rows, or a seeded stratified
    fraction of them, in batches."""
    if fraction >= 1:
        for b in store.iter_batches(batch, progress=False):
            yield b.embeddings, b.labels, b.ids
        return
    from ..data.splits import make_splits

    rows = make_splits(store.labels(), {"q": fraction, "rest": 1 - fraction}, seed)["q"]
    for a in range(0, rows.size, batch):
        b = store.take(rows[a:a + batch])
        yield b.embeddings, b.labels, b.ids


def run_knn(cfg: RunConfig, ix: IndexConfig, device: str, train: EmbeddingStore,
            val: EmbeddingStore, reference_dir: Path | None) -> list[dict[str, Any]]:
    """Records of one index on one device: one per search setting."""
    from ..index import SearchParams, build

    assert cfg.knn is not None
    knn = cfg.knn
    ks, kmax = knn.ks, max(knn.ks)
    C = len(train.classes) if train.classes is not None else int(train.labels().max()) + 1
    build_phases = Phases()
    t0: dict[str, float] = {}

    def hook(name: str, starting: bool) -> None:
        if starting:
            t0[name] = build_phases.begin(name)
        else:
            build_phases.end(name, t0.pop(name))

    from ..devices import parse_device

    sharded = parse_device(device).ranks
    if sharded:  # every rank runs this cell together; rank 0 gets the results
        from ..search import ShardedSearcher

        index: Any = ShardedSearcher(train, ix.index_spec(), device=device, fp16=ix.fp16,
                                     on_phase=hook)
    else:
        index = build(train, ix.index_spec(), device=device, fp16=ix.fp16, progress=False,
                      on_phase=hook)
    index_bytes = int(index.memory_bytes)
    label_of = _Labels(train)
    Q, yq, _ = val.load()
    metric = index.metric
    records = []
    for params in ix.search:
        sp = SearchParams(**params)
        phases = Phases()
        phases.data.update(json.loads(json.dumps(build_phases.data)))
        for _ in range(cfg.warmup):
            index.search(Q[: min(len(Q), 2048)], kmax, sp)
        res = None
        for _ in range(cfg.repeats):
            res = None  # the last repeat's result is not held through the next
            with phases("val_search"):
                res = index.search(Q, kmax, sp, batch_size=cfg.batch_size)
        if res is None:  # a rank other than 0 of a sharded cell: join the searches only
            if ix.loo_for(params):
                _loo(index, sp, train, label_of, ix, knn, C, kmax, metric, phases, cfg)
            continue
        codes = label_of(res.ids)
        with phases("vote"):
            val_correct = {k: {"top1": 0, "top5": 0} for k in ks}
            _vote_correct(res.distances, codes, yq, C, knn, metric, val_correct)
        accuracy: dict[str, Any] = {"val": _accuracy(val_correct, len(yq))}
        recall = _val_recall(res, ix, device, reference_dir, kmax, knn.ks)
        res = codes = None  # not held through the train search (queries x kmax each)
        if ix.loo_for(params):
            Q = None  # nor the queries: read again after it
            accuracy["train"], n_queries = _loo(index, sp, train, label_of, ix, knn, C, kmax,
                                                metric, phases, cfg)
            Q = val.load()[0]
        else:
            n_queries = 0
        extra: dict[str, Any] = {"sharded": {"ranks": len(index.shard_rows),
                                             "rows": index.shard_rows}} if sharded else {}
        if ix.index_spec().kind == "flat" and index.on_cpu and not sharded:
            extra["gemm_ceiling"] = _gemm_ceiling(Q, train, phases, kmax)
        records.append({
            **extra,
            "cell": {"classifier": "knn", "index": ix.name,
                     "factory": index.spec.factory_string(index.dim), "params": params},
            "phases": phases.summary({"val_search": len(Q), "train_search": n_queries,
                                      "index_add": len(train)}),
            "index_bytes": index_bytes, "accuracy": accuracy, "recall": recall,
            "knn": {"ks": list(ks), "weights": knn.weights, "temperature": knn.temperature},
        })
    return records


def _gemm_ceiling(Q: np.ndarray, train: EmbeddingStore, phases: Phases, kmax: int
                  ) -> dict[str, float]:
    """The flat search's speed against the machine's float32 GEMM of the same shape,
    measured in this process: how close exact search runs to what BLAS can do."""
    n, d = len(train), train.dim
    block = train.take(np.arange(min(n, 65_536))).embeddings
    q = np.ascontiguousarray(Q[: min(len(Q), 1024)])
    out = np.empty((q.shape[0], block.shape[0]), np.float32)
    np.matmul(q, block.T, out=out)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        np.matmul(q, block.T, out=out)
        times.append(time.perf_counter() - t)
    gemm = 2 * q.shape[0] * block.shape[0] * d / float(np.median(times)) / 1e9
    search = 2 * len(Q) * n * d / float(np.median(phases.data["val_search"]["all_seconds"])) \
        / 1e9
    return {"gemm_gflops": gemm, "search_gflops": search, "ratio": search / gemm,
            "gemm_shape": [int(q.shape[0]), int(block.shape[0]), int(d)]}


def _val_recall(res: Any, ix: IndexConfig, device: str, reference_dir: Path | None,
                kmax: int, ks: Any = ()) -> dict[str, Any]:
    """Recall against exact search: the flat cell saves its ids as the reference."""
    from ..topk import SearchResult

    if reference_dir is None:
        return {}
    ref = reference_dir / f"val-k{kmax}.npy"
    exact = ix.index_spec().kind == "flat" and ix.index_spec().metric == "ip"
    if exact and not ref.exists():
        reference_dir.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_suffix(f".{time.time_ns()}.tmp.npy")
        np.save(tmp, res.ids)
        tmp.replace(ref)
    if not ref.exists():
        return {"note": "no flat index in this run to measure recall against"}
    ids = np.load(ref)
    if ids.shape != res.ids.shape:
        return {"note": f"reference {ref} has another shape"}
    zero = np.zeros(ids.shape, np.float32)
    r = SearchResult(zero, res.ids)
    g = SearchResult(zero, ids)
    out = {"reference": "flat (exact)", "recall@1": recall_at_k(r, g, 1),
           f"recall@{kmax}": recall_at_k(r, g, kmax)}
    for k in sorted(ks):  # every k of the vote (the report shows recall@kmax)
        out.setdefault(f"recall@{k}", recall_at_k(r, g, k))
    return out


def _loo(index: Any, sp: Any, train: EmbeddingStore, label_of: _Labels, ix: IndexConfig,
         knn: Any, C: int, kmax: int, metric: str, phases: Phases, cfg: RunConfig
         ) -> tuple[dict[str, Any], int]:
    """Leave-one-out accuracy on the train vectors (or a fraction of them): each query's
    kmax nearest other than itself, by id, searched and voted in bounded batches."""
    correct = {k: {"top1": 0, "top5": 0} for k in knn.ks}
    if _self_join_applies(index, ix):
        # exact flat leave-one-out of every train vector: one symmetric self-join (each
        # score computed once, half the arithmetic of searching X in X with k + 1)
        from ..search.self_join import warm_up

        warm_up()  # numba's compilation is not the search's time
        t = phases.begin("train_search")
        ids, res = index.self_knn(kmax, progress=False, precision=sp.precision)
        phases.end("train_search", t)
        for a in range(0, ids.size, _QUERY_BATCH):  # labels in batches: bounded temporaries
            b = a + _QUERY_BATCH
            _vote_correct(res.distances[a:b], label_of(res.ids[a:b]), label_of(ids[a:b]), C,
                          knn, metric, correct)
        cert = index.last_certified
        extra = {} if cert is None else {
            "method": f"certified {cert.precision} self-join",
            "certified": {"queries": cert.queries, "certified": cert.certified,
                          "candidates": cert.candidates}}
        return {**_accuracy(correct, ids.size), "queries": int(ids.size), "fraction": 1.0,
                "method": "self-join", **extra}, int(ids.size)
    total = 0
    first = True
    for x, y, qids in _loo_batches(train, ix.train_fraction, cfg.dataset.seed, _QUERY_BATCH):
        t = phases.begin("train_search") if first else time.perf_counter()
        res = index.search(x, kmax + 1, sp, batch_size=cfg.batch_size)
        if first:
            phases.end("train_search", t)
        else:
            phases.data["train_search"]["all_seconds"][-1] += time.perf_counter() - t
        first = False
        total += len(qids)
        if res is None:  # a sharded search answers on rank 0 only
            continue
        own = res.ids == qids[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), kmax)  # else the farthest
        keep = np.ones(own.shape, bool)
        keep[np.arange(len(qids)), drop] = False
        d = res.distances[keep].reshape(len(qids), kmax)
        c = label_of(res.ids[keep].reshape(len(qids), kmax))
        _vote_correct(d, c, y, C, knn, metric, correct)
    return {**_accuracy(correct, total), "queries": total,
            "fraction": ix.train_fraction, "method": "search k+1"}, total


def _self_join_applies(index: Any, ix: IndexConfig) -> bool:
    from ..index import VectorIndex
    from ..search.self_join import self_join_available

    return (ix.train_fraction >= 1 and isinstance(index, VectorIndex) and index._flat_cpu()
            and self_join_available())


def run_prototype(cfg: RunConfig, device: str, train: EmbeddingStore, val: EmbeddingStore
                  ) -> list[dict[str, Any]]:
    from ..classify import PrototypeClassifier

    phases = Phases()
    with phases("fit"):
        clf = PrototypeClassifier(device=device).fit(train)
    Q, yq, _ = val.load()
    for _ in range(cfg.warmup):
        clf._scores(Q[:2048])
    s = None
    for _ in range(cfg.repeats):
        with phases("val_search"):
            s = clf._scores(Q)
    assert s is not None
    pos = {c: i for i, c in enumerate(clf.classes_.tolist())}
    names = train.classes
    to_code = (np.asarray([pos.get(n, -1) for n in names]) if names is not None else None)
    yv = to_code[yq] if to_code is not None else np.searchsorted(clf.classes_, yq)
    accuracy = {"val": {"top1": {"-": _topk_correct(s, yv, 1) / len(yv)},
                        "top5": {"-": _topk_correct(s, yv, 5) / len(yv)}}}
    c1 = c5 = n = 0
    t = phases.begin("train_search")
    for b in train.iter_batches(_QUERY_BATCH, progress=False):
        st = clf._scores(b.embeddings)
        yt = to_code[b.labels] if to_code is not None else np.searchsorted(clf.classes_,
                                                                           b.labels)
        c1 += _topk_correct(st, yt, 1)
        c5 += _topk_correct(st, yt, 5)
        n += len(yt)
    phases.end("train_search", t)
    accuracy["train"] = {"top1": {"-": c1 / n}, "top5": {"-": c5 / n}, "queries": n}
    return [{"cell": {"classifier": "prototype", "index": None, "factory": None, "params": {}},
             "phases": phases.summary({"val_search": len(Q), "train_search": n}),
             "index_bytes": int(clf.index_.memory_bytes), "accuracy": accuracy,
             "recall": {}}]


def run_linear(cfg: RunConfig, device: str, train: EmbeddingStore, val: EmbeddingStore
               ) -> list[dict[str, Any]]:
    from .linear import LinearProbe

    assert cfg.linear is not None
    phases = Phases()
    X, y, _ = train.load()
    Q, yq, _ = val.load()
    C = len(train.classes) if train.classes is not None else int(y.max()) + 1
    with phases("fit"):
        probe = LinearProbe(cfg.linear, device=device).fit(X, y, C)
    cv: dict[int, int] = {}
    for _ in range(cfg.repeats):
        with phases("val_search"):
            cv = probe.correct(Q, yq)
    with phases("train_search"):
        ct = probe.correct(X, y)
    accuracy = {"val": {"top1": {"-": cv[1] / len(yq)}, "top5": {"-": cv[5] / len(yq)}},
                "train": {"top1": {"-": ct[1] / len(y)}, "top5": {"-": ct[5] / len(y)}}}
    return [{"cell": {"classifier": "linear", "index": None, "factory": None, "params": {}},
             "phases": phases.summary({"val_search": len(Q), "train_search": len(y)}),
             "index_bytes": int(probe.bytes), "accuracy": accuracy, "recall": {},
             "linear": {**json.loads(json.dumps(cfg.linear.__dict__)),
                        "final_loss": probe.final_loss}}]


def run_cell(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the cell described by ``spec`` and return its finished records.

    ``spec``: {"config": RunConfig dict, "kind": "knn" | "prototype" | "linear",
    "device", "index" (an IndexConfig name, for knn), "train", "val" (store paths),
    "reference_dir", "dataset" (label), "world_size", "fresh_process"}.
    """
    cfg = RunConfig.from_dict(spec["config"])
    train, val = EmbeddingStore(spec["train"]), EmbeddingStore(spec["val"])
    device = spec["device"]
    if spec["kind"] == "knn":
        ix = next(i for i in cfg.indexes if i.name == spec["index"])
        ref = Path(spec["reference_dir"]) if spec.get("reference_dir") else None
        parts = run_knn(cfg, ix, device, train, val, ref)
    elif spec["kind"] == "prototype":
        parts = run_prototype(cfg, device, train, val)
    elif spec["kind"] == "linear":
        parts = run_linear(cfg, device, train, val)
    else:
        raise ValueError(f"unknown cell kind {spec['kind']!r}")
    env = environment()
    out = []
    for p in parts:
        cell = {"dataset": spec["dataset"], "device": device, **p.pop("cell")}
        rec = {"schema": SCHEMA_VERSION, "run": cfg.name, "cell": cell,
               "key": cell_key(cell, spec["shaping"]), **p,
               "sizes": {"n_train": len(train), "n_val": len(val), "dim": train.dim,
                         "classes": len(train.classes or [])},
               "provenance": env, "config": spec["config"],
               "world_size": int(spec.get("world_size", 1)),
               "fresh_process": bool(spec.get("fresh_process", False))}
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m faissclass.bench.cell SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    spec["fresh_process"] = True
    records = run_cell(spec)
    out = Path(args[1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
