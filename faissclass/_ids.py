"""Sets of int64 ids kept as sorted runs: cheap to extend, cheap to query."""

from __future__ import annotations

import numpy as np

__all__ = ["IdSet", "sorted_unique"]


def sorted_unique(ids: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(sorted ids, first duplicate or None). Increasing input is not re-sorted."""
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return ids, None
    s = np.sort(ids)
    dup = np.flatnonzero(s[1:] == s[:-1])
    return s, (int(s[dup[0]]) if dup.size else None)


class IdSet:
    """The set of stored ids as sorted int64 runs: one per finished shard, and the
    appends of the open shard (merged when they grow numerous).

    A query above every stored id (default ids, or any increasing ids) is
    answered in O(1); otherwise only runs whose [min, max] overlaps are searched.
    """

    _MAX_OPEN_RUNS = 32

    def __init__(self) -> None:
        self._runs: list[tuple[int, int, np.ndarray]] = []
        self._open: list[tuple[int, int, np.ndarray]] = []
        self._max: int | None = None

    @staticmethod
    def _run(sorted_ids: np.ndarray) -> tuple[int, int, np.ndarray]:
        return int(sorted_ids[0]), int(sorted_ids[-1]), sorted_ids

    def _bump(self, sorted_ids: np.ndarray) -> None:
        top = int(sorted_ids[-1])
        self._max = top if self._max is None else max(self._max, top)

    def add_run(self, sorted_ids: np.ndarray) -> None:
        if sorted_ids.size:
            self._runs.append(self._run(sorted_ids))
            self._bump(sorted_ids)

    def add_open(self, sorted_ids: np.ndarray) -> None:
        if sorted_ids.size:
            self._open.append(self._run(sorted_ids))
            self._bump(sorted_ids)
            if len(self._open) > self._MAX_OPEN_RUNS:
                self._open = [self._run(np.sort(np.concatenate([r for *_, r in self._open])))]

    def close_open(self) -> np.ndarray:
        """Turn the open shard's ids into one finished run; returns it (sorted)."""
        parts = [r for *_, r in self._open]
        self._open = []
        run = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if run.size > 1 and not bool(np.all(run[1:] > run[:-1])):
            run.sort()
        if run.size:
            self._runs.append(self._run(run))
        return run

    def discard_open(self) -> None:
        self._open = []
        tops = [hi for _, hi, _ in self._runs]
        self._max = max(tops) if tops else None

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(ids.shape, dtype=bool)
        if ids.size == 0 or self._max is None:
            return found
        lo, hi = int(ids.min()), int(ids.max())
        if lo > self._max:
            return found
        for rmin, rmax, run in (*self._runs, *self._open):
            if rmax < lo or rmin > hi:
                continue
            pos = np.searchsorted(run, ids)
            pos[pos == run.size] = run.size - 1
            found |= run[pos] == ids
        return found

    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (absent ones are ignored). O(stored ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        keep = []
        for *_, run in (*self._runs, *self._open):
            run = run[~np.isin(run, ids)]
            if run.size:
                keep.append(self._run(run))
        self._runs, self._open = keep, []
        self._max = max((hi for _, hi, _ in self._runs), default=None)

    def __len__(self) -> int:
        return sum(r.size for *_, r in (*self._runs, *self._open))

    def all(self) -> np.ndarray:
        parts = [r for *_, r in (*self._runs, *self._open)]
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(parts))
