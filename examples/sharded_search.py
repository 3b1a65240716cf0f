"""Search a store sharded across the GPUs (or CPUs) of a torchrun / SLURM job, exactly.

Every rank builds an index over its contiguous slice of the train store; rank 0's
queries (a val store here) are broadcast in chunks, every rank searches its shard, and
rank 0 merges the per-rank top-k exactly. Then a kNN classifier over the same sharded
index scores the val store and, optionally, the train set by leave-one-out.

    torchrun --nproc_per_node=4 examples/sharded_search.py emb/train emb/val --k 20
    sbatch --nodes=2 --gpus-per-node=4 examples/slurm_sharded_search.sh emb/train emb/val
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import faissclass as fc
from faissclass import distributed as dist
from faissclass.search import ShardedSearcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("train", help="train store (on a file system every node sees)")
    ap.add_argument("val", help="query store")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cuda: each rank on cuda:<local rank>")
    ap.add_argument("--factory", default="Flat", help="the index each rank builds")
    ap.add_argument("--loo", action="store_true", help="also leave-one-out on the train set")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per collective")
    a = ap.parse_args()
    dist.init_from_env(timeout_s=a.timeout)
    train, val = fc.EmbeddingStore(a.train), fc.EmbeddingStore(a.val)
    fc.check_compatible(train, val)
    t = time.perf_counter()
    searcher = ShardedSearcher(train, fc.IndexSpec(factory=a.factory), device=a.device)
    build_s = time.perf_counter() - t
    Q, yq, _ = val.load() if dist.is_main() else (None, None, None)
    knn = fc.KNNClassifier(k=a.k, index=searcher).fit(train)
    t = time.perf_counter()
    acc = knn.score(Q if dist.is_main() else np.zeros((0, train.dim), np.float32), yq)
    search_s = time.perf_counter() - t
    loo = knn.loo_score(train) if a.loo else None
    if dist.is_main():
        print(f"{len(train):,} vectors on {dist.world_size()} ranks (rows per rank "
              f"{searcher.shard_rows}); built in {build_s:.1f} s")
        print(f"val top-1 (k={a.k}) {acc:.4f}; {len(Q):,} queries in {search_s:.1f} s")
        if loo is not None:
            print(f"train leave-one-out top-1 {loo:.4f}")


if __name__ == "__main__":
    main()
