"""Dataset layouts on disk, behind one table: ``make_dataset(name, root, split)``.

Every dataset has ``ids`` (int64, stable), ``labels`` (int64 indices into
``classes``), ``paths`` (str, relative to ``root``) and ``image(i)`` (a PIL RGB
image). Adding a layout is one entry in :data:`LAYOUTS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArrayDataset, load_fashion_mnist
from .images import to_rgb

__all__ = ["IMAGE_EXTENSIONS", "LAYOUTS", "ImageFolder", "LabelFileDataset", "Layout",
           "TinyImageNet", "make_dataset"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


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
                return to_rgb(img)
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




# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to open it, its splits, and a line of documentation."""

    open: Callable[..., Any]
    splits: tuple[str, ...]
    doc: str


def _imagefolder(root: Path, split: str | None, **_: Any) -> ImageFolder:
    if split is None:
        return ImageFolder(root)
    sub = root / split
    if not sub.is_dir():
        raise FileNotFoundError(f"{root}: no split {split!r} (expected {sub}/<class>/*.jpg); "
                                "omit the split to use the folder itself")
    return ImageFolder(sub)


def _imagenet(root: Path, split: str | None, *, label_file: str | os.PathLike[str] |
              None = None, **_: Any) -> Any:
    split = split or "train"
    train = ImageFolder(root / "train")
    if split == "train":
        return train
    val = root / "val"
    if label_file is not None:  # the flat val folder with its label file
        return LabelFileDataset(val, label_file, train.classes)
    ds = ImageFolder(val)
    if ds.classes != train.classes:
        raise ValueError(f"{val}: its class folders differ from {root / 'train'}'s; pass "
                         "label_file= for a flat val folder")
    return ds


def _fashion_mnist(root: Path | None, split: str | None, **_: Any) -> ArrayDataset:
    split = split or "train"
    images, labels = load_fashion_mnist(split, root or FASHION_MNIST_DIR)
    return ArrayDataset(images, labels,
                        paths=[f"fashion-mnist/{split}/{i}" for i in range(len(labels))],
                        classes=FASHION_MNIST_CLASSES)


def _label_file(root: Path, split: str | None, *, label_file: Any = None,
                classes_from: Any = None, **_: Any) -> LabelFileDataset:
    if label_file is None or classes_from is None:
        raise ValueError("the label-file layout needs label_file (lines '<file> <label>') and "
                         "classes_from (the train folder whose sub-folders name the classes)")
    return LabelFileDataset(root, label_file, ImageFolder(classes_from).classes)


LAYOUTS: dict[str, Layout] = {
    "imagefolder": Layout(_imagefolder, (), "root/<class>/*.jpg, or root/<split>/<class>/*.jpg"),
    "tiny-imagenet": Layout(lambda root, split, **_: TinyImageNet(root, split or "train"),
                            ("train", "val"), "the official Tiny ImageNet layout"),
    "imagenet": Layout(_imagenet, ("train", "val"),
                       "root/train/<wnid>/*.JPEG; val as class folders or flat + label_file"),
    "label-file": Layout(_label_file, (), "a flat folder + '<file> <label>' lines"),
    "fashion-mnist": Layout(_fashion_mnist, ("train", "test"),
                            "the idx files of Debian's dataset-fashion-mnist"),
}


def make_dataset(name: str, root: str | os.PathLike[str] | None = None,
                 split: str | None = None, **options: Any) -> Any:
    """Open a dataset by layout name (see :data:`LAYOUTS`).

    Parameters
    ----------
    name : str
        A key of :data:`LAYOUTS`.
    root : path
        The dataset's root folder (Fashion-MNIST: defaults to the Debian package's).
    split : str, optional
        One of the layout's splits; layouts without named splits take a sub-folder.
    options
        Layout-specific: ``label_file``, ``classes_from``.
    """
    layout = LAYOUTS.get(name)
    if layout is None:
        raise ValueError(f"unknown dataset layout {name!r}; known: {sorted(LAYOUTS)}")
    if split is not None and layout.splits and split not in layout.splits:
        raise ValueError(f"dataset {name!r} has splits {list(layout.splits)}; got {split!r}")
    if root is None and name != "fashion-mnist":
        raise ValueError(f"dataset {name!r} needs a root folder")
    return layout.open(None if root is None else Path(root), split, **options)
