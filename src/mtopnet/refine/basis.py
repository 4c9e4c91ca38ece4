"""The refinement's basis: PCA templates and emission-line groups, LSF-convolved and
box-integrated on a model's log-lambda grid at 1/oversample pixel steps; and the night sky of
each training arm on that grid, which the full-range scan fits beside them
(:func:`sky_residual_vectors`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

from ..constants import C_KMS
from ..lines import LINE_GROUPS
from ..preprocess import PreprocessConfig
from ..store import SpectraBatch
from ..templates import default_template_path, read_templates
from .settings import RefineConfig

if TYPE_CHECKING:
    from ..instruments import Instrument
    from ..preprocess import Preprocessor


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
    meta = {"templates": str(templates or default_template_path()), "lsf_sigma_kms": lsf_sigma_kms,
            "n_templates": int(flux.shape[0]), "template_range": (float(wave[0]), float(wave[-1]))}
    return RefineBasis(table=table.astype(np.float32), x0=x0, step=step, oversample=os_, dloglam=d,
                       ln_lam0=math.log(preprocess.wave_min), n_pix=preprocess.n_pix,
                       n_continuum=int(flux.shape[0]), names=tuple(names), meta=meta)


def sky_residual_vectors(instrument: Instrument, preprocessor: Preprocessor) -> np.ndarray:
    """(n_arms, n_pix) float64: the night sky of each of ``instrument``'s arms on the model grid.

    Each row is the sky flux that arm records (sky electrons per pixel / electrons per unit
    flux, at the instrument's observing airmass, seeing and sub-exposure), rebinned onto
    ``preprocessor``'s grid like a spectrum, zero outside the arm, scaled to a maximum of 1.
    A sky-subtraction residual is, to first order, the sky spectrum times a small factor per
    arm (the simulator's ``sky_residual``; a real pipeline's scale error), a pattern at fixed
    observed wavelengths: fitted with a free amplitude beside a template basis
    (:class:`mtopnet.refine.ZScanner` ``observed``), it stops the residual's lines from being
    fitted as a galaxy's at a wrong redshift. Rows of arms outside the grid are all zero.
    """
    obs = instrument.config.observing
    rows = []
    for arm in instrument.arms:
        resp = arm.response(obs.airmass, obs.seeing, obs.sub_exposure)
        epf = np.asarray(resp.electrons_per_flux, dtype=np.float64)
        sky = np.divide(np.asarray(resp.sky_electrons, dtype=np.float64), epf, out=np.zeros_like(epf), where=epf > 0)
        n = len(arm.wave)
        batch = SpectraBatch(ids=np.zeros(1, np.int64),
                             arms={arm.name: {"wave": arm.wave, "flux": sky[None].astype(np.float32),
                                              "ivar": np.ones((1, n), np.float32), "mask": np.zeros((1, n), np.uint8)}})
        flux, ivar, _ = preprocessor.rebin(batch)
        row = np.where(ivar[0] > 0, flux[0], 0.0).astype(np.float64)
        peak = np.abs(row).max()
        rows.append(row / peak if peak > 0 else row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), preprocessor.config.n_pix)


__all__ = ["RefineBasis", "build_basis", "sky_residual_vectors"]
