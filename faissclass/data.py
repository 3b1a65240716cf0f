"""Dataset readers. No torch here: readers return numpy arrays.

So far: the idx format of (Fashion-)MNIST, as shipped by the Debian package
``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._validation import StoreError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic 0x0000TTNN, NN big-endian int32
    dims, then the data. Raises StoreError naming the file when it is damaged."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise StoreError(f"{path}: unreadable idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise StoreError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != need:
        raise StoreError(f"{path}: holds {len(body)} data bytes, its header promises {need} "
                         "(truncated?)")
    return np.frombuffer(body, dtype).reshape(tuple(dims)).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike[str] = FASHION_MNIST_DIR
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int64) of Fashion-MNIST's "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: install the Debian package "
                                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise StoreError(f"{root}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    return images, labels
