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

_SEG = 256  # columns per segment of the row pass


@njit(parallel=True, cache=True)
def rows(S, r0, c0, hv, hi, k, scale, colbias, diag):
    # Rows r0.. of the heaps see columns c0.. (positions c0 + c). Per segment of a row,
    # a branch-free (vectorised) count of scores >= the row's threshold comes first;
    # only a segment with one goes through the exact (score, position) test.
    nr, nc = S.shape
    for r in prange(nr):
        v = hv[r0 + r]
        ii = hi[r0 + r]
        top = v[0]
        topi = ii[0]
        own = r if diag else -1
        for a in range(0, nc, _SEG):
            b = min(a + _SEG, nc)
            hits = 0
            for c in range(a, b):
                hits += scale * S[r, c] - colbias[c] >= top
            if hits == 0:
                continue
            for c in range(a, b):
                s = scale * S[r, c] - colbias[c]
                if s >= top and c != own and (s > top or c0 + c < topi):
                    _replace_top(v, ii, k, s, c0 + c)
                    top = v[0]
                    topi = ii[0]


@njit(parallel=True, cache=True)
def cols(S, r0, c0, hv, hi, k, scale, rowbias, chunk):
    # Rows c0.. of the heaps see rows r0.. of S: each task owns a chunk of columns and
    # walks S row by row (contiguous), the chunk's thresholds in a small array; a
    # branch-free count per row first, the exact test only for a row with a hit.
    nr, nc = S.shape
    ntask = (nc + chunk - 1) // chunk
    for t in prange(ntask):
        a = t * chunk
        b = min(a + chunk, nc)
        w = b - a
        tops = np.empty(w, S.dtype)
        topis = np.empty(w, np.int64)
        for c in range(w):
            tops[c] = hv[c0 + a + c, 0]
            topis[c] = hi[c0 + a + c, 0]
        for r in range(nr):
            bias = rowbias[r]
            row = S[r, a:b]
            hits = 0
            for c in range(w):
                hits += scale * row[c] - bias >= tops[c]
            if hits == 0:
                continue
            for c in range(w):
                s = scale * row[c] - bias
                if s >= tops[c] and (s > tops[c] or r0 + r < topis[c]):
                    _replace_top(hv[c0 + a + c], hi[c0 + a + c], k, s, r0 + r)
                    tops[c] = hv[c0 + a + c, 0]
                    topis[c] = hi[c0 + a + c, 0]


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

