"""Population priors for galaxies at 0.6 <= z <= 3 (sources and choices: docs/galaxies.md).

Each function draws arrays for N galaxies from a numpy Generator; nothing here knows about
spectra. The draw order is fixed, so a seed gives the same population on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from astropy.cosmology import FlatLambdaCDM

COSMO = FlatLambdaCDM(H0=70.0, Om0=0.3)
"""The cosmology of Bagpipes (H0 = 70, Omega_m = 0.3, flat), used throughout."""

LOGM_RANGE = (8.0, 12.0)

# Double-Schechter stellar-mass function of the whole population, COSMOS2015
# (Davidzon et al. 2017, A&A 605, A70, Table 1): z-bin centre, log M*, alpha1, phi1 [1e-3
# Mpc^-3 dex^-1], alpha2, phi2. Interpolated linearly in z between bin centres.
_SMF = np.array([
    [0.65, 10.78, -1.38, 1.187, -0.43, 1.92],
    [0.95, 10.77, -1.36, 1.070, 0.03, 1.68],
    [1.30, 10.56, -1.31, 1.428, 0.51, 2.19],
    [1.75, 10.62, -1.28, 1.069, 0.29, 1.21],
    [2.25, 10.51, -1.28, 0.969, 0.82, 0.64],
    [2.75, 10.60, -1.57, 0.295, 0.07, 0.45],
    [3.25, 10.59, -1.67, 0.228, -0.08, 0.21],
])

# Edges of the star-formation-history bins in lookback time (yr); the oldest edge is the
# age of the universe at z, and the bins between 100 Myr and it are spaced in log time.
N_OLD_BINS = 5


@dataclass
class GalaxyParams:
    """Physical parameters of N galaxies (all (N,) arrays).

    z: redshift. logmstar: log10 living stellar mass (M_sun). quiescent: bool.
    logsfr100_target: log10 SFR averaged over 100 Myr requested of the SFH (M_sun/yr).
    inst_ratio: log10(SFR_10Myr / SFR_100Myr). sfh_logratio: (N, N_OLD_BINS - 1)
    continuity-prior log ratios between adjacent old bins. quench_age: yr (0 for SF).
    log_zsol: log10 Z/Z_sun. log_u: ionisation parameter. av: V-band attenuation (mag,
    diffuse ISM; birth clouds eta x av). eta: birth-cloud factor. sigma_v: km/s.
    r_e: half-light radius, arcsec.
    """

    z: np.ndarray
    logmstar: np.ndarray
    quiescent: np.ndarray
    logsfr100_target: np.ndarray
    inst_ratio: np.ndarray
    sfh_logratio: np.ndarray
    quench_age: np.ndarray
    log_zsol: np.ndarray
    log_u: np.ndarray
    av: np.ndarray
    eta: np.ndarray
    sigma_v: np.ndarray
    r_e: np.ndarray

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, index) -> "GalaxyParams":
        return GalaxyParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


_Z_TABLE = np.linspace(0.0, 10.0, 4001)
_TABLES: dict[str, np.ndarray] = {}


def _table(name: str) -> np.ndarray:
    """Cosmological quantities tabulated on _Z_TABLE once per process (astropy is slow per call)."""
    if not _TABLES:
        _TABLES["age_yr"] = COSMO.age(_Z_TABLE).to_value("yr")
        _TABLES["dl_cm"] = COSMO.luminosity_distance(_Z_TABLE).to_value("cm")
        _TABLES["da_kpc"] = COSMO.angular_diameter_distance(_Z_TABLE).to_value("kpc")
    return _TABLES[name]


def age_of_universe(z: np.ndarray) -> np.ndarray:
    """Age of the universe at z, yr."""
    return np.interp(z, _Z_TABLE, _table("age_yr"))


def luminosity_distance_cm(z: np.ndarray) -> np.ndarray:
    """Luminosity distance, cm."""
    return np.interp(z, _Z_TABLE, _table("dl_cm"))


def arcsec_per_kpc(z: np.ndarray) -> np.ndarray:
    """Angular scale, arcsec per proper kpc."""
    return 206264.806 / np.interp(z, _Z_TABLE, _table("da_kpc"))


def smf_params(z: np.ndarray) -> np.ndarray:
    """(N, 5) double-Schechter parameters at z."""
    return np.stack([np.interp(z, _SMF[:, 0], _SMF[:, i]) for i in range(1, 6)], axis=-1)


def sample_logmstar(z: np.ndarray, rng: np.random.Generator, lo: float = LOGM_RANGE[0],
                    hi: float = LOGM_RANGE[1]) -> np.ndarray:
    """Draw log M* from the double-Schechter mass function at each z (inverse CDF)."""
    grid = np.linspace(lo, hi, 401)
    p = smf_params(z)
    x = 10 ** (grid[None, :] - p[:, :1])
    phi = np.log(10) * np.exp(-x) * (p[:, 2:3] * x ** (p[:, 1:2] + 1) + p[:, 4:5] * x ** (p[:, 3:4] + 1))
    cdf = np.cumsum(phi, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(z))
    idx = np.clip((cdf < u[:, None]).sum(axis=1), 1, len(grid) - 1)
    c0, c1 = cdf[np.arange(len(z)), idx - 1], cdf[np.arange(len(z)), idx]
    return grid[idx - 1] + (grid[idx] - grid[idx - 1]) * (u - c0) / np.maximum(c1 - c0, 1e-300)


def main_sequence(logmstar: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log10 SFR of the star-forming main sequence (Speagle et al. 2014, eq. 28)."""
    t = age_of_universe(z) / 1e9
    return (0.84 - 0.026 * t) * logmstar - (6.51 - 0.11 * t)


def quiescent_fraction(logmstar: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Fraction of quiescent galaxies, rising with mass and falling with z.

    A logistic in log M* whose midpoint moves from 10.6 (z = 0.6) to 11.2 (z = 3); it gives
    ~0.6 at log M* = 11, z = 1 and ~0.35 at z = 2, as measured by Muzzin et al. (2013) and
    Davidzon et al. (2017).
    """
    midpoint = 10.45 + 0.25 * z
    ceiling = np.clip(0.95 - 0.15 * z, 0.3, 0.9)
    return ceiling / (1.0 + np.exp(-(logmstar - midpoint) / 0.25))


def sample_params(n: int, rng: np.random.Generator, z_range: tuple[float, float]) -> GalaxyParams:
    """Draw N galaxies from the priors (before any magnitude selection)."""
    z = rng.uniform(z_range[0], z_range[1], n)
    logm = sample_logmstar(z, rng)
    quiescent = rng.random(n) < quiescent_fraction(logm, z)
    ms = main_sequence(logm, z)
    sf_offset = rng.normal(0.0, 0.3, n)  # MS scatter, Speagle et al. 2014
    q_offset = rng.normal(-1.5, 0.4, n)  # quiescent: ~1.5 dex below the MS
    logsfr = ms + np.where(quiescent, q_offset, sf_offset)
    inst_ratio = np.clip(rng.normal(0.0, np.where(quiescent, 0.3, 0.15)), -1.0, 0.9)
    # Continuity prior (Leja et al. 2019): Student-t (nu = 2, scale 0.3) log SFR ratios.
    sfh_logratio = np.clip(0.3 * rng.standard_t(2.0, size=(n, N_OLD_BINS - 1)), -2.0, 2.0)
    t_univ = age_of_universe(z)
    quench_age = np.where(quiescent, rng.uniform(0.15, 0.5, n) * t_univ, 0.0)
    log_zsol = np.clip(0.35 * (logm - 10.5) - 0.15 * z + rng.normal(0.0, 0.15, n), -1.5, 0.5)
    log_u = np.clip(-2.8 + 0.15 * (z - 1.0) - 0.2 * log_zsol + rng.normal(0.0, 0.25, n), -3.9, -1.1)
    av_sf = 0.3 + 0.4 * logsfr + rng.normal(0.0, 0.25, n)
    av = np.clip(np.where(quiescent, rng.uniform(0.0, 0.6, n), av_sf), 0.0, 3.0)
    eta = np.full(n, 2.0)
    sigma_v = np.clip(10 ** (2.05 + 0.25 * (logm - 10.5) + rng.normal(0.0, 0.08, n)), 30.0, 400.0)
    # Mass-size relations of van der Wel et al. (2014): late and early types.
    re_kpc = np.where(quiescent,
                      5.0 * (1 + z) ** -1.48 * (10 ** (logm - np.log10(5e10))) ** 0.75,
                      7.1 * (1 + z) ** -0.75 * (10 ** (logm - np.log10(5e10))) ** 0.22)
    re_kpc *= 10 ** rng.normal(0.0, 0.18, n)
    r_e = re_kpc * arcsec_per_kpc(z)
    return GalaxyParams(z=z, logmstar=logm, quiescent=quiescent, logsfr100_target=logsfr,
                        inst_ratio=inst_ratio, sfh_logratio=sfh_logratio, quench_age=quench_age,
                        log_zsol=log_zsol, log_u=log_u, av=av, eta=eta, sigma_v=sigma_v, r_e=r_e)
