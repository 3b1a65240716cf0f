"""One seeded generator of synthetic embeddings, for tests and benchmarks.

Cluster centres on the unit sphere plus isotropic noise, L2-normalised: a
difficulty knob (``noise``) moves kNN accuracy from trivial to hopeless.
Generated in blocks of rows, so memory holds the output and one block.

Isotropic noise in d dimensions is *not* what real embeddings look like: every
point is nearly equidistant from every other (distances concentrate), so exact
kNN still works by a whisker while IVF and HNSW cannot find the neighbours at any
useful speed (measured: recall@20 0.25 at nprobe 32 of 4096 on 1.28M × 384). Real
embeddings vary along few directions. ``latent`` = r adds that: classes live in an
r-dimensional subspace, overlapping as much as ``separation`` says, each a mixture
of ``modes`` sub-clusters (which makes the class mean a worse prototype than the
neighbours, as on real data), with the isotropic ``noise`` on top. ``latent=0`` is
the isotropic generator, draw for draw.
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


def _structure(dim: int, n_classes: int, seed: int, latent: int, modes: int,
               separation: float, mode_spread: float
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(centres (n_classes, modes, dim or latent), latent basis (latent, dim) with
    orthonormal rows, or None): the same for every split of a seed."""
    if latent == 0:
        return _centres(dim, n_classes, seed)[:, None, :], None
    rng = np.random.default_rng([seed, 0, 1])
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)
    c = rng.standard_normal((n_classes, 1, latent)) * (separation / np.sqrt(latent))
    if modes > 1:
        c = c + rng.standard_normal((n_classes, modes, latent)) * (mode_spread
                                                                    / np.sqrt(latent))
    return c.astype(np.float32), basis


def synthetic_batches(n: int, dim: int, n_classes: int, *, noise: float, seed: int,
                      split: int, block: int = 65_536, latent: int = 0, modes: int = 1,
                      separation: float = 2.0, mode_spread: float = 1.0):
    """Yield (vectors (b, dim) float32 unit rows, labels (b,) int64) blocks of one split of
    a synthetic dataset: the same class centres for every split of a seed, independent
    samples per ``split`` (0 = train, 1 = val, ...). Labels are balanced (row i has
    class i mod n_classes, then the order is shuffled within each block).

    ``latent`` = 0: class centres on the unit sphere plus isotropic noise of norm
    ~``noise``. ``latent`` = r > 0 (what real embeddings look like: see the module's
    docstring): points vary in an r-dimensional subspace — class centres at norm
    ~``separation`` there, ``modes`` sub-centres per class at ~``mode_spread`` from
    it, each point a within-class draw of norm ~1 around one of them — plus the
    isotropic ``noise`` in all ``dim`` dimensions, then L2-normalised. Smaller
    ``separation`` or larger ``noise``: harder."""
    latent = check_int(latent, "latent", min_value=0)
    modes = check_int(modes, "modes")
    if latent > dim:
        raise ValueError(f"latent must be at most dim ({dim}); got {latent}")
    centres, basis = _structure(dim, n_classes, seed, latent, modes, separation, mode_spread)
    rng = np.random.default_rng([seed, 1 + split])
    extra = np.random.default_rng([seed, 1 + split, 1])  # the latent model's own draws
    for a in range(0, n, block):
        b = min(a + block, n)
        lab = np.arange(a, b, dtype=np.int64) % n_classes
        rng.shuffle(lab)
        iso = noise * rng.standard_normal((b - a, dim), dtype=np.float32) \
            / np.float32(np.sqrt(dim))
        if basis is None:
            x = centres[lab, 0] + iso
        else:
            mode = extra.integers(0, modes, b - a) if modes > 1 else 0
            z = centres[lab, mode] + extra.standard_normal(
                (b - a, latent), dtype=np.float32) / np.float32(np.sqrt(latent))
            x = z @ basis + iso
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x, lab


def write_synthetic_store(root, n: int, dim: int, n_classes: int, *, noise: float,
                          seed: int, split: int, dtype: str = "float16",
                          block: int = 65_536, progress: bool | None = None,
                          latent: int = 0, modes: int = 1, separation: float = 2.0,
                          mode_spread: float = 1.0, **writer: object):
    """Stream a synthetic split straight into a store (memory: one block), resumably:
    an interrupted run continues after the rows already stored.

    The manifest's metadata records the generator (dimension, classes, its knobs,
    seed), so that train and val stores of different generators are refused together.
    """
    from tqdm.auto import tqdm

    from ..distributed import show_progress
    from ..store import EmbeddingStore, ShardWriter

    gen: dict[str, object] = {"name": "faissclass.data.synthetic", "dim": int(dim),
                              "classes": int(n_classes), "noise": float(noise),
                              "seed": int(seed)}
    shape = {}
    if latent:
        shape = {"latent": int(latent), "modes": int(modes), "separation": float(separation),
                 "mode_spread": float(mode_spread)}
        gen.update(shape)
    meta = {"generator": gen, "split": int(split)}
    with ShardWriter(root, dim=dim, dtype=dtype, classes=[f"class{i:04d}" for i in
                                                          range(n_classes)],
                     normalized=True, metadata=meta, **writer) as w:
        done = len(w)
        with tqdm(total=n, initial=done, unit="vec", unit_scale=True,
                  disable=not show_progress(progress), desc=f"synthetic split {split}") as bar:
            row = 0
            for x, lab in synthetic_batches(n, dim, n_classes, noise=noise, seed=seed,
                                            split=split, block=block, **shape):
                b = row + len(lab)
                if b > done:
                    s = max(0, done - row)
                    w.append(x[s:], lab[s:], ids=np.arange(row + s, b, dtype=np.int64))
                    bar.update(b - row - s)
                row = b
    return EmbeddingStore(root)
