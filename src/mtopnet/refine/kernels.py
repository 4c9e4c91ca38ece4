"""chi2 kernels of the refinement: linear least squares of the basis against the data at many
trial offsets, batched over (object, peak, trial) with torch (float32 products, float64 solves)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .basis import RefineBasis

PIVOT_TOL = 1e-6
"""Jacobi-scaled Cholesky pivots below this drop the vector (degenerate with the others)."""


def _solve_chi2(a: torch.Tensor, b: torch.Tensor, wff: torch.Tensor) -> torch.Tensor:
    """chi2 = wff - b^T A^-1 b for batches: a (..., K, K), b (..., K), wff broadcastable to (...).

    In float64, Jacobi-scaled (unit diagonal) with a 1e-9 ridge, by batched Cholesky; a
    vector with no weight (outside the data) drops out. Systems that are still not positive
    definite (degenerate vectors) get a 1e-5 ridge.
    """
    k = a.shape[-1]
    a = a.double()
    b = b.double()
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    scale = torch.where(diag > 0, diag, torch.ones_like(diag)).rsqrt()
    eye = torch.eye(k, dtype=a.dtype)
    an = a * scale[..., :, None] * scale[..., None, :] + 1e-9 * eye
    bn = b * scale
    chol, info = torch.linalg.cholesky_ex(an)
    bad = info != 0
    if bool(bad.any()):
        chol[bad] = torch.linalg.cholesky_ex(an[bad] + 1e-5 * eye)[0]
    y = torch.linalg.solve_triangular(chol, bn[..., None], upper=False)[..., 0]
    return wff.double() - (y * y).sum(-1)


def coarse_chi2(basis: RefineBasis, w: torch.Tensor, wf: torch.Tensor, shift0: torch.Tensor,
                n_shift: int, n_templates: int | None = None) -> torch.Tensor:
    """chi2 of the continuum vectors at whole-pixel shifts, for R (object, peak) rows.

    w, wf: (R, J) float32 ivar and ivar * flux; shift0: (R,) int64 first shift (the trial
    offset is ``oversample * shift``). Returns (R, n_shift) float64, trial s at shift
    ``shift0 + s``; the first ``n_templates`` continuum vectors (default all).
    A[s] = sum_j w_j P(j + shift0 + s) with P(u) = t(u) t(u)^T on the
    pixel-aligned table: one batched product of a Toeplitz view of w with a table window.
    """
    r, j = w.shape
    k = min(n_templates or basis.n_continuum, basis.n_continuum)
    t0 = _pixel_table(basis, k)  # (U, Q): packed t t^T (k(k+1)/2 columns) then t (k columns)
    q = t0.shape[1] - k
    length = j + n_shift - 1
    top = len(t0) - length
    window = t0.as_strided((top + 1, length, t0.shape[1]), (t0.shape[1], t0.shape[1], 1))[shift0.clamp(0, top)]
    out_a = torch.empty(r, n_shift, q)
    out_b = torch.empty(r, n_shift, k)
    for data, cols, out in ((w, slice(0, q), out_a), (wf, slice(q, q + k), out_b)):
        padded = torch.nn.functional.pad(data, (n_shift - 1, n_shift - 1))
        toeplitz = padded.as_strided((r, n_shift, length), (padded.shape[1], 1, 1))  # [r, s', u] = data[u - S+1 + s']
        if torch.get_num_threads() > 1:  # multi-threaded bmm on this overlapping view is ~30x slower than a copy
            toeplitz = toeplitz.contiguous()
        out.copy_(torch.bmm(toeplitz, window[:, :, cols]).flip(1))  # s' = S-1-s
    iu = _triu(k)
    a = torch.empty(r, n_shift, k, k)
    a[:, :, iu[0], iu[1]] = out_a
    a[:, :, iu[1], iu[0]] = out_a
    wff = (wf * wf / torch.where(w > 0, w, torch.ones_like(w))).sum(1)
    return _solve_chi2(a, out_b, wff[:, None])


@dataclass
class CoarseChi2:
    """chi2 already known at every whole-pixel shift (the full-range scan's), for the
    refinement's coarse stage to read instead of computing its own.

    chi2: (N, S) float32, column c at shift ``shift0 + c`` (the refinement basis's pixel
    shifts: data pixel j against table row ``oversample * (j + shift)``); have: (N,) bool rows
    that hold values (the others are computed by :func:`~mtopnet.refine.kernels.coarse_chi2`).
    """

    chi2: np.ndarray
    shift0: int
    have: np.ndarray

    @classmethod
    def from_scan(cls, scanner, res, rows: np.ndarray, n: int) -> "CoarseChi2":
        """From a :class:`~mtopnet.refine.ZScanner` result (stride 1) of objects ``rows`` of n;
        rows whose fit did not run (``res.ok`` False) hold nothing."""
        if scanner.stride != 1:
            raise ValueError(f"CoarseChi2: the scan must try every pixel shift (stride {scanner.stride})")
        chi2 = np.zeros((n, res.chi2.shape[1]), np.float32)
        chi2[rows] = res.chi2[:, ::-1]  # z order -> shift order
        have = np.zeros(n, bool)
        have[rows] = res.ok
        return cls(chi2=chi2, shift0=int(scanner.shift_lo), have=have)

    def subset(self, rows: np.ndarray) -> "CoarseChi2":
        return CoarseChi2(chi2=self.chi2[rows], shift0=self.shift0, have=self.have[rows])

    def window(self, obj: np.ndarray, shift0: np.ndarray, n_shift: int) -> tuple[np.ndarray, np.ndarray]:
        """chi2 (R, n_shift) float64 at shifts ``shift0`` (R,) + 0..n_shift-1 of objects ``obj``
        (R,), and (R,) bool: the row was read (its object has values over the whole window)."""
        first = shift0 - self.shift0
        ok = self.have[obj] & (first >= 0) & (first + n_shift <= self.chi2.shape[1])
        cols = np.clip(first[:, None] + np.arange(n_shift)[None, :], 0, self.chi2.shape[1] - 1)
        return self.chi2[obj[:, None], cols].astype(np.float64), ok


def _windows(phased: torch.Tensor, oversample: int, offsets: torch.Tensor, n_pix: int) -> torch.Tensor:
    """Table rows ``oversample * j + o`` for j < n_pix, for every offset o of ``offsets`` (...):
    (..., n_pix, K). ``phased`` is the phase-major copy of the table (:func:`_phase_major`),
    so each window is a contiguous block: a block copy, not an element gather."""
    n_phase, u, k = phased.shape
    top = u - n_pix
    view = phased.as_strided((n_phase, top + 1, n_pix, k), (u * k, k, k, 1))
    o = offsets.reshape(-1)
    q = torch.div(o, oversample, rounding_mode="floor").clamp(0, top)
    out = view[o.remainder(oversample), q]
    return out.reshape(offsets.shape + (n_pix, k))


def fine_chi2(basis: RefineBasis, w: torch.Tensor, wf: torch.Tensor, offsets: torch.Tensor,
              line_pix: torch.Tensor | None = None) -> torch.Tensor:
    """chi2 of the full basis at trial offsets: w, wf (R, J); offsets (R, T) int64 -> (R, T) float64.

    The continuum block of A (and b) sums over all pixels; the blocks involving line vectors
    sum only over ``line_pix`` (R, P) int64, the pixels where any line vector can be non-zero
    at these trials (:meth:`Refiner.line_pixels`; -1 = padding), which is exact and ~15x
    cheaper than summing zeros. Without ``line_pix`` (or without line vectors) every block
    sums over all pixels.
    """
    r, j = w.shape
    kc = basis.n_continuum
    k = basis.table.shape[1]
    os_ = basis.oversample
    sw = w.sqrt()
    fsw = wf / torch.where(sw > 0, sw, torch.ones_like(sw))  # f sqrt(w)
    wff = (fsw * fsw).sum(1)
    n_t = offsets.shape[1]
    if line_pix is None or k == kc:
        t = _windows(_phase_major(basis), os_, offsets, j) * sw[:, None, :, None]  # (R, T, J, K)
        a = t.transpose(-1, -2) @ t
        b = (t.transpose(-1, -2) @ fsw[:, None, :, None])[..., 0]
        return _solve_chi2(a, b, wff[:, None])
    a = torch.empty(r, n_t, k, k)
    b = torch.empty(r, n_t, k)
    phased = _phase_major(basis, continuum=True)
    for trial in range(n_t):  # one trial at a time: (R, J, Kc) windows stay in the CPU's caches
        tc = _windows(phased, os_, offsets[:, trial], j)  # (R, J, Kc)
        tc *= sw[:, :, None]
        tct = tc.transpose(-1, -2)
        a[:, trial, :kc, :kc] = tct @ tc
        b[:, trial, :kc] = (fsw[:, None, :] @ tc)[:, 0]
    pad = line_pix < 0
    pix = line_pix.clamp(0, j - 1)
    swl = torch.where(pad, torch.zeros(()), torch.gather(sw, 1, pix))  # (R, P)
    fswl = torch.where(pad, torch.zeros(()), torch.gather(fsw, 1, pix))
    table = _torch_table(basis)
    rows_l = (offsets[:, :, None] + os_ * pix[:, None, :]).clamp(0, len(table) - 1)  # (R, T, P)
    tl = table[rows_l] * swl[:, None, :, None]  # (R, T, P, K)
    al = tl[..., kc:].transpose(-1, -2) @ tl  # (R, T, K - kc, K)
    a[:, :, kc:, :] = al
    a[:, :, :kc, kc:] = al[..., :kc].transpose(-1, -2)
    b[:, :, kc:] = (fswl[:, None, None, :] @ tl[..., kc:])[..., 0, :]
    return _solve_chi2(a, b, wff[:, None])


def best_fit_coeff(basis: RefineBasis, w: torch.Tensor, f: torch.Tensor, offsets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares coefficients of the full basis at one trial offset per object.

    w, f: (R, J) float32 ivar and flux; offsets: (R,) int64. Returns coeff (R, K) float64
    (flux units of ``f`` per unit basis vector) and the basis at those offsets (R, J, K)
    float32 (same solve as :func:`fine_chi2`: float64, Jacobi-scaled, ridge 1e-9).
    """
    t = _windows(_phase_major(basis), basis.oversample, offsets[:, None], w.shape[1])[:, 0]  # (R, J, K)
    tw = t * w[:, :, None]
    return solve_coeff(tw.transpose(1, 2) @ t, (f[:, None, :] @ tw)[:, 0]), t


def solve_coeff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The least-squares coefficients (R, K) float64 of normal equations a (R, K, K), b (R, K):
    in float64, Jacobi-scaled with a 1e-9 ridge, and a 1e-5 ridge for systems that are not
    positive definite (as :func:`_solve_chi2`)."""
    a, b = a.double(), b.double()
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    scale = torch.where(diag > 0, diag, torch.ones_like(diag)).rsqrt()
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    an = a * scale[:, :, None] * scale[:, None, :] + 1e-9 * eye
    return torch.linalg.solve(an + 1e-5 * eye * (torch.linalg.cholesky_ex(an)[1] != 0)[:, None, None],
                              (b * scale)[..., None])[..., 0] * scale


def best_fit_model(basis: RefineBasis, w: torch.Tensor, f: torch.Tensor, offsets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares model of the full basis at one trial offset per object: (R, J) float32,
    the :func:`best_fit_coeff` combination of the basis vectors (w, f, offsets as there), and
    those coefficients (R, K) float64."""
    coeff, t = best_fit_coeff(basis, w, f, offsets)
    return (t @ coeff.float()[:, :, None])[..., 0], coeff


SMOOTH_DEGREE = 3
"""Degree of the per-arm polynomial continuum that :func:`feature_dchi2` compares the templates with."""


def smooth_basis(arm_masks: list[np.ndarray], degree: int = SMOOTH_DEGREE, min_pixels: int = 50) -> np.ndarray:
    """(J, P) float64: Legendre polynomials of degree 0..``degree`` on each contiguous run of
    each arm's grid pixels (``arm_masks``: one (J,) bool per arm; runs shorter than
    ``min_pixels`` skipped), zero elsewhere: a smooth continuum with its own level, slope
    and curvature per arm (flux-calibration offsets between arms included), which no
    redshift feature (line, break, absorption band) can be fitted by."""
    cols = []
    for covered in arm_masks:
        covered = np.asarray(covered, bool)
        j = len(covered)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], covered.astype(np.int8), [0]])))
        for lo, hi in zip(edges[::2], edges[1::2], strict=True):
            if hi - lo < min_pixels:
                continue
            x = np.linspace(-1.0, 1.0, hi - lo)
            for d in range(degree + 1):
                col = np.zeros(j)
                col[lo:hi] = np.polynomial.legendre.Legendre.basis(d)(x)
                cols.append(col)
    return np.array(cols).T if cols else np.zeros((len(arm_masks[0]) if arm_masks else 0, 0))


def feature_dchi2(templates: torch.Tensor, w: torch.Tensor, f: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Evidence for redshift features: chi2 of a smooth continuum alone minus chi2 of the
    smooth continuum plus the templates at each object's redshift.

    templates: (R, J, K) basis vectors at z; w, f: (R, J) ivar and flux; smooth: (J, P)
    (:func:`smooth_basis`). One set of normal equations (float32 products, float64 solves as
    :func:`_solve_chi2`'s) serves both fits: the smooth continuum's is its lower-right block.
    Returns (R,) float64 >= 0 (up to rounding): about K for noise at a fixed z, more at the
    best of many trial redshifts; a featureless continuum (a power law, a blackbody) the same,
    whatever its S/N.
    """
    r, j = w.shape
    k = templates.shape[2]
    t = torch.cat([templates.float(), smooth.float()[None].expand(r, j, smooth.shape[1])], 2)  # (R, J, K + P)
    tw = t * w.float()[:, :, None]
    a = tw.transpose(1, 2) @ t  # normal equations of templates + smooth; the smooth alone is their lower block
    b = (f.float()[:, None, :] @ tw)[:, 0]
    wff = (w.double() * f.double() ** 2).sum(1)
    return _solve_chi2(a[:, k:, k:], b[:, k:], wff) - _solve_chi2(a, b, wff)


def outlier_pixels(chi: np.ndarray, ivar: np.ndarray, clip_sigma: float) -> np.ndarray:
    """(N, J) bool: pixels with |chi| (residual x sqrt(ivar) against a best-fit model) above
    ``clip_sigma`` x max(1, the robust scatter of chi: 1.4826 x median |chi| over the pixels
    with ivar > 0). A fit dragged off by one huge outlier leaves every pixel far from its
    model; the robust scatter keeps the clip to the outlier itself."""
    valid = ivar > 0
    abschi = np.abs(chi)
    # the median over valid pixels of each row: sorted with the invalid ones (inf) last
    srt = np.sort(np.where(valid, abschi, np.inf), axis=1)
    n = valid.sum(axis=1)
    rows = np.arange(len(chi))
    lo, hi = srt[rows, np.maximum(n - 1, 0) // 2], srt[rows, np.maximum(n, 1) // 2 - (n == 0)]
    with np.errstate(invalid="ignore"):
        scale = np.where(n > 0, 1.4826 * 0.5 * (lo + hi), np.nan)
    scale = np.where(np.isfinite(scale), np.maximum(scale, 1.0), 1.0)
    return valid & (abschi > clip_sigma * scale[:, None])


def _triu(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle of a k x k matrix (the packed order)."""
    iu = torch.triu_indices(k, k)
    return iu[0], iu[1]


def _torch_table(basis: RefineBasis, continuum: bool = False) -> torch.Tensor:
    key = "_torch_c" if continuum else "_torch"
    if key not in basis.cache:
        t = basis.table[:, :basis.n_continuum] if continuum else basis.table
        basis.cache[key] = torch.from_numpy(np.ascontiguousarray(t))
    return basis.cache[key]


def _phase_major(basis: RefineBasis, continuum: bool = False) -> torch.Tensor:
    """(oversample, U, K) copy of the (M, K) table (or its continuum columns), cached on the
    basis: [phase, u] = table[oversample * u + phase] (zero-padded at the end)."""
    key = "_phased_c" if continuum else "_phased"
    if key not in basis.cache:
        table = _torch_table(basis, continuum)
        m, k = table.shape
        os_ = basis.oversample
        u = -(-m // os_)
        padded = torch.zeros(u * os_, k, dtype=table.dtype)
        padded[:m] = table
        basis.cache[key] = padded.reshape(u, os_, k).transpose(0, 1).contiguous()
    return basis.cache[key]


def _pixel_table(basis: RefineBasis, k: int) -> torch.Tensor:
    """(U, k(k+1)/2 + k): the first k continuum vectors at whole-pixel rows and their products."""
    key = f"_pixel{k}"
    if key not in basis.cache:
        src = basis.coarse_table if basis.coarse_table is not None else basis.table[::basis.oversample]
        t = torch.from_numpy(np.ascontiguousarray(src[:, :k]))
        iu = _triu(k)
        basis.cache[key] = torch.cat([t[:, iu[0]] * t[:, iu[1]], t], dim=1).contiguous()
    return basis.cache[key]


def packed_cholesky(c: torch.Tensor, d: int, wff: torch.Tensor, floor: torch.Tensor,
                     solve: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """chi2 = wff - b^T A^-1 b for M systems, in place on packed channels ``c`` (C, M) float64:
    the lower triangle of A row-major ((i, j <= i) at i(i+1)/2 + j), then b (D rows).

    Jacobi-scaled; vector i is dropped where A_ii < floor (M,) or where its pivot falls below
    PIVOT_TOL. With ``solve``, also returns the amplitudes x (D, M) (0 for dropped vectors).
    Each step is a few row operations over all M systems at once.
    """
    def at(i: int, j: int) -> int:
        return i * (i + 1) // 2 + j

    n_pack = d * (d + 1) // 2
    b = c[n_pack:n_pack + d]
    diag = c[[at(i, i) for i in range(d)]]  # (D, M) copy
    scale = torch.where(diag > floor[None, :], diag.clamp_min(1e-300).rsqrt(), torch.zeros_like(diag))
    for i in range(d):
        c[at(i, 0):at(i, i) + 1].mul_(scale[:i + 1]).mul_(scale[i][None])
    b.mul_(scale)
    chi2 = wff.clone()
    cols, invs, ys = [], [], []
    for k in range(d):
        piv = c[at(k, k)]
        inv = torch.where(piv > PIVOT_TOL, piv.clamp_min(PIVOT_TOL).rsqrt(), torch.zeros_like(piv))
        y = b[k] * inv
        chi2.addcmul_(y, y, value=-1.0)
        if solve:
            invs.append(inv)
            ys.append(y)
        if k == d - 1:
            break
        col = c[[at(i, k) for i in range(k + 1, d)]]  # (D-k-1, M) copy
        col.mul_(inv)  # column k of L below the diagonal
        if solve:
            cols.append(col)
        b[k + 1:].addcmul_(col, y[None], value=-1.0)
        for i in range(k + 1, d):  # row i of the trailing block: entries (i, k+1..i), contiguous
            c[at(i, k + 1):at(i, i) + 1].addcmul_(col[:i - k], col[i - k - 1][None], value=-1.0)
    if not solve:
        return chi2, None
    x = torch.zeros(d, c.shape[1], dtype=c.dtype)
    for k in range(d - 1, -1, -1):
        acc = ys[k].clone()
        if k < d - 1:
            acc -= (cols[k] * x[k + 1:]).sum(0)
        x[k] = acc * invs[k]
    return chi2, x * scale


__all__ = ["CoarseChi2", "best_fit_coeff", "best_fit_model", "coarse_chi2", "feature_dchi2", "fine_chi2",
           "outlier_pixels", "packed_cholesky", "solve_coeff", "PIVOT_TOL",
           "smooth_basis", "SMOOTH_DEGREE"]
