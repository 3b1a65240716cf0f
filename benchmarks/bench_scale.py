"""Scale-out figures (issue 11).

sharded  — under torchrun: a flat bank sharded over the ranks vs one process searching the
           whole bank, same machine: ids equal, gather + merge share of the search time,
           per-rank peak RSS. Run:
               python benchmarks/bench_scale.py data --n 1000000 --nq 10000
               python -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_scale.py sharded
               python benchmarks/bench_scale.py single
outofcore — a float16 store several times a memory cap searched exactly in a child process
           under that cap (a memory cgroup, as a cluster job's limit: RSS and page cache;
           --cap-kind address-space for RLIMIT_AS), against in-memory flat search of the
           part that fits:
               python benchmarks/bench_scale.py outofcore --n 4000000 --cap-gib 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import faissclass as fc
from faissclass.bench import environment, markdown_table, median, save_record, vm_bytes
from faissclass.data import synthetic_batches, write_synthetic_store

OUT_DIR = Path(__file__).resolve().parent / "out"
WORK = Path(os.environ.get("FAISSCLASS_BENCH_WORK", "/tmp/faissclass-bench-scale"))


def cmd_data(a: argparse.Namespace) -> None:
    write_synthetic_store(WORK / "bank", a.n, a.dim, 1000, noise=4.0, seed=0, split=0,
                          dtype="float32", fsync=False)
    Q = np.concatenate([x for x, _ in synthetic_batches(a.nq, a.dim, 1000, noise=4.0, seed=0,
                                                        split=1)])
    np.save(WORK / "queries.npy", Q)
    print(f"{WORK / 'bank'}: {a.n} x {a.dim}; {a.nq} queries", file=sys.stderr)


def _timed_search(searcher, Q, k, repeats):
    searcher.search(Q[:256], k)  # warm-up
    times, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = searcher.search(Q, k)
        times.append(time.perf_counter() - t)
    return res, times


def cmd_sharded(a: argparse.Namespace) -> None:
    from faissclass import distributed as dist
    from faissclass.search import ShardedSearcher
    from faissclass.search import sharded as sh

    dist.init_from_env("gloo", timeout_s=3600)
    store = fc.EmbeddingStore(WORK / "bank")
    Q = np.load(WORK / "queries.npy")
    s = ShardedSearcher(store, chunk=a.chunk)
    # Time the parts: local search, and gather + merge, by wrapping the shard's search.
    local_t = [0.0]
    real = s._local_search

    def timed_local(q, k, params):
        t = time.perf_counter()
        out = real(q, k, params)
        local_t[0] += time.perf_counter() - t
        return out

    s._local_search = timed_local
    res, times = None, []
    s.search(Q[:256], a.k)
    locals_ = []
    for _ in range(a.repeats):
        local_t[0] = 0.0
        dist.barrier()
        t = time.perf_counter()
        res = s.search(Q, a.k)
        times.append(time.perf_counter() - t)
        locals_.append(local_t[0])
    peak = vm_bytes("VmHWM")
    rows = dist.all_gather_objects({"rank": dist.rank(), "peak": peak,
                                    "rows": s.stop - s.start, "local": locals_})
    if dist.is_main():
        np.save(WORK / "sharded-ids.npy", res.ids)
        (WORK / "sharded.json").write_text(json.dumps(
            {"times": times, "ranks": rows, "world": dist.world_size(), "k": a.k,
             "chunk": a.chunk, "merge_module": sh.__name__}))


def cmd_single(a: argparse.Namespace) -> None:
    store = fc.EmbeddingStore(WORK / "bank")
    Q = np.load(WORK / "queries.npy")
    index = fc.VectorIndex.build(store, progress=False)
    res, times = _timed_search(index, Q, a.k, a.repeats)
    sharded = json.loads((WORK / "sharded.json").read_text())
    ids_equal = bool(np.array_equal(np.load(WORK / "sharded-ids.npy"), res.ids))
    t_sh, t_1 = median(sharded["times"]), median(times)
    slowest_local = max(median(r["local"]) for r in sharded["ranks"])
    row = {"n": len(store), "queries": len(Q), "k": a.k, "world": sharded["world"],
           "single s": t_1, "sharded s": t_sh, "sharded ÷ single": t_sh / t_1,
           "gather+merge share": (t_sh - slowest_local) / t_sh, "ids equal": ids_equal,
           "rank peak RSS MB": ", ".join(f"{r['peak'] / 2**20:,.0f}" for r in
                                         sharded["ranks"]),
           "rank shard MB": ", ".join(f"{r['rows'] * store.dim * 4 / 2**20:,.0f}" for r in
                                      sharded["ranks"]),
           "single peak RSS MB": vm_bytes("VmHWM") / 2**20}
    print(markdown_table([row]))
    save_record("bench_scale_sharded", {"env": environment(), "row": row,
                                        "single_times": times, "sharded": sharded}, OUT_DIR)


OOC_CHILD = """
import json, os, resource, sys, time, numpy as np
cap = sys.argv[3]
if cap.startswith("cgroup:"):  # a memory cgroup: RSS + page cache capped, as a job's limit
    with open(cap[len("cgroup:"):], "w") as f:
        f.write(str(os.getpid()))
else:  # the address space (stricter: BLAS and thread reservations count in full)
    resource.setrlimit(resource.RLIMIT_AS, (int(cap), int(cap)))
import faissclass as fc
from faissclass.search import search_source
store = fc.EmbeddingStore(sys.argv[1], verify_reads=sys.argv[5] == "1")
Q = np.load(sys.argv[2])
t = time.perf_counter()
res = search_source(store, Q, int(sys.argv[4]), batch_size=65536, progress=False)
dt = time.perf_counter() - t
np.save(sys.argv[2] + ".ooc.npy", res.ids)
hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
print(json.dumps({"seconds": dt, "peak_kb": hwm}))
"""


def _memory_cgroup(cap: int) -> tuple[str, Path] | None:
    """A memory cgroup limited to ``cap`` bytes (v1 or v2; needs root): (tasks file,
    file of its peak usage), or None where none can be made."""
    for base, limit, tasks, peak in (
            (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "tasks",
             "memory.max_usage_in_bytes"),
            (Path("/sys/fs/cgroup"), "memory.max", "cgroup.procs", "memory.peak")):
        if not (base / limit).exists() and not (base / "cgroup.controllers").exists():
            continue
        g = base / "faissclass-ooc"
        try:
            g.mkdir(exist_ok=True)
            (g / limit).write_text(f"{cap}\n")
        except OSError:
            continue
        return str(g / tasks), g / peak
    return None


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cmd_outofcore(a: argparse.Namespace) -> None:
    root = WORK / f"ooc-{a.n}"
    write_synthetic_store(root, a.n, a.dim, 1000, noise=4.0, seed=1, split=0, dtype="float16",
                          fsync=False)
    store = fc.EmbeddingStore(root)
    Q = np.concatenate([x for x, _ in synthetic_batches(a.nq, a.dim, 1000, noise=4.0, seed=1,
                                                        split=1)])
    qp = WORK / "ooc-queries.npy"
    np.save(qp, Q)
    cap = int(a.cap_gib * 2**30)
    store_bytes = sum(s.bytes for s in store.shards)

    cg = _memory_cgroup(cap) if a.cap_kind == "cgroup" else None
    if a.cap_kind == "cgroup" and cg is None:
        raise SystemExit("no memory cgroup can be made here (needs root and cgroup v1/v2 "
                         "memory); use --cap-kind address-space")
    cap_arg = f"cgroup:{cg[0]}" if cg else str(cap)

    def child(verify: bool) -> dict:
        # glibc reserves 64 MB of address space per thread's malloc arena: under an
        # address-space cap (RLIMIT_AS), not RSS, that reservation alone can exhaust it.
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        out = subprocess.run([sys.executable, "-c", OOC_CHILD, str(root), str(qp), cap_arg,
                              str(a.k), "1" if verify else "0"], capture_output=True,
                             text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"out-of-core child failed ({out.returncode}): "
                               f"{out.stderr[-2000:]}")
        got = json.loads(out.stdout)
        if cg is not None:
            try:  # the cgroup's peak: RSS and page cache charged to it (v1 resets to 0)
                got["cgroup_peak_MB"] = int(cg[1].read_text()) / 2**20
                cg[1].write_text("0\n")
            except (OSError, ValueError):
                pass
        return got

    # The part that fits, searched in memory (float32 flat, as fast as FAISS goes).
    fit_rows = a.fit_rows
    part = store.take(np.arange(fit_rows)).embeddings
    idx = fc.VectorIndex(a.dim).add(part)
    idx.search(Q[:256], a.k)
    mem_times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        idx.search(Q, a.k)
        mem_times.append(time.perf_counter() - t)
    del idx, part
    warm = [child(True) for _ in range(a.repeats)]
    cold = None
    if _drop_caches():
        cold = child(True)
    mem_rate = fit_rows / median(mem_times)
    ooc_rate = a.n / median([w["seconds"] for w in warm])
    row = {"store rows": a.n, "store GB": store_bytes / 1e9, "cap GiB": cap / 2**30,
           "cap kind": a.cap_kind,
           "queries": a.nq, "k": a.k, "in-memory rows": fit_rows,
           "in-memory vectors/s": mem_rate, "out-of-core vectors/s (warm)": ooc_rate,
           "ratio (warm)": ooc_rate / mem_rate,
           "out-of-core s (warm)": median([w["seconds"] for w in warm]),
           "out-of-core s (cold)": cold["seconds"] if cold else None,
           "ratio (cold)": (a.n / cold["seconds"] / mem_rate) if cold else None,
           "peak RSS MB": max(w["peak_kb"] for w in warm) / 1024,
           "cgroup peak MB": max((w.get("cgroup_peak_MB", 0) for w in warm), default=None)}
    # Exactness: the capped child's ids against an in-memory flat index over the whole
    # store (float32, built here without a cap; same tie order: equal scores by id).
    ids = np.load(str(qp) + ".ooc.npy")
    ref = fc.VectorIndex.build(store, progress=False).search(Q[:200], a.k)
    row["first 200 queries equal"] = bool(np.array_equal(ids[:200], ref.ids))
    print(markdown_table([row]))
    save_record("bench_scale_outofcore", {"env": environment(), "row": row, "warm": warm,
                                          "cold": cold, "memory_times": mem_times}, OUT_DIR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["data", "sharded", "single", "outofcore"])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=16_384)
    ap.add_argument("--cap-gib", type=float, default=1.0)
    ap.add_argument("--cap-kind", choices=["cgroup", "address-space"], default="cgroup",
                    help="out-of-core: a memory cgroup (RSS + page cache; root) or RLIMIT_AS")
    ap.add_argument("--fit-rows", type=int, default=500_000,
                    help="out-of-core: rows searched in memory as the baseline")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    {"data": cmd_data, "sharded": cmd_sharded, "single": cmd_single,
     "outofcore": cmd_outofcore}[a.step](a)


if __name__ == "__main__":
    main()
