"""Datasets and readers. No torch here: datasets hand out PIL images.

Every dataset has ``ids`` (int64, stable), ``labels`` (int64 indices into
``classes``), ``paths`` (str) and ``image(i)`` (a PIL RGB image; grayscale,
palette, CMYK and alpha images are converted). Layouts: in-memory arrays,
ImageFolder (root/class/*.jpg), Tiny ImageNet, and the idx files of
(Fashion-)MNIST shipped by the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import StoreError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ArrayDataset",
    "ImageFolder",
    "LabelFileDataset",
    "TinyImageNet",
    "load_fashion_mnist",
    "load_splits",
    "make_splits",
    "read_idx",
    "save_splits",
]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

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


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype scaled to 0..255 uint8.

    uint8 as is; bool x 255; 16-bit (uint16, or int16/int32 within 0..65535, as
    16-bit PNGs decode) / 257; floats within [0, 1] x 255, within [0, 255] as is;
    anything else min-max scaled. NaN and inf are refused (an undecodable image).
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind not in "iuf":
        raise ValueError(f"pixel values of dtype {a.dtype} are not an image")
    if a.size == 0:
        raise ValueError(f"empty image (shape {a.shape})")
    x = a.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the image holds NaN or inf pixel values")
    lo, hi = float(x.min()), float(x.max())
    if a.dtype.kind == "f":
        if lo >= 0 and hi <= 1:
            x = x * 255.0
        elif not (lo >= 0 and hi <= 255):
            x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    elif lo >= 0 and hi <= 255 and a.dtype.itemsize == 1:
        pass
    elif lo >= 0 and hi <= 65535 and (a.dtype.itemsize >= 2):
        x = x / 257.0  # 16-bit range, whatever the container
    else:
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _rgb(img: Any) -> Any:
    """An RGB PIL image from a PIL image or an array (H, W), (H, W, 1|3|4) of any
    numeric dtype. 16-bit, 32-bit integer and float images are scaled to 8 bits
    (PIL's own convert("RGB") clips them: all white or all black); palette and
    alpha images are composited on white; empty images are refused."""
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.width == 0 or img.height == 0:
            raise ValueError(f"empty image ({img.width}x{img.height})")
        if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            img = np.asarray(img)
        else:
            if img.mode in ("P", "PA", "LA", "RGBA"):  # palette/alpha: via RGBA onto white
                img = img.convert("RGBA")
                bg = Image.new("RGB", img.size, (255, 255, 255))
                bg.paste(img, mask=img.getchannel("A"))
                return bg
            return img.convert("RGB")
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4); got shape {a.shape}")
    if 0 in a.shape[:2]:
        raise ValueError(f"empty image (shape {a.shape})")
    a = _to_uint8(a)
    if a.ndim == 3 and a.shape[2] == 4:
        return _rgb(Image.fromarray(a, "RGBA"))
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


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
            return _rgb(self.images[i])
        except Exception as exc:  # any undecodable input is reported, not fatal
            raise OSError(f"{self.paths[i]}: unreadable image ({type(exc).__name__}: "
                          f"{exc})") from exc


class _FileDataset:
    """Images on disk: ``paths`` relative to ``root``."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Any:
        """The i-th image as RGB. Raises OSError naming the file if it is unreadable:
        missing, truncated, not an image, a decompression bomb (PIL's pixel limit),
        empty, or holding NaN pixels."""
        from PIL import Image

        path = self.root / self.paths[i]
        try:
            with Image.open(path) as img:
                img.load()
                return _rgb(img)
        except Exception as exc:  # PIL raises many types (SyntaxError, struct.error, ...)
            raise OSError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolder(_FileDataset):
    """root/<class>/*.jpg (any depth below the class folder is not searched).

    Classes are the sorted sub-folder names; ids number the images in sorted
    (class, file name) order, so they are stable across runs.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root}: no class folders (expected root/<class>/*.jpg)")
        paths, labels = [], []
        for c, name in enumerate(self.classes):
            files = _images_in(self.root / name)
            if not files:
                raise ValueError(f"{self.root / name}: class {name!r} has no images")
            paths += [str(f.relative_to(self.root)) for f in files]
            labels += [c] * len(files)
        self.paths, self.labels = paths, np.asarray(labels, np.int64)
        self.ids = np.arange(len(paths), dtype=np.int64)


class TinyImageNet(_FileDataset):
    """The official Tiny ImageNet layout.

    train/<wnid>/images/*.JPEG; val/images/*.JPEG with val/val_annotations.txt
    (file, wnid, box); wnids.txt fixes the class order; words.txt gives readable
    names (``class_names``).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
        wnids_file = self.root / "wnids.txt"
        if not wnids_file.is_file():
            raise FileNotFoundError(f"{wnids_file} missing: not a Tiny ImageNet root")
        self.classes = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
        index = {w: i for i, w in enumerate(self.classes)}
        words = {}
        if (self.root / "words.txt").is_file():
            for line in (self.root / "words.txt").read_text().splitlines():
                if "\t" in line:
                    w, name = line.split("\t", 1)
                    words[w] = name.split(",")[0].strip()
        self.class_names = [words.get(w, w) for w in self.classes]
        paths, labels = [], []
        if split == "train":
            for w in self.classes:
                folder = self.root / "train" / w / "images"
                files = _images_in(folder) if folder.is_dir() else []
                if not files:
                    raise ValueError(f"{folder}: class {w!r} has no images")
                paths += [str(f.relative_to(self.root)) for f in files]
                labels += [index[w]] * len(files)
        else:
            ann = self.root / "val" / "val_annotations.txt"
            if not ann.is_file():
                raise FileNotFoundError(f"{ann} missing: Tiny ImageNet val needs its "
                                        "annotation file")
            for n, line in enumerate(ann.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) < 2:
                    raise ValueError(f"{ann}:{n}: expected 'file<TAB>wnid...', got {line!r}")
                if parts[1] not in index:
                    raise ValueError(f"{ann}:{n}: wnid {parts[1]!r} is not in {wnids_file}")
                paths.append(f"val/images/{parts[0]}")
                labels.append(index[parts[1]])
            order = np.argsort(paths, kind="stable")
            paths = [paths[i] for i in order]
            labels = [labels[i] for i in order]
        self.paths, self.labels = paths, np.asarray(labels, np.int64)
        self.ids = np.arange(len(paths), dtype=np.int64)


class LabelFileDataset(_FileDataset):
    """A flat folder of images with a label file: one ``<file> <label>`` per line
    (whitespace or comma separated), e.g. ImageNet's val set with
    ``classes`` = the wnids of the train folders and labels given as wnids or as
    0-based class indices."""

    def __init__(self, root: str | os.PathLike[str], label_file: str | os.PathLike[str],
                 classes: Sequence[str]) -> None:
        self.root = Path(root)
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        paths, labels = [], []
        lf = Path(label_file)
        for n, line in enumerate(lf.read_text().splitlines(), 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{lf}:{n}: expected '<file> <label>', got {line!r}")
            name, lab = parts[0], parts[1]
            if lab in index:
                code = index[lab]
            elif lab.isdigit() and int(lab) < len(self.classes):
                code = int(lab)
            else:
                raise ValueError(f"{lf}:{n}: label {lab!r} is not one of the "
                                 f"{len(self.classes)} classes")
            paths.append(name)
            labels.append(code)
        order = np.argsort(paths, kind="stable")
        self.paths = [paths[i] for i in order]
        self.labels = np.asarray(labels, np.int64)[order]
        self.ids = np.arange(len(self.paths), dtype=np.int64)


def make_splits(labels: Any, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded stratified split of rows 0..n-1 by fraction, e.g.
    ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (fractions must sum to 1).

    Each class is shuffled with the seed and cut in the given proportions
    (largest-remainder rounding), so every split holds every class that is
    large enough. Returns sorted row indices per split.
    """
    y = np.asarray(labels)
    names = list(fractions)
    f = np.asarray([float(fractions[k]) for k in names])
    if np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1; got {fractions}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        exact = f * rows.size
        counts = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - counts), kind="stable")[:rows.size - counts.sum()]:
            counts[j] += 1
        for k, part in zip(names, np.split(rows, np.cumsum(counts)[:-1]), strict=True):
            out[k].append(part)
    return {k: np.sort(np.concatenate(v)) if v else np.empty(0, np.int64)
            for k, v in out.items()}


def save_splits(path: str | os.PathLike[str], splits: dict[str, np.ndarray],
                **meta: Any) -> None:
    """Write splits (and what they were made from: dataset, seed, ...) to JSON."""
    doc = {"format": "faissclass.splits", "meta": meta,
           "splits": {k: np.asarray(v).tolist() for k, v in splits.items()}}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def load_splits(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(splits, meta) as saved by :func:`save_splits`."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable splits file ({exc})") from exc
    if doc.get("format") != "faissclass.splits":
        raise StoreError(f"{path}: not a faissclass splits file")
    return {k: np.asarray(v, np.int64) for k, v in doc["splits"].items()}, doc.get("meta", {})
