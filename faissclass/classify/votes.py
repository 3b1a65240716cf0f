"""The kNN votes: how much each of a query's k neighbours counts for its class.

A vote is a function ``(dist, valid, metric, temperature) -> weights``: ``dist``
(n, k) as the index returns them (inner products, larger is closer, or squared
L2 distances, smaller is closer), ``valid`` (n, k) False where the index had
fewer than k vectors; the result is float64 (n, k), zero or ignored where
invalid. Adding a vote is one entry in :data:`VOTES`. A callable is accepted as
scikit-learn accepts one: it receives Euclidean distances (n, k) and returns
weights of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["VOTES", "class_scores", "euclidean", "resolve_vote"]

Vote = Callable[[np.ndarray, np.ndarray, str, float], np.ndarray]


def euclidean(dist: np.ndarray, metric: str) -> np.ndarray:
    """Euclidean distances from index distances: sqrt(2 - 2·cos) for unit vectors under
    "ip" (sklearn's distances for the same data), sqrt(d) for squared "l2"."""
    d = dist.astype(np.float64)
    return np.sqrt(np.maximum(2.0 - 2.0 * d, 0.0)) if metric == "ip" else np.sqrt(
        np.maximum(d, 0.0))


def uniform(dist: np.ndarray, valid: np.ndarray, metric: str, temperature: float
            ) -> np.ndarray:
    """Every neighbour counts 1: a majority vote (sklearn's "uniform")."""
    return np.ones(dist.shape, dtype=np.float64)


def distance(dist: np.ndarray, valid: np.ndarray, metric: str, temperature: float
             ) -> np.ndarray:
    """1 / Euclidean distance (sklearn's "distance"); an exact match (distance 0)
    outweighs every other neighbour, as in sklearn."""
    d = euclidean(dist, metric)
    with np.errstate(divide="ignore"):
        w = 1.0 / d
    exact = ~np.isfinite(w) & valid
    if exact.any():
        w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
    return w


def softmax(dist: np.ndarray, valid: np.ndarray, metric: str, temperature: float
            ) -> np.ndarray:
    """exp(similarity / T), DINO's weighting; similarity = inner product ("ip") or
    minus the squared distance ("l2").

    Computed as exp((similarity - best) / T) with ``best`` each row's most similar
    valid neighbour: the same ranking and the same probabilities as DINO's
    exp(similarity / T) (every weight of a row is divided by one constant), but
    never an overflow, whatever the metric, the scale or the temperature.
    """
    s = dist.astype(np.float64)
    if metric != "ip":
        s = -s
    best = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
    best = np.where(np.isfinite(best), best, 0.0)  # rows with no valid neighbour
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.exp((s - best) / temperature)
    return np.where(valid, w, 0.0)


VOTES: dict[str, Vote] = {"uniform": uniform, "distance": distance, "softmax": softmax}


def resolve_vote(weights: Any) -> Vote:
    """The vote function for a ``weights`` parameter: a name in :data:`VOTES` or a
    callable taking Euclidean distances (n, k) and returning weights (n, k)."""
    if isinstance(weights, str):
        if weights not in VOTES:
            raise ValueError(f"weights must be one of {sorted(VOTES)} or a callable; got "
                             f"{weights!r}")
        return VOTES[weights]
    if callable(weights):
        def user(dist: np.ndarray, valid: np.ndarray, metric: str, temperature: float
                 ) -> np.ndarray:
            w = np.asarray(weights(euclidean(dist, metric)), dtype=np.float64)
            if w.shape != dist.shape:
                raise ValueError(f"the weights callable returned shape {w.shape}; expected "
                                 f"{dist.shape} (one weight per neighbour)")
            if not np.isfinite(w[valid]).all():
                raise ValueError("the weights callable returned NaN or inf")
            return w
        return user
    raise ValueError(f"weights must be one of {sorted(VOTES)} or a callable; got {weights!r}")


def class_scores(dist: np.ndarray, codes: np.ndarray, n_classes: int, *, weights: Any,
                 metric: str, temperature: float, k: int | None = None) -> np.ndarray:
    """Class scores (n, n_classes) of the first ``k`` neighbours of a search.

    ``dist`` (n, >=k) as the index returns them; ``codes`` (n, >=k) the neighbours'
    class codes, -1 where there is none. Ties between classes are left to the
    caller's ranking (score descending, class order ascending).
    """
    k = dist.shape[1] if k is None else int(k)
    d, c = dist[:, :k], codes[:, :k]
    valid = c >= 0
    w = resolve_vote(weights)(d, valid, metric, float(temperature))
    n = c.shape[0]
    rows = np.broadcast_to(np.arange(n)[:, None], c.shape)
    flat = (rows * n_classes + np.where(valid, c, 0))[valid]
    return np.bincount(flat, weights=w[valid], minlength=n * n_classes).reshape(n, n_classes)
