"""Figures for results (needs the ``plot`` extra: matplotlib). Each function returns
the matplotlib Figure and draws on ``ax`` when given one; nothing is shown or saved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import cumulative_accuracy

try:
    import matplotlib.pyplot as plt
except ImportError as _exc:  # pragma: no cover - exercised only without matplotlib
    raise ImportError("faissclass.plots needs matplotlib: pip install 'faissclass[plot]'") from _exc

__all__ = ["plot_caf", "plot_confusion", "plot_image_grid"]


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_caf(curves: Mapping[str, Any] | Any, ax: Any = None) -> Any:
    """Cumulative accuracy function: per accuracy level, the share of classes at or below it.

    Parameters
    ----------
    curves : per-class accuracies (array), or {name: per-class accuracies} to compare
    """
    fig, ax = _axes(ax, (5, 4))
    items = curves.items() if isinstance(curves, Mapping) else [("", curves)]
    for name, acc in items:
        lv, share = cumulative_accuracy(acc)
        ax.step(lv, share, where="post", label=name or None)
    ax.set_xlabel("class accuracy ≤ a")
    ax.set_ylabel("share of classes")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if isinstance(curves, Mapping):
        ax.legend()
    return fig


def plot_confusion(cm: Any, classes: Sequence[Any] | None = None, ax: Any = None,
                   normalize: bool = True) -> Any:
    """Confusion matrix (rows true, columns predicted) as an image, row-normalised."""
    m = np.asarray(cm, dtype=float)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
    n = m.shape[0]
    fig, ax = _axes(ax, (max(4, 0.35 * n), max(4, 0.35 * n)))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if classes is not None and n <= 40:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90)
        ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def plot_image_grid(images: Sequence[Any], true: Sequence[Any], pred: Sequence[Any],
                    cols: int = 8) -> Any:
    """Images with their true and predicted labels; wrong predictions titled in red."""
    n = len(images)
    if not (len(true) == len(pred) == n):
        raise ValueError(f"{n} images but {len(true)} true and {len(pred)} predicted labels")
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ok = true[i] == pred[i]
        ax.set_title(f"{true[i]}\n→ {pred[i]}", fontsize=7, color="black" if ok else "red")
    fig.tight_layout()
    return fig
