"""The scan's summaries and its combination with the network's PDF.

:func:`scan_summary` gives the scan's own best z, its DELTACHI2 (to the best local minimum
more than 1000 km/s away) and the number of local minima; :func:`chi2_on_bins` puts the
scan's chi2 on the network's z bins; :func:`combine_pdf` forms the posterior
``log post_b = w_net * ln(pdf_b + eps) - 0.5 * t * (chi2_b - min chi2)``; and
:func:`fit_combination` fits (w_net, t) on VALIDATION data by maximising the mean log
posterior of the true-z bin. See :mod:`mtopnet.refine.scan` and docs/zscan.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import UserError
from ..constants import C_KMS, SEPARATION_KMS, SUCCESS_DZ
from .kernels import feature_dchi2, smooth_basis
from .scan import ZScanner, ZScanResult


def _local_minima(chi2: np.ndarray) -> np.ndarray:
    """(N, S) bool: chi2 at or below both neighbours (an end counts against its one neighbour);
    plateaus count once (their first point)."""
    left = np.concatenate([np.full((len(chi2), 1), np.inf), chi2[:, :-1]], axis=1)
    right = np.concatenate([chi2[:, 1:], np.full((len(chi2), 1), np.inf)], axis=1)
    return (chi2 < left) & (chi2 <= right)


def scan_summary(res: ZScanResult, separation_kms: float = SEPARATION_KMS,
                 within: float = 25.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scan's own answer per object: z_best (N,), deltachi2 (N,), n_minima (N,).

    z_best: a parabola through the lowest chi2 and its two neighbours (NaN where no fit ran).
    deltachi2: chi2 of the best local minimum more than ``separation_kms`` from z_best minus
    the lowest chi2 (if no local minimum lies that far, the lowest chi2 there); finite
    whenever a fit ran, NaN otherwise. n_minima: local minima within ``within`` of the lowest
    chi2 (1 = an unambiguous scan; 0 where no fit ran).
    """
    chi2 = res.chi2.astype(np.float64)
    n, s = chi2.shape
    rows = np.arange(n)
    b = np.clip(res.best, 1, s - 2) if s >= 3 else res.best
    lnz = np.log1p(res.z)
    step = float(np.median(np.diff(lnz))) if s > 1 else 0.0
    if s >= 3:
        c0, cm, cp = chi2[rows, b], chi2[rows, b - 1], chi2[rows, b + 1]
        curv = cm + cp - 2 * c0
        frac = np.where(curv > 0, 0.5 * (cm - cp) / np.where(curv > 0, curv, 1.0), 0.0)
        frac = np.where(b == res.best, np.clip(frac, -0.5, 0.5), 0.0)
        z_best = np.expm1(lnz[b] + frac * step)
        z_best = np.where(b == res.best, z_best, res.z[res.best])
    else:
        z_best = res.z[res.best].astype(np.float64)
    cmin = chi2[rows, res.best]
    far = np.abs(lnz[None, :] - np.log1p(z_best)[:, None]) > separation_kms / C_KMS
    minima = _local_minima(chi2)
    other_min = np.where(far & minima, chi2, np.inf).min(axis=1)
    other_any = np.where(far, chi2, np.inf).min(axis=1)
    other = np.where(np.isfinite(other_min), other_min, other_any)
    dchi2 = np.where(np.isfinite(other), other - cmin, 0.0)
    n_min = (minima & (chi2 <= cmin[:, None] + within)).sum(axis=1)
    ok = res.ok
    return (np.where(ok, z_best, np.nan), np.where(ok, dchi2, np.nan), np.where(ok, n_min, 0).astype(np.int64))


def chi2_on_bins(z_scan: np.ndarray, chi2: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Scan chi2 (N, S) on trial redshifts ``z_scan`` (S,) increasing -> (N, B) on z bins ``edges`` (B+1,).

    Each bin gets the lowest chi2 of the trials inside it (the profile over the bin); a bin
    holding no trial gets chi2 interpolated linearly in ln(1 + z) at its centre; bins beyond
    the scan take the value at the scan's nearest end (no information either way).
    """
    z_scan = np.asarray(z_scan, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    chi2 = np.asarray(chi2, dtype=np.float64)
    nb = len(edges) - 1
    centres = np.sqrt((1 + edges[1:]) * (1 + edges[:-1])) - 1
    lnz = np.log1p(z_scan)
    lnc = np.log1p(centres)
    j = np.clip(np.searchsorted(lnz, lnc) - 1, 0, len(lnz) - 2) if len(lnz) > 1 else np.zeros(nb, np.int64)
    if len(lnz) > 1:
        frac = np.clip((lnc - lnz[j]) / (lnz[j + 1] - lnz[j]), 0.0, 1.0)
        out = chi2[:, j] * (1 - frac) + chi2[:, j + 1] * frac
    else:
        out = np.repeat(chi2[:, :1], nb, axis=1)
    which = np.searchsorted(edges, z_scan, side="right") - 1  # bin of each trial
    inside = (which >= 0) & (which < nb)
    if inside.any():
        idx = np.flatnonzero(inside)
        starts = np.flatnonzero(np.r_[True, np.diff(which[idx]) != 0])
        bins = which[idx][starts]
        mins = np.minimum.reduceat(chi2[:, idx], starts, axis=1)
        out[:, bins] = np.minimum(out[:, bins], mins)
    return out


def scan_dispersion(res: ZScanResult, n_basis: int) -> np.ndarray:
    """(N,) ``max(1, chi2_min / (npix - n_basis))``: the best fit's reduced chi2, floored at 1.

    Template mismatch grows with the signal, so the chi2 differences of a bright spectrum
    are inflated far beyond their statistical meaning while a faint one's are not; dividing
    each object's chi2 by this (the usual error rescaling) puts them on one footing, so that
    one temperature ``t`` suits every S/N (:func:`combine_pdf`)."""
    dof = np.maximum(np.asarray(res.npix, dtype=np.float64) - n_basis, 1.0)
    return np.maximum(np.asarray(res.chi2, dtype=np.float64).min(axis=1) / dof, 1.0)


def scan_on_bins(scanner: ZScanner, flux: np.ndarray, ivar: np.ndarray, edges: np.ndarray,
                 clip_sigma: float | None) -> tuple[ZScanResult, np.ndarray, np.ndarray]:
    """The scan that prediction and calibration run: N spectra (N, n_pix) scanned -- clipped
    against the best fit and scanned again when ``clip_sigma`` is given, so that a wild pixel
    cannot choose the redshift -- and the chi2 put on the z bins ``edges`` (K+1,) and divided
    by :func:`scan_dispersion`. Returns (the scan's result, (N, K) float64 chi2, (N, n_pix)
    float32 weights: ivar with non-finite values and the clipped pixels set to 0)."""
    if clip_sigma is None:
        res = scanner.scan(flux, ivar)
        with np.errstate(invalid="ignore"):
            w = np.where(np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0), ivar, 0).astype(np.float32)
    else:
        res, _, w = scanner.scan_clipped(flux, ivar, clip_sigma)
    return res, chi2_on_bins(res.z, res.chi2, edges) / scan_dispersion(res, scanner.n_basis)[:, None], w


NO_FEATURES_DCHI2 = 50.0
"""Below this FEATURE_DCHI2 (:func:`feature_evidence`) a spectrum shows no redshift feature:
300 pure-noise and featureless power-law spectra on validation spectra's noise give a median
of 19, a 99th percentile of 36 and a maximum of 43 (benchmarks/feature_evidence.py;
docs/quality.md). ZWarn.NO_FEATURES, QOP <= 2."""


def feature_evidence(scanner: ZScanner, flux: np.ndarray, ivar: np.ndarray, z: np.ndarray,
                     arm_masks: list[np.ndarray], chunk: int = 64) -> np.ndarray:
    """(N,) FEATURE_DCHI2 at z (:func:`~mtopnet.refine.kernels.feature_dchi2`) with the scan's
    basis: chi2 of a smooth continuum per arm (:func:`~mtopnet.refine.kernels.smooth_basis`
    of ``arm_masks``, one (n_pix,) bool per input arm) minus that of continuum + templates
    at the trial nearest z; NaN where z is not finite. flux, ivar: (N, n_pix) on the model
    grid (non-finite values and ivar <= 0 count as missing)."""
    n = len(flux)
    out = np.full(n, np.nan)
    rows = np.flatnonzero(np.isfinite(z))
    smooth = torch.from_numpy(smooth_basis(arm_masks))
    with np.errstate(invalid="ignore"):
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    for start in range(0, len(rows), chunk):
        sel = rows[start:start + chunk]
        w = torch.from_numpy(np.where(good[sel], ivar[sel], 0).astype(np.float32))
        f = torch.from_numpy(np.where(good[sel], flux[sel], 0).astype(np.float32))
        out[sel] = feature_dchi2(scanner.templates_at(z[sel]), w, f, smooth).numpy()
    return out


def network_gate(p_net: np.ndarray, gamma: float) -> np.ndarray:
    """(N,) ``(1 - p_net) ** gamma``: the weight of the templates' chi2 for objects whose
    network PDF holds ``p_net`` within +-0.01 of its point estimate (gamma = 0: always 1).

    On the training simulator the network beats the templates (it learnt what the basis
    cannot fit: flux-calibration errors, telluric residuals); on spectra made another way
    the templates beat a network that has never seen such a spectrum -- and is unsure of
    it. Measured with the epoch-5 network of the 0.2 recipe on 300 + 300 validation spectra
    (|dz| < 0.01; network alone / t = 1 ungated / t = 1, gamma = 2): training prior 0.627 /
    0.530 / 0.627; moons1d 0.870 / 0.923 / 0.927."""
    p = np.clip(np.asarray(p_net, dtype=np.float64), 0.0, 1.0)
    return np.ones_like(p) if gamma == 0 else (1.0 - p) ** gamma


def combine_pdf(pdf_net: np.ndarray, chi2_bins: np.ndarray, w_net: float, t: float,
                ok: np.ndarray | None = None, eps: float = 1e-12, gate: np.ndarray | None = None) -> np.ndarray:
    """Posterior (N, B) on the network's z bins from its PDF (N, B) and the scan's chi2 on the same bins.

    ``log post = w_net * ln(pdf_net + eps) - 0.5 * t * (chi2_bins - min chi2_bins)``,
    normalised per object. w_net: the prior's weight; t: the likelihood's temperature
    (both >= 0, to be fitted on validation data: :func:`fit_combination`). Objects with
    ``ok`` False (no fit) get the network's PDF to the power w_net, normalised. gate: (N,)
    factors on each object's chi2 term (:func:`network_gate`: the templates speak loudest
    where the network is unsure); None = 1.
    """
    if w_net < 0 or t < 0:
        raise UserError(f"zscan.combine_pdf: w_net and t must be >= 0, got {w_net}, {t}")
    pdf_net = np.asarray(pdf_net, dtype=np.float64)
    chi2_bins = np.asarray(chi2_bins, dtype=np.float64)
    dchi2 = chi2_bins - chi2_bins.min(axis=1, keepdims=True)
    if ok is not None:
        dchi2 = np.where(np.asarray(ok, bool)[:, None], dchi2, 0.0)
    if gate is not None:
        dchi2 = dchi2 * np.asarray(gate, dtype=np.float64)[:, None]
    logp = w_net * np.log(np.clip(pdf_net, 0, None) + eps) - 0.5 * t * dchi2
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def fit_combination(pdf_net: np.ndarray, chi2_bins: np.ndarray, edges: np.ndarray, z_true: np.ndarray,
                    ok: np.ndarray | None = None, w_range: tuple[float, float] = (0.0, 5.0),
                    t_range: tuple[float, float] = (1e-6, 10.0), eps: float = 1e-12,
                    window: float = SUCCESS_DZ, floor: float = 1e-4, p_net: np.ndarray | None = None,
                    gammas: tuple[float, ...] = (0.0,), max_objects: int = 6000,
                    seed: int = 0, objective: str = "log_mass", groups: np.ndarray | None = None
                    ) -> tuple[float, float, dict]:
    """Fit (w_net, t) of :func:`combine_pdf` on a VALIDATION set (never test data).

    Maximises the mean over objects of ln max(P, ``floor``), P the posterior mass in the bins
    within +-``window`` of z_true (the success criterion: a posterior sharply peaked one bin
    off the truth -- template mismatch -- is still a success, and hopeless objects, below
    ``floor``, do not pull the weights; objects whose z_true lies outside ``edges`` are left
    out): a grid over w_net (linear, ``w_range``) and t
    (logarithmic, ``t_range``: the useful t spans decades, since the chi2 differences of an
    imperfect basis are over-dispersed by large factors), then L-BFGS-B from the best grid
    point in (w_net, log10 t). t = 0 (the network alone) is one candidate too. Returns w_net,
    t and {"mean_log_post", "n", "success", "start_mean_log_post"} (the last at w_net = 1,
    t = 0: the network's PDF alone). Raises UserError if no object has its true z inside
    the bins or the ranges are invalid. With ``p_net`` (N,) (the network PDF's mass within
    +-0.01 of its point estimate) each of ``gammas`` is tried for the :func:`network_gate`
    and the best is returned in the info dict (``gamma``). At most ``max_objects`` objects
    (a seeded random subset) enter the fit.

    groups: (N,) int, the validation set of each object (e.g. one per simulator). Each group
    then weighs the same in the objective (the mean over groups of each group's mean), and
    the subset takes up to ``max_objects // n_groups`` objects of each: a large validation
    set from the training simulator must not outvote a small one made another way, where
    the network is least to be trusted. With objective ``"success"`` the info dict's
    ``success_fraction`` and ``network_alone`` are those group means, and ``success_by_group``
    and ``n_by_group`` list each group with objects in the fit (z_true inside the bins), in
    ascending group order.

    objective ``"success"`` instead maximises the fraction of objects whose posterior point
    estimate (:func:`mtopnet.quality.pdf_summary`'s ``z``) is within ``window`` of z_true, on
    a grid of (gamma, w_net, t) (ties: the smallest t): the posterior's probabilities are
    calibrated afterwards (:func:`mtopnet.quality.fit_calibration`), its peak is not. The
    log-mass objective punishes a sharp posterior that is wrong so hard that it keeps the
    templates out even where they fix most answers (the 0.2 recipe: the moons1d validation
    set's success went from 0.87 to 0.93 with gamma = 2, t = 1, while the log mass fell).
    """
    from scipy.optimize import minimize

    if not (0 <= w_range[0] < w_range[1] and 0 < t_range[0] < t_range[1]):
        raise UserError(f"zscan.fit_combination: invalid ranges w {w_range}, t {t_range}")
    edges = np.asarray(edges, dtype=np.float64)
    z_true = np.asarray(z_true, dtype=np.float64)
    idx = np.searchsorted(edges, z_true, side="right") - 1
    use = (idx >= 0) & (idx < len(edges) - 1) & np.isfinite(z_true)
    if not use.any():
        raise UserError("zscan.fit_combination: no object has its true z inside the bins")
    group = np.zeros(len(z_true), np.int64) if groups is None else np.asarray(groups, np.int64)
    if len(group) != len(z_true):
        raise UserError(f"zscan.fit_combination: {len(group)} groups for {len(z_true)} objects")
    labels = np.unique(group[use])
    rng = np.random.default_rng(seed)
    quota = max_objects // len(labels)
    for g in labels:
        members = np.flatnonzero(use & (group == g))
        if len(members) > quota:
            use[members] = False
            use[np.sort(rng.choice(members, quota, replace=False))] = True
    gid = np.searchsorted(labels, group[use])
    weight = 1.0 / (len(labels) * np.bincount(gid, minlength=len(labels))[gid])  # sums to 1
    pdf = np.asarray(pdf_net, dtype=np.float64)[use]
    dchi2_raw = np.asarray(chi2_bins, dtype=np.float64)[use]
    dchi2_raw = dchi2_raw - dchi2_raw.min(axis=1, keepdims=True)
    if ok is not None:
        dchi2_raw = np.where(np.asarray(ok, bool)[use][:, None], dchi2_raw, 0.0)
    p_use = np.asarray(p_net, dtype=np.float64)[use] if p_net is not None else None
    dchi2 = dchi2_raw
    lp = np.log(np.clip(pdf, 0, None) + eps)
    rows = np.arange(len(pdf))
    centres = 0.5 * (edges[1:] + edges[:-1])
    zt = z_true[use]
    lo = np.searchsorted(centres, zt - window, side="left")  # first bin within the window
    hi = np.searchsorted(centres, zt + window, side="right")  # one past the last
    hi = np.maximum(hi, lo + 1)

    def mean_log_post(w: float, t: float) -> float:
        logp = w * lp - 0.5 * t * dchi2
        post = np.exp(logp - logp.max(axis=1, keepdims=True))
        cum = np.concatenate([np.zeros((len(post), 1)), np.cumsum(post, axis=1)], axis=1)
        mass = (cum[rows, np.minimum(hi, post.shape[1])] - cum[rows, lo]) / cum[:, -1]
        return float(np.sum(weight * np.log(np.maximum(mass, floor))))

    lt_lo, lt_hi = math.log10(t_range[0]), math.log10(t_range[1])
    t_grid = np.linspace(lt_lo, lt_hi, int(round(lt_hi - lt_lo)) * 2 + 1)
    if objective == "success":
        return _fit_success(pdf, dchi2_raw, edges, zt, p_use, gammas, w_range, t_grid, window, weight, gid)
    if objective != "log_mass":
        raise UserError(f"zscan.fit_combination: objective must be 'success' or 'log_mass', got {objective!r}")
    best_gamma, best_score = 0.0, -np.inf
    if p_use is not None:  # the gate first, at w_net = 1
        for gamma in gammas:
            dchi2 = dchi2_raw * network_gate(p_use, gamma)[:, None]
            score = max(mean_log_post(1.0, 10 ** lt) for lt in t_grid)
            if score > best_score:
                best_gamma, best_score = float(gamma), score
        dchi2 = dchi2_raw * network_gate(p_use, best_gamma)[:, None]
    grid = [(w, 10 ** lt) for w in np.linspace(w_range[0], w_range[1], 11) for lt in t_grid]
    scores = [mean_log_post(w, t) for w, t in grid]
    w0, t0 = grid[int(np.argmax(scores))]
    res = minimize(lambda x: -mean_log_post(x[0], 10 ** x[1]), np.array([w0, math.log10(t0)]),
                   method="L-BFGS-B", bounds=(w_range, (lt_lo, lt_hi)))
    w_fit, t_fit, best = float(res.x[0]), float(10 ** res.x[1]), -float(res.fun)
    # the network alone, at its best weight, is a candidate too
    w_alone = np.linspace(max(w_range[0], 1e-3), w_range[1], 51)
    alone = [mean_log_post(w, 0.0) for w in w_alone]
    if max(alone) > best:
        w_fit, t_fit, best = float(w_alone[int(np.argmax(alone))]), 0.0, max(alone)
    return w_fit, t_fit, {"mean_log_post": best, "n": int(use.sum()), "success": bool(res.success),
                          "start_mean_log_post": mean_log_post(1.0, 0.0), "gamma": best_gamma}


def _fit_success(pdf: np.ndarray, dchi2_raw: np.ndarray, edges: np.ndarray, z_true: np.ndarray,
                 p_net: np.ndarray | None, gammas: tuple[float, ...], w_range: tuple[float, float],
                 t_grid: np.ndarray, window: float, weight: np.ndarray, gid: np.ndarray
                 ) -> tuple[float, float, dict]:
    """Grid search of (gamma, w_net, t) for the largest weighted success fraction (see
    fit_combination; ``weight`` (N,) sums to 1, ``gid`` (N,) the group of each object)."""
    from ..quality import pdf_summary

    def hits(w: float, t: float, gate: np.ndarray | None) -> np.ndarray:
        post = combine_pdf(pdf, dchi2_raw, w, t, gate=gate)
        return np.abs(pdf_summary(post, edges, window)["z"] - z_true) < window

    def success(w: float, t: float, gate: np.ndarray | None) -> float:
        return float(np.sum(weight * hits(w, t, gate)))

    base = success(1.0, 0.0, None)
    best = (base, 0.0, 1.0, 0.0)  # (score, -t, w, gamma): the network alone first
    for gamma in (gammas if p_net is not None else (0.0,)):
        gate = network_gate(p_net, gamma) if p_net is not None else None
        for w in np.linspace(max(w_range[0], 0.25), min(w_range[1], 2.0), 4):
            for lt in t_grid:
                t = float(10 ** lt)
                score = success(float(w), t, gate)
                if (score, -t) > best[:2]:
                    best = (score, -t, float(w), float(gamma))
    score, neg_t, w_fit, gamma = best
    final = hits(w_fit, -neg_t, network_gate(p_net, gamma) if p_net is not None else None)
    present = np.unique(gid)
    return w_fit, -neg_t, {"objective": "success", "success_fraction": score, "network_alone": base,
                           "n": int(len(pdf)), "gamma": gamma, "success": True,
                           "success_by_group": [float(final[gid == g].mean()) for g in present],
                           "n_by_group": [int((gid == g).sum()) for g in present]}


__all__ = ["NO_FEATURES_DCHI2", "scan_summary", "chi2_on_bins", "feature_evidence", "scan_dispersion", "scan_on_bins",
           "network_gate", "combine_pdf", "fit_combination"]
