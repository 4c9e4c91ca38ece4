"""Galaxy spectra for many galaxies at once: SFH -> stars + nebular -> dust -> observed frame.

:class:`GalaxyModel` turns :class:`~mtopnet.galaxies.population.GalaxyParams` into

* rest-frame continua on the grids' vacuum log-wavelength grid (L_sun/A, velocity-broadened),
* emission-line luminosities (L_sun, attenuated),
* labels: living stellar mass, SFR over 100 Myr and 10 Myr, line fluxes, H magnitude;

and evaluates them in the observed frame on any wavelength grid (an arm's fine grid, a
filter's grid) in 1e-17 erg/s/cm2/A. Every step is a matrix product or an array operation
over the batch; ``bagpipes.model_galaxy`` is the reference it is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import erf

from ..constants import C_AA_PER_S, C_KMS
from .population import N_OLD_BINS, GalaxyParams, age_of_universe, luminosity_distance_cm
from .sps import T_BC, SPSGrids, interp_weights

L_SUN = 3.826e33  # erg/s, Bagpipes' value
FLUX_UNIT = 1e-17
SFR_TIMESCALE = 1e8  # yr, the "SFR" label is averaged over this


@dataclass
class RestFrame:
    """Rest-frame model of N galaxies.

    cont: (N, Lr) L_sun/A on ``grids.rest_wave``, velocity-broadened. line_lum: (N, nLine)
    L_sun, attenuated. logmstar, logsfr, logsfr_inst: (N,) derived from the SFH actually
    built (they can differ slightly from the requested values, see ``build_sfh``).
    """

    cont: np.ndarray
    line_lum: np.ndarray
    logmstar: np.ndarray
    logsfr: np.ndarray
    logsfr_inst: np.ndarray

    def scale(self, factor: np.ndarray) -> "RestFrame":
        """Multiply the mass (and so every luminosity and SFR) by ``factor`` (N,)."""
        f = np.asarray(factor, dtype=np.float64)
        lf = np.log10(f)
        return RestFrame(self.cont * f[:, None].astype(self.cont.dtype), self.line_lum * f[:, None],
                         self.logmstar + lf, self.logsfr + lf, self.logsfr_inst + lf)


def sfh_bin_edges(z: np.ndarray) -> np.ndarray:
    """(N, N_OLD_BINS + 3) lookback-time edges, yr: 0, 10 Myr, 100 Myr, log-spaced to t_univ."""
    t_univ = age_of_universe(z)
    frac = np.linspace(0.0, 1.0, N_OLD_BINS + 1)[None, :]
    old = 10 ** (np.log10(SFR_TIMESCALE) + frac * (np.log10(t_univ)[:, None] - np.log10(SFR_TIMESCALE)))
    return np.concatenate([np.zeros((len(z), 1)), np.full((len(z), 1), T_BC), old], axis=1)


def _overlap(a_lo: np.ndarray, a_hi: np.ndarray, b_lo: np.ndarray, b_hi: np.ndarray) -> np.ndarray:
    return np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0.0, None)


class GalaxyModel:
    """Vectorised galaxy spectra on a set of :class:`SPSGrids`."""

    def __init__(self, grids: SPSGrids):
        self.grids = grids
        g = grids
        self._ssp_flat = g.ssp.reshape(-1, g.ssp.shape[-1])  # (nZ*nA, Lr)
        self._neb_flat = g.neb_cont_per_sfr.reshape(-1, g.neb_cont_per_sfr.shape[-1])  # (nZ*nU, Lr)
        self._lines_flat = g.line_lum_per_sfr.reshape(-1, g.line_lum_per_sfr.shape[-1])  # (nZ*nU, nL)

    # --- star-formation history ------------------------------------------------------
    def build_sfh(self, p: GalaxyParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mass formed per Bagpipes age bin, split at T_BC, normalised to the living mass.

        Returns (old, sfr0, logsfr100): old (N, nA) M_sun formed older than T_BC; sfr0 (N,)
        M_sun/yr over the last T_BC; logsfr100 (N,) the SFR over 100 Myr actually built.
        The recent SFRs follow ``logsfr100_target``; the older bins follow the continuity
        prior and carry whatever mass the living-mass target requires. Where the recent
        star formation alone would exceed half the target mass (extreme sSFR), the SFRs are
        lowered so that it is half.
        """
        g = self.grids
        n = len(p)
        edges = sfh_bin_edges(p.z)  # (N, K+1), K = N_OLD_BINS + 2
        sfr100 = 10 ** p.logsfr100_target
        sfr0 = sfr100 * 10 ** p.inst_ratio
        sfr1 = np.clip((sfr100 * SFR_TIMESCALE - sfr0 * T_BC) / (SFR_TIMESCALE - T_BC), 0.0, None)
        shape = np.concatenate([np.zeros((n, 1)), np.cumsum(p.sfh_logratio, axis=1)], axis=1)
        old_sfr = 10 ** shape  # (N, N_OLD_BINS), relative SFR going back in time
        young_end = edges[:, 2:-1]  # younger edge of each old bin
        old_sfr = np.where(young_end < p.quench_age[:, None], old_sfr * 10 ** -1.5, old_sfr)

        a_lo, a_hi = g.age_edges[:-1][None, :, None], g.age_edges[1:][None, :, None]  # (1, nA, 1)
        ov = _overlap(a_lo, a_hi, edges[:, None, :-1], edges[:, None, 1:])  # (N, nA, K)
        recent_old = ov[:, :, 1] * sfr1[:, None]  # (N, nA) 10-100 Myr, absolute
        unit_old = np.einsum("nak,nk->na", ov[:, :, 2:], old_sfr)  # (N, nA) per unit scale
        young_mass = ov[:, :, 0] * sfr0[:, None]  # (N, nA)

        live = self._live_frac(p.log_zsol)  # (N, nA)
        target = 10 ** p.logmstar
        live_recent = ((recent_old + young_mass) * live).sum(axis=1)
        too_young = live_recent > 0.5 * target
        shrink = np.where(too_young, 0.5 * target / np.maximum(live_recent, 1e-30), 1.0)
        sfr0, sfr1 = sfr0 * shrink, sfr1 * shrink
        recent_old, young_mass = recent_old * shrink[:, None], young_mass * shrink[:, None]
        live_recent = live_recent * shrink
        scale = (target - live_recent) / (unit_old * live).sum(axis=1)
        old = recent_old + unit_old * scale[:, None]
        logsfr100 = np.log10((sfr0 * T_BC + sfr1 * (SFR_TIMESCALE - T_BC)) / SFR_TIMESCALE)
        return old, sfr0, logsfr100

    def _live_frac(self, log_zsol: np.ndarray) -> np.ndarray:
        iz, wz = interp_weights(self.grids.log_z, log_zsol)
        lf = self.grids.live_frac
        return lf[iz] * (1 - wz)[:, None] + lf[iz + 1] * wz[:, None]

    def _zu_weights(self, log_zsol: np.ndarray, log_u: np.ndarray) -> np.ndarray:
        """(N, nZ*nU) bilinear weights in (log Z, log U)."""
        g = self.grids
        n = len(log_zsol)
        iz, wz = interp_weights(g.log_z, log_zsol)
        iu, wu = interp_weights(g.log_u, log_u)
        w = np.zeros((n, len(g.log_z), len(g.log_u)))
        rows = np.arange(n)
        for dz, fz in ((0, 1 - wz), (1, wz)):
            for du, fu in ((0, 1 - wu), (1, wu)):
                np.add.at(w, (rows, iz + dz, iu + du), fz * fu)
        return w.reshape(n, -1)

    # --- spectra ---------------------------------------------------------------------
    def rest_frame(self, p: GalaxyParams) -> RestFrame:
        """Rest-frame continua and line luminosities of N galaxies."""
        g = self.grids
        n = len(p)
        old, sfr0, logsfr100 = self.build_sfh(p)
        iz, wz = interp_weights(g.log_z, p.log_zsol)
        w_old = np.zeros((n, len(g.log_z), old.shape[1]), dtype=np.float32)
        rows = np.arange(n)
        w_old[rows, iz] = (old * (1 - wz)[:, None]).astype(np.float32)
        w_old[rows, iz + 1] += (old * wz[:, None]).astype(np.float32)
        stars_old = w_old.reshape(n, -1) @ self._ssp_flat  # (N, Lr)
        wz2 = np.zeros((n, len(g.log_z)), dtype=np.float32)
        wz2[rows, iz] = 1 - wz
        wz2[rows, iz + 1] += wz
        zu = self._zu_weights(p.log_zsol, p.log_u).astype(np.float32)
        young = (wz2 @ g.young_per_sfr + zu @ self._neb_flat) * sfr0[:, None].astype(np.float32)
        lines = (zu.astype(np.float64) @ self._lines_flat) * sfr0[:, None]
        att_ism = 10 ** (-0.4 * p.av[:, None] * g.a_cont[None, :])
        att_bc = 10 ** (-0.4 * (p.eta * p.av)[:, None] * g.a_cont[None, :])
        cont = stars_old * att_ism.astype(np.float32) + young * att_bc.astype(np.float32)
        lines = lines * 10 ** (-0.4 * (p.eta * p.av)[:, None] * g.a_line[None, :])
        cont = self._broaden(cont, p.sigma_v)
        return RestFrame(cont.astype(np.float32), lines, p.logmstar.copy(), logsfr100,
                         np.log10(np.maximum(sfr0, 1e-30)))

    def _broaden(self, cont: np.ndarray, sigma_v: np.ndarray) -> np.ndarray:
        """Gaussian velocity broadening, per row, by FFT on the log-lambda grid."""
        sigma_pix = sigma_v / (C_KMS * self.grids.dloglam)
        pad = int(np.ceil(5 * sigma_pix.max())) + 1
        padded = np.pad(cont, ((0, 0), (pad, pad)), mode="edge")
        freq = np.fft.rfftfreq(padded.shape[1])
        transfer = np.exp(-2.0 * (np.pi * freq[None, :] * sigma_pix[:, None]) ** 2)
        out = np.fft.irfft(np.fft.rfft(padded, axis=1) * transfer, n=padded.shape[1], axis=1)
        return out[:, pad:-pad]

    def observed_continuum(self, rest: RestFrame, z: np.ndarray, wave: np.ndarray) -> np.ndarray:
        """Continuum flux density at observed vacuum wavelengths ``wave`` (L,) -> (N, L).

        1e-17 erg/s/cm2/A: f = L(lambda / (1+z)) L_sun / (4 pi d_L^2 (1+z)).
        """
        g = self.grids
        pos = (np.log(wave)[None, :] - np.log1p(z)[:, None] - np.log(g.rest_wave[0])) / g.dloglam
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(g.rest_wave) - 2)
        frac = np.clip(pos - i0, 0.0, 1.0).astype(np.float32)
        c0 = np.take_along_axis(rest.cont, i0, axis=1)
        c1 = np.take_along_axis(rest.cont, i0 + 1, axis=1)
        outside = (pos < 0) | (pos > len(g.rest_wave) - 1)
        lum = np.where(outside, 0.0, c0 + frac * (c1 - c0))
        factor = L_SUN / (4 * np.pi * luminosity_distance_cm(z) ** 2 * (1 + z)) / FLUX_UNIT
        return lum * factor[:, None]

    def line_fluxes(self, rest: RestFrame, z: np.ndarray) -> np.ndarray:
        """(N, nLine) observed line fluxes, 1e-17 erg/s/cm2."""
        return rest.line_lum * (L_SUN / (4 * np.pi * luminosity_distance_cm(z) ** 2) / FLUX_UNIT)[:, None]

    def add_lines(self, flux: np.ndarray, rest: RestFrame, z: np.ndarray, sigma_v: np.ndarray,
                  edges: np.ndarray) -> np.ndarray:
        """Add Gaussian emission lines to ``flux`` (N, L) on bins with ``edges`` (L+1,), in place.

        ``edges`` may be uniform (linear grids) or any increasing sequence (log grids).
        Each line is integrated exactly over each bin (difference of error functions), so a
        line's flux is conserved whatever its width relative to the bins.
        """
        n, length = flux.shape
        centre = self.grids.line_wave[None, :] * (1 + z)[:, None]  # (N, nL)
        sigma = centre * (sigma_v / C_KMS)[:, None]
        fl = self.line_fluxes(rest, z)
        step = edges[1] - edges[0]
        sel = (centre + 6 * sigma > edges[0]) & (centre - 6 * sigma < edges[-1]) & (fl > 0)
        if not sel.any():
            return flux
        gi, li = np.nonzero(sel)
        mu, sg, f = centre[gi, li], sigma[gi, li], fl[gi, li]
        widths = np.diff(edges)
        if np.allclose(widths, step, rtol=1e-9, atol=0.0):  # uniform bins (linear pixel grids)
            half = int(np.ceil(6 * sg.max() / step)) + 1
            c = np.floor((mu - edges[0]) / step).astype(np.int64)
            offsets = np.arange(-half, half + 1)
            idx = c[:, None] + offsets[None, :]  # (P, W) bin index
            lo = edges[0] + idx * step
            frac = 0.5 * (erf((lo + step - mu[:, None]) / (np.sqrt(2) * sg[:, None]))
                          - erf((lo - mu[:, None]) / (np.sqrt(2) * sg[:, None])))
            valid = (idx >= 0) & (idx < length)
            contrib = np.where(valid, frac * (f / step)[:, None], 0.0)
        else:  # any increasing edges (log-lambda pixel grids)
            half = int(np.ceil(6 * sg.max() / widths.min())) + 1
            c = np.searchsorted(edges, mu, side="right") - 1
            offsets = np.arange(-half, half + 1)
            idx = c[:, None] + offsets[None, :]  # (P, W) bin index
            safe = np.clip(idx, 0, length - 1)
            lo, hi = edges[safe], edges[safe + 1]
            frac = 0.5 * (erf((hi - mu[:, None]) / (np.sqrt(2) * sg[:, None]))
                          - erf((lo - mu[:, None]) / (np.sqrt(2) * sg[:, None])))
            valid = (idx >= 0) & (idx < length)
            contrib = np.where(valid, frac * f[:, None] / (hi - lo), 0.0)
        flat = gi[:, None] * length + np.clip(idx, 0, length - 1)
        flux += np.bincount(flat.ravel(), weights=contrib.ravel(), minlength=n * length).reshape(n, length)
        return flux

    def observed(self, rest: RestFrame, p: GalaxyParams, wave: np.ndarray,
                 edges: np.ndarray) -> np.ndarray:
        """Full observed spectrum (continuum + lines), (N, L) in 1e-17 erg/s/cm2/A.

        wave: (L,) bin centres; edges: (L+1,) increasing bin edges (linear or log-spaced).
        """
        flux = self.observed_continuum(rest, p.z, wave).astype(np.float64)
        return self.add_lines(flux, rest, p.z, p.sigma_v, edges)

    # --- photometry --------------------------------------------------------------------
    def ab_magnitude(self, rest: RestFrame, z: np.ndarray, band: str = "twomass-H") -> np.ndarray:
        """Observed-frame AB magnitude of each galaxy through ``band`` (a speclite filter).

        m = -2.5 log10( int f_lambda T lambda dlambda / int (c / lambda) T dlambda ) - 48.6,
        continuum and emission lines included.
        """
        wave, resp = _filter_curve(band)
        f_cont = self.observed_continuum(rest, z, wave) * FLUX_UNIT  # erg/s/cm2/A
        num = np.trapezoid(f_cont * (resp * wave)[None, :], wave, axis=1)
        centre = self.grids.line_wave[None, :] * (1 + z)[:, None]
        t_line = np.interp(centre, wave, resp, left=0.0, right=0.0)
        num = num + (self.line_fluxes(rest, z) * FLUX_UNIT * t_line * centre).sum(axis=1)
        den = np.trapezoid(resp * C_AA_PER_S / wave, wave)
        with np.errstate(divide="ignore"):
            return -2.5 * np.log10(np.maximum(num / den, 1e-300)) - 48.6

    def scale_to_magnitude(self, rest: RestFrame, z: np.ndarray, mag: np.ndarray | float,
                           band: str = "twomass-H") -> RestFrame:
        """Rescale each galaxy's mass (and so its light and SFR) to an AB magnitude in ``band``."""
        current = self.ab_magnitude(rest, z, band)
        return rest.scale(10 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - current)))


@lru_cache(maxsize=8)
def _filter_curve(band: str) -> tuple[np.ndarray, np.ndarray]:
    """(wave, response) of a speclite filter resampled to 2 A steps (vacuum A)."""
    import speclite.filters
    filt = speclite.filters.load_filter(band)
    w = np.asarray(filt.wavelength, dtype=np.float64)
    grid = np.arange(w[0], w[-1] + 2.0, 2.0)
    return grid, np.interp(grid, w, np.asarray(filt.response, dtype=np.float64), left=0, right=0)


def filter_range(band: str = "twomass-H") -> tuple[float, float]:
    wave, _ = _filter_curve(band)
    return float(wave[0]), float(wave[-1])
