"""Images in memory (ArrayDataset) and the idx files of (Fashion-)MNIST."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import StoreError
from .images import to_rgb

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "ArrayDataset", "load_fashion_mnist",
           "read_idx"]

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


class ArrayDataset:
    """Images in memory (n, H, W) or (n, H, W, 3) uint8, or PIL images, with labels.

    ids default to 0..n-1, paths to ``"array:<i>"``.
    """

    def __init__(self, images: Any, labels: Any, ids: Any = None,
                 paths: Sequence[str] | None = None, classes: Sequence[str] | None = None
                 ) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        n = len(images)
        if self.labels.shape != (n,):
            raise ValueError(f"{n} images but labels of shape {self.labels.shape}")
        self.ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.paths = list(paths) if paths is not None else [f"array:{i}" for i in range(n)]
        self.classes = None if classes is None else list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Any:
        """The i-th image as RGB. Raises OSError naming it if it cannot be one."""
        try:
            return to_rgb(self.images[i])
        except Exception as exc:  # any undecodable input is reported, not fatal
            raise OSError(f"{self.paths[i]}: unreadable image ({type(exc).__name__}: "
                          f"{exc})") from exc
