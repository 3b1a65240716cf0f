"""The compiled selection kernels of :mod:`faissclass.search.self_join` and of the
certified low-precision search (numba).

Imported only when one of them runs; compiled once and cached on disk by numba.
Heaps hold a row's k best (score, position) pairs with the *worst* on top, so the
top is the threshold a new score must beat; equal scores rank by smaller position (the
float32 self-join's heaps hold ranks in id order instead of positions; the low-precision
kernels keep positions: which of equal keys stays a candidate does not change a
certificate, and the float32 re-rank orders ties by id).
"""

import numpy as np
from numba import njit

__all__ = ["cols", "dots", "finish", "lowp_cols", "lowp_rows", "rows"]


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

# Kernels are serial and release the GIL: the self-join runs them on its own Python
# threads, which sleep between blocks. (numba's parallel loops under the OpenMP layer
# keep spinning after each block and take the cores from the next GEMM: measured 1.5x
# slower on 2 cores.) The pruning tests loop over slices from index 0: with a loop
# index LLVM cannot prove non-negative, numba's wraparound check stops the
# vectorisation (measured 0.55 against 0.056 ns a score).


@njit(nogil=True, cache=True)
def rows(S, r0, c0, hv, hi, rank, k, scale, colbias, diag, ra, rb):
    # Rows ra..rb of S (heap rows r0 + r) see the columns (positions c0 + c; the heaps
    # hold their ranks rank[c0 + c], by which equal scores are ordered). Per
    # segment of a row, a branch-free (vectorised) count of scores >= the row's threshold
    # comes first; only a segment with one goes through the exact (score, position) test.
    nc = S.shape[1]
    for r in range(ra, rb):
        v = hv[r0 + r]
        ii = hi[r0 + r]
        top = v[0]
        topi = ii[0]
        own = r if diag else -1
        row = S[r]
        for a in range(0, nc, _SEG):
            b = min(a + _SEG, nc)
            seg = row[a:b]
            cb = colbias[a:b]
            hits = 0
            for c in range(b - a):
                hits += scale * seg[c] - cb[c] >= top
            if hits == 0:
                continue
            for c in range(b - a):
                s = scale * seg[c] - cb[c]
                if s >= top and a + c != own and (s > top or rank[c0 + a + c] < topi):
                    _replace_top(v, ii, k, s, rank[c0 + a + c])
                    top = v[0]
                    topi = ii[0]


@njit(nogil=True, cache=True)
def cols(S, r0, c0, hv, hi, rank, k, scale, rowbias, chunk, ca, cb):
    # Columns ca..cb of S (heap rows c0 + c) see the rows of S (positions r0 + r, held
    # as their ranks rank[r0 + r]): each
    # chunk of columns walks S row by row (contiguous), the chunk's thresholds in a small
    # array; a branch-free count per row first, the exact test only for a row with a hit.
    nr = S.shape[0]
    tops = np.empty(chunk, S.dtype)
    topis = np.empty(chunk, hi.dtype)
    for a in range(ca, cb, chunk):
        b = min(a + chunk, cb)
        w = b - a
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
            rr = rank[r0 + r]
            for c in range(w):
                s = scale * row[c] - bias
                if s >= tops[c] and (s > tops[c] or rr < topis[c]):
                    _replace_top(hv[c0 + a + c], hi[c0 + a + c], k, s, rr)
                    tops[c] = hv[c0 + a + c, 0]
                    topis[c] = hi[c0 + a + c, 0]


@njit(inline="always", cache=True)
def _key(x):
    # the bits of a bf16/fp16 number (as int16) -> an int32 in the numbers' order:
    # sign-magnitude to offset binary (positive: top bit set; negative: all bits flipped)
    u = np.int32(x) & 0xFFFF
    return u ^ 0x8000 if u < 0x8000 else 0xFFFF - u


@njit(nogil=True, cache=True)
def lowp_rows(S16, r0, c0, hk, hi, k, diag, ra, rb):
    # Rows ra..rb of a low-precision product (its bits as int16; heap rows r0 + r) into
    # heaps of k order keys (see _key) and positions c0 + c: the rows kernel on keys.
    nc = S16.shape[1]
    for r in range(ra, rb):
        v = hk[r0 + r]
        ii = hi[r0 + r]
        top = v[0]
        topi = ii[0]
        own = r if diag else -1
        row = S16[r]
        for a in range(0, nc, _SEG):
            b = min(a + _SEG, nc)
            seg = row[a:b]
            hits = 0
            for c in range(b - a):
                hits += _key(seg[c]) >= top
            if hits == 0:
                continue
            for c in range(b - a):
                kx = _key(seg[c])
                if kx >= top and a + c != own and (kx > top or c0 + a + c < topi):
                    _replace_top(v, ii, k, kx, c0 + a + c)
                    top = v[0]
                    topi = ii[0]


@njit(nogil=True, cache=True)
def lowp_cols(S16, r0, c0, hk, hi, k, chunk, ca, cb):
    # Columns ca..cb of a low-precision product (heap rows c0 + c) see its rows
    # (positions r0 + r): the cols kernel on keys.
    nr = S16.shape[0]
    tops = np.empty(chunk, hk.dtype)
    topis = np.empty(chunk, hi.dtype)
    for a in range(ca, cb, chunk):
        b = min(a + chunk, cb)
        w = b - a
        for c in range(w):
            tops[c] = hk[c0 + a + c, 0]
            topis[c] = hi[c0 + a + c, 0]
        for r in range(nr):
            row = S16[r, a:b]
            hits = 0
            for c in range(w):
                hits += _key(row[c]) >= tops[c]
            if hits == 0:
                continue
            for c in range(w):
                kx = _key(row[c])
                if kx >= tops[c] and (kx > tops[c] or r0 + r < topis[c]):
                    _replace_top(hk[c0 + a + c], hi[c0 + a + c], k, kx, r0 + r)
                    tops[c] = hk[c0 + a + c, 0]
                    topis[c] = hi[c0 + a + c, 0]


@njit(fastmath={"reassoc", "nsz", "contract"}, nogil=True, cache=True)
def dots(Q, X, cand, out, ra, rb):
    # out[r, j] = Q[r] . X[cand[r, j]] in float32 (any summation order: the certificate's
    # float32 term bounds its rounding), without gathering the candidates first
    d = Q.shape[1]
    for r in range(ra, rb):
        q = Q[r]
        for j in range(cand.shape[1]):
            x = X[cand[r, j]]
            s = np.float32(0)
            for i in range(d):
                s += q[i] * x[i]
            out[r, j] = s


@njit(nogil=True, cache=True)
def finish(hv, hi, k, ra, rb):
    # heaps of rows ra..rb -> best first (pop the worst to the back), in place
    for r in range(ra, rb):
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

