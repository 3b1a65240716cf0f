"""Store write/read throughput against raw h5py, and streaming peak RSS.

For each dtype, the same in-memory arrays (embeddings, int64 labels, int64 ids)
are written and read back (a) through ShardWriter / EmbeddingStore and (b) with
raw h5py into one file, alternating A and B in every repeat; medians are
reported with the store/raw ratio. Files live in --tmp, so reads come from the
page cache, as they do right after an embedding run. Store reads open a fresh
EmbeddingStore each time and are timed with the read path's checksum pass on
(the default) and off, to report its cost.

    python benchmarks/bench_store.py                       # 1,000,000 x 384, 5 repeats
    python benchmarks/bench_store.py --rows 100000 --repeats 3

Writes a JSON record to benchmarks/out/ and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

import faissclass as fc
from faissclass.bench import (
    environment,
    markdown_table,
    median,
    reset_peak_rss,
    save_record,
    settle,
    timed,
    vm_bytes,
)

OUT_DIR = Path(__file__).resolve().parent / "out"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(path: Path, X: np.ndarray, y: np.ndarray, ids: np.ndarray, fsync: bool) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=X)
        f.create_dataset("labels", data=y)
        f.create_dataset("ids", data=ids)
    if fsync:
        fsync_file(path)


def raw_read(path: Path, to_float32: bool) -> np.ndarray:
    with h5py.File(path, "r") as f:
        X = f["embeddings"][:]
        f["labels"][:]
        f["ids"][:]
    return X.astype(np.float32, copy=False) if to_float32 else X


def store_write(root: Path, X: np.ndarray, y: np.ndarray, ids: np.ndarray, batch: int,
                fsync: bool) -> None:
    with fc.ShardWriter(root, dim=X.shape[1], dtype=str(X.dtype), fsync=fsync) as w:
        for i in range(0, len(X), batch):
            w.append(X[i:i + batch], y[i:i + batch], ids[i:i + batch])


def settled_time(fn, nbytes: int) -> float:
    """Time fn after :func:`faissclass.bench.settle` (dirty pages flushed, fresh memory
    touched), so that neither side of an A/B pair pays the other's writeback."""
    settle(nbytes)
    return timed(fn)


def rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def stream_child(root: str, batch: int) -> None:
    """Run in a subprocess: peak RSS growth while streaming the store as float32."""
    store = fc.EmbeddingStore(root)
    reset_peak_rss()
    before = vm_bytes("VmRSS")
    rows = sum(len(b.ids) for b in store.iter_batches(batch))
    print(rows, before, vm_bytes("VmHWM") - before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--append-batch", type=int, default=65_536, help="rows per append()")
    ap.add_argument("--read-batch", type=int, default=65_536, help="rows per iter_batches batch")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: $TMPDIR)")
    ap.add_argument("--stream-child", nargs=2, metavar=("ROOT", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        stream_child(args.stream_child[0], int(args.stream_child[1]))
        return

    scratch = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.tmp))
    rng = np.random.default_rng(0)
    X32 = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    X32 /= np.linalg.norm(X32, axis=1, keepdims=True)
    y = rng.integers(0, 1000, args.rows)
    ids = np.arange(args.rows, dtype=np.int64)
    rows_out: list[dict] = []
    record: dict = {"env": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                    "results": rows_out}
    try:
        for dtype in args.dtypes:
            X = X32.astype(dtype)
            mb = (X.nbytes + y.nbytes + ids.nbytes) / 1e6
            raw, root = scratch / "raw.h5", scratch / "store"
            t: dict[str, list[float]] = {}
            for rep in range(args.repeats + 1):  # repeat 0 is a warm-up, not recorded
                for fsync in (False, True):
                    sfx = "_fsync" if fsync else ""
                    ops = {
                        "raw_write" + sfx: lambda fsync=fsync, raw=raw, X=X: raw_write(
                            raw, X, y, ids, fsync),
                        "store_write" + sfx: lambda fsync=fsync, root=root, X=X: store_write(
                            root, X, y, ids, args.append_batch, fsync),
                    }
                    for k in (list(ops) if rep % 2 else list(ops)[::-1]):  # alternate order
                        rm(raw if k.startswith("raw") else root)
                        dt = settled_time(ops[k], 2 * X.nbytes)
                        if rep:
                            t.setdefault(k, []).append(dt)
                # A fresh store object per read, as in a new process: the read path's
                # checksum pass (verify_reads, on by default) runs once per object.
                def opened(verify: bool = True, root: Path = root) -> fc.EmbeddingStore:
                    return fc.EmbeddingStore(root, verify_reads=verify)

                reads = {
                    "raw_read": lambda raw=raw: raw_read(raw, False),
                    "store_load_native": lambda: opened().load(dtype=None),
                    "store_load_native_noverify": lambda: opened(False).load(dtype=None),
                    "raw_read_f32": lambda raw=raw: raw_read(raw, True),
                    "store_load_f32": lambda: opened().load(),
                    "store_load_f32_noverify": lambda: opened(False).load(),
                    "store_iter_f32": lambda: [
                        None for _ in opened().iter_batches(args.read_batch)],
                    "store_iter_f32_noverify": lambda: [
                        None for _ in opened(False).iter_batches(args.read_batch)],
                }
                for k in (list(reads) if rep % 2 else list(reads)[::-1]):
                    dt = settled_time(reads[k], 2 * X32.nbytes)
                    if rep:
                        t.setdefault(k, []).append(dt)
            med = {k: median(v) for k, v in t.items()}
            out = subprocess.run(
                [sys.executable, __file__, "--stream-child", str(root), str(args.read_batch)],
                capture_output=True, text=True, check=True).stdout.split()
            growth = int(out[2])
            batch_bytes = args.read_batch * (args.dim * 4 + 16)
            row = {
                "dtype": dtype, "rows": args.rows, "dim": args.dim, "MB": round(mb, 1),
                "shards": len(fc.EmbeddingStore(root).shards),
                **{f"{k}_s": round(v, 4) for k, v in med.items()},
                **{f"{k}_MBps": round(mb / v) for k, v in med.items()},
                "write_ratio": med["raw_write"] / med["store_write"],
                "write_ratio_fsync": med["raw_write_fsync"] / med["store_write_fsync"],
                "read_ratio_native": med["raw_read"] / med["store_load_native"],
                "read_ratio_f32": med["raw_read_f32"] / med["store_load_f32"],
                "iter_ratio_f32": med["raw_read_f32"] / med["store_iter_f32"],
                "verify_cost_native": med["store_load_native"] / med[
                    "store_load_native_noverify"],
                "verify_cost_f32": med["store_load_f32"] / med["store_load_f32_noverify"],
                "verify_cost_iter": med["store_iter_f32"] / med["store_iter_f32_noverify"],
                "stream_rss_growth_MB": round(growth / 2**20, 1),
                "stream_rss_bound_MB": round((2 * batch_bytes + 200 * 2**20) / 2**20, 1),
                "all_timings_s": t,
            }
            rows_out.append(row)
            print(f"{dtype}: done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = save_record("bench_store", record, OUT_DIR)
    cols = [("dtype", "dtype"), ("MB", "MB"),
            ("raw_write_MBps", "raw write MB/s"), ("store_write_MBps", "store write MB/s"),
            ("write_ratio", "write ×raw"),
            ("raw_write_fsync_MBps", "raw write+fsync MB/s"),
            ("store_write_fsync_MBps", "store write+fsync MB/s"),
            ("write_ratio_fsync", "write+fsync ×raw"),
            ("raw_read_MBps", "raw read MB/s"), ("store_load_native_MBps", "store load MB/s"),
            ("read_ratio_native", "read ×raw"),
            ("raw_read_f32_MBps", "raw read→f32 MB/s"), ("store_load_f32_MBps", "load f32 MB/s"),
            ("read_ratio_f32", "load f32 ×raw"),
            ("store_iter_f32_MBps", "iter f32 MB/s"), ("iter_ratio_f32", "iter f32 ×raw"),
            ("verify_cost_native", "load: verified ÷ unverified time"),
            ("verify_cost_f32", "load f32: verified ÷ unverified"),
            ("verify_cost_iter", "iter f32: verified ÷ unverified"),
            ("stream_rss_growth_MB", "stream peak RSS +MB"),
            ("stream_rss_bound_MB", "bound MB")]
    print(markdown_table(rows_out, cols))
    print(f"\nrecord: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
