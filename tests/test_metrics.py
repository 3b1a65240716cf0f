"""Metrics against hand computations, scipy and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from faissclass import metrics as m


def test_topk_accuracy():
    y = np.array([1, 2, 3])
    top = np.array([[1, 9], [9, 2], [9, 9]])
    assert m.topk_accuracy(y, top, 1) == pytest.approx(1 / 3)
    assert m.topk_accuracy(y, top) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"k=3 outside 1\.\.2"):
        m.topk_accuracy(y, top, 3)


def test_per_class_and_cumulative_accuracy():
    y = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 5)
    p = np.array(["a", "a", "a", "b"] + ["b", "a"] + ["c"] * 5)
    cls, acc = m.per_class_accuracy(y, p)
    assert list(cls) == ["a", "b", "c"]
    np.testing.assert_allclose(acc, [0.75, 0.5, 1.0])
    _, share = m.cumulative_accuracy(acc, levels=[0.0, 0.5, 0.75, 0.99, 1.0])
    np.testing.assert_allclose(share, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert m.least_accurate_classes(y, p, 2) == [("b", 0.5), ("a", 0.75)]


def test_confidence_interval_is_student_t():
    v = np.array([0.81, 0.79, 0.84, 0.80, 0.83])
    mean, half = m.mean_confidence_interval(v, 0.95)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert mean == pytest.approx(v.mean())
    assert half == pytest.approx((hi - lo) / 2)
    assert np.isnan(m.mean_confidence_interval([0.5])[1])


def test_f1_and_confusion_follow_sklearn(rng):
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    f = m.f1_scores(y, p)
    assert f["macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert f["weighted"] == pytest.approx(f1_score(y, p, average="weighted"))
    cm = m.confusion(y, p)
    assert cm.sum() == 200 and np.trace(cm) == np.sum(y == p)
