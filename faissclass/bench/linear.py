"""The linear-probe baseline: softmax regression on frozen embeddings, trained with
torch (Adam, mini-batches) on the cell's device — a trained head to set beside
kNN and prototypes in one table. Without torch, scikit-learn's LogisticRegression
(small sets only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import LinearConfig

__all__ = ["LinearProbe"]

_SKLEARN_MAX_ROWS = 200_000


def _mean_std(X: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float32, floored at 1e-6), accumulated in float64
    chunk by chunk: ``X.std(dtype=float64)`` makes a float64 copy of X (3.9 GB for
    1.28 M x 384)."""
    n = max(len(X), 1)
    mean = np.zeros(X.shape[1], np.float64)
    for a in range(0, len(X), chunk):
        mean += X[a:a + chunk].sum(axis=0, dtype=np.float64)
    mean /= n
    var = np.zeros(X.shape[1], np.float64)
    for a in range(0, len(X), chunk):
        var += ((X[a:a + chunk] - mean) ** 2).sum(axis=0)
    return mean.astype(np.float32), np.maximum(np.sqrt(var / n), 1e-6).astype(np.float32)


class LinearProbe:
    """``fit(X, y, n_classes)`` then ``scores(Q)`` (n, n_classes) logits."""

    def __init__(self, cfg: LinearConfig, *, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, device
        self.final_loss: float | None = None
        self.bytes = 0

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> LinearProbe:
        try:
            import torch
        except ImportError:
            return self._fit_sklearn(X, y)
        from ..devices import parse_device

        dev = parse_device(self.device).torch()
        g = torch.Generator().manual_seed(int(self.cfg.seed))
        model = torch.nn.Linear(X.shape[1], n_classes).to(dev)
        with torch.no_grad():  # seeded initialisation, the same on every device
            w = torch.empty(n_classes, X.shape[1]).uniform_(-1, 1, generator=g)
            model.weight.copy_(w / np.sqrt(X.shape[1]))
            model.bias.zero_()
        opt = torch.optim.Adam(model.parameters(), lr=self.cfg.lr,
                               weight_decay=self.cfg.weight_decay)
        # Standardised inputs (the train set's mean and std per dimension, as DINO's
        # linear evaluation does with a BatchNorm): unit-norm embeddings give logits
        # too small for Adam to fit in a few epochs otherwise. Standardised batch by
        # batch: no second copy of the train set (1.9 GB for 1.28 M x 384).
        self._mean, self._std = _mean_std(X)
        Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(dev)
        mean_t = torch.from_numpy(self._mean).to(dev)
        std_t = torch.from_numpy(self._std).to(dev)
        yt = torch.from_numpy(np.asarray(y, np.int64)).to(dev)
        n, bs = len(yt), int(self.cfg.batch_size)
        loss_fn = torch.nn.CrossEntropyLoss()
        loss = torch.zeros(())
        for _ in range(int(self.cfg.epochs)):
            order = torch.randperm(n, generator=g).to(dev)
            for a in range(0, n, bs):
                idx = order[a:a + bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model((Xt[idx] - mean_t) / std_t), yt[idx])
                loss.backward()
                opt.step()
        self.final_loss = float(loss.detach().cpu())
        self._model, self._torch, self._dev = model, torch, dev
        self.bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
        return self

    def _fit_sklearn(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        if len(y) > _SKLEARN_MAX_ROWS:
            raise RuntimeError(f"the linear probe needs torch for {len(y)} rows (scikit-"
                               "learn's LogisticRegression would take hours); pip install "
                               "'faissclass[embed]'")
        from sklearn.linear_model import LogisticRegression

        self._sk = LogisticRegression(max_iter=int(self.cfg.epochs) * 10,
                                      C=1.0 / max(self.cfg.weight_decay, 1e-8))
        self._sk.fit(X, y)
        self.bytes = int(self._sk.coef_.nbytes + self._sk.intercept_.nbytes)
        return self

    def correct(self, Q: np.ndarray, y: np.ndarray, ns: tuple[int, ...] = (1, 5),
                chunk: int = 16_384) -> dict[int, int]:
        """{n: rows of ``Q`` whose label ``y`` is among the n best classes}, scored chunk
        by chunk: memory (chunk x classes), never (rows x classes) (5 GB for ImageNet's
        train set)."""
        from .cell import _topk_correct

        out = dict.fromkeys(ns, 0)
        for a in range(0, len(Q), chunk):
            s = self.scores(Q[a:a + chunk])
            for n in ns:
                out[n] += _topk_correct(s, y[a:a + chunk], n)
        return out

    def scores(self, Q: np.ndarray) -> np.ndarray:
        if hasattr(self, "_sk"):
            out = np.full((len(Q), int(self._sk.classes_.max()) + 1), -np.inf)
            out[:, self._sk.classes_] = self._sk.decision_function(Q)
            return out
        torch: Any = self._torch
        outs = []
        with torch.inference_mode():
            for a in range(0, len(Q), 65_536):
                q = torch.from_numpy(np.ascontiguousarray(
                    (Q[a:a + 65_536] - self._mean) / self._std, np.float32))
                outs.append(self._model(q.to(self._dev)).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.empty((0, 0))
