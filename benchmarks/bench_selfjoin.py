"""Leave-one-out (train-set) exact kNN: the symmetric self-join against FAISS's flat
self-search (search X in X with k + 1, drop each row's own hit), alternating, median of
repeats, same process; the results are compared id by id.

    python benchmarks/bench_selfjoin.py                       # 200,000 x 384, k = 20
    python benchmarks/bench_selfjoin.py --n 60000 --blocks 1024 2048 4096
    python benchmarks/bench_selfjoin.py --store /path/to/store   # real embeddings

Also reports the float32 GEMM ceiling of the machine (one (4096, 4096, d) product) and
what each method's time means in GFLOP/s of the *full* n x n product, so that
"faster than the ceiling" is visible: the self-join computes half of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from faissclass.bench import environment, markdown_table, median, save_record
from faissclass.search.self_join import self_knn, warm_up

OUT_DIR = Path(__file__).resolve().parent / "out"
# the generator of benchmarks/configs/synthetic-imagenet.toml
SYNTHETIC = {"noise": 0.2, "latent": 16, "modes": 2, "separation": 1.2, "mode_spread": 0.8}


def faiss_loo(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's flat search of X in X with k + 1; each row's own id dropped (or the last
    hit, where ties pushed it out). What every peer does for a train-set search."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    D, Ii = index.search(X, k + 1)
    own = Ii == np.arange(X.shape[0])[:, None]
    keep = ~own
    keep[~own.any(axis=1), -1] = False
    return D[keep].reshape(-1, k), Ii[keep].reshape(-1, k)


def gemm_gflops(d: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, d), dtype=np.float32)
    b = rng.standard_normal((4096, d), dtype=np.float32)
    out = np.empty((4096, 4096), np.float32)
    np.matmul(a, b.T, out=out)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        np.matmul(a, b.T, out=out)
        times.append(time.perf_counter() - t)
    return 2 * 4096 * 4096 * d / median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2048])
    ap.add_argument("--store", help="an embedding store (real embeddings) instead of "
                                    "synthetic ImageNet-like vectors")
    ap.add_argument("--precision", nargs="*", default=["bf16"], choices=["bf16", "fp16"],
                    help="also time the certified low-precision self-join in these "
                         "(none: --precision with no value)")
    args = ap.parse_args()
    if args.store:
        import faissclass as fc

        X = fc.EmbeddingStore(args.store).load()[0]
        X = np.ascontiguousarray(X[: args.n], dtype=np.float32)
        source = args.store
    else:
        from faissclass.data.synthetic import synthetic_batches

        X = np.concatenate([x for x, _ in synthetic_batches(
            args.n, args.dim, 1000, seed=0, split=0, **SYNTHETIC)])
        source = f"synthetic ImageNet-like (1,000 classes, {SYNTHETIC})"
    n, d = X.shape
    warm_up()
    if args.precision:
        from faissclass.search.certified import certified_self_knn

        certified_self_knn(X[:3000], 5, progress=False)  # compile, and torch's set-up
    gemm = gemm_gflops(d)
    full_flop = 2.0 * n * n * d
    times: dict[str, list[float]] = {"faiss k+1": []}
    for b in args.blocks:
        times[f"self-join block {b}"] = []
    for p in args.precision:
        times[f"certified {p} self-join"] = []
    stats = {}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for rep in range(args.repeats):
        names = list(times) if rep % 2 == 0 else list(times)[::-1]  # alternate
        for name in names:
            t = time.perf_counter()
            if name == "faiss k+1":
                res = faiss_loo(X, args.k)
            elif name.startswith("certified"):
                r, stats[name] = certified_self_knn(X, args.k, precision=name.split()[1],
                                                    progress=False)
                res = (r.distances, r.ids)
            else:
                r = self_knn(X, args.k, block=int(name.rsplit(" ", 1)[1]), progress=False)
                res = (r.distances, r.ids)
            times[name].append(time.perf_counter() - t)
            results[name] = res
            print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    D0, I0 = results["faiss k+1"]
    base = median(times["faiss k+1"])
    rows = []
    for name, ts in times.items():
        D, Ii = results[name]
        same = float((Ii == I0).mean())
        # a row whose ids differ must be a swap of scores equal within float32 rounding
        # (at any rank, the k-th place included): the float64 scores of its neighbours
        # equal FAISS's, rank by rank
        diff = np.flatnonzero((Ii != I0).any(axis=1))
        bad = sum(int(np.abs(X[Ii[r]].astype(np.float64) @ X[r].astype(np.float64)
                             - D0[r]).max() > 1e-5) for r in diff)
        rows.append({"method": name, "median s": round(median(ts), 2),
                     "speed-up vs faiss": round(base / median(ts), 3),
                     "GFLOP/s of the full product": round(full_flop / median(ts) / 1e9, 1),
                     "ids equal to faiss": round(same, 6),
                     "rows with other ids": int(diff.size),
                     "wrong neighbours": bad,
                     "certified": (f"{stats[name].certified:,}/{stats[name].queries:,}"
                                   if name in stats else "–"),
                     "max |Δdist|": float(np.abs(D - D0).max())})
    print(f"{n:,} x {d}, k={args.k}, {source}; float32 GEMM ceiling {gemm:.0f} GFLOP/s")
    print(markdown_table(rows))
    record = {"env": environment(), "args": vars(args), "times": times, "rows": rows,
              "gemm_gflops": gemm, "source": source}
    print(f"record: {save_record('bench_selfjoin', record, OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
