"""Plots draw what the metrics compute."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")

from faissclass import metrics, plots


def test_caf_plot_draws_the_cumulative_accuracy(tmp_path):
    acc = np.array([0.2, 0.9, 0.9, 1.0])
    fig = plots.plot_caf({"knn": acc, "proto": acc / 2})
    line = fig.axes[0].lines[0]
    lv, share = metrics.cumulative_accuracy(acc)
    np.testing.assert_allclose(line.get_ydata(), share)
    np.testing.assert_allclose(line.get_xdata(), lv)
    fig.savefig(tmp_path / "caf.png")
    assert (tmp_path / "caf.png").stat().st_size > 1000


def test_confusion_and_image_grid(tmp_path, rng):
    cm = np.array([[5, 1], [2, 8]])
    fig = plots.plot_confusion(cm, ["a", "b"])
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), cm / cm.sum(1, keepdims=True))
    imgs = rng.random((5, 28, 28))
    fig = plots.plot_image_grid(imgs, ["a", "b", "a", "b", "a"], ["a", "a", "a", "b", "b"],
                                cols=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 5
    assert sum(ax.title.get_color() == "red" for ax in fig.axes if ax.get_title()) == 2
    fig.savefig(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="5 images but 4 true"):
        plots.plot_image_grid(imgs, ["a"] * 4, ["a"] * 5)
