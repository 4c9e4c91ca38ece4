"""Population priors for galaxies at 0.6 <= z <= 3 (sources and choices: docs/galaxies.md).

Each function draws arrays for N galaxies from a numpy Generator; nothing here knows about
spectra. The draw order is fixed, so a seed gives the same population on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

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

    Set by the training prior only (None for the survey population): sfh_family (N,) int8
    code of :data:`SFH_FAMILIES`; line_scale (N,) multiplier of every emission line;
    agn (N,) bool, AGN-like narrow-line ratios (:data:`AGN_LINE_BOOST`).
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
    sfh_family: np.ndarray | None = field(default=None)
    line_scale: np.ndarray | None = field(default=None)
    agn: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, index) -> "GalaxyParams":
        return GalaxyParams(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                               for f in fields(self)})

    @staticmethod
    def concatenate(parts: list["GalaxyParams"]) -> "GalaxyParams":
        """The rows of several draws, in order (optional fields stay None if None in the first)."""
        return GalaxyParams(**{f.name: None if getattr(parts[0], f.name) is None
                               else np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(GalaxyParams)})


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


# --- the training prior -------------------------------------------------------------------

SFH_FAMILIES = {
    0: "continuity",         # Leja et al. 2019 Student-t ratios (quiescent: lowered after a quench age)
    1: "delayed-tau",        # SFR ~ t exp(-t / tau), t since formation; tau 1-10 Gyr (SF), 0.1-1 Gyr (quiescent)
    2: "constant",           # flat SFR in every old bin
    3: "rising",             # SFR ~ t^beta, beta 1-3
    4: "recent-burst",       # star-forming, 10 Myr SFR 2-8x the 100 Myr SFR, sSFR at the top of the range
    5: "post-starburst",     # quiescent after a burst 0.1-0.5 Gyr ago holding 20-70% of the mass
    6: "recently-quenched",  # constant or rising SFR until 0.1-0.3 Gyr ago, then quiescent
}
"""Star-formation-history families of the training prior (labels/sfh_family codes)."""

SF_FAMILIES = (0, 1, 2, 3, 4)
Q_FAMILIES = (0, 1, 5, 6)
SF_FAMILY_WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)
Q_FAMILY_WEIGHTS = (0.3, 0.25, 0.25, 0.2)

LOGSSFR_QUIESCENT = (-13.0, -11.0)
"""log sSFR (1/yr, over 100 Myr) of quiescent galaxies in the training prior, uniform."""
LOGSSFR_STAR_FORMING = (-11.0, -8.3)
"""log sSFR of star-forming galaxies (green valley to starbursts), uniform."""

AGN_LINE_BOOST = {  # vacuum rest wavelength (A) -> (low, high) multiplier, log-uniform
    5008.24: (3.0, 10.0), 4960.30: (3.0, 10.0),   # [OIII]
    6585.27: (2.0, 5.0), 6549.86: (2.0, 5.0),     # [NII]
    6718.29: (1.5, 3.0), 6732.67: (1.5, 3.0),     # [SII]
    6302.05: (2.0, 5.0),                          # [OI]
}
"""Line-ratio multipliers of the AGN-like objects (to Seyfert-like BPT positions:
log [OIII]/Hbeta ~ 0.5-1, log [NII]/Halpha ~ -0.2...0.3)."""


@dataclass(frozen=True)
class TrainingPrior:
    """Knobs of the training prior (``mtopnet simulate --population training``).

    quiescent_fraction: share drawn as quiescent (log sSFR in LOGSSFR_QUIESCENT).
    logm_range: log M* (living, M_sun) drawn uniformly in it at every z.
    line_scale: (lo, hi), every emission line of an object is multiplied by one
    log-uniform factor in it (1 1 = the nebular grid's own strengths).
    agn_fraction: share with AGN-like narrow-line ratios.
    """

    quiescent_fraction: float = 0.35
    logm_range: tuple[float, float] = (9.0, 12.0)
    line_scale: tuple[float, float] = (0.3, 3.0)
    agn_fraction: float = 0.04

    def validate(self) -> list[str]:
        """Messages for every bad field (empty if valid)."""
        bad = []
        if not 0.0 <= self.quiescent_fraction <= 1.0:
            bad.append(f"--quiescent-fraction: must be within 0-1, got {self.quiescent_fraction}")
        lo, hi = self.logm_range
        if not LOGM_RANGE[0] - 1.0 <= lo < hi <= LOGM_RANGE[1] + 0.5:
            bad.append(f"--logm-range: need {LOGM_RANGE[0] - 1} <= LO < HI <= {LOGM_RANGE[1] + 0.5}, got {lo} {hi}")
        slo, shi = self.line_scale
        if not 0.0 < slo <= shi <= 100.0:
            bad.append(f"--line-scale: need 0 < LO <= HI <= 100, got {slo} {shi}")
        if not 0.0 <= self.agn_fraction <= 1.0:
            bad.append(f"--agn-fraction: must be within 0-1, got {self.agn_fraction}")
        return bad

    def as_dict(self) -> dict:
        return {"quiescent_fraction": self.quiescent_fraction, "logm_range": list(self.logm_range),
                "line_scale": list(self.line_scale), "agn_fraction": self.agn_fraction}


def _old_bin_lookback(z: np.ndarray) -> np.ndarray:
    """(N, N_OLD_BINS) geometric-mean lookback times (yr) of the old SFH bins (100 Myr - t_univ)."""
    t_univ = age_of_universe(z)
    frac = np.linspace(0.0, 1.0, N_OLD_BINS + 1)[None, :]
    edges = 10 ** (8.0 + frac * (np.log10(t_univ)[:, None] - 8.0))
    return np.sqrt(edges[:, 1:] * edges[:, :-1])


def sample_training_params(n: int, rng: np.random.Generator, z_range: tuple[float, float],
                           prior: TrainingPrior = TrainingPrior()) -> GalaxyParams:
    """Draw N galaxies from the training prior (before any magnitude selection).

    Even coverage rather than a survey's population: log M* uniform in ``prior.logm_range``
    at every z; a fixed quiescent share; log sSFR uniform within each class; SFH families
    (:data:`SFH_FAMILIES`) expressed as SFR ratios between the old bins of
    ``model.sfh_bin_edges``; metallicity, dust, dispersion and ionisation independent of mass
    over their full ranges. Sources and reasons: docs/galaxies.md.
    """
    z = rng.uniform(z_range[0], z_range[1], n)
    logm = rng.uniform(prior.logm_range[0], prior.logm_range[1], n)
    quiescent = rng.random(n) < prior.quiescent_fraction
    fam_sf = rng.choice(np.array(SF_FAMILIES), size=n, p=np.array(SF_FAMILY_WEIGHTS))
    fam_q = rng.choice(np.array(Q_FAMILIES), size=n, p=np.array(Q_FAMILY_WEIGHTS))
    family = np.where(quiescent, fam_q, fam_sf).astype(np.int8)
    logssfr = np.where(quiescent, rng.uniform(*LOGSSFR_QUIESCENT, n), rng.uniform(*LOGSSFR_STAR_FORMING, n))
    burst = family == 4
    logssfr = np.where(burst, rng.uniform(-9.5, LOGSSFR_STAR_FORMING[1], n), logssfr)
    # SFR(10 Myr) / SFR(100 Myr): bursts rise, quiescent galaxies mostly fade.
    inst_ratio = np.where(quiescent, rng.uniform(-1.0, 0.3, n), np.clip(rng.normal(0.0, 0.15, n), -0.5, 0.5))
    inst_ratio = np.where(burst, rng.uniform(0.3, 0.9, n), inst_ratio)

    # Relative log SFR of the old bins (index 0 = youngest, 100 Myr onwards), per family.
    t_univ = age_of_universe(z)
    look = _old_bin_lookback(z)  # (N, K)
    age = np.clip(t_univ[:, None] - look, 1e7, None)  # time since formation at the bin, yr
    cont = np.concatenate([np.zeros((n, 1)), np.cumsum(
        np.clip(0.3 * rng.standard_t(2.0, size=(n, N_OLD_BINS - 1)), -2.0, 2.0), axis=1)], axis=1)
    tau = np.where(quiescent, 10 ** rng.uniform(8.0, 9.0, n), 10 ** rng.uniform(9.0, 10.0, n))
    delayed = np.log10(age) - age / tau[:, None] / np.log(10)
    beta = rng.uniform(1.0, 3.0, n)
    rising = beta[:, None] * np.log10(age)
    young_bin = (rng.random(n) < 0.6).astype(int)  # the burst / quench sits in old bin 0 or 1
    burst_dex = rng.uniform(1.0, 2.5, n)
    psb = np.where(np.arange(N_OLD_BINS)[None, :] == young_bin[:, None], burst_dex[:, None], 0.0)
    recent_q = np.where(rng.random(n)[:, None] < 0.5, 0.0, rising)
    logsfr_old = np.select([family[:, None] == k for k in (0, 1, 2, 3, 5, 6)],
                           [cont, delayed, np.zeros_like(cont), rising, psb, recent_q], default=cont)
    logsfr_old = logsfr_old - logsfr_old.max(axis=1, keepdims=True)
    sfh_logratio = np.clip(np.diff(logsfr_old, axis=1), -4.0, 4.0)
    quench_age = np.where(quiescent & (family == 0), rng.uniform(0.15, 0.5, n) * t_univ, 0.0)

    log_zsol = rng.uniform(-1.5, 0.4, n)
    log_u = rng.uniform(-3.8, -1.5, n)
    # A_V = 3 u^2 for star-forming galaxies: all of 0-3, most below 1 (mean 1 mag).
    av = np.where(quiescent, rng.uniform(0.0, 1.5, n), 3.0 * rng.uniform(0.0, 1.0, n) ** 2)
    eta = np.full(n, 2.0)
    sigma_v = 10 ** rng.uniform(np.log10(30.0), np.log10(400.0), n)
    re_kpc = np.where(quiescent,
                      5.0 * (1 + z) ** -1.48 * (10 ** (logm - np.log10(5e10))) ** 0.75,
                      7.1 * (1 + z) ** -0.75 * (10 ** (logm - np.log10(5e10))) ** 0.22)
    re_kpc *= 10 ** rng.normal(0.0, 0.25, n)
    r_e = re_kpc * arcsec_per_kpc(z)
    lo, hi = prior.line_scale
    line_scale = 10 ** rng.uniform(np.log10(lo), np.log10(hi), n)
    agn = rng.random(n) < prior.agn_fraction
    return GalaxyParams(z=z, logmstar=logm, quiescent=quiescent, logsfr100_target=logm + logssfr,
                        inst_ratio=inst_ratio, sfh_logratio=sfh_logratio, quench_age=quench_age,
                        log_zsol=log_zsol, log_u=log_u, av=av, eta=eta, sigma_v=sigma_v, r_e=r_e,
                        sfh_family=family, line_scale=line_scale, agn=agn)


def line_multipliers(params: GalaxyParams, line_wave: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """(N, nLine) factors on the emission lines from ``line_scale`` and ``agn`` (None if neither set).

    line_wave: (nLine,) vacuum rest wavelengths of the nebular grid's lines, A.
    """
    if params.line_scale is None:
        return None
    n = len(params)
    mult = np.repeat(params.line_scale[:, None], len(line_wave), axis=1)
    boost = np.ones((n, len(line_wave)))
    for wave, (lo, hi) in AGN_LINE_BOOST.items():
        j = int(np.argmin(np.abs(line_wave - wave)))
        if abs(line_wave[j] - wave) < 1.0:
            boost[:, j] = 10 ** rng.uniform(np.log10(lo), np.log10(hi), n)
    return mult * np.where(params.agn[:, None], boost, 1.0)
