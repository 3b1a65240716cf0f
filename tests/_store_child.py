"""Child process for the crash and memory tests (run as a script, not collected)."""

import sys
import time

import numpy as np

import faissclass as fc


def write(root: str, n: int, batch: int, delay: float) -> None:
    """Deterministic data; resumes after whatever the store already holds."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, 32)).astype(np.float32)
    y = rng.integers(0, 5, n)
    ids = np.arange(n) * 7 + 3
    with fc.ShardWriter(root, dim=32, dtype="float16", shard_size=500,
                        classes=list("abcde"), metadata={"run": "crash-test"}) as w:
        start = len(w)
        assert not w.contains(ids[start:]).any()
        for i in range(start, n, batch):
            w.append(X[i:i + batch], y[i:i + batch], ids=ids[i:i + batch])
            if delay:
                time.sleep(delay)


def stream(root: str, batch: int) -> None:
    """Print the peak-RSS growth (bytes) while streaming the whole store."""
    store = fc.EmbeddingStore(root)
    # getrusage's ru_maxrss survives execve (it would report the parent's peak);
    # VmHWM is this process image's own peak, and writing 5 to clear_refs resets it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm("VmRSS")
    rows = 0
    for b in store.iter_batches(batch):
        rows += len(b.ids)
    print(rows, vm("VmHWM") - before)


def vm(field: str) -> int:
    """A /proc/self/status memory figure in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        stream(sys.argv[2], int(sys.argv[3]))
