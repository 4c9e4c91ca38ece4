"""Spectral type: does a broad-line QSO or a star fit the data much better than the galaxy basis?

The network and the refinement know galaxies only; a QSO or a star still gets a galaxy
redshift from them. :class:`SpectypeFitter` compares, per object, on the model's log-lambda
grid and with the same pixel weights, three linear fits:

* **GALAXY**: the refinement's full basis (PCA + emission-line groups) at the reported z;
* **QSO**: Redrock's 4-vector QSO PCA basis (``rrtemplate-QSO-None-v0.1.fits``), scanned over
  z by the FFT scan (:class:`~mtopnet.refine.scan.ZScanner`, every second pixel) over the
  redshifts where the template covers the whole grid (MOONS LR: z 0.73-4; a QSO below is
  not recognised);
* **STAR**: Redrock's stellar PCA bases (A, B, CV, F, G, K, M, WD; 4 vectors each,
  ``scripts/trim_redrock_templates.py``) at every second whole-pixel velocity within
  +-``star_vmax_kms``: all classes and velocities in one matrix product of the weights with
  the tabulated products of the vectors. They cover rest 3550-11000 A: star and galaxy are
  compared on the grid pixels inside that range only ("star pixels").

Two passes. The **quick** one compares the QSO scan's best and the best star with the
refinement's own galaxy model at z (its coefficients fixed). Where that already favours the
QSO, or the star (chi2 lower; either: 37% of 512 held-out simulated galaxies), the **full**
pass refits that comparison, every fit with smooth nuisance vectors (Legendre polynomials up
to degree ``nuisance_degree`` on each arm's pixels: flux-calibration and sky-subtraction
errors, which a broad QSO component otherwise absorbs better than a galaxy basis does -- on
simulated galaxies it made a QSO "win" by chi2 ~1000): for the QSO, the galaxy basis at z and
at the QSO's best z (the better of the two counts) against the QSO at its best z; for the
star, the galaxy basis at z against the best star, on the star pixels. Then

    QSO_DCHI2  = (chi2_galaxy - chi2_QSO) / max(1, rchi2)
    STAR_DCHI2 = (chi2_galaxy[star pixels] - chi2_star) / max(1, rchi2)

with rchi2 the better fit's reduced chi2 (template mismatch inflates chi2 differences with
S/N; the rescaling of :func:`~mtopnet.refine.combine.scan_dispersion`); where the full pass
did not run they are the quick pass's values (<= 0). SPECTYPE is QSO or STAR where the
statistic exceeds :attr:`SpectypeConfig.qso_dchi2` / :attr:`SpectypeConfig.star_dchi2` (the
larger one wins if both do); the thresholds are set on simulated galaxies (docs/catalogue.md).
For such objects the catalogue reports the QSO or star fit's z, error, chi2 and coefficients,
as Redrock reports the best spectral type's, and SUBTYPE the star class.

Library use::

    fitter = refiner.spectype_fitter()                  # or SpectypeFitter.from_refiner(refiner)
    res = fitter.classify(flux, ivar, fit.z, fit.coeff)  # SpectypeResult of (N,) arrays
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError
from ..constants import C_KMS
from ..devices import torch_threads
from ..templates import default_template_dir, read_templates
from .basis import RefineBasis, build_basis
from .kernels import _phase_major, _solve_chi2, _windows, smooth_basis, solve_coeff
from .scan import ZScanner
from .settings import RefineConfig

QSO_TEMPLATE = "rrtemplate-QSO-None-v0.1.fits"
"""Redrock's QSO PCA basis (rest 450-10400 A), shipped unchanged in mtopnet/data/templates."""
STAR_CLASSES = ("A", "B", "CV", "F", "G", "K", "M", "WD")
"""Redrock's stellar classes (SUBTYPE of a STAR); files ``rrtemplate-STAR-<class>-v0.1.fits``."""


@dataclass(frozen=True)
class SpectypeConfig:
    """Constants of the spectral-type check.

    qso_dchi2, star_dchi2: SPECTYPE QSO / STAR where the rescaled chi2 gain over the galaxy
        fit (module docstring) exceeds this; set on simulated galaxies (docs/catalogue.md).
    qso_z_range: the QSO scan's range, clipped to where the template covers the whole grid.
    star_vmax_kms: stars are fitted at radial velocities within +-this (every second pixel).
    nuisance_degree: the full pass's nuisance vectors: Legendre polynomials of degree
        0..this on each arm's pixels (:func:`~mtopnet.refine.kernels.smooth_basis`).
    min_pixels: objects with fewer valid pixels (star pixels for the star fit) stay GALAXY.
    chunk: objects per batch of the fits (memory ~ chunk x 0.5 MB x galaxy vectors).
    """

    qso_dchi2: float = 300.0
    star_dchi2: float = 300.0
    qso_z_range: tuple[float, float] = (0.0, 4.0)
    star_vmax_kms: float = 600.0
    nuisance_degree: int = 3
    min_pixels: int = 200
    chunk: int = 64

    def __post_init__(self) -> None:
        lo, hi = self.qso_z_range
        for name, ok in (("qso_dchi2", self.qso_dchi2 >= 0), ("star_dchi2", self.star_dchi2 >= 0),
                         ("qso_z_range", 0 <= lo < hi), ("star_vmax_kms", 0 < self.star_vmax_kms < 3000),
                         ("nuisance_degree", 0 <= self.nuisance_degree <= 6),
                         ("min_pixels", self.min_pixels >= 1), ("chunk", self.chunk >= 4)):
            if not ok:
                raise ConfigError(f"spectype.{name}: invalid value {getattr(self, name)!r}")


@dataclass
class SpectypeResult:
    """Per object (N,) unless stated.

    spectype: "GALAXY", "QSO" or "STAR"; subtype: the star class of a STAR ("" otherwise);
    qso_dchi2, star_dchi2: the rescaled chi2 gains over the galaxy fit (NaN where not fitted);
    full: the full pass ran; z, z_err, chi2, npix: the QSO / star fit's redshift, its 1-sigma
    error (chi2 curvature), chi2 (with the nuisance vectors) and pixels (NaN / 0 where
    SPECTYPE is GALAXY); coeff: (N, K) its template coefficients (nuisance vectors left out).
    """

    spectype: np.ndarray
    subtype: np.ndarray
    qso_dchi2: np.ndarray
    star_dchi2: np.ndarray
    full: np.ndarray
    z: np.ndarray
    z_err: np.ndarray
    chi2: np.ndarray
    npix: np.ndarray
    coeff: np.ndarray


def _rows_at(basis: RefineBasis, z: np.ndarray) -> torch.Tensor:
    """Trial offsets (R,) int64 of the table row nearest each z (clipped into the table)."""
    o_lo, o_hi = basis.offset_range
    return torch.from_numpy(np.clip(np.round(basis.offset(z)).astype(np.int64), o_lo, o_hi))


def _vertex(cm: np.ndarray, c0: np.ndarray, cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex offset (in steps, within +-1) of the parabola through three equally spaced chi2
    values, and its 1-sigma width (steps; NaN without a minimum)."""
    curv = cm + cp - 2 * c0
    ok = np.isfinite(curv) & (curv > 0)
    frac = np.where(ok, np.clip(0.5 * (cm - cp) / np.where(ok, curv, 1.0), -1, 1), 0.0)
    return frac, np.where(ok, np.sqrt(2.0 / np.where(ok, curv, 1.0)), np.nan)


def _fit(t: torch.Tensor, w: torch.Tensor, f: torch.Tensor, solve: bool = False
         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weighted least squares of f (R, J) by the columns of t (R, J, K), float32 products and
    float64 solve (:func:`~mtopnet.refine.kernels._solve_chi2`): chi2 (R,) float64 and, with
    ``solve``, the coefficients (R, K) float64."""
    tw = t * w[:, :, None]
    a = tw.transpose(1, 2) @ t
    b = (f[:, None, :] @ tw)[:, 0]
    chi2 = _solve_chi2(a, b, (w.double() * f.double() ** 2).sum(1))
    if not solve:
        return chi2, None
    return chi2, solve_coeff(a, b)


class SpectypeFitter:
    """QSO and star fits against one model's galaxy refinement basis (its grid and LSF).

    galaxy: the refinement's basis; qso: the QSO scanner (no polynomials, stride 2); stars:
    the star classes' bases side by side, ``star_k`` columns per class (zero-padded), on
    whole-pixel rows (oversample 1) around z = 0.
    """

    def __init__(self, galaxy: RefineBasis, qso: ZScanner, stars: RefineBasis, star_k: int,
                 config: SpectypeConfig | None = None):
        self.galaxy = galaxy
        self.qso = qso
        self.stars = stars
        self.star_k = star_k
        self.config = config or SpectypeConfig()
        n_pix = galaxy.n_pix
        c = len(STAR_CLASSES)
        half = int(math.ceil(math.log1p(self.config.star_vmax_kms / C_KMS) / stars.dloglam / 2))
        centre = int(round(stars.offset(np.zeros(1))[0]))
        self.star_offsets = centre + 2 * np.arange(-half, half + 1)
        s = len(self.star_offsets)
        table = torch.from_numpy(stars.table.astype(np.float32))  # (M, C * K)
        rows = torch.from_numpy(self.star_offsets)[:, None] + torch.arange(n_pix)[None, :]  # (S, J)
        t = table[rows].reshape(s, n_pix, c, star_k)  # (S, J, C, K)
        # pixels every class covers at every velocity: the star-and-galaxy comparison's pixels
        self.star_pixels = (t.abs().amax(dim=3) > 0).all(dim=2).all(dim=0).numpy()  # (J,)
        iu = torch.triu_indices(star_k, star_k)
        self._iu = iu
        self._star_t = t.permute(1, 0, 2, 3).contiguous()  # (J, S, C, K)
        # the star grid sums over the star pixels alone (its weights are zero elsewhere)
        self._star_idx = torch.from_numpy(np.flatnonzero(self.star_pixels))
        ts = self._star_t[self._star_idx]  # (J', S, C, K)
        self._star_prods = (ts[..., iu[0]] * ts[..., iu[1]]).reshape(len(ts), -1).contiguous()  # (J', S*C*P)
        self._star_t_sub = ts.reshape(len(ts), -1).contiguous()  # (J', S*C*K)

    @classmethod
    def from_refiner(cls, refiner, config: SpectypeConfig | None = None) -> "SpectypeFitter":
        """A fitter on a :class:`~mtopnet.refine.Refiner`'s grid, LSF and galaxy basis.
        Raises ConfigError if the QSO template covers the grid at no redshift of the range."""
        basis = refiner.basis
        cfg = config or SpectypeConfig()
        grid = _Grid(basis)
        lsf = float(basis.meta.get("lsf_sigma_kms", 0.0))
        one = RefineConfig(lines=False, oversample=1, window=1e-3)
        tdir = default_template_dir()
        wave, _ = read_templates(tdir / QSO_TEMPLATE)
        z_lo = max(cfg.qso_z_range[0], grid.wave_max / wave[-1] - 1)  # the template covers the whole grid
        z_hi = min(cfg.qso_z_range[1], grid.wave_min / wave[0] - 1)
        if not z_lo < z_hi:
            raise ConfigError(f"spectype: the QSO template covers the grid {grid.wave_min:.0f}-{grid.wave_max:.0f} A "
                              f"at no redshift in {cfg.qso_z_range}")
        qso = ZScanner.from_refine_basis(build_basis(grid, (z_lo, z_hi), lsf, one, tdir / QSO_TEMPLATE),
                                         (z_lo, z_hi), stride=2)
        vz = cfg.star_vmax_kms / C_KMS + 4 * basis.dloglam
        parts = [build_basis(grid, (-vz, vz), lsf, one, tdir / f"rrtemplate-STAR-{name}-v0.1.fits")
                 for name in STAR_CLASSES]
        k = max(b.n_continuum for b in parts)
        first = parts[0]
        stars = RefineBasis(table=np.concatenate([np.pad(b.table, ((0, 0), (0, k - b.n_continuum))) for b in parts],
                                                 axis=1),
                            x0=first.x0, step=first.step, oversample=1, dloglam=first.dloglam,
                            ln_lam0=first.ln_lam0, n_pix=first.n_pix, n_continuum=k * len(parts),
                            names=tuple(f"{n}{i}" for n in STAR_CLASSES for i in range(k)),
                            meta={"templates": [f"rrtemplate-STAR-{n}-v0.1.fits" for n in STAR_CLASSES]})
        return cls(basis, qso, stars, k, cfg)

    # -------------------------------------------------------------------------------- fits
    def _galaxy_at(self, z: np.ndarray) -> torch.Tensor:
        """(R, J, K) float32: the galaxy basis at the table row nearest each z (R,)."""
        g = self.galaxy
        return _windows(_phase_major(g), g.oversample, _rows_at(g, z)[:, None], g.n_pix)[:, 0]

    def _star_grid(self, w: torch.Tensor, f: torch.Tensor) -> np.ndarray:
        """chi2 (R, S, C) float64 of every star class at every trial velocity on the star pixels
        (w, f: (R, J) float32, w already zero off the star pixels)."""
        r = len(w)
        s, c, k = len(self.star_offsets), len(STAR_CLASSES), self.star_k
        w, f = w[:, self._star_idx], f[:, self._star_idx]
        wf = w * f
        packed = (w @ self._star_prods).reshape(r, s, c, -1)  # (R, S, C, P): one product for all
        b = (wf @ self._star_t_sub).reshape(r, s, c, k)
        a = torch.empty(r, s, c, k, k)
        a[..., self._iu[0], self._iu[1]] = packed
        a[..., self._iu[1], self._iu[0]] = packed
        return _solve_chi2(a, b, (wf.double() * f.double()).sum(1)[:, None, None]).numpy()

    def classify(self, flux: np.ndarray, ivar: np.ndarray, z_galaxy: np.ndarray, coeff: np.ndarray,
                 fitted: np.ndarray | None = None, arm_masks: list[np.ndarray] | None = None,
                 threads: int | None = 1) -> SpectypeResult:
        """Spectral type of N objects.

        flux, ivar: (N, n_pix) on the model grid (non-finite and ivar <= 0 masked); z_galaxy
        (N,) the galaxy redshift and ``coeff`` (N, K) the galaxy basis's coefficients there
        (:attr:`RefineResult.coeff`); fitted: (N,) bool rows to check (default: finite
        z_galaxy; the others stay GALAXY); arm_masks: one (n_pix,) bool per input arm, the
        grid pixels it covers (the nuisance vectors' support; default: the whole grid as one
        arm); threads: torch threads while fitting (restored after; None keeps torch's).
        """
        with torch_threads(threads):
            return self._classify(flux, ivar, z_galaxy, coeff, fitted, arm_masks)

    def _classify(self, flux: np.ndarray, ivar: np.ndarray, z_galaxy: np.ndarray, coeff: np.ndarray,
                  fitted: np.ndarray | None, arm_masks: list[np.ndarray] | None) -> SpectypeResult:
        cfg = self.config
        n, j = flux.shape
        with np.errstate(invalid="ignore"):
            good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        w_all = np.where(good, ivar, 0).astype(np.float32)
        f_all = np.where(good, flux, 0).astype(np.float32)
        z_galaxy = np.asarray(z_galaxy, dtype=np.float64)
        coeff = np.asarray(coeff, dtype=np.float64)
        use = np.isfinite(z_galaxy) if fitted is None else (np.asarray(fitted, bool) & np.isfinite(z_galaxy))
        use &= good.sum(1) >= cfg.min_pixels
        out = SpectypeResult(spectype=np.full(n, "GALAXY", dtype="U6"), subtype=np.full(n, "", dtype="U20"),
                             qso_dchi2=np.full(n, np.nan), star_dchi2=np.full(n, np.nan), full=np.zeros(n, bool),
                             z=np.full(n, np.nan), z_err=np.full(n, np.nan), chi2=np.full(n, np.nan),
                             npix=np.zeros(n, np.int64), coeff=np.zeros((n, max(self.star_k, self.qso.n_templates))))
        rows = np.flatnonzero(use)
        if len(rows) == 0:
            return out
        m = len(rows)
        star_pix = self.star_pixels.astype(np.float32)
        n_all = good[rows].sum(1)
        n_sub = (good[rows] & self.star_pixels[None, :]).sum(1)
        # the QSO scan, for all rows at once
        qres = self.qso.scan(f_all[rows], w_all[rows], threads=None)
        q_chi2 = qres.chi2.astype(np.float64)
        rr = np.arange(m)
        qb = np.clip(qres.best, 1, len(qres.z) - 2)
        frac, width = _vertex(q_chi2[rr, qb - 1], q_chi2[rr, qb], q_chi2[rr, qb + 1])
        lnz = np.log1p(qres.z)
        step = float(lnz[1] - lnz[0])
        q_z = np.expm1(lnz[qb] + np.where(qb == qres.best, frac, 0.0) * step)
        q_zerr = (1 + q_z) * step * width
        q_min = q_chi2[rr, qres.best]
        q_ok = qres.ok
        s_ok = n_sub >= cfg.min_pixels
        d_qso, d_star = np.full(m, np.nan), np.full(m, np.nan)
        full = np.zeros(m, bool)
        q_full, s_full = q_min.copy(), np.empty(m)
        s_best = np.zeros((m, 2), np.int64)  # (velocity trial, class)
        s_z, s_zerr = np.empty(m), np.empty(m)
        q_coeff = np.zeros((m, self.qso.n_templates))
        st_coeff = np.zeros((m, self.star_k))
        lnz_s = self.stars.lnz1(self.star_offsets)
        s_step = float(lnz_s[1] - lnz_s[0])
        n_v = len(self.star_offsets)
        masks = arm_masks if arm_masks else [np.ones(j, bool)]
        nuis = torch.from_numpy(smooth_basis(masks, cfg.nuisance_degree, min_pixels=20).astype(np.float32))
        n_nuis = nuis.shape[1]
        sub = torch.from_numpy(star_pix)[None, :]
        for start in range(0, m, cfg.chunk):
            part = np.arange(start, min(start + cfg.chunk, m))
            sel = rows[part]
            ri = np.arange(len(sel))
            w, f = torch.from_numpy(w_all[sel]), torch.from_numpy(f_all[sel])
            # quick pass: the refinement's galaxy model at z, the star grid, the QSO scan's best
            tg = self._galaxy_at(z_galaxy[sel])  # (R, J, K) float32
            model = (tg @ torch.from_numpy(coeff[sel]).float()[:, :, None])[..., 0]
            res2 = (w * (f - model) ** 2).double().numpy()
            g_fix, g_fix_sub = res2.sum(1), (res2 * star_pix).sum(1)
            chi2 = self._star_grid(w * sub, f)  # (R, S, C)
            bs, bc = np.unravel_index(chi2.reshape(len(sel), -1).argmin(1), chi2.shape[1:])
            s_chi2 = chi2[ri, bs, bc]
            s_best[part, 0], s_best[part, 1], s_full[part] = bs, bc, s_chi2
            bsc = np.clip(bs, 1, n_v - 2)
            fr, wd = _vertex(chi2[ri, bsc - 1, bc], chi2[ri, bsc, bc], chi2[ri, bsc + 1, bc])
            s_z[part] = np.expm1(lnz_s[bsc] + np.where(bsc == bs, fr, 0.0) * s_step)
            s_zerr[part] = (1 + s_z[part]) * abs(s_step) * wd
            d_qso[part] = self._rescale(g_fix, q_min[part], n_all[part] - self.qso.n_templates)
            d_star[part] = self._rescale(g_fix_sub, s_chi2, n_sub[part] - self.star_k)
            # full pass where the quick one favours the QSO or the star: refits with nuisance vectors
            fq = np.flatnonzero(q_ok[part] & (q_min[part] < g_fix))
            fs = np.flatnonzero(s_ok[part] & (s_chi2 < g_fix_sub))
            full[part[fq]] = True
            full[part[fs]] = True
            if len(fq):
                wq, ffq = w[fq], f[fq]
                nu = nuis[None].expand(len(fq), -1, -1)
                g_z, _ = _fit(torch.cat([tg[fq], nu], 2), wq, ffq)
                g_q, _ = _fit(torch.cat([self._galaxy_at(q_z[part[fq]]), nu], 2), wq, ffq)
                qc, qco = _fit(torch.cat([self.qso.templates_at(q_z[part[fq]]).float(), nu], 2), wq, ffq, solve=True)
                q_full[part[fq]] = qc.numpy()
                q_coeff[part[fq]] = qco[:, :self.qso.n_templates].numpy()
                d_qso[part[fq]] = self._rescale(torch.minimum(g_z, g_q).numpy(), qc.numpy(),
                                                n_all[part[fq]] - self.qso.n_templates - n_nuis)
            if len(fs):
                ws_, ffs = w[fs] * sub, f[fs]
                nu = nuis[None].expand(len(fs), -1, -1)
                g_s, _ = _fit(torch.cat([tg[fs], nu], 2), ws_, ffs)
                ts = self._star_t[:, bs[fs], bc[fs]].permute(1, 0, 2)  # (R, J, K)
                sc, sco = _fit(torch.cat([ts, nu], 2), ws_, ffs, solve=True)
                s_full[part[fs]] = sc.numpy()
                st_coeff[part[fs]] = sco[:, :self.star_k].numpy()
                d_star[part[fs]] = self._rescale(g_s.numpy(), sc.numpy(), n_sub[part[fs]] - self.star_k - n_nuis)
        d_qso = np.where(q_ok, d_qso, np.nan)
        d_star = np.where(s_ok, d_star, np.nan)
        out.qso_dchi2[rows], out.star_dchi2[rows], out.full[rows] = d_qso, d_star, full
        is_qso = full & (np.nan_to_num(d_qso, nan=-np.inf) > cfg.qso_dchi2)  # only full-pass values exceed 0
        is_star = full & (np.nan_to_num(d_star, nan=-np.inf) > cfg.star_dchi2)
        star_wins = is_star & (~is_qso | (np.nan_to_num(d_star) >= np.nan_to_num(d_qso)))
        qso_wins = is_qso & ~star_wins
        for mask, z, ze, c2, npx, co, name in ((qso_wins, q_z, q_zerr, q_full, n_all, q_coeff, "QSO"),
                                               (star_wins, s_z, s_zerr, s_full, n_sub, st_coeff, "STAR")):
            idx = rows[mask]
            out.spectype[idx] = name
            out.z[idx], out.z_err[idx], out.chi2[idx], out.npix[idx] = z[mask], ze[mask], c2[mask], npx[mask]
            out.coeff[idx, :co.shape[1]] = co[mask]
        out.subtype[rows[star_wins]] = np.asarray(STAR_CLASSES)[s_best[star_wins, 1]]
        return out

    @staticmethod
    def _rescale(chi2_galaxy: np.ndarray, chi2_other: np.ndarray, dof: np.ndarray) -> np.ndarray:
        """(chi2_galaxy - chi2_other) / max(1, the better fit's reduced chi2)."""
        best = np.minimum(chi2_galaxy, chi2_other)
        return (chi2_galaxy - chi2_other) / np.maximum(1.0, best / np.maximum(dof, 1))


class _Grid:
    """The model grid of a refinement basis, as :func:`build_basis` reads it (a
    :class:`~mtopnet.preprocess.PreprocessConfig`'s wave_min, wave_max, dloglam, n_pix)."""

    def __init__(self, basis: RefineBasis):
        self.wave_min = math.exp(basis.ln_lam0)
        self.dloglam = basis.dloglam
        self.n_pix = basis.n_pix
        self.wave_max = math.exp(basis.ln_lam0 + basis.dloglam * basis.n_pix)


__all__ = ["QSO_TEMPLATE", "STAR_CLASSES", "SpectypeConfig", "SpectypeResult", "SpectypeFitter"]
