"""Full-range redshift scan of a linear template basis, by FFT correlations.

On a grid uniform in ln(lambda) with step ``dloglam`` a trial redshift on the lattice
ln(1 + z) = const - s * dloglam is a whole-pixel shift ``s`` of the rest-frame basis: data
pixel j sees basis row ``j + s``. For the linear least-squares fit of the K basis vectors
T_k (plus, optionally, Q Legendre polynomials P_q in observed ln(lambda), not shifted),

    chi2(s) = sum_j w_j f_j^2 - b(s)^T A(s)^-1 b(s)
    b_k(s)  = sum_j w_j f_j T_k[j + s]            (a correlation of w f with T_k)
    A_kl(s) = sum_j w_j T_k[j + s] T_l[j + s]     (a correlation of w with T_k T_l)
    A_qk(s) = sum_j w_j P_q[j] T_k[j + s]         (a correlation of w P_q with T_k)
    A_qr, b_q                                     (constants per object)

with w the inverse variance (0 = masked). Every correlation for every shift comes from one
real FFT per data vector (w, w f, w P_q) and one inverse FFT per entry, the basis side
(T_k and the K(K+1)/2 products T_k T_l) transformed once per :class:`ZScanner` and cached.
The FFT length is 4 times the smallest 7-smooth number >= (n_pix + n_shift - 1) / 4 (no
wrap-around; a multiple of 4 so that ``stride=2`` can fold the spectra in two).
The (N, S) small systems are solved together by a Cholesky factorisation written as
vectorised row operations over all (object, shift) pairs (torch's batched LAPACK calls cost
~1 us per 10x10 matrix, the row operations ~0.05 us), in float64, Jacobi-scaled; a basis
vector carrying less than ``weight_floor`` (1e-6) of the object's total weight at a shift, or whose pivot
falls below ``1e-6`` (it is a combination of the others there), is dropped at that shift,
so a shift with few valid pixels yields chi2 = sum w f^2, never NaN.

Outputs (:class:`ZScanResult`) are on the scan's redshift grid (increasing z). Callers form
delta chi2 against ``chi2_zero`` (the zero model) or against the minimum.

The combination with the network's PDF (:func:`~mtopnet.refine.combine.combine_pdf`) and the
scan's own best z and DELTACHI2 (:func:`~mtopnet.refine.combine.scan_summary`) live in
:mod:`mtopnet.refine.combine`.

Library use::

    scanner = ZScanner.from_refine_basis(basis, (0.5, 3.3), n_templates=6)
    res = scanner.scan(flux, ivar)                            # flux, ivar: (N, n_pix)
    z_best, dchi2, n_min = scan_summary(res)
    post = combine_pdf(pdf, chi2_on_bins(res.z, res.chi2, edges), w_net, t, ok=res.ok)

Benchmark: ``benchmarks/zscan.py``; choices and figures:
docs/zscan.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, UserError
from ..devices import torch_threads
from .kernels import PIVOT_TOL, outlier_pixels, packed_cholesky
from .settings import ScanConfig

"""Minima closer than this to the best one do not count as a competing solution."""
WEIGHT_FLOOR = 1e-6
"""Default ``weight_floor``: a basis vector whose weighted square sum at a shift is below this
fraction of the object's sum of weights (for a unit-maximum vector it is at most 1) is
dropped at that shift. It must exceed the float32 FFT's rounding (~1e-7 of the largest
correlation); larger values also stop a sliver of a sharp feature at the edge of the valid
data from being fitted to noise with a huge amplitude."""


def smooth_length(n: int) -> int:
    """Smallest integer >= n whose prime factors are all <= 7 (a fast FFT length)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


@dataclass
class ZScanResult:
    """Scan of N objects over S trial redshifts.

    z: (S,) float64 trial redshifts, increasing, uniform in ln(1 + z) with step
        ``stride * dloglam``.
    chi2: (N, S) float32, chi2 of the best linear fit at each trial (every valid pixel
        counts; pixels the basis does not reach count with a zero model).
    chi2_zero: (N,) float64, sum w f^2 (the chi2 of a zero model).
    npix: (N,) int64 valid pixels (ivar > 0).
    best: (N,) int64 index into ``z`` of the lowest chi2.
    coeff: (N, K + Q) float64 amplitudes at ``best`` (basis vectors, then polynomials; 0 for
        a dropped vector), in the flux units of the input.
    ok: (N,) bool, a fit ran (npix >= the scanner's ``min_pixels``); where False, chi2 =
        chi2_zero at every trial and coeff = 0.
    """

    z: np.ndarray
    chi2: np.ndarray
    chi2_zero: np.ndarray
    npix: np.ndarray
    best: np.ndarray
    coeff: np.ndarray
    ok: np.ndarray


class ZScanner:
    """Chi2 of a basis at every whole-pixel shift over a redshift range, for batches of spectra.

    table: (U, K) rest-frame basis at whole-pixel steps: row u is each vector's mean over a
        pixel centred at rest ln(lambda) = ``x0 + u * dloglam`` (zero outside the table).
    ln_lam0: ln of the data grid's first pixel edge (A); data pixel j is centred at
        ``ln_lam0 + (j + 0.5) * dloglam``. n_pix: data pixels.
    z_range: (lo, hi) the scan covers both ends (one shift beyond each if off the lattice).
    n_poly: Legendre polynomials in observed ln(lambda) across the grid (0 = none, 3 = up to
        degree 2) fitted with free amplitudes beside the basis.
    observed: (Q, n_pix) more observed-frame vectors with free amplitudes (not shifted), e.g.
        each arm's sky (:func:`mtopnet.refine.sky_residual_vectors`); ``n_obs`` counts them and
        the polynomials.
    min_pixels: objects with fewer valid pixels are not fitted (``ok`` False); default
        ``2 * (K + n_obs)``.
    fft_double: FFTs in float64 (2-4x slower; float32 keeps chi2 to ~1e-5 of sum w f^2).
    weight_floor: see :data:`WEIGHT_FLOOR`.
    stride: 1 = every whole-pixel shift; 2 = every second one (half the inverse FFTs and
        solves: the correlation spectra are folded in two before the inverse transform, which
        yields exactly the even lags). The trial step is then 2 pixels (150 km/s for MOONS LR),
        fine enough for a scan that proposes candidates for a refinement.

    Raises ConfigError for an empty basis, a bad range or a grid that the basis cannot shift.
    """

    def __init__(self, table: np.ndarray, x0: float, dloglam: float, ln_lam0: float, n_pix: int,
                 z_range: tuple[float, float], n_poly: int = 0, min_pixels: int | None = None,
                 fft_double: bool = False, weight_floor: float = WEIGHT_FLOOR, stride: int = 1,
                 names: tuple[str, ...] | None = None, observed: np.ndarray | None = None):
        table = np.asarray(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] < 1 or table.shape[0] < 2:
            raise ConfigError(f"zscan.table: need (U, K >= 1) rows, got shape {table.shape}")
        if not (dloglam > 0 and n_pix >= 2):
            raise ConfigError(f"zscan: need dloglam > 0 and n_pix >= 2, got {dloglam}, {n_pix}")
        lo, hi = float(z_range[0]), float(z_range[1])
        if not -1 < lo < hi:
            raise ConfigError(f"zscan.z_range: need -1 < lo < hi, got {z_range}")
        if stride not in (1, 2):
            raise ConfigError(f"zscan.stride: must be 1 or 2, got {stride}")
        if n_poly < 0 or n_poly > 10:
            raise ConfigError(f"zscan.n_poly: must be 0-10, got {n_poly}")
        self.dloglam = float(dloglam)
        self.n_pix = int(n_pix)
        self.n_templates = table.shape[1]
        self.n_poly = int(n_poly)
        obs = np.zeros((0, self.n_pix)) if observed is None else np.asarray(observed, dtype=np.float64)
        if obs.ndim != 2 or obs.shape[1] != self.n_pix or not np.isfinite(obs).all():
            raise ConfigError(f"zscan.observed: need finite (Q, {self.n_pix}) vectors, got {obs.shape}")
        self.n_obs = self.n_poly + len(obs)
        self.names = tuple(names) if names is not None else tuple(f"t{k}" for k in range(self.n_templates))
        n_basis = self.n_templates + self.n_obs
        self.min_pixels = int(min_pixels) if min_pixels is not None else 2 * n_basis
        self.fft_double = bool(fft_double)
        if not 0 <= weight_floor < 1:
            raise ConfigError(f"zscan.weight_floor: must be within [0, 1), got {weight_floor}")
        self.weight_floor = float(weight_floor)
        # shift s: ln(1 + z) = c - s * dloglam
        c = ln_lam0 + 0.5 * dloglam - x0
        self._c = c
        s_lo = int(math.floor((c - math.log1p(hi)) / dloglam + 1e-9))
        s_hi = int(math.ceil((c - math.log1p(lo)) / dloglam - 1e-9))
        self.shift_lo = s_lo
        self.n_shift = s_hi - s_lo + 1
        self.stride = int(stride)
        self.n_trial = -(-(self.n_shift - 1) // self.stride) + 1
        self.n_shift = (self.n_trial - 1) * self.stride + 1  # both ends covered at any stride
        # basis rows s_lo .. s_hi + n_pix - 1, zero outside the table
        need = self.n_shift + self.n_pix - 1
        crop = np.zeros((need, self.n_templates))
        src_lo, src_hi = max(s_lo, 0), min(s_lo + need, len(table))
        if src_hi > src_lo:
            crop[src_lo - s_lo:src_hi - s_lo] = table[src_lo:src_hi]
        if not np.any(crop):
            raise ConfigError(f"zscan: the basis does not reach the data grid anywhere in z {z_range}")
        self.fft_len = 4 * smooth_length(-(-need // 4))  # a multiple of 4, so that it folds in two
        shifts = s_lo + self.stride * np.arange(self.n_trial)
        # increasing z = decreasing shift
        self.z = np.expm1(c - shifts[::-1] * dloglam)
        k = self.n_templates
        il = np.tril_indices(k)  # packed lower triangle, row-major: (i, j <= i)
        prods = crop[:, il[0]] * crop[:, il[1]]  # (need, K(K+1)/2)
        ctype = torch.complex128 if fft_double else torch.complex64
        self._crop64 = torch.from_numpy(crop)
        spec = np.fft.rfft(np.concatenate([prods, crop], axis=1).T, n=self.fft_len, axis=1)
        self._basis_fft = torch.from_numpy(spec).to(ctype)  # (K(K+1)/2 + K, F)
        # for stride 2: conj(B[L/2 - k]), k = 0..L/4
        self._basis_fft_hi = self._basis_fft[:, self.fft_len // 4:self.fft_len // 2 + 1].flip(-1).conj().resolve_conj()
        self._n_prod = len(il[0])
        # the packed channels that come from correlations (the rest, the observed-frame vectors'
        # own products and their b, do not depend on the shift and are summed directly): row ranges
        d, q = k + self.n_obs, self.n_obs
        ranges = [(0, self._n_prod)] + [((k + i) * (k + i + 1) // 2, (k + i) * (k + i + 1) // 2 + k) for i in range(q)]
        ranges.append((d * (d + 1) // 2, d * (d + 1) // 2 + k))
        merged = [list(ranges[0])]
        for lo, hi in ranges[1:]:
            if lo == merged[-1][1]:
                merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        self._fft_rows = [tuple(r) for r in merged]
        x = np.linspace(-1.0, 1.0, self.n_pix)
        poly = np.polynomial.legendre.legvander(x, self.n_poly - 1).T if self.n_poly else np.zeros((0, self.n_pix))
        self._poly = np.concatenate([poly, obs]).copy()  # (n_obs, n_pix): polynomials, then ``observed``
        self._poly32 = torch.from_numpy(self._poly).to(torch.float32)
        self._poly64 = torch.from_numpy(self._poly)

    @classmethod
    def from_refine_basis(cls, basis: Any, z_range: tuple[float, float], n_templates: int | None = None,
                          lines: bool | tuple[str, ...] = False, n_poly: int = 0, smooth: float = 0.0,
                          **kwargs: Any) -> "ZScanner":
        """A scanner from a :class:`mtopnet.refine.RefineBasis`: its table at whole-pixel rows,
        the first ``n_templates`` continuum (PCA) vectors (default all), plus its line-group
        vectors: all if ``lines`` is True, or those named (e.g. ``("[OII]", "Hbeta", "[OIII]",
        "Halpha")``; the basis must have been built with lines). The basis must have been
        built for a z range covering ``z_range``; ``kwargs`` go to the constructor.
        smooth: average each vector over a box of this many pixels (0 = none): the template
        expected when the true redshift falls anywhere between two trials, so that a narrow
        line half a trial step off the lattice does not lose its minimum."""
        kc = basis.n_continuum
        k = kc if n_templates is None else int(n_templates)
        if not 1 <= k <= kc:
            raise ConfigError(f"zscan.n_templates: must be 1-{kc}, got {n_templates}")
        line_cols = list(range(kc, basis.table.shape[1]))
        if isinstance(lines, (tuple, list)):
            unknown = [name for name in lines if name not in basis.names[kc:]]
            if unknown:
                raise ConfigError(f"zscan.lines: unknown line groups {unknown}; known: {list(basis.names[kc:])}")
            line_cols = [basis.names.index(name) for name in lines]
        elif not lines:
            line_cols = []
        cols = list(range(k)) + line_cols
        os_ = basis.oversample
        fine = np.asarray(basis.table[:, cols], dtype=np.float64)
        if smooth > 0:  # box of `smooth` pixels, on the 1/oversample sub-steps
            half = int(round(smooth * os_ / 2))
            cum = np.concatenate([np.zeros((1, fine.shape[1])), np.cumsum(fine, axis=0)])
            idx = np.arange(len(fine))
            lo, hi = np.clip(idx - half, 0, len(fine)), np.clip(idx + half + 1, 0, len(fine))
            fine = (cum[hi] - cum[lo]) / (2 * half + 1)
        table = fine[::os_]
        names = tuple(basis.names[c] for c in cols)
        return cls(table, basis.x0, basis.dloglam, basis.ln_lam0, basis.n_pix, z_range, n_poly=n_poly,
                   names=names, **kwargs)

    @classmethod
    def from_scan_config(cls, basis: Any, z_range: tuple[float, float], config: ScanConfig,
                         sky: np.ndarray | None = None) -> "ZScanner":
        """The scanner a :class:`ScanConfig` describes on a refinement basis; ``sky`` (n_arms,
        n_pix): the arms' sky, fitted where ``config.sky`` (ConfigError if it is None then)."""
        if config.sky and sky is None:
            raise ConfigError("scan.sky: the scan fits the training instrument's night sky, which is not available")
        return cls.from_refine_basis(basis, z_range, n_templates=config.n_templates, lines=config.lines,
                                     n_poly=config.n_poly, smooth=config.smooth, stride=config.stride,
                                     observed=sky if config.sky else None)

    @property
    def n_basis(self) -> int:
        """Vectors per fit: templates, then polynomials and observed vectors (``n_obs``)."""
        return self.n_templates + self.n_obs

    # ------------------------------------------------------------------ scan
    def scan(self, flux: np.ndarray, ivar: np.ndarray, chunk: int = 8, threads: int | None = 1) -> ZScanResult:
        """chi2 at every trial redshift for N spectra on the data grid.

        flux: (N, n_pix) (any units), ivar: (N, n_pix) its inverse variance; non-finite
        values and ivar <= 0 are masked. chunk: objects per batch of FFTs and solves (memory
        ~ chunk x 2.5 MB x (K + Q)^2 / 10). threads: torch threads while scanning (restored
        after; None keeps torch's setting): the scan is many medium-size operations, which on
        2 busy cores ran 3-10x slower with 2 OpenMP threads than with 1. Raises UserError on
        shape mismatch.
        """
        if threads is not None and threads < 1:
            raise UserError(f"zscan: threads must be >= 1, got {threads}")
        with torch_threads(threads):
            return self._scan(flux, ivar, chunk)

    def _scan(self, flux: np.ndarray, ivar: np.ndarray, chunk: int) -> ZScanResult:
        flux = np.asarray(flux)
        ivar = np.asarray(ivar)
        if flux.ndim != 2 or flux.shape != ivar.shape or flux.shape[1] != self.n_pix:
            raise UserError(f"zscan: flux/ivar shapes {flux.shape}/{ivar.shape} do not match (N, {self.n_pix})")
        if chunk < 1:
            raise UserError(f"zscan: chunk must be >= 1, got {chunk}")
        n, s = len(flux), self.n_trial
        with np.errstate(invalid="ignore"):
            good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        w_all = np.where(good, ivar, 0).astype(np.float32)
        f_all = np.where(good, flux, 0).astype(np.float32)
        npix = good.sum(axis=1).astype(np.int64)
        chi2 = np.empty((n, s), dtype=np.float32)
        chi2_zero = (w_all.astype(np.float64) * f_all.astype(np.float64) ** 2).sum(axis=1)
        best = np.zeros(n, dtype=np.int64)
        coeff = np.zeros((n, self.n_basis))
        ok = npix >= self.min_pixels
        fit = np.flatnonzero(ok)
        chi2[~ok] = chi2_zero[~ok, None]
        ws = self._workspace(min(chunk, max(len(fit), 1)))
        for start in range(0, len(fit), chunk):
            rows = fit[start:start + chunk]
            c2, bi, co = self._scan_chunk(w_all[rows], f_all[rows], chi2_zero[rows], ws)
            chi2[rows], best[rows], coeff[rows] = c2, bi, co
        return ZScanResult(z=self.z.copy(), chi2=chi2, chi2_zero=chi2_zero, npix=npix, best=best,
                           coeff=coeff, ok=ok)

    def best_model(self, best: np.ndarray, coeff: np.ndarray) -> np.ndarray:
        """The best-fit model (N, n_pix) float64 of a scan: ``best`` (N,) trial index (z order),
        ``coeff`` (N, n_basis) its amplitudes (:class:`ZScanResult`)."""
        n, p = len(best), self.n_pix
        shift_idx = torch.from_numpy(self.stride * (self.n_trial - 1 - np.asarray(best, dtype=np.int64)))
        t = self._crop64[shift_idx[:, None] + torch.arange(p)[None, :]]  # (n, P, K)
        if self.n_obs:
            t = torch.cat([t, self._poly64.T[None].expand(n, p, self.n_obs)], 2)
        return (t @ torch.from_numpy(np.asarray(coeff, dtype=np.float64))[:, :, None])[..., 0].numpy()

    def templates_at(self, z: np.ndarray) -> torch.Tensor:
        """(N, n_pix, K) float64: the basis vectors (no polynomials) at the trial nearest each z (N,)."""
        i = np.clip(np.searchsorted(self.z, z), 1, self.n_trial - 1)
        i = np.where(np.abs(self.z[i - 1] - z) < np.abs(self.z[i] - z), i - 1, i)
        shift_idx = torch.from_numpy(self.stride * (self.n_trial - 1 - i.astype(np.int64)))
        return self._crop64[shift_idx[:, None] + torch.arange(self.n_pix)[None, :]]

    def scan_clipped(self, flux: np.ndarray, ivar: np.ndarray, clip_sigma: float, chunk: int = 8,
                     threads: int | None = 1) -> tuple[ZScanResult, np.ndarray, np.ndarray]:
        """:meth:`scan`, then pixels far from the best fit (:func:`~mtopnet.refine.kernels.outlier_pixels`,
        ``clip_sigma``) get zero weight and those spectra are scanned once more.

        Returns the result, the clipped pixels per spectrum (N,) and the weights (N, n_pix)
        float32 after clipping (non-finite and ivar <= 0 already zero).
        """
        with np.errstate(invalid="ignore"):
            good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        w = np.where(good, ivar, 0).astype(np.float32)
        f = np.where(good, flux, 0).astype(np.float32)
        res = self.scan(f, w, chunk, threads)
        n_clipped = np.zeros(len(f), np.int64)
        rows = np.flatnonzero(res.ok)
        for start in range(0, len(rows), 64):
            sel = rows[start:start + 64]
            chi = (f[sel] - self.best_model(res.best[sel], res.coeff[sel])) * np.sqrt(w[sel])
            clip = outlier_pixels(chi, w[sel], clip_sigma)
            n_clipped[sel] = clip.sum(axis=1)
            w[sel] = np.where(clip, 0, w[sel])
        redo = np.flatnonzero(n_clipped > 0)
        if len(redo):
            again = self.scan(f[redo], w[redo], chunk, threads)
            for name in ("chi2", "chi2_zero", "npix", "best", "coeff", "ok"):
                getattr(res, name)[redo] = getattr(again, name)
        return res, n_clipped, w

    def correlations(self, w: np.ndarray, f: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normal equations of a few objects at every shift: A (n, S, D, D), b (n, S, D)
        float64 and sum w (n,), in the scanner's shift order (increasing shift = decreasing z)."""
        w = np.ascontiguousarray(w, np.float32)
        f = np.ascontiguousarray(f, np.float32)
        n, d = len(w), self.n_basis
        buf, wsum = self._channels(w, f, self._workspace(n))
        il = np.tril_indices(d)
        a = torch.zeros(d, d, n, self.n_trial, dtype=torch.float64)
        a[il[0], il[1]] = buf[:len(il[0])]
        a[il[1], il[0]] = buf[:len(il[0])]
        return a.permute(2, 3, 0, 1), buf[len(il[0]):].permute(1, 2, 0), wsum

    def _workspace(self, n: int) -> dict[str, torch.Tensor]:
        """Buffers for a chunk of n objects, reused across chunks (fresh large allocations cost
        page faults comparable to the arithmetic)."""
        d, s, L = self.n_basis, self.n_trial, self.fft_len
        c = d * (d + 1) // 2 + d
        nf = L // 2 + 1
        ctype = self._basis_fft.dtype
        rtype = torch.float64 if self.fft_double else torch.float32
        ws = {"out": torch.empty(c, n, L // self.stride, dtype=rtype), "buf": torch.empty(c, n, s, dtype=torch.float64)}
        if self.stride == 1:
            ws["spec"] = torch.empty(c, n, nf, dtype=ctype)
        else:
            ws["fold"] = torch.empty(c, n, L // 4 + 1, dtype=ctype)
        return ws

    def _channels(self, w: np.ndarray, f: np.ndarray, ws: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlation channels (C, n, S) float64 and sum w (n,) for n objects.

        Channels: the packed lower triangle of A, row-major ((i, j <= i) at i(i+1)/2 + j),
        then b (D). Rows 0..K-1 are the templates, K..K+Q-1 the polynomials and observed vectors."""
        n = len(w)
        k, q, s, L = self.n_templates, self.n_obs, self.n_trial, self.fft_len
        d = k + q
        n_pack = d * (d + 1) // 2
        out, buf = ws["out"][:, :n], ws["buf"][:, :n]
        wt = torch.from_numpy(w)
        wf = wt * torch.from_numpy(f)
        data = [wt[None], wf[None]]
        if q:
            data.append(wt[None] * self._poly32[:, None, :])
        rdtype = torch.float64 if self.fft_double else torch.float32
        gd = torch.fft.rfft(torch.cat(data, 0).to(rdtype), n=L)  # (2 + Q, n, F)
        bf = self._basis_fft
        if self.stride == 1:
            g_lo, b_lo, g_hi, b_hi = gd.conj().resolve_conj(), bf, None, None
            spec = ws["spec"][:, :n]
        else:  # even lags only: c[2m] = irfft_{L/2}(X[k] + conj X[L/2 - k])[m] / 2 with X = conj(G) B,
            # i.e. the folded spectrum conj(G[k]) B[k] + G[L/2 - k] conj(B[L/2 - k]), k <= L/4
            h = L // 4 + 1
            g_lo = gd[..., :h].conj().resolve_conj()
            g_hi = gd[..., L // 4:L // 2 + 1].flip(-1)
            b_lo, b_hi = bf[:, :h], self._basis_fft_hi
            spec = ws["fold"][:, :n]

        def product(gi: int, b_rows: slice, dest: torch.Tensor) -> None:
            """dest (R, n, F') = spectrum of the correlation of data row gi with basis rows b_rows."""
            torch.mul(g_lo[gi][None], b_lo[b_rows, None], out=dest)
            if g_hi is not None:
                dest.addcmul_(g_hi[gi][None], b_hi[b_rows, None])

        npr = self._n_prod
        product(0, slice(0, npr), spec[:npr])  # template x template
        for qi in range(q):  # row K + qi: cross terms with the K templates (its constants: below)
            r0 = (k + qi) * (k + qi + 1) // 2
            product(2 + qi, slice(npr, None), spec[r0:r0 + k])
        product(1, slice(npr, None), spec[n_pack:n_pack + k])
        for lo, hi in self._fft_rows:  # only the channels that are correlations
            torch.fft.irfft(spec[lo:hi], n=L // self.stride, out=out[lo:hi])
            if self.stride == 2:
                out[lo:hi].mul_(0.5)
            buf[lo:hi].copy_(out[lo:hi, :, :s])
        w64 = wt.double()
        if q:
            p64 = self._poly64
            for qi in range(q):
                r0 = (k + qi) * (k + qi + 1) // 2 + k
                app = (w64[:, None, :] * p64[qi, None, None, :] * p64[None, :qi + 1, :]).sum(-1)  # (n, qi+1)
                buf[r0:r0 + qi + 1] = app.T[:, :, None]
            buf[n_pack + k:] = (wf.double() @ p64.T).T[:, :, None]
        return buf, w64.sum(1)

    def _scan_chunk(self, w: np.ndarray, f: np.ndarray, wff: np.ndarray, ws: dict[str, torch.Tensor]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, d, s = len(w), self.n_basis, self.n_trial
        buf, wsum = self._channels(w, f, ws)
        floor = self.weight_floor * wsum
        wff_t = torch.from_numpy(wff)
        m = n * s
        flat = buf.view(-1, n * s) if buf.is_contiguous() else buf.reshape(-1, n * s)
        chi2, _ = packed_cholesky(flat, d, wff_t[:, None].expand(n, s).reshape(m),
                                  floor[:, None].expand(n, s).reshape(m))
        chi2 = chi2.view(n, s)
        bi_shift = torch.argmin(chi2, dim=1)  # in shift order
        # the solve overwrote the channels: the n best systems are summed again directly
        best = self._best_systems(w, f, self.stride * bi_shift)
        _, coeff = packed_cholesky(best, d, wff_t, floor, solve=True)
        chi2 = chi2.flip(1)
        bi = s - 1 - bi_shift
        return chi2.clamp_min(0).float().numpy(), bi.numpy(), coeff.T.numpy()

    def _best_systems(self, w: np.ndarray, f: np.ndarray, shift_idx: torch.Tensor) -> torch.Tensor:
        """Packed normal equations (C, n) float64 of n objects at one shift each (index from
        ``shift_lo``), summed directly in float64 (the amplitudes at the minimum)."""
        k, q = self.n_templates, self.n_obs
        d = k + q
        n, p = w.shape
        crop = self._crop64
        rows = shift_idx[:, None] + torch.arange(p)[None, :]  # (n, P)
        t = crop[rows]  # (n, P, K)
        if q:
            t = torch.cat([t, self._poly64.T[None].expand(n, p, q)], 2)
        w64 = torch.from_numpy(w).double()
        f64 = torch.from_numpy(f).double()
        a = torch.einsum("np,npi,npj->nij", w64, t, t)
        b = torch.einsum("np,np,npi->ni", w64, f64, t)
        il = torch.tril_indices(d, d)
        return torch.cat([a[:, il[0], il[1]], b], 1).T.contiguous()


# ----------------------------------------------------------------------------- summaries


__all__ = ["ZScanner", "ZScanResult", "smooth_length", "WEIGHT_FLOOR", "PIVOT_TOL"]
