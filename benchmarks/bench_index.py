"""Index kinds compared on build time, search speed, memory and recall against exact search.

Seeded synthetic clustered embeddings (L2-normalised, inner product). Steps, each
in its own process so that its peak RSS belongs to it alone:

1. data: database, queries and a float32 store of the database, cached in --work.
2. flat: VectorIndex flat vs raw faiss.IndexFlatIP on the same data (alternating,
   median of --repeats), a numpy float32 GEMM rate measured in the same process
   (the flat-search ceiling 2·nq·n·d / rate), and the exact ground truth.
3. one process per approximate index: train, add, bytes, peak RSS, then every
   search setting (warm-up + median of --repeats) with recall@1 and recall@k.
4. build from the store: VectorIndex.build(store) peak RSS against
   index bytes + two batches + 300 MB.

    python benchmarks/bench_index.py                     # 1,000,000 x 384, 10,000 queries, k=20
    python benchmarks/bench_index.py --n 100000 --nq 1000 --repeats 1   # quick look

Writes a JSON record to benchmarks/out/ and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import faissclass as fc
from faissclass.bench import (
    environment,
    markdown_table,
    median,
    reset_peak_rss,
    save_record,
    vm_bytes,
)
from faissclass.data import clustered

OUT_DIR = Path(__file__).resolve().parent / "out"

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- child steps


def step_data(a: argparse.Namespace) -> dict:
    X, y, Q = clustered(a.n, a.dim, a.clusters, noise=a.noise, seed=a.seed, n_queries=a.nq)
    np.save(a.work / "X.npy", X)
    np.save(a.work / "Q.npy", Q)
    # A fresh store: a writer on a store left by an earlier run would append to it. Only
    # a faissclass store (this script's cache) is removed, never another folder.
    old = a.work / "store"
    if old.exists():
        if not (old / "store.json").is_file():
            raise SystemExit(f"{old} exists and is not a faissclass store; pick another --work")
        shutil.rmtree(old)
    with fc.ShardWriter(a.work / "store", dim=a.dim, dtype="float32", fsync=False,
                        normalized=True) as w:
        for i in range(0, a.n, 65_536):
            w.append(X[i:i + 65_536], y[i:i + 65_536])
    return {"n": a.n, "nq": a.nq}


def gemm_rate(n: int, dim: int, repeats: int) -> float:
    """FLOP/s of a numpy float32 matmul shaped like flat search (queries x database^T)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4096, dim), dtype=np.float32)
    B = rng.standard_normal((min(n, 65_536), dim), dtype=np.float32)
    A @ B.T  # warm-up
    ts = []
    for _ in range(max(3, repeats)):
        t = time.perf_counter()
        A @ B.T
        ts.append(time.perf_counter() - t)
    return 2 * A.shape[0] * B.shape[0] * dim / median(ts)


def step_flat(a: argparse.Namespace) -> dict:
    import faiss

    X, Q = np.load(a.work / "X.npy"), np.load(a.work / "Q.npy")
    raw = faiss.IndexFlatIP(a.dim)
    raw.add(X)
    ours = fc.VectorIndex(a.dim, fc.IndexSpec(kind="flat"), device=a.device)
    t = time.perf_counter()
    ours.add(X)
    add_s = time.perf_counter() - t
    rate = gemm_rate(a.n, a.dim, a.repeats)
    times: dict[str, list[float]] = {"raw": [], "ours": []}
    gt = None
    for rep in range(a.repeats + 1):  # repeat 0 warms up and is dropped
        order = ("raw", "ours") if rep % 2 else ("ours", "raw")
        for who in order:
            t = time.perf_counter()
            if who == "raw":
                _, raw_ids = raw.search(Q, a.k)
            else:
                res = ours.search(Q, a.k)
            dt = time.perf_counter() - t
            if rep:
                times[who].append(dt)
        if gt is None:
            gt = raw_ids
            np.save(a.work / "gt.npy", raw_ids)
            agree = np.mean(res.ids[:, 0] == raw_ids[:, 0])
            assert agree > 0.999, f"flat VectorIndex disagrees with faiss on {1 - agree:.2%}"
    flops = 2 * a.nq * a.n * a.dim
    return {
        "index": "Flat", "params": "-", "train_s": 0.0, "add_s": add_s, "build_s": add_s,
        "search_s": median(times["ours"]), "raw_search_s": median(times["raw"]),
        "qps": a.nq / median(times["ours"]), "raw_qps": a.nq / median(times["raw"]),
        "gemm_gflops": rate / 1e9, "gemm_ceiling_s": flops / rate,
        "vs_raw": median(times["raw"]) / median(times["ours"]),
        "vs_gemm_ceiling": (flops / rate) / median(times["ours"]),
        "bytes": ours.memory_bytes, "peak_rss_MB": vm_bytes("VmHWM") / 2**20,
        "recall@1": 1.0, f"recall@{a.k}": 1.0, "all_search_s": times,
    }


def step_index(a: argparse.Namespace) -> list[dict]:
    spec = fc.IndexSpec(**json.loads(a.spec))
    params = [fc.SearchParams(**p) for p in json.loads(a.params)]
    X, Q = np.load(a.work / "X.npy"), np.load(a.work / "Q.npy")
    gt = fc.SearchResult(np.zeros((a.nq, a.k), np.float32), np.load(a.work / "gt.npy"))
    idx = fc.VectorIndex(a.dim, spec, device=a.device)
    t0 = time.perf_counter()
    if not idx.is_trained:
        idx.train(X[fc.training_rows(a.n, min(a.n, 64 * spec.nlist), a.seed)])
    t1 = time.perf_counter()
    idx.add(X)
    t2 = time.perf_counter()
    base = {"index": spec.factory_string(a.dim), "train_s": t1 - t0, "add_s": t2 - t1,
            "build_s": t2 - t0, "bytes": idx.memory_bytes}
    rows = []
    for p in params:
        res = idx.search(Q, a.k, p)  # warm-up; scored
        ts = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            idx.search(Q, a.k, p)
            ts.append(time.perf_counter() - t)
        rows.append({**base, "params": ", ".join(f"{k}={v}" for k, v in p.to_dict().items()
                                                 if v is not None),
                     "search_s": median(ts), "qps": a.nq / median(ts), "all_search_s": ts,
                     "recall@1": fc.recall_at_k(res, gt, 1),
                     f"recall@{a.k}": fc.recall_at_k(res, gt, a.k)})
    peak = vm_bytes("VmHWM") / 2**20
    for r in rows:
        r["peak_rss_MB"] = peak
    return rows


def step_build_store(a: argparse.Namespace) -> dict:
    spec = fc.IndexSpec(**json.loads(a.spec))
    store = fc.EmbeddingStore(a.work / "store")
    reset_peak_rss()
    start = vm_bytes("VmRSS")
    t = time.perf_counter()
    idx = fc.VectorIndex.build(store, spec, device=a.device, seed=a.seed, progress=False,
                               batch_size=65_536)
    build_s = time.perf_counter() - t
    peak = vm_bytes("VmHWM")
    batch_bytes = 65_536 * (a.dim * 4 + 16)
    return {"index": spec.factory_string(a.dim), "build_s": build_s,
            "bytes": idx.memory_bytes, "rss_before_MB": start / 2**20, "peak_rss_MB": peak / 2**20,
            "bound_MB": (idx.memory_bytes + 2 * batch_bytes + 300 * 2**20) / 2**20}


# --------------------------------------------------------------------------- driver


def child(a: argparse.Namespace, step: str, **extra: str) -> object:
    cmd = [sys.executable, str(HERE), "--step", step, "--work", str(a.work)]
    for k in ("n", "nq", "dim", "k", "clusters", "noise", "seed", "repeats", "device"):
        cmd += [f"--{k}", str(getattr(a, k))]
    for k, v in extra.items():
        cmd += [f"--{k}", v]
    print(f"[{time.strftime('%H:%M:%S')}] {step} {extra.get('spec', '')}", file=sys.stderr)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"step {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="noise norm relative to the unit cluster centre")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--pq-m", type=int, default=48)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/faissclass-bench-index"))
    ap.add_argument("--skip", nargs="*", default=[], help="steps to skip: hnsw, pq, sq8, store")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step:
        fn = {"data": step_data, "flat": step_flat, "index": step_index,
              "build_store": step_build_store}[a.step]
        print(json.dumps(fn(a)))
        return

    nl = a.nlist
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if p <= nl]
    configs = [("ivf", {"kind": "ivf", "nlist": nl}, [{"nprobe": p} for p in probes]),
               ("sq8", {"kind": "ivf", "nlist": nl, "storage": "sq8"},
                [{"nprobe": p} for p in probes if p >= 4]),
               ("pq", {"kind": "ivf", "nlist": nl, "storage": "pq", "m": a.pq_m},
                [{"nprobe": p} for p in probes if p >= 4]),
               ("hnsw", {"kind": "hnsw", "M": a.hnsw_m, "ef_construction": 40},
                [{"ef_search": e} for e in (16, 32, 64, 128, 256)])]
    record: dict = {"env": environment(), "args": {k: str(v) for k, v in vars(a).items()}}
    child(a, "data")
    flat = child(a, "flat")
    rows = [flat]
    for name, spec, params in configs:
        if name in a.skip:
            continue
        rows += child(a, "index", spec=json.dumps(spec), params=json.dumps(params))
    for r in rows:
        r["speedup_vs_flat"] = r["qps"] / flat["qps"]
    record["results"] = rows
    if "store" not in a.skip:
        record["build_from_store"] = child(a, "build_store",
                                           spec=json.dumps({"kind": "ivf", "nlist": nl}))
    path = save_record("bench_index", record, OUT_DIR)

    rk = f"recall@{a.k}"
    print(markdown_table(rows, [("index", "index"), ("params", "search params"),
                                ("train_s", "train s"), ("add_s", "add s"),
                                ("build_s", "build s"), ("qps", "queries/s"),
                                ("speedup_vs_flat", "× flat"), ("bytes", "index bytes"),
                                ("peak_rss_MB", "peak RSS MB"), ("recall@1", "recall@1"),
                                (rk, rk)]))
    good = [r for r in rows[1:] if r[rk] >= 0.95]
    best = max(good, key=lambda r: r["qps"]) if good else None
    print(f"\nflat: VectorIndex {flat['qps']:.0f} q/s, raw IndexFlatIP {flat['raw_qps']:.0f} q/s "
          f"-> {flat['vs_raw']:.3f}x raw; numpy GEMM {flat['gemm_gflops']:.0f} GFLOP/s -> ceiling "
          f"{flat['gemm_ceiling_s']:.2f} s vs {flat['search_s']:.2f} s -> "
          f"{flat['vs_gemm_ceiling']:.3f}x ceiling")
    if best:
        print(f"best at {rk} >= 0.95: {best['index']} {best['params']}: {best['qps']:.0f} q/s = "
              f"{best['speedup_vs_flat']:.1f}x flat ({rk} {best[rk]:.3f})")
    if "build_from_store" in record:
        b = record["build_from_store"]
        print(f"build from store ({b['index']}): peak RSS {b['peak_rss_MB']:.0f} MB vs bound "
              f"index {b['bytes'] / 2**20:.0f} MB + 2 batches + 300 MB = {b['bound_MB']:.0f} MB")
    print(f"\nrecord: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
