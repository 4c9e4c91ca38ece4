"""Template refinement of the network's redshift: a chi2 fit at fine steps inside the PDF's peaks.

The network's PDF is a softmax over bins 0.0012-0.003 wide; its point estimate is good to
a few 1e-4 in dz/(1+z). A template fitter gets 1e-5 but scans the whole redshift range.
Refinement does the fitter's work only where the PDF puts its mass:

1. **Peaks.** For each object, the PDF's main peak (the window of +-0.01 holding the most
   mass, as :func:`mtopnet.quality.pdf_summary` defines ``z``) and up to ``max_peaks - 1``
   further local maxima of the window mass holding >= ``min_peak_mass`` each.
2. **Basis.** Rest-frame templates (the Redrock PCA basis that
   :mod:`mtopnet.baselines.make_templates` builds from the simulator's population: 10
   vectors) plus emission-line groups with free amplitudes (:data:`LINE_GROUPS`), each
   convolved with the instrument's line-spread function (and the lines with an intrinsic
   width), then box-integrated over one pixel of the model's log-lambda grid at every
   1/``oversample`` pixel offset. A trial redshift is a shift in log-lambda, so the model at
   any trial is a gather from this table: no interpolation in the hot path.
3. **Scan.** On the data rebinned to the model grid (:meth:`Preprocessor.rebin`), chi2 of
   the linear least-squares fit, ``chi2 = sum w f^2 - b^T A^-1 b`` with
   ``b = sum w f t``, ``A = sum w t t^T``. Coarse: every pixel step (75 km/s for MOONS LR)
   within +-``window`` in z of each peak, with the continuum vectors only; ``A`` and ``b``
   for all shifts of one (object, peak) come out of one matrix product of a Toeplitz
   arrangement of the data with the pixel-aligned table, batched over all (object, peak)
   pairs; its minimum is that of ``chi2 - 2 ln p(z)``. Fine: every ``fine_step``
   1/``oversample``-pixel sub-steps within +-``fine_half`` of two candidates (the coarse
   minimum, and the coarse local minimum nearest the peak), with the full basis (continuum
   + lines), batched over (row, candidate, trial). A parabola through the fine minimum
   gives z; its curvature gives ``z_err`` (``chi2_min + 1``).
4. **Combination** (:func:`combine`): the main peak's refined z is reported, unless another
   peak fits better by ``switch_dchi2`` and holds ``switch_mass_ratio`` times the main
   peak's PDF mass. A fit is rejected (the network's z is kept, ``refined = -1``) if its
   fine scan has no minimum, if it leaves the PDF's support, or if it moves z by more than
   ``max_shift`` without a chi2 gain of ``move_dchi2``. ``REFINE_DISAGREE`` is set for a
   rejected fit, for a better-fitting peak that was not reported (by ``disagree_dchi2``),
   and when the best fit's reduced chi2 exceeds ``max_rchi2``. ``p_dz01`` is recomputed by
   the caller for the reported z (PDF mass within +-0.01 of it, through the calibration).

Everything is vectorised over objects, peaks and trials (torch batched matrix products);
the only Python loops run over chunks of rows (memory) and over the <= 3 peak columns.

Library use::

    refiner = Refiner.from_model(model)                     # model: predict.TrainedModel
    res = refiner.refine(flux, ivar, pdf, z_net)            # RefineResult of (N,) arrays

Recalibration of a model's p_dz01 / QOP with refinement applied::

    python -m mtopnet.refine recalibrate MODEL.pt VAL_STORE.h5 [--out NEW.pt]

See docs/refine.md for the choices and the measured figures.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.special import erf

from .config import ConfigError, UserError
from .preprocess import PreprocessConfig
from .quality import SUCCESS_DZ

C_KMS = 299792.458
SEPARATION_KMS = 1000.0
"""Trials closer than this to the best fit do not count as the 'next best' solution."""

LINE_GROUPS: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("CIII]", ((1906.68, 1.0), (1908.73, 0.7))),
    ("[OII]", ((3727.09, 0.74), (3729.88, 1.0))),  # ratio of a low-density HII region
    ("[NeIII]", ((3869.86, 1.0),)),
    ("Hdelta", ((4102.89, 1.0),)),
    ("Hgamma", ((4341.68, 1.0),)),
    ("Hbeta", ((4862.68, 1.0),)),
    ("[OIII]", ((4960.30, 1.0), (5008.24, 2.98))),  # fixed by atomic physics
    ("Halpha", ((6564.61, 1.0),)),
    ("[NII]", ((6549.86, 1.0), (6585.27, 2.94))),  # fixed by atomic physics
    ("HeI5877", ((5877.25, 1.0),)),
    ("[OI]", ((6302.05, 1.0), (6365.54, 0.33))),  # fixed by atomic physics
    ("[SII]", ((6718.29, 1.0), (6732.67, 0.75))),  # low density
    ("[ArIII]", ((7137.77, 1.0),)),
    ("[SIII]", ((9071.1, 1.0), (9533.2, 2.47))),  # fixed by atomic physics
    ("HeI", ((10833.31, 1.0),)),
    ("Paschen", ((10052.13, 0.33), (10941.09, 0.55), (12821.59, 1.0))),  # case B
)
"""Emission-line basis vectors: name, ((vacuum A, relative flux), ...). Lines closer than a
few resolution elements share one vector (fixed ratios), so their free amplitudes cannot
trade against the redshift; resolved lines whose ratios vary across the population (Halpha
and [NII], Hbeta and [OIII]) get separate vectors. The PCA templates carry lines too, tied
to each other and to the continuum in the population's average ratios (a dusty galaxy's
CIII] is far weaker than average); a free-signed line vector can add to or cancel each one,
while the PCA's lines keep the shapes of the population's line widths."""


@dataclass(frozen=True)
class RefineConfig:
    """Constants of the refinement.

    max_peaks: PDF peaks refined per object (the main one always).
    min_peak_mass: a secondary peak is refined if its +-``window`` PDF mass is at least this.
    window: half-width in z of the coarse scan around each peak (and of the PDF mass windows).
    oversample: table sub-steps per model pixel (the fine redshift step).
    fine_half, fine_step: fine trials every ``fine_step`` sub-steps within +-``fine_half``
        sub-steps of the coarse minimum (a parabola through the best three gives z).
    coarse_templates: continuum vectors used by the coarse scan (the first, largest ones).
    near_dchi2: within a peak, the chi2 minimum nearest the PDF's peak is kept unless the
        best one elsewhere in the +-window scan fits better by at least this.
    lines: add :data:`LINE_GROUPS` to the basis of the fine stage.
    line_sigma_kms: intrinsic Gaussian sigma of the line vectors (the population's median).
    z_err_scale: ``z_err`` is the chi2-curvature error (chi2_min + 1) times this. On
        data/val.h5 the pulls (z - z_true) / curvature error of successes had a robust
        scatter of 3.1 (3.7 at H < 22, 2.6 at H 25-25.5), with both models: template
        mismatch, the one-LSF approximation and the noise correlated between adjacent
        pixels by the rebinning are not in the formal error.
    lsf_sigma_kms: line-spread function sigma; None = from the model's training arms.
    switch_dchi2, switch_mass_ratio: a secondary peak replaces the PDF's main peak only if
        its chi2 is lower by at least ``switch_dchi2`` and it holds at least
        ``switch_mass_ratio`` times the main peak's PDF mass. The default (1.0) keeps the
        main peak unless a secondary one is as probable: on validation data the chi2 alone
        picked the wrong peak more often than the right one (docs/refine.md).
    disagree_dchi2: a secondary peak fitting better than the reported one by at least this
        sets REFINE_DISAGREE.
    max_rchi2: above this reduced chi2 of the best fit, no peak fits well (REFINE_DISAGREE).
    min_density_ratio: a fit is rejected (the network's z reported, REFINE_DISAGREE) if its
        fine scan holds no chi2 minimum, or if it lands where the PDF density is below this
        fraction of its value at the starting peak (off by default: the trained model's
        PDFs are sharper than its errors, and 1e-3 rejected 4% of good fits),
    max_shift, move_dchi2: ... or if it moves z by more than ``max_shift`` in dz/(1+z)
        (300 km/s, 4x the network's sigma_NMAD) from the peak it started from while the
        chi2 there is higher by less than ``move_dchi2`` (unambiguous data may move z
        anywhere in the scan).
    min_valid_pixels: objects with fewer valid pixels are not refined.
    chunk_rows: (object, peak) rows per batched product (memory ~ chunk_rows x 60 MB / 64).
    threads: torch threads while refining (restored after); None keeps torch's setting.
        Refinement is many medium-size products: with 2 threads on 2 busy cores they ran
        3.5x slower than with 1 (OpenMP threads spinning), so 1 is the default.
    """

    max_peaks: int = 3
    min_peak_mass: float = 0.05
    window: float = SUCCESS_DZ
    oversample: int = 16
    fine_half: int = 12
    fine_step: int = 3
    coarse_templates: int = 10
    near_dchi2: float = 100.0
    lines: bool = True
    line_sigma_kms: float = 100.0
    z_err_scale: float = 3.0
    lsf_sigma_kms: float | None = None
    switch_dchi2: float = 100.0
    switch_mass_ratio: float = 1.0
    disagree_dchi2: float = 25.0
    max_rchi2: float = 3.0
    min_density_ratio: float = 0.0
    max_shift: float = 1e-3
    move_dchi2: float = 1000.0
    min_valid_pixels: int = 100
    chunk_rows: int = 64
    threads: int | None = 1

    def __post_init__(self) -> None:
        checks = [("max_peaks", self.max_peaks >= 1), ("min_peak_mass", 0 <= self.min_peak_mass <= 1),
                  ("window", self.window > 0), ("oversample", 1 <= self.oversample <= 64),
                  ("fine_half", self.fine_half >= 1), ("fine_step", 1 <= self.fine_step <= self.fine_half),
                  ("coarse_templates", self.coarse_templates >= 1), ("near_dchi2", self.near_dchi2 >= 0),
                  ("line_sigma_kms", self.line_sigma_kms > 0), ("z_err_scale", self.z_err_scale > 0),
                  ("lsf_sigma_kms", self.lsf_sigma_kms is None or self.lsf_sigma_kms >= 0),
                  ("switch_dchi2", self.switch_dchi2 >= 0), ("switch_mass_ratio", self.switch_mass_ratio >= 0),
                  ("disagree_dchi2", self.disagree_dchi2 >= 0),
                  ("max_rchi2", self.max_rchi2 > 0), ("min_density_ratio", 0 <= self.min_density_ratio < 1),
                  ("max_shift", self.max_shift > 0), ("move_dchi2", self.move_dchi2 >= 0),
                  ("min_valid_pixels", self.min_valid_pixels >= 1),
                  ("chunk_rows", self.chunk_rows >= 1), ("threads", self.threads is None or self.threads >= 1)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"refine.{name}: invalid value {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- templates


def default_templates_path() -> Path:
    """The shipped Redrock-format basis (``mtopnet/data/templates/rrtemplate-GALAXY-MOONS-v1.0.fits``)."""
    from .baselines.make_templates import default_template_path
    return default_template_path()


def read_templates(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame basis of a Redrock template file: wave (L,) vacuum A (log-uniform), flux (K, L)."""
    from astropy.io import fits
    path = Path(path) if path is not None else default_templates_path()
    if not path.is_file():
        raise UserError(f"{path}: no template file (build one with python -m mtopnet.baselines.make_templates)")
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        flux = np.asarray(hdul[0].data, dtype=np.float64)
        n = flux.shape[-1]
        if hdr.get("LOGLAM", 0):
            wave = 10 ** (hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(n))
        else:
            wave = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(n)
    return wave, np.atleast_2d(flux)


def lsf_sigma_from_instrument(instrument: dict) -> float:
    """One LSF sigma (km/s) for the model grid: each training arm's resolution (FWHM = c/R)
    and native pixel (a box: sigma = width / sqrt(12)) in quadrature, weighted by the arm's
    span in log-wavelength. 30 km/s for MOONS LR; 0 without resolution information."""
    total, weight = 0.0, 0.0
    for arm in instrument.get("arms", []) if instrument else []:
        if not arm.get("resolution") or not arm.get("wave_min") or not arm.get("wave_max"):
            continue
        s_lsf = C_KMS / arm["resolution"] / 2.3548
        s_pix = C_KMS * (arm.get("dloglam") or 0.0) / math.sqrt(12.0)
        span = math.log(arm["wave_max"] / arm["wave_min"])
        total += span * math.hypot(s_lsf, s_pix)
        weight += span
    return total / weight if weight > 0 else 0.0


def _box_table(x_edges: np.ndarray, values: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    """Mean of piecewise-constant ``values`` (K, L) on bins ``x_edges`` (L+1,) over windows of
    ``width`` centred at ``centres`` (M,): (M, K). Zero outside the bins."""
    cum = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(values * np.diff(x_edges), axis=1)], axis=1)
    out = np.empty((len(centres), values.shape[0]))
    for k in range(values.shape[0]):  # K <= ~20 vectors, once per model load
        hi = np.interp(centres + 0.5 * width, x_edges, cum[k])
        lo = np.interp(centres - 0.5 * width, x_edges, cum[k])
        out[:, k] = (hi - lo) / width
    return out


@dataclass
class RefineBasis:
    """Box-integrated basis on a model's log-lambda grid, at 1/oversample pixel steps.

    table: (M, K) float32 -- row m is each vector's mean over one model pixel centred at
    rest ln(lambda) = ``x0 + m * step``; the first ``n_continuum`` columns are the
    continuum (PCA) vectors, the rest emission-line groups (``names``). coarse_table:
    optional (U, n_continuum) float32 continuum vectors at whole-pixel rows for the coarse
    scan (default: ``table[::oversample]``). dloglam: model
    pixel width (ln lambda); ln_lam0: ln of the model grid's first edge; n_pix: model
    pixels. meta: provenance (template file, LSF); cache: derived tensors built on first
    use (torch views, phase-major copies).

    For a trial offset ``o`` (int), data pixel j sees table row ``oversample * j + o``, and
    ln(1 + z) = ``ln_lam0 + dloglam / 2 - x0 - o * step``.
    """

    table: np.ndarray
    x0: float
    step: float
    oversample: int
    dloglam: float
    ln_lam0: float
    n_pix: int
    n_continuum: int
    names: tuple[str, ...]
    coarse_table: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False)

    def lnz1(self, offset: np.ndarray) -> np.ndarray:
        """ln(1 + z) of trial offsets (any shape, float allowed)."""
        return self.ln_lam0 + 0.5 * self.dloglam - self.x0 - np.asarray(offset, dtype=np.float64) * self.step

    def offset(self, z: np.ndarray) -> np.ndarray:
        """Trial offset (float) of redshifts ``z``."""
        return (self.ln_lam0 + 0.5 * self.dloglam - self.x0 - np.log1p(np.asarray(z, dtype=np.float64))) / self.step

    @property
    def offset_range(self) -> tuple[int, int]:
        """Smallest and largest offsets whose rows stay inside the table for every pixel."""
        return 0, len(self.table) - 1 - self.oversample * (self.n_pix - 1)


def build_basis(preprocess: PreprocessConfig, z_range: tuple[float, float], lsf_sigma_kms: float,
                config: RefineConfig | None = None, templates: str | os.PathLike | None = None) -> RefineBasis:
    """Tabulate the templates (and line groups) for ``preprocess``'s grid over ``z_range``.

    The continuum templates are convolved with a Gaussian of ``lsf_sigma_kms``; the line
    vectors are Gaussians of sigma ``hypot(config.line_sigma_kms, lsf_sigma_kms)``,
    integrated exactly over each table window; every vector is scaled to unit maximum.
    """
    cfg = config or RefineConfig()
    wave, flux = read_templates(templates)
    d = preprocess.dloglam
    os_ = cfg.oversample
    step = d / os_
    ln_w = np.log(wave)
    dln = float(np.median(np.diff(ln_w)))
    edges = np.concatenate([ln_w - 0.5 * dln, [ln_w[-1] + 0.5 * dln]])
    if lsf_sigma_kms > 0:
        flux = gaussian_filter1d(flux, lsf_sigma_kms / C_KMS / dln, axis=1, mode="nearest", truncate=5.0)
    # rest ln(lambda) needed: the model grid seen from z_range (+ the scan window and a margin)
    ln_lo = math.log(preprocess.wave_min) - math.log1p(z_range[1] + 2 * cfg.window) - 2 * d
    ln_hi = math.log(preprocess.wave_max) - math.log1p(max(z_range[0] - 2 * cfg.window, -0.5)) + 2 * d
    x0 = ln_lo
    m = int(math.ceil((ln_hi - ln_lo) / step)) + 1
    centres = x0 + step * np.arange(m)
    cont = _box_table(edges, flux, centres, d)
    cols = [cont]
    names = [f"pca{k}" for k in range(flux.shape[0])]
    if cfg.lines:
        sig = math.hypot(cfg.line_sigma_kms, lsf_sigma_kms) / C_KMS  # in ln(lambda)
        lines = np.zeros((m, len(LINE_GROUPS)))
        for g, (name, members) in enumerate(LINE_GROUPS):
            for lam, ratio in members:
                mu = math.log(lam)
                hi = erf((centres + 0.5 * d - mu) / (math.sqrt(2) * sig))
                lo = erf((centres - 0.5 * d - mu) / (math.sqrt(2) * sig))
                lines[:, g] += ratio * 0.5 * (hi - lo) / d
            names.append(name)
        cols.append(lines)
    table = np.concatenate(cols, axis=1)
    peak = np.abs(table).max(axis=0)
    table = table / np.where(peak > 0, peak, 1.0)
    meta = {"templates": str(templates or default_templates_path()), "lsf_sigma_kms": lsf_sigma_kms,
            "n_templates": int(flux.shape[0]), "template_range": (float(wave[0]), float(wave[-1]))}
    return RefineBasis(table=table.astype(np.float32), x0=x0, step=step, oversample=os_, dloglam=d,
                       ln_lam0=math.log(preprocess.wave_min), n_pix=preprocess.n_pix,
                       n_continuum=int(flux.shape[0]), names=tuple(names), meta=meta)


# ----------------------------------------------------------------------------- PDF peaks


def pdf_peaks(pdf: np.ndarray, edges: np.ndarray, z_main: np.ndarray | None = None, max_peaks: int = 3,
              min_mass: float = 0.05, window: float = SUCCESS_DZ) -> tuple[np.ndarray, np.ndarray]:
    """The PDF's significant peaks: z (N, P) and mass within +-window (N, P), NaN / 0 where absent.

    Column 0 is the main peak (``z_main`` if given, e.g. ``pdf_summary(...)["z"]``, else the
    PDF mean within +-window of the window-mass maximum); the others are further local
    maxima of the window mass holding >= ``min_mass``, at least ``window`` apart, by
    decreasing mass, each refined to the PDF mean within +-window.
    """
    pdf = np.asarray(pdf, dtype=np.float64)
    n, k = pdf.shape
    pdf = pdf / np.maximum(pdf.sum(axis=1, keepdims=True), 1e-300)
    centres = 0.5 * (edges[1:] + edges[:-1])
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(pdf, axis=1)], axis=1)
    cumz = np.concatenate([np.zeros((n, 1)), np.cumsum(pdf * centres, axis=1)], axis=1)
    lo = np.searchsorted(centres, centres - window, side="left")
    hi = np.searchsorted(centres, centres + window, side="right")
    mass = cum[:, hi] - cum[:, lo]  # (N, K) mass of the bins within +-window of each centre
    half = max(1, int(round(window / np.median(np.diff(edges)))))
    is_max = (mass >= maximum_filter1d(mass, size=2 * half + 1, axis=1, mode="constant")) & (mass >= min_mass)
    is_max[:, 1:] &= mass[:, 1:] > mass[:, :-1]
    best = np.argmax(mass, axis=1)
    rows = np.arange(n)
    is_max[rows, best] = False
    score = np.where(is_max, mass, -1.0)
    n_more = max_peaks - 1
    order = np.argsort(-score, axis=1, kind="stable")[:, :n_more] if n_more else np.zeros((n, 0), int)
    idx = np.concatenate([best[:, None], order], axis=1)  # (N, P) bin index of each peak
    ok = np.concatenate([np.ones((n, 1), bool), np.take_along_axis(score, order, 1) > 0], axis=1)
    lo_i, hi_i = lo[idx], hi[idx]
    m = np.take_along_axis(cum, hi_i, 1) - np.take_along_axis(cum, lo_i, 1)
    zp = (np.take_along_axis(cumz, hi_i, 1) - np.take_along_axis(cumz, lo_i, 1)) / np.maximum(m, 1e-300)
    if z_main is not None:
        zp[:, 0] = z_main
    # a secondary maximum inside the window of a stronger peak is the same peak (a flat top)
    for p in range(1, idx.shape[1]):
        near = (np.abs(zp[:, :p] - zp[:, p:p + 1]) <= window) & ok[:, :p]
        ok[:, p] &= ~near.any(axis=1)
    return np.where(ok, zp, np.nan), np.where(ok, m, 0.0)


def window_mass(pdf: np.ndarray, edges: np.ndarray, z: np.ndarray, window: float = SUCCESS_DZ) -> np.ndarray:
    """PDF mass within +-window of z: pdf (N, K), z (N,) or (N, P) -> same shape as z.

    The CDF is interpolated linearly inside bins, as :func:`mtopnet.quality.pdf_summary` does.
    """
    pdf = np.asarray(pdf, dtype=np.float64)
    n = len(pdf)
    cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(pdf, axis=1)], axis=1)
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    z2 = np.atleast_2d(np.asarray(z, dtype=np.float64).T).T.reshape(n, -1)
    z2 = np.nan_to_num(z2, nan=-10.0)

    def at(x: np.ndarray) -> np.ndarray:
        xc = np.clip(x, edges[0], edges[-1])
        j = np.clip(np.searchsorted(edges, xc, side="right") - 1, 0, len(edges) - 2)
        frac = (xc - edges[j]) / (edges[j + 1] - edges[j])
        return np.take_along_axis(cdf, j, 1) * (1 - frac) + np.take_along_axis(cdf, j + 1, 1) * frac

    out = np.clip(at(z2 + window) - at(z2 - window), 0, 1)
    return out.reshape(np.shape(z))


# ----------------------------------------------------------------------------- chi2 kernels


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
    for name, data, cols, out in (("a", w, slice(0, q), out_a), ("b", wf, slice(q, q + k), out_b)):
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
    tc = _windows(_phase_major(basis, continuum=True), os_, offsets, j)  # (R, T, J, Kc)
    tc *= sw[:, None, :, None]
    a = torch.empty(r, n_t, k, k)
    b = torch.empty(r, n_t, k)
    tct = tc.transpose(-1, -2)
    a[:, :, :kc, :kc] = tct @ tc
    b[:, :, :kc] = (tct @ fsw[:, None, :, None])[..., 0]
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
    b[:, :, kc:] = (tl[..., kc:].transpose(-1, -2) @ fswl[:, None, :, None])[..., 0]
    return _solve_chi2(a, b, wff[:, None])


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


# ----------------------------------------------------------------------------- refinement


@dataclass
class RefineResult:
    """Per object (N,) unless stated.

    z: reported redshift; z_err: 1-sigma error (chi2 curvature; ``z_err_net`` where not
    refined); z_net: the network's point estimate; delta_chi2: fine chi2 of the next-best
    peak (> 1000 km/s away) minus the best (NaN if only one peak was fitted); rchi2:
    reduced chi2 of the best fit (NaN if not refined);
    refined: index of the reported peak (0 = the PDF's main peak), -1 if not refined;
    disagree: REFINE_DISAGREE; fit_mass: PDF mass within +-window of the reported z.
    peak_z, peak_chi2, peak_mass: (N, P) per-peak refined z, fine chi2, PDF mass (NaN/inf/0
    where absent).
    """

    z: np.ndarray
    z_err: np.ndarray
    z_net: np.ndarray
    delta_chi2: np.ndarray
    rchi2: np.ndarray
    refined: np.ndarray
    disagree: np.ndarray
    fit_mass: np.ndarray
    peak_z: np.ndarray
    peak_chi2: np.ndarray
    peak_mass: np.ndarray
    peak_zerr: np.ndarray


class Refiner:
    """Refines redshift PDFs of one model (grid, z bins, LSF) with one template basis."""

    def __init__(self, basis: RefineBasis, edges: np.ndarray, config: RefineConfig | None = None):
        self.basis = basis
        self.edges = np.asarray(edges, dtype=np.float64)
        self.config = config or RefineConfig()

    @classmethod
    def from_model(cls, model, config: RefineConfig | None = None,
                   templates: str | os.PathLike | None = None) -> "Refiner":
        """A refiner for a :class:`mtopnet.predict.TrainedModel`."""
        cfg = config or RefineConfig()
        lsf = cfg.lsf_sigma_kms if cfg.lsf_sigma_kms is not None else lsf_sigma_from_instrument(model.instrument)
        zb = model.zbins
        basis = build_basis(model.preprocessor.config, (zb.z_min, zb.z_max), lsf, cfg, templates)
        return cls(basis, zb.edges, cfg)

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
              log_density: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Coarse then fine scans for R rows (object index ``obj``, peak ``z_peak``).

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
        # rows sorted by window width, so that each chunk scans only as many shifts as it needs
        by_width = np.argsort(half, kind="stable")
        for start in range(0, r, cfg.chunk_rows):
            sel = by_width[start:start + cfg.chunk_rows]
            n_s = int(2 * half[sel].max() + 1)
            idx = torch.from_numpy(obj[sel])
            coarse[sel, :n_s] = coarse_chi2(basis, w_all[idx], wf_all[idx], torch.from_numpy(shift0[sel]), n_s,
                                            cfg.coarse_templates).numpy()
        coarse = np.where(in_window, coarse, np.inf)
        z_coarse = np.expm1(basis.lnz1(shifts * os_))
        score = coarse
        if log_density is not None and r:
            centres = 0.5 * (self.edges[1:] + self.edges[:-1])
            j = np.clip(np.searchsorted(centres, z_coarse) - 1, 0, len(centres) - 2)
            frac = np.clip((z_coarse - centres[j]) / (centres[j + 1] - centres[j]), 0.0, 1.0)
            dens = log_density[obj]
            lp = np.take_along_axis(dens, j, 1) * (1 - frac) + np.take_along_axis(dens, j + 1, 1) * frac
            score = coarse - 2.0 * lp
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
            with np.errstate(invalid="ignore"):
                curv = cm + cp - 2 * c0
            ok = np.isfinite(curv) & (curv > 0)
            frac = np.where(ok, 0.5 * (cm - cp) / np.where(ok, curv, 1.0), 0.0)
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
        curv = fm + fp - 2 * f0
        ok = curv > 0
        frac = np.clip(np.where(ok, 0.5 * (fm - fp) / np.where(ok, curv, 1.0), 0.0), -1.0, 1.0)
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
               skip: np.ndarray | None = None, z_err_net: np.ndarray | None = None) -> RefineResult:
        """Refine N objects.

        flux, ivar: (N, n_pix) on the model grid (:meth:`Preprocessor.rebin`), 1e-17
        erg/s/cm2/A and its inverse variance; pdf: (N, n_bins); z_net: (N,) the network's
        point estimate (``pdf_summary(...)["z"]``); skip: (N,) bool objects not to refine;
        z_err_net: (N,) error reported for objects not refined (default NaN).
        """
        threads = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            return self._refine(flux, ivar, pdf, z_net, skip, z_err_net)
        finally:
            torch.set_num_threads(threads)

    def _refine(self, flux: np.ndarray, ivar: np.ndarray, pdf: np.ndarray, z_net: np.ndarray,
                skip: np.ndarray | None, z_err_net: np.ndarray | None) -> RefineResult:
        cfg = self.config
        n = len(flux)
        flux = np.asarray(flux, dtype=np.float32)
        ivar = np.where(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux), ivar, 0).astype(np.float32)
        flux = np.where(ivar > 0, flux, 0).astype(np.float32)
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
        zf, ze, chi, _, _ = self._scan(flux, ivar, obj, z_peak[obj, peak], log_density)
        peak_z = np.full((n, p), np.nan)
        peak_err = np.full((n, p), np.nan)
        peak_chi2 = np.full((n, p), np.inf)
        peak_z[obj, peak], peak_err[obj, peak], peak_chi2[obj, peak] = zf, ze, chi
        n_basis = self.basis.table.shape[1]
        # the PDF density at each refined z, relative to that at the peak the scan started from
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])

        def log_density_at(z: np.ndarray) -> np.ndarray:
            zz = np.nan_to_num(z, nan=centres[0])
            j = np.clip(np.searchsorted(centres, zz) - 1, 0, len(centres) - 2)
            frac = np.clip((zz - centres[j]) / (centres[j + 1] - centres[j]), 0.0, 1.0)
            lo, hi = np.take_along_axis(log_density, j, 1), np.take_along_axis(log_density, j + 1, 1)
            return lo * (1 - frac) + hi * frac

        with np.errstate(invalid="ignore", divide="ignore"):
            floor = math.log(max(cfg.min_density_ratio, 1e-300))
            supported = log_density_at(peak_z) - log_density_at(z_peak) >= floor
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
    disagree = fitted & (unheeded | (rchi2 > config.max_rchi2) | rejected)
    used = fitted & ~rejected
    z = np.where(used, peak_z[rows, chosen], z_net)
    z_err = np.where(used, peak_zerr[rows, chosen], z_err_net)
    return RefineResult(z=z, z_err=z_err, z_net=z_net.copy(), delta_chi2=np.full(n, np.nan), rchi2=rchi2,
                        refined=np.where(used, chosen, -1).astype(np.int16), disagree=disagree,
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


# ----------------------------------------------------------------------------- recalibration


def refined_summary(pdf: np.ndarray, edges: np.ndarray, z: np.ndarray, window: float = SUCCESS_DZ) -> dict:
    """:func:`mtopnet.quality.pdf_summary` of ``pdf`` (N, K) for a reported ``z`` (N,): ``z`` and
    ``p_window`` (the PDF mass within +-window of z) replaced, the other statistics kept."""
    from .quality import pdf_summary
    summ = pdf_summary(pdf, edges, window)
    return {**summ, "z": np.asarray(z, dtype=np.float64), "p_window": window_mass(pdf, edges, z, window)}


def reliability(p: np.ndarray, success: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Mean p_dz01 and observed success fraction in ``n_bins`` equal bins of p_dz01."""
    which = np.clip((np.asarray(p) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for i in range(n_bins):
        sel = which == i
        out.append({"p_lo": i / n_bins, "p_hi": (i + 1) / n_bins, "n": int(sel.sum()),
                    "p_mean": float(np.mean(p[sel])) if sel.any() else None,
                    "success": float(np.mean(success[sel])) if sel.any() else None})
    return out


def recalibrate(model_path: str | os.PathLike, val_store: str | os.PathLike, out: str | os.PathLike | None = None,
                config: RefineConfig | None = None, batch_size: int = 1024, progress: bool = False) -> dict:
    """Refit a checkpoint's p_dz01 / QOP calibration with refinement applied, on a VALIDATION store.

    Runs the model with refinement over ``val_store`` (never the test or held-out set), fits
    :func:`mtopnet.quality.fit_calibration` on the refined z and the PDF mass around it,
    and writes the checkpoint (``out``, default: in place, atomically) with the new
    calibration and its provenance. Returns {"before": ..., "after": ...}: the QOP report
    and p_dz01 reliability (:func:`reliability`) of the old calibration applied to the
    refined z, and of the new one (both on the validation store itself).
    """
    from .checkpoint import read_checkpoint, save_checkpoint
    from .evaluate import match_ids, read_truth
    from .predict import load_model, predict_batches
    from .quality import fit_calibration, qop_report
    from .store import iter_store

    model = load_model(model_path)
    refiner = Refiner.from_model(model, config)
    truth = read_truth(val_store)
    pdfs, zs, ids, qops, pds = [], [], [], [], []
    done = 0
    for rows in predict_batches(model, iter_store(val_store, batch_size), with_pdf=True, batch_size=batch_size,
                                refine=refiner):
        pdfs.append(rows["z_pdf"])
        zs.append(rows["z"])
        ids.append(rows["id"])
        qops.append(rows["qop"])
        pds.append(rows["p_dz01"])
        done += len(rows["z"])
        if progress:
            print(f"  recalibrate: {done} spectra", file=sys.stderr)
    if not zs:
        raise UserError(f"{val_store}: no spectra")
    pdf = np.concatenate(pdfs).astype(np.float64)
    z = np.concatenate(zs)
    idx = match_ids(np.concatenate(ids), truth["id"])
    if np.any(idx < 0):
        raise UserError(f"{val_store}: ids of the predictions do not match the store's")
    z_true = np.asarray(truth["z"], dtype=np.float64)[idx]
    summ = refined_summary(pdf, model.zbins.edges, z, refiner.config.window)
    success = np.abs(z - z_true) < SUCCESS_DZ
    before = {"success_fraction": float(success.mean()), **qop_report(np.concatenate(qops), success),
              "reliability": reliability(np.concatenate(pds), success)}
    cal = fit_calibration(summ, z_true)
    p_new, _ = cal.apply(summ)
    cal.report["reliability"] = reliability(p_new, success)
    payload = read_checkpoint(model_path)
    payload["calibration"] = cal.as_dict()
    prov = dict(payload.get("provenance") or {})
    prov["calibration"] = {"refined": True, "val_store": str(val_store), "n": int(len(z)),
                           "refine_config": {k: v for k, v in refiner.config.as_dict().items()},
                           "templates": Path(refiner.basis.meta.get("templates", "")).name}
    payload["provenance"] = prov
    save_checkpoint(out if out is not None else model_path, payload)
    return {"before": before, "after": cal.report}


def main(argv: list[str] | None = None) -> int:
    """``python -m mtopnet.refine recalibrate MODEL VAL_STORE [--out NEW.pt]``."""
    import json
    p = argparse.ArgumentParser(prog="python -m mtopnet.refine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("recalibrate", help="refit p_dz01/QOP of a model with refinement, on a validation store")
    r.add_argument("model", metavar="MODEL", help="checkpoint (.pt)")
    r.add_argument("val_store", metavar="VAL_STORE", help="validation store (never the test set)")
    r.add_argument("--out", default=None, help="write here instead of replacing MODEL")
    r.add_argument("--batch-size", type=int, default=1024)
    r.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
        if not Path(args.val_store).is_file():
            raise UserError(f"{args.val_store}: no such file")
        report = recalibrate(args.model, args.val_store, args.out, batch_size=args.batch_size,
                             progress=not args.quiet)
    except (UserError, ConfigError) as exc:
        print(f"mtopnet.refine: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out or args.model}")
    return 0


__all__ = ["RefineConfig", "RefineBasis", "RefineResult", "Refiner", "LINE_GROUPS", "build_basis", "read_templates",
           "lsf_sigma_from_instrument", "pdf_peaks", "window_mass", "coarse_chi2", "fine_chi2", "combine",
           "refined_summary", "reliability", "recalibrate", "main"]


if __name__ == "__main__":
    sys.exit(main())
