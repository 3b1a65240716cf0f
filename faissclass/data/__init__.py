"""Datasets: layouts on disk behind ``make_dataset``, arrays in memory, splits, synthetic data.

No torch here: datasets hand out PIL images. Files: ``layouts`` (ImageFolder,
TinyImageNet, ImageNet, label files; the LAYOUTS table), ``arrays`` (ArrayDataset,
Fashion-MNIST's idx files), ``images`` (any image to RGB, 8 bits), ``splits``,
``synthetic`` (one seeded generator of embeddings for tests and benchmarks).
"""

from .arrays import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArrayDataset,
    load_fashion_mnist,
    read_idx,
)
from .images import to_rgb, to_uint8
from .layouts import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    ImageFolder,
    LabelFileDataset,
    Layout,
    TinyImageNet,
    make_dataset,
)
from .splits import load_splits, make_splits, save_splits
from .synthetic import clustered, synthetic_batches, write_synthetic_store

# Older private names, kept for code written against faissclass 0.1.
_rgb = to_rgb
_to_uint8 = to_uint8

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "ArrayDataset",
    "ImageFolder",
    "LabelFileDataset",
    "Layout",
    "TinyImageNet",
    "clustered",
    "load_fashion_mnist",
    "load_splits",
    "make_dataset",
    "make_splits",
    "read_idx",
    "save_splits",
    "synthetic_batches",
    "to_rgb",
    "to_uint8",
    "write_synthetic_store",
]
