"""One seeded generator of synthetic embeddings, for tests and benchmarks.

Cluster centres on the unit sphere plus isotropic noise, L2-normalised: a
difficulty knob (``noise``) moves kNN accuracy from trivial to hopeless.
Generated in blocks of rows, so memory holds the output and one block.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_int

__all__ = ["clustered", "synthetic_batches", "write_synthetic_store"]


def clustered(n: int, dim: int, n_clusters: int, *, noise: float, seed: int,
              n_queries: int = 0, block: int = 65_536, query_labels: bool = False
              ) -> tuple[np.ndarray, ...]:
    """(database (n, dim), labels (n,), queries (n_queries, dim)), L2-normalised float32;
    with ``query_labels``, the queries' labels (n_queries,) come fourth.

    Points are cluster centres plus isotropic noise of norm ~``noise``; queries
    are drawn the same way but are not in the database. The numbers do not
    depend on ``block`` (numpy draws the same stream in one call or in blocks).
    """
    n, dim = check_int(n, "n", min_value=0), check_int(dim, "dim")
    n_clusters = check_int(n_clusters, "n_clusters")
    n_queries, block = check_int(n_queries, "n_queries", min_value=0), check_int(block, "block")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n + n_queries
    lab = rng.integers(0, n_clusters, total)
    x = np.empty((total, dim), np.float32)
    for a in range(0, total, block):
        b = min(a + block, total)
        x[a:b] = centres[lab[a:b]] + noise * rng.standard_normal((b - a, dim)).astype(
            np.float32) / np.sqrt(dim)
        x[a:b] /= np.linalg.norm(x[a:b], axis=1, keepdims=True)
    if query_labels:
        return x[:n], lab[:n], x[n:], lab[n:]
    return x[:n], lab[:n], x[n:]


def _centres(dim: int, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    c = rng.standard_normal((n_classes, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c


def synthetic_batches(n: int, dim: int, n_classes: int, *, noise: float, seed: int,
                      split: int, block: int = 65_536):
    """Yield (vectors (b, dim) float32 unit rows, labels (b,) int64) blocks of one split of
    a synthetic dataset: the same class centres for every split of a seed, independent
    samples per ``split`` (0 = train, 1 = val, ...). Labels are balanced (row i has
    class i mod n_classes, then the order is shuffled within each block)."""
    centres = _centres(dim, n_classes, seed)
    rng = np.random.default_rng([seed, 1 + split])
    for a in range(0, n, block):
        b = min(a + block, n)
        lab = np.arange(a, b, dtype=np.int64) % n_classes
        rng.shuffle(lab)
        x = centres[lab] + noise * rng.standard_normal((b - a, dim), dtype=np.float32) \
            / np.float32(np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x, lab


def write_synthetic_store(root, n: int, dim: int, n_classes: int, *, noise: float,
                          seed: int, split: int, dtype: str = "float16",
                          block: int = 65_536, progress: bool | None = None, **writer: object):
    """Stream a synthetic split straight into a store (memory: one block), resumably:
    an interrupted run continues after the rows already stored.

    The manifest's metadata records the generator (dimension, classes, noise, seed),
    so that train and val stores of different generators are refused together.
    """
    from tqdm.auto import tqdm

    from ..distributed import show_progress
    from ..store import EmbeddingStore, ShardWriter

    meta = {"generator": {"name": "faissclass.data.synthetic", "dim": int(dim),
                          "classes": int(n_classes), "noise": float(noise), "seed": int(seed)},
            "split": int(split)}
    with ShardWriter(root, dim=dim, dtype=dtype, classes=[f"class{i:04d}" for i in
                                                          range(n_classes)],
                     normalized=True, metadata=meta, **writer) as w:
        done = len(w)
        with tqdm(total=n, initial=done, unit="vec", unit_scale=True,
                  disable=not show_progress(progress), desc=f"synthetic split {split}") as bar:
            row = 0
            for x, lab in synthetic_batches(n, dim, n_classes, noise=noise, seed=seed,
                                            split=split, block=block):
                b = row + len(lab)
                if b > done:
                    s = max(0, done - row)
                    w.append(x[s:], lab[s:], ids=np.arange(row + s, b, dtype=np.int64))
                    bar.update(b - row - s)
                row = b
    return EmbeddingStore(root)
