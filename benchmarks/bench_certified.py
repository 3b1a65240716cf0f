"""Certified low-precision flat search against FAISS's float32 flat search: bf16 (or
fp16) candidates, float32 re-rank, a per-query proof of exactness, float32 fallback.
Alternating, median of repeats, same process; results compared id by id.

    python benchmarks/bench_certified.py                          # 10,000 x 1M x 384, k = 20
    python benchmarks/bench_certified.py --n 200000 --nq 2000
    python benchmarks/bench_certified.py --store emb/train --queries emb/test   # real

Also reports the machine's float32 GEMM (NumPy's BLAS) and bf16 GEMM (torch) on one
(1024, 65536, d) product, and the certification rate (queries proved exact from the
candidates; the rest were re-searched in float32, inside the timed call).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from faissclass.bench import environment, markdown_table, median, save_record
from faissclass.search.certified import certified_search, lowp_supported

OUT_DIR = Path(__file__).resolve().parent / "out"
# the generator of benchmarks/configs/synthetic-imagenet.toml
SYNTHETIC = {"noise": 0.2, "latent": 16, "modes": 2, "separation": 1.2, "mode_spread": 0.8}


def faiss_flat(index, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(Q, k)


def gemm_gflops(d: int) -> dict[str, float]:
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, d), dtype=np.float32)
    b = rng.standard_normal((65536, d), dtype=np.float32)
    out = np.empty((1024, 65536), np.float32)
    at, bt = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    res = {}
    for name, f in (("fp32 (numpy BLAS)", lambda: np.matmul(a, b.T, out=out)),
                    ("bf16 (torch)", lambda: at @ bt.T)):
        f()
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        res[name] = 2 * 1024 * 65536 * d / median(ts) / 1e9
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["bf16"], choices=["bf16", "fp16"])
    ap.add_argument("--store", help="database: an embedding store (real embeddings)")
    ap.add_argument("--queries", help="queries: an embedding store (with --store)")
    args = ap.parse_args()
    import faiss

    if args.store:
        import faissclass as fc

        X = np.ascontiguousarray(fc.EmbeddingStore(args.store).load()[0][: args.n],
                                 np.float32)
        Q = np.ascontiguousarray(fc.EmbeddingStore(args.queries or args.store).load()[0]
                                 [: args.nq], np.float32)
        source = f"{args.store} (queries {args.queries or args.store})"
    else:
        from faissclass.data.synthetic import synthetic_batches

        X = np.concatenate([x for x, _ in synthetic_batches(
            args.n, args.dim, 1000, seed=0, split=0, **SYNTHETIC)])
        Q = np.concatenate([x for x, _ in synthetic_batches(
            args.nq, args.dim, 1000, seed=0, split=1, **SYNTHETIC)])
        source = f"synthetic ImageNet-like (1,000 classes, {SYNTHETIC})"
    n, d = X.shape
    gemm = gemm_gflops(d)
    index = faiss.IndexFlatIP(d)
    index.add(X)
    names = ["faiss flat fp32", *(f"certified {p}" for p in args.precision)]
    times: dict[str, list[float]] = {m: [] for m in names}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    stats = {}
    certified_search(X[:5000], Q[:10], args.k)  # torch's first-call set-up, untimed
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:  # alternate the order
            t = time.perf_counter()
            if name.startswith("faiss"):
                res = faiss_flat(index, Q, args.k)
            else:
                r, st = certified_search(X, Q, args.k, precision=name.split()[1])
                res, stats[name] = (r.distances, r.ids), st
            times[name].append(time.perf_counter() - t)
            results[name] = res
            print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    D0, I0 = results[names[0]]
    base = median(times[names[0]])
    rows = []
    for name in names:
        _, Ii = results[name]
        diff = np.flatnonzero((Ii != I0).any(axis=1))
        # a differing row must be a swap of scores equal within float32 rounding: the
        # neighbours' float64 scores equal FAISS's at every rank
        bad = 0
        for r in diff:
            true = X[Ii[r]].astype(np.float64) @ Q[r].astype(np.float64)
            bad += int(np.abs(true - D0[r]).max() > 1e-5)
        st = stats.get(name)
        rows.append({"method": name, "median s": round(median(times[name]), 2),
                     "speed-up vs faiss": round(base / median(times[name]), 3),
                     "certified": f"{st.certified:,}/{st.queries:,}" if st else "–",
                     "rate": round(st.rate, 4) if st else None,
                     "rows with other ids": int(diff.size),
                     "wrong neighbours": bad})
    env = environment()
    print(f"{n:,} x {d} database, {Q.shape[0]:,} queries, k={args.k}, {source}; "
          f"CPU {env.get('cpu')}; bf16 native: "
          f"{lowp_supported('cpu', 'bf16')}; GEMM GFLOP/s "
          + ", ".join(f"{k} {v:.0f}" for k, v in gemm.items()))
    print(markdown_table(rows))
    record = {"env": env, "args": vars(args), "times": times, "rows": rows, "gemm": gemm,
              "source": source}
    print(f"record: {save_record('bench_certified', record, OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
