"""Run under torchrun (gloo, CPU): sharded search, kNN over it, and its failure modes.

    python -m torch.distributed.run --nproc_per_node W tests/_sharded_child.py MODE STORE OUT
"""

import os
import sys
import time

import numpy as np

import faissclass as fc
from faissclass import distributed as dist
from faissclass.search import ShardedSearcher

mode, root, out = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_from_env("gloo", timeout_s=float(os.environ.get("TIMEOUT_S", "120")))
rank = dist.rank()
store = fc.EmbeddingStore(root)

try:
    if mode == "search":
        k = int(sys.argv[4])
        spec = fc.IndexSpec(kind="flat", metric=sys.argv[5] if len(sys.argv) > 5 else "ip")
        Q = np.load(root + "-queries.npy") if rank == 0 else None
        s = ShardedSearcher(store, spec, chunk=37)
        res = s.search(Q, k)
        knn = fc.KNNClassifier(k=5, index=s).fit(store)
        yq = np.load(root + "-labels.npy") if rank == 0 else None
        acc = knn.score(Q, yq) if rank == 0 else knn.score(np.zeros((0, store.dim)), [])
        loo = knn.loo_score(store)
        if rank == 0:
            np.savez(out, ids=res.ids, dist=res.distances, acc=acc, loo=loo,
                     shard_rows=np.asarray(s.shard_rows))
        else:
            assert res is None and loo is None, (res, loo)
    elif mode == "bad-shard":  # rank 1 cannot build an IVF over its few rows
        spec = (fc.IndexSpec(kind="ivf", nlist=4096) if rank == 1
                else fc.IndexSpec(kind="flat"))
        ShardedSearcher(store, spec)
    elif mode == "metrics":  # the ranks disagree on the metric
        ShardedSearcher(store, fc.IndexSpec(kind="flat", metric="l2" if rank else "ip"))
    elif mode == "dead-rank":  # rank 1 never joins the search
        s = ShardedSearcher(store)
        if rank == 1:
            time.sleep(20)
            os._exit(0)
        s.search(np.zeros((4, store.dim), np.float32), 3)
    print("ok")
except Exception as e:  # reported to the test through a file per rank
    with open(f"{out}.rank{rank}", "w") as f:
        f.write(f"{type(e).__name__}: {e}")
    sys.stdout.flush()
    os._exit(0)  # no process-group teardown: a peer may be gone
