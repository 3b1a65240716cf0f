"""The benchmark suite's own overhead: a search timed through the suite's phase probe
(peak-RSS reset, GPU sync, /proc reads) against the same search timed directly,
alternating, median of repeats.

    python benchmarks/bench_harness.py                 # 200,000 x 384 flat, 2,000 queries
    python benchmarks/bench_harness.py --kind ivf --repeats 21
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faissclass as fc
from faissclass.bench import environment, markdown_table, median, save_record
from faissclass.bench.probes import Phases
from faissclass.data import clustered

OUT_DIR = Path(__file__).resolve().parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--nq", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    X, _, Q = clustered(args.n, args.dim, 1000, noise=3.0, seed=0, n_queries=args.nq)
    spec = {"flat": fc.IndexSpec(kind="flat"), "ivf": fc.IndexSpec(kind="ivf", nlist=1024),
            "hnsw": fc.IndexSpec(kind="hnsw", M=32)}[args.kind]
    index = fc.VectorIndex.build(fc.ArraySource(X), spec, progress=False)
    index.search(Q, args.k)  # warm-up
    direct, suite = [], []
    phases = Phases()
    for rep in range(args.repeats):
        for side in (("direct", "suite") if rep % 2 else ("suite", "direct")):
            if side == "direct":
                t = time.perf_counter()
                index.search(Q, args.k, batch_size=16_384)
                direct.append(time.perf_counter() - t)
            else:
                with phases("val_search"):
                    index.search(Q, args.k, batch_size=16_384)
    suite = phases.data["val_search"]["all_seconds"]
    row = {"index": spec.factory_string(args.dim), "n": args.n, "queries": args.nq,
           "direct s": median(direct), "suite s": median(suite),
           "suite ÷ direct": median(suite) / median(direct)}
    record = {"env": environment(), "args": vars(args), "direct": direct, "suite": suite,
              "row": row}
    print(markdown_table([row]))
    print(f"record: {save_record('bench_harness', record, OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
