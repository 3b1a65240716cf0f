"""The compiled selection kernels of :mod:`faissclass.search.self_join` (numba).

Imported only when a self-join runs; compiled once and cached on disk by numba.
Heaps hold a row's k best (score, position) pairs with the *worst* on top, so the
top is the threshold a new score must beat; equal scores rank by smaller position.
"""

import numpy as np
from numba import njit, prange

__all__ = ["cols", "finish", "rows"]


@njit(inline="always", cache=True)
def _worse(s1, i1, s2, i2):  # (score, id) 1 ranks after (score, id) 2
    return s1 < s2 or (s1 == s2 and i1 > i2)

@njit(inline="always", cache=True)
def _replace_top(vals, ids, k, s, i):
    # heap with the worst (score, id) on top: sift the new element down
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= k:
            break
        if c + 1 < k and _worse(vals[c + 1], ids[c + 1], vals[c], ids[c]):
            c += 1
        if _worse(s, i, vals[c], ids[c]):
            break
        vals[pos] = vals[c]
        ids[pos] = ids[c]
        pos = c
    vals[pos] = s
    ids[pos] = i

@njit(parallel=True, cache=True)
def rows(S, r0, c0, hv, hi, k, scale, colbias, diag):
    # rows r0.. of the heaps see columns c0.. (positions c0 + c)
    nr, nc = S.shape
    for r in prange(nr):
        v = hv[r0 + r]
        ii = hi[r0 + r]
        top = v[0]
        topi = ii[0]
        own = r if diag else -1
        for c in range(nc):
            s = scale * S[r, c] - colbias[c]
            if s >= top:
                if c == own:
                    continue
                if s > top or c0 + c < topi:
                    _replace_top(v, ii, k, s, c0 + c)
                    top = v[0]
                    topi = ii[0]

@njit(parallel=True, cache=True)
def cols(S, r0, c0, hv, hi, k, scale, rowbias, chunk):
    # rows c0.. of the heaps see rows r0.. of S: each task owns a chunk of columns
    # and walks S row by row (contiguous), the chunk's thresholds in a small array
    nr, nc = S.shape
    ntask = (nc + chunk - 1) // chunk
    for t in prange(ntask):
        a = t * chunk
        b = min(a + chunk, nc)
        tops = np.empty(b - a, S.dtype)
        topis = np.empty(b - a, np.int64)
        for c in range(a, b):
            tops[c - a] = hv[c0 + c, 0]
            topis[c - a] = hi[c0 + c, 0]
        for r in range(nr):
            bias = rowbias[r]
            for c in range(a, b):
                s = scale * S[r, c] - bias
                # a cheap test first; the exact (score, id) test only for a hit
                if s >= tops[c - a] and (s > tops[c - a] or r0 + r < topis[c - a]):
                    _replace_top(hv[c0 + c], hi[c0 + c], k, s, r0 + r)
                    tops[c - a] = hv[c0 + c, 0]
                    topis[c - a] = hi[c0 + c, 0]

@njit(parallel=True, cache=True)
def finish(hv, hi, k):
    # heap -> best first (pop the worst to the back), in place
    n = hv.shape[0]
    for r in prange(n):
        v = hv[r]
        ii = hi[r]
        for m in range(k - 1, 0, -1):
            s, i = v[0], ii[0]
            # move the last element to the top and sift it down within m elements
            v[0], ii[0] = v[m], ii[m]
            ls, li = v[0], ii[0]
            pos = 0
            while True:
                c = 2 * pos + 1
                if c >= m:
                    break
                if c + 1 < m and _worse(v[c + 1], ii[c + 1], v[c], ii[c]):
                    c += 1
                if _worse(ls, li, v[c], ii[c]):
                    break
                v[pos] = v[c]
                ii[pos] = ii[c]
                pos = c
            v[pos] = ls
            ii[pos] = li
            v[m] = s
            ii[m] = i

