"""The refinement itself: coarse and fine scans per PDF peak, the parabola through the chi2
minimum, and the choice of the reported peak (:func:`combine`)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..constants import C_KMS, SEPARATION_KMS
from ..devices import torch_threads
from ..quality import pdf_peaks, window_mass
from .basis import RefineBasis, build_basis
from .kernels import CoarseChi2, best_fit_coeff, best_fit_model, coarse_chi2, fine_chi2, outlier_pixels
from .settings import RefineConfig
from .spectype import SpectypeFitter

"""Trials closer than this to the best fit do not count as the 'next best' solution."""


def parabola_vertex(c_minus: np.ndarray, c0: np.ndarray, c_plus: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The minimum of the parabola through three equally spaced samples (any shape, float64).

    Returns (frac, curv, ok): the vertex's offset from the middle sample in units of the
    spacing (0 where there is no minimum), the curvature ``c_minus + c_plus - 2 c0``, and
    ok = the curvature is finite and > 0. The one parabola fit of the refinement (coarse
    centres and fine minima).
    """
    with np.errstate(invalid="ignore"):
        curv = c_minus + c_plus - 2 * c0
    ok = np.isfinite(curv) & (curv > 0)
    frac = np.where(ok, 0.5 * (c_minus - c_plus) / np.where(ok, curv, 1.0), 0.0)
    return frac, curv, ok


@dataclass
class RefineResult:
    """Per object (N,) unless stated.

    z: reported redshift; z_err: 1-sigma error (chi2 curvature; ``z_err_net`` where not
    refined); z_net: the network's point estimate; delta_chi2: fine chi2 of the next-best
    peak (> 1000 km/s away) minus the best (NaN if only one peak was fitted); rchi2:
    reduced chi2 of the best fit (NaN if not refined);
    refined: index of the reported peak (0 = the PDF's main peak), -1 if not refined;
    disagree: REFINE_DISAGREE (a better-fitting peak not reported, or the fit rejected);
    poor_fit: the best fit's reduced chi2 > ``max_rchi2`` (ZInfo.POOR_FIT); fit_mass: PDF
    mass within +-window of the reported z.
    peak_z, peak_chi2, peak_mass: (N, P) per-peak refined z, fine chi2, PDF mass (NaN/inf/0
    where absent). n_clipped: pixels given zero weight as outliers of the first fit
    (``RefineConfig.clip_sigma``); outlier_dominated: those pixels held more than
    ``dominated_fraction`` of the first fit's chi2 (ZWarn.FIT_OUTLIERS). coeff: (N, K)
    least-squares coefficients of the basis at z with the final pixel weights (0 where not
    refined); n_pixels: pixels the final fit used (ivar > 0, not clipped).
    """

    z: np.ndarray
    z_err: np.ndarray
    z_net: np.ndarray
    delta_chi2: np.ndarray
    rchi2: np.ndarray
    refined: np.ndarray
    disagree: np.ndarray
    poor_fit: np.ndarray
    fit_mass: np.ndarray
    peak_z: np.ndarray
    peak_chi2: np.ndarray
    peak_mass: np.ndarray
    peak_zerr: np.ndarray
    n_clipped: np.ndarray | None = None
    outlier_dominated: np.ndarray | None = None
    coeff: np.ndarray | None = None
    n_pixels: np.ndarray | None = None


class Refiner:
    """Refines redshift PDFs of one model (grid, z bins, LSF) with one template basis."""

    def __init__(self, basis: RefineBasis, edges: np.ndarray, config: RefineConfig | None = None):
        self.basis = basis
        self.edges = np.asarray(edges, dtype=np.float64)
        self.midpoints = 0.5 * (self.edges[1:] + self.edges[:-1])
        """(K,) arithmetic mid-points of the bins in z: the nodes of the PDF density interpolation."""
        self.config = config or RefineConfig()
        self._spectype: SpectypeFitter | None = None

    def spectype_fitter(self) -> SpectypeFitter | None:
        """The QSO / star check on this refiner's grid (built on first use), or None when
        ``config.spectype`` is off."""
        if not self.config.spectype:
            return None
        if self._spectype is None:
            self._spectype = SpectypeFitter.from_refiner(self)
        return self._spectype

    @classmethod
    def from_model(cls, model, config: RefineConfig | None = None,
                   templates: str | os.PathLike | None = None) -> "Refiner":
        """A refiner for a :class:`mtopnet.trained.TrainedModel` (its grid, z bins and LSF)."""
        cfg = config or RefineConfig()
        lsf = cfg.lsf_sigma_kms if cfg.lsf_sigma_kms is not None else model.lsf_sigma_kms
        zb = model.zbins
        basis = build_basis(model.preprocessor.config, (zb.z_min, zb.z_max), lsf, cfg, templates)
        return cls(basis, zb.edges, cfg)

    def log_density_at(self, log_density: np.ndarray, z: np.ndarray) -> np.ndarray:
        """ln PDF density (R, K) at the bins' mid-points, interpolated linearly at z (R, M)
        (clamped to the first and last mid-point; NaN z read as the first): (R, M)."""
        centres = self.midpoints
        zz = np.nan_to_num(z, nan=centres[0])
        j = np.clip(np.searchsorted(centres, zz) - 1, 0, len(centres) - 2)
        frac = np.clip((zz - centres[j]) / (centres[j + 1] - centres[j]), 0.0, 1.0)
        lo, hi = np.take_along_axis(log_density, j, 1), np.take_along_axis(log_density, j + 1, 1)
        return lo * (1 - frac) + hi * frac

    def line_pixels(self, o_mid: np.ndarray, reach: int) -> np.ndarray | None:
        """(R, P) int64 pixels where a line vector can be non-zero for trial offsets within
        +-``reach`` sub-steps of ``o_mid`` (R,), padded with -1; None without line vectors."""
        basis = self.basis
        if basis.table.shape[1] == basis.n_continuum:
            return None
        if "_line_rest" not in basis.cache:
            support = np.abs(basis.table[:, basis.n_continuum:]).max(axis=1) > 0
            support &= np.abs(basis.table[:, basis.n_continuum:]).max(axis=1) > 1e-7
            rows = np.flatnonzero(support)
            breaks = np.flatnonzero(np.diff(rows) > 1)
            basis.cache["_line_rest"] = (np.concatenate([rows[:1], rows[breaks + 1]]),
                                        np.concatenate([rows[breaks], rows[-1:]]))
        lo_m, hi_m = basis.cache["_line_rest"]  # table-row intervals where lines are non-zero
        os_ = basis.oversample
        lo = np.floor((lo_m[None, :] - o_mid[:, None] - reach) / os_).astype(np.int64)  # (R, G)
        hi = np.ceil((hi_m[None, :] - o_mid[:, None] + reach) / os_).astype(np.int64)
        j = basis.n_pix
        width = int((hi - lo).max()) + 1 if len(o_mid) else 1
        cand = lo[:, :, None] + np.arange(width)[None, None, :]  # (R, G, W)
        ok = (cand <= hi[:, :, None]) & (cand >= 0) & (cand < j)
        mask = np.zeros((len(o_mid), j + 1), bool)
        r_idx = np.broadcast_to(np.arange(len(o_mid))[:, None, None], cand.shape)
        mask[r_idx[ok], cand[ok]] = True
        mask = mask[:, :j]
        count = mask.sum(axis=1)
        p = max(int(count.max()) if len(count) else 0, 1)
        order = np.argsort(~mask, axis=1, kind="stable")[:, :p]
        return np.where(np.arange(p)[None, :] < count[:, None], order, -1).astype(np.int64)

    # -- the two scans -----------------------------------------------------------------
    def chi2_near(self, flux: np.ndarray, ivar: np.ndarray, obj: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Lowest fine chi2 (full basis) within +-fine_half sub-steps of ``z`` (R,) for objects ``obj`` (R,)."""
        cfg, basis = self.config, self.basis
        if len(obj) == 0:
            return np.zeros(0)
        o_lo, o_hi = basis.offset_range
        o_mid = np.clip(np.round(basis.offset(z)).astype(np.int64), o_lo + cfg.fine_half, o_hi - cfg.fine_half)
        n_f = 2 * (cfg.fine_half // cfg.fine_step) + 1
        offsets = o_mid[:, None] + cfg.fine_step * np.arange(-(n_f // 2), n_f // 2 + 1)[None, :]
        line_pix = self.line_pixels(o_mid, cfg.fine_half)
        w = torch.from_numpy(np.ascontiguousarray(ivar[obj], dtype=np.float32))
        wf = torch.from_numpy(np.ascontiguousarray(ivar[obj] * flux[obj], dtype=np.float32))
        lp = None if line_pix is None else torch.from_numpy(line_pix)
        return fine_chi2(basis, w, wf, torch.from_numpy(offsets), lp).numpy().min(axis=1)

    def _scan(self, flux: np.ndarray, ivar: np.ndarray, obj: np.ndarray, z_peak: np.ndarray,
              log_density: np.ndarray | None = None, known: CoarseChi2 | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Coarse then fine scans for R rows (object index ``obj``, peak ``z_peak``).

        The coarse chi2 comes from ``known`` (the full-range scan's, of its basis) where it
        holds the row's whole window, else from the coarse basis
        (:func:`~mtopnet.refine.kernels.coarse_chi2`).

        The coarse minimum is that of ``chi2 - 2 ln p(z)``, p the PDF density
        (``log_density``: (N, K) ln of pdf / bin width at the bin centres, interpolated
        linearly), so that a minimum the PDF excludes is not chosen on a small chi2 gain; the
        fine scan and the reported z, z_err use chi2 alone. Returns z (R,), z_err (R,),
        chi2 (R,) of each row's fine minimum, the coarse trial redshifts (R, S) and their
        chi2 (R, S) (inf outside the window).
        """
        cfg, basis = self.config, self.basis
        os_ = basis.oversample
        d = basis.dloglam
        o_lo, o_hi = basis.offset_range
        r = len(obj)
        centre = basis.offset(z_peak) / os_  # in pixels (float)
        half = np.ceil(np.log1p(cfg.window / (1 + z_peak)) / d).astype(np.int64)  # (R,) pixels
        n_shift = int(2 * half.max() + 1) if r else 1
        lo_shift, hi_shift = int(math.ceil(o_lo / os_)), o_hi // os_
        shift0 = np.clip(np.round(centre).astype(np.int64) - half, lo_shift, hi_shift - n_shift + 1)
        shifts = shift0[:, None] + np.arange(n_shift)[None, :]
        in_window = np.abs(shifts - centre[:, None]) <= half[:, None] + 0.5
        w_all = torch.from_numpy(np.ascontiguousarray(ivar, dtype=np.float32))
        wf_all = torch.from_numpy(np.ascontiguousarray(ivar * flux, dtype=np.float32))
        coarse = np.full((r, n_shift), np.inf)
        fine_n = 2 * (cfg.fine_half // cfg.fine_step) + 1
        fine = np.empty((r, fine_n))
        todo = np.ones(r, bool)
        if known is not None and r:
            read, ok = known.window(obj, shift0, n_shift)
            coarse[ok] = read[ok]
            todo = ~ok
        # rows sorted by window width, so that each chunk scans only as many shifts as it needs
        by_width = np.flatnonzero(todo)[np.argsort(half[todo], kind="stable")]
        for start in range(0, len(by_width), cfg.chunk_rows):
            sel = by_width[start:start + cfg.chunk_rows]
            n_s = int(2 * half[sel].max() + 1)
            idx = torch.from_numpy(obj[sel])
            coarse[sel, :n_s] = coarse_chi2(basis, w_all[idx], wf_all[idx], torch.from_numpy(shift0[sel]), n_s,
                                            cfg.coarse_templates).numpy()
        coarse = np.where(in_window, coarse, np.inf)
        z_coarse = np.expm1(basis.lnz1(shifts * os_))
        score = coarse
        if log_density is not None and r:
            score = coarse - 2.0 * self.log_density_at(log_density[obj], z_coarse)
        # candidate fine centres: the best coarse trial, and the coarse local minimum of chi2
        # nearest to the peak (the coarse basis ties every line to the continuum as the PCA
        # does; the fine basis frees them, and decides between the two)
        rows = np.arange(r)
        best = np.argmin(score, axis=1)
        left = np.concatenate([np.full((r, 1), np.inf), coarse[:, :-1]], axis=1)
        right = np.concatenate([coarse[:, 1:], np.full((r, 1), np.inf)], axis=1)
        local = np.isfinite(coarse) & (coarse <= left) & (coarse <= right)
        dist = np.where(local, np.abs(shifts - centre[:, None]), np.inf)
        near = np.where(np.isfinite(dist.min(axis=1)), np.argmin(dist, axis=1), best) if r else best
        differ = near != best
        cand_row = np.concatenate([rows, rows[differ]])
        cand = np.concatenate([best, near[differ]])

        def centre_offset(k: np.ndarray, rr: np.ndarray) -> np.ndarray:
            """Sub-step offset of a parabola through coarse trials k-1, k, k+1 of rows rr."""
            c0 = coarse[rr, k]
            cm = np.where(k > 0, coarse[rr, np.clip(k - 1, 0, n_shift - 1)], np.inf)
            cp = np.where(k < n_shift - 1, coarse[rr, np.clip(k + 1, 0, n_shift - 1)], np.inf)
            frac, _, _ = parabola_vertex(cm, c0, cp)
            o = np.round((shifts[rr, k] + np.clip(frac, -0.5, 0.5)) * os_).astype(np.int64)
            return np.clip(o, o_lo + cfg.fine_half, o_hi - cfg.fine_half)

        o_mid = centre_offset(cand, cand_row)
        n_c = len(cand_row)
        steps = cfg.fine_step * np.arange(-(fine_n // 2), fine_n // 2 + 1)
        span = int(steps[-1])
        fine_rows = max(1, cfg.chunk_rows * 8 // fine_n)

        def fine_scan(centres: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Fine chi2 (len(sel), T) of candidates ``sel`` around offsets ``centres``."""
            offs = centres[:, None] + steps[None, :]
            line_pix = self.line_pixels(centres, span)
            out = np.empty((len(sel), fine_n))
            for start in range(0, len(sel), fine_rows):
                sl = slice(start, start + fine_rows)
                idx = torch.from_numpy(obj[cand_row[sel[sl]]])
                lp = None if line_pix is None else torch.from_numpy(line_pix[sl])
                out[sl] = fine_chi2(basis, w_all[idx], wf_all[idx], torch.from_numpy(offs[sl]), lp).numpy()
            return offs, out

        offsets, fine = fine_scan(o_mid, np.arange(n_c))
        # a minimum at an end of the scan: scan once more, centred on that end
        edge = np.flatnonzero((np.argmin(fine, axis=1) == 0) | (np.argmin(fine, axis=1) == fine_n - 1))
        if len(edge):
            end = np.where(np.argmin(fine[edge], axis=1) == 0, offsets[edge, 0], offsets[edge, -1])
            end = np.clip(end, o_lo + span, o_hi - span)
            offsets[edge], fine[edge] = fine_scan(end, edge)
        crow = np.arange(n_c)
        fb_raw = np.argmin(fine, axis=1)
        fb = np.clip(fb_raw, 1, fine_n - 2)
        f0, fm, fp = fine[crow, fb], fine[crow, fb - 1], fine[crow, fb + 1]
        frac, curv, ok = parabola_vertex(fm, f0, fp)
        frac = np.clip(frac, -1.0, 1.0)
        o_best = offsets[crow, fb] + frac * cfg.fine_step
        chi2_c = f0 - np.where(ok, 0.25 * curv * frac ** 2, 0.0)
        # chi2_min + 1; NaN where the fine scan holds no minimum (it is still falling at an end)
        sigma_c = np.where(ok & (fb == fb_raw), cfg.fine_step * np.sqrt(2.0 / np.where(ok, curv, 1.0)), np.nan)
        # per row, the candidate nearest the peak unless the other fits better by near_dchi2
        pick = rows.copy()
        if differ.any():
            second = r + np.arange(int(differ.sum()))
            better = chi2_c[second] < chi2_c[rows[differ]] + cfg.near_dchi2
            pick[rows[differ][better]] = second[better]
        chi2_min = chi2_c[pick]
        z = np.expm1(basis.lnz1(o_best[pick]))
        z_err = cfg.z_err_scale * (1 + z) * basis.step * sigma_c[pick]
        return z, z_err, chi2_min, z_coarse, coarse

    def refine(self, flux: np.ndarray, ivar: np.ndarray, pdf: np.ndarray, z_net: np.ndarray,
               skip: np.ndarray | None = None, z_err_net: np.ndarray | None = None,
               coarse: CoarseChi2 | None = None) -> RefineResult:
        """Refine N objects.

        flux, ivar: (N, n_pix) on the model grid (:meth:`Preprocessor.rebin`), 1e-17
        erg/s/cm2/A and its inverse variance; pdf: (N, n_bins); z_net: (N,) the network's
        point estimate (``pdf_summary(...)["z"]``); skip: (N,) bool objects not to refine;
        z_err_net: (N,) error reported for objects not refined (default NaN); coarse: the
        full-range scan's chi2 of these N objects (:class:`CoarseChi2`), which the coarse
        stage then reads instead of fitting the coarse basis (the scan already tried every
        pixel shift; its basis frees the strong lines, as the fine stage's does).
        """
        with torch_threads(self.config.threads):
            return self._refine(flux, ivar, pdf, z_net, skip, z_err_net, coarse)

    def _refine(self, flux: np.ndarray, ivar: np.ndarray, pdf: np.ndarray, z_net: np.ndarray,
                skip: np.ndarray | None, z_err_net: np.ndarray | None,
                coarse: CoarseChi2 | None = None) -> RefineResult:
        """The fit; then, with ``clip_sigma``, pixels that far from the best-fit model get zero
        weight and the objects that had any are fitted once more."""
        cfg = self.config
        n = len(flux)
        flux = np.asarray(flux, dtype=np.float32)
        ivar = np.where(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux), ivar, 0).astype(np.float32)
        flux = np.where(ivar > 0, flux, 0).astype(np.float32)
        out = self._fit(flux, ivar, pdf, z_net, skip, z_err_net, coarse)
        out.n_clipped = np.zeros(n, np.int64)
        out.outlier_dominated = np.zeros(n, bool)
        if cfg.clip_sigma is None:
            return self._with_coeff(out, flux, ivar)
        fitted = np.isfinite(out.rchi2)
        coeff = np.zeros((n, self.basis.table.shape[1]))  # the fit's coefficients at out.z with weights w
        chi = self.residuals(flux, ivar, out.z, fitted, coeff)
        chi2_first = (chi.astype(np.float64) ** 2).sum(axis=1)
        chi2_clip = np.zeros(n)
        w = ivar
        for _ in range(CLIP_ROUNDS):
            clip = outlier_pixels(chi, w, cfg.clip_sigma)
            redo = np.flatnonzero(clip.any(axis=1))
            if len(redo) == 0:
                break
            chi2_clip[redo] += np.where(clip[redo], chi[redo].astype(np.float64) ** 2, 0).sum(axis=1)
            out.n_clipped[redo] += clip[redo].sum(axis=1)
            w = np.where(clip, 0, w).astype(np.float32)
            again = self._fit(flux[redo], w[redo], np.asarray(pdf)[redo], np.asarray(z_net)[redo],
                              None if skip is None else np.asarray(skip)[redo],
                              None if z_err_net is None else np.asarray(z_err_net)[redo],
                              None if coarse is None else coarse.subset(redo))
            for fld in dataclasses.fields(RefineResult):
                mine, theirs = getattr(out, fld.name), getattr(again, fld.name)
                if theirs is not None and mine is not None and mine.shape[1:] == theirs.shape[1:]:
                    mine[redo] = theirs
            chi = np.zeros_like(chi)
            coeff_redo = np.zeros((len(redo), coeff.shape[1]))
            chi[redo] = self.residuals(flux[redo], w[redo], out.z[redo], np.isfinite(out.rchi2[redo]), coeff_redo)
            coeff[redo] = coeff_redo
        out.outlier_dominated = chi2_clip > cfg.dominated_fraction * chi2_first
        return self._with_coeff(out, flux, w, coeff, fitted=np.isfinite(out.rchi2))

    def _with_coeff(self, out: RefineResult, flux: np.ndarray, ivar: np.ndarray,
                    coeff: np.ndarray | None = None, fitted: np.ndarray | None = None) -> RefineResult:
        """``out`` with ``coeff`` and ``n_pixels`` of the final fit (``ivar``: its pixel weights).
        ``coeff`` (N, K): coefficients already solved at ``out.z`` with these weights, for the
        rows ``fitted`` (:meth:`residuals` solves the same systems); the others are solved here."""
        basis = self.basis
        out.n_pixels = (ivar > 0).sum(axis=1).astype(np.int64)
        wanted = (out.refined >= 0) & np.isfinite(out.z)
        out.coeff = np.zeros((len(flux), basis.table.shape[1]))
        if coeff is not None and fitted is not None:
            known = wanted & fitted
            out.coeff[known] = coeff[known]
            wanted &= ~known
        rows = np.flatnonzero(wanted)
        offs = np.clip(np.round(basis.offset(out.z[rows])).astype(np.int64), *basis.offset_range)
        for start in range(0, len(rows), self.config.chunk_rows):
            sel = rows[start:start + self.config.chunk_rows]
            coeff, _ = best_fit_coeff(basis, torch.from_numpy(np.ascontiguousarray(ivar[sel])),
                                      torch.from_numpy(np.ascontiguousarray(flux[sel])),
                                      torch.from_numpy(offs[start:start + self.config.chunk_rows]))
            out.coeff[sel] = coeff.numpy()
        return out

    def residuals(self, flux: np.ndarray, ivar: np.ndarray, z: np.ndarray, fitted: np.ndarray,
                  coeff: np.ndarray | None = None) -> np.ndarray:
        """(flux - best-fit model at ``z``) * sqrt(ivar): (N, n_pix) float32, zero where not ``fitted``
        (N,) or ivar is 0. flux, ivar as in :meth:`refine`, already cleaned. ``coeff`` (N, K),
        when given, receives the fit's coefficients (:func:`best_fit_coeff`) of the fitted rows."""
        basis, cfg = self.basis, self.config
        chi = np.zeros(flux.shape, np.float32)
        rows = np.flatnonzero(np.asarray(fitted, bool) & np.isfinite(z))
        if len(rows) == 0:
            return chi
        o_lo, o_hi = basis.offset_range
        offs = np.clip(np.round(basis.offset(z[rows])).astype(np.int64), o_lo, o_hi)
        for start in range(0, len(rows), cfg.chunk_rows):
            sel = rows[start:start + cfg.chunk_rows]
            w = torch.from_numpy(np.ascontiguousarray(ivar[sel]))
            f = torch.from_numpy(np.ascontiguousarray(flux[sel]))
            model, c = best_fit_model(basis, w, f, torch.from_numpy(offs[start:start + cfg.chunk_rows]))
            chi[sel] = (flux[sel] - model.numpy()) * np.sqrt(ivar[sel])
            if coeff is not None:
                coeff[sel] = c.numpy()
        return chi

    def _fit(self, flux: np.ndarray, ivar: np.ndarray, pdf: np.ndarray, z_net: np.ndarray,
             skip: np.ndarray | None, z_err_net: np.ndarray | None,
             coarse: CoarseChi2 | None = None) -> RefineResult:
        """One refinement of N objects with cleaned float32 flux and ivar."""
        cfg = self.config
        n = len(flux)
        n_valid = (ivar > 0).sum(axis=1)
        skip = np.zeros(n, bool) if skip is None else np.asarray(skip, bool).copy()
        skip |= n_valid < cfg.min_valid_pixels
        z_net = np.asarray(z_net, dtype=np.float64)
        z_peak, mass = pdf_peaks(pdf, self.edges, z_net, cfg.max_peaks, cfg.min_peak_mass, cfg.window)
        p = z_peak.shape[1]
        use = np.isfinite(z_peak) & ~skip[:, None]
        obj, peak = np.nonzero(use)
        width = np.diff(self.edges)
        log_density = np.log(np.maximum(np.asarray(pdf, dtype=np.float64) / width, 1e-300))
        zf, ze, chi, _, _ = self._scan(flux, ivar, obj, z_peak[obj, peak], log_density, coarse)
        peak_z = np.full((n, p), np.nan)
        peak_err = np.full((n, p), np.nan)
        peak_chi2 = np.full((n, p), np.inf)
        peak_z[obj, peak], peak_err[obj, peak], peak_chi2[obj, peak] = zf, ze, chi
        n_basis = self.basis.table.shape[1]
        # the PDF density at each refined z, relative to that at the peak the scan started from
        with np.errstate(invalid="ignore", divide="ignore"):
            floor = math.log(max(cfg.min_density_ratio, 1e-300))
            supported = self.log_density_at(log_density, peak_z) - self.log_density_at(log_density, z_peak) >= floor
            far = np.abs(peak_z - z_peak) > cfg.max_shift * (1 + z_peak)
        # a move beyond max_shift needs overwhelming evidence: chi2 at the starting peak worse by move_dchi2
        fo, fp = np.nonzero(far & np.isfinite(peak_chi2))
        if len(fo):  # one batched call for all such fits
            gain = self.chi2_near(flux, ivar, fo, z_peak[fo, fp]) - peak_chi2[fo, fp]
            far[fo, fp] = gain < cfg.move_dchi2
        supported &= ~far
        converged = np.isfinite(peak_err) & supported
        out = combine(peak_z, peak_err, peak_chi2, mass, z_net, n_valid, n_basis, cfg,
                      z_err_net if z_err_net is not None else np.full(n, np.nan), converged)
        out.delta_chi2 = _next_best(out)
        out.fit_mass = np.where(out.refined >= 0, window_mass(pdf, self.edges, out.z, cfg.window), out.fit_mass)
        return out


CLIP_ROUNDS = 3
"""At most this many rounds of clipping against the best-fit model and refitting."""


def combine(peak_z: np.ndarray, peak_zerr: np.ndarray, peak_chi2: np.ndarray, peak_mass: np.ndarray,
            z_net: np.ndarray, n_valid: np.ndarray, n_basis: int, config: RefineConfig,
            z_err_net: np.ndarray, converged: np.ndarray | None = None) -> RefineResult:
    """Choose the reported z of each object from its refined peaks (see the module docstring).

    peak_*: (N, P), column 0 the PDF's main peak, chi2 inf where not fitted; converged:
    (N, P) the fit is usable (a chi2 minimum inside its fine scans, within ``max_shift`` of
    its starting peak or ``move_dchi2`` better, PDF density criterion). An object none of whose peaks was
    fitted keeps z_net (refined = -1); one whose chosen fit did not converge keeps z_net too
    (refined = -1) and gets REFINE_DISAGREE.
    """
    n = len(z_net)
    rows = np.arange(n)
    fitted = np.isfinite(peak_chi2[:, 0])
    best = np.argmin(peak_chi2, axis=1)
    with np.errstate(invalid="ignore"):
        gain = peak_chi2[:, 0] - peak_chi2[rows, best]  # >= 0: how much better than the main peak
    switch = ((best != 0) & (gain >= config.switch_dchi2)
              & (peak_mass[rows, best] >= config.switch_mass_ratio * peak_mass[:, 0]))
    chosen = np.where(switch, best, 0)
    dof = np.maximum(n_valid - n_basis, 1)
    rchi2 = np.where(fitted, peak_chi2[rows, best] / dof, np.nan)
    with np.errstate(invalid="ignore"):
        unheeded = (best != chosen) & (peak_chi2[rows, chosen] - peak_chi2[rows, best] >= config.disagree_dchi2)
    conv = np.ones(peak_z.shape, bool) if converged is None else np.asarray(converged, bool)
    rejected = fitted & ~conv[rows, chosen]
    disagree = fitted & (unheeded | rejected)
    used = fitted & ~rejected
    z = np.where(used, peak_z[rows, chosen], z_net)
    z_err = np.where(used, peak_zerr[rows, chosen], z_err_net)
    return RefineResult(z=z, z_err=z_err, z_net=z_net.copy(), delta_chi2=np.full(n, np.nan), rchi2=rchi2,
                        refined=np.where(used, chosen, -1).astype(np.int16), disagree=disagree,
                        poor_fit=fitted & (rchi2 > config.max_rchi2),
                        fit_mass=np.zeros(n), peak_z=peak_z, peak_chi2=peak_chi2, peak_mass=peak_mass,
                        peak_zerr=peak_zerr)


def _next_best(res: RefineResult) -> np.ndarray:
    """Fine chi2 of the best other peak more than SEPARATION_KMS from the reported z, minus the
    best chi2 (NaN where no such peak was fitted)."""
    best_chi2 = np.min(res.peak_chi2, axis=1)
    far = np.abs(res.peak_z - res.z[:, None]) / (1 + res.z[:, None]) > SEPARATION_KMS / C_KMS
    other = np.where(far & np.isfinite(res.peak_chi2), res.peak_chi2, np.inf).min(axis=1)
    with np.errstate(invalid="ignore"):
        dchi2 = other - best_chi2
    return np.where(np.isfinite(dchi2) & (res.refined >= 0), dchi2, np.nan)


__all__ = ["RefineResult", "Refiner", "combine", "parabola_vertex"]
