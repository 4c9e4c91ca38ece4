"""Randomised observing conditions and calibration errors ("nuisances") for training spectra.

``mtopnet simulate --nuisance randomised`` draws, for every object, what a real observation
(or another simulator) varies; docs/simulator.md has the table of ranges and reasons. The
values that need a shared sky or line-spread function (airmass, LSF width) are drawn per
group of at most ``GROUP_SIZE`` consecutive objects (the objects are in random order, so
the groups are random); everything else per object. Every nuisance can be switched off
(``--nuisance-off NAME``): it then takes the nominal value of the exposure (airmass,
seeing, sky residual, exposure time) or none (no calibration error, no shift, STARE, point
source size from the galaxy's own half-light radius, worst throughput, telluric correction
complete).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Exposure

GROUP_SIZE = 25
"""Largest number of objects that share one airmass and one LSF width."""

NUISANCES = ("sky_residual", "source_size", "seeing", "airmass", "throughput", "exposure",
             "flux_calibration", "lsf", "wavelength_shift", "xsw", "telluric")
"""Names accepted by ``--nuisance-off``."""

SKY_RESIDUAL_MAX = 0.02
"""Sky-subtraction residual level (1 sigma, fraction of the sky) ~ U(0, this) ..."""
SKY_RESIDUAL_NONE = 0.2
"""... and exactly 0 for this share of objects."""
SOURCE_RE_RANGE = (0.05, 1.5)
"""Source half-light radius (arcsec), log-uniform; POINT_SHARE of objects are point sources."""
POINT_SHARE = 0.15
SEEING_RANGE = (0.5, 1.3)
"""Seeing FWHM at 500 nm, zenith (arcsec), uniform."""
AIRMASS_RANGE = (1.0, 2.0)
"""Airmass, uniform, rounded to AIRMASS_STEP (so that the sky responses can be cached)."""
AIRMASS_STEP = 0.05
EXPOSURE_HOURS = (1.0, 12.0)
"""Total exposure (h), log-uniform, rounded to whole sub-exposures (at least one)."""
FLUXCAL_SHAPE_MAX = 0.2
"""Flux-calibration error within an arm: (1 + a P(x)), |P| <= 1 a Legendre series of order
1-3 across the arm, a ~ U(0, this)."""
FLUXCAL_OFFSET_MAX = 0.1
"""Flux-calibration error between arms: a factor (1 + b), b ~ U(-this, this) per arm."""
FLUXCAL_ORDER = 3
LSF_SCALE_RANGE = (0.85, 1.15)
"""Width of the LSF relative to the instrument's, uniform (the source only; see noise.py)."""
WAVE_SHIFT_MAX = 0.3
"""Wavelength zero-point error, pixels, uniform in +-this, per object (all arms)."""
XSW_SHARE = 0.3
"""Share of objects observed in cross-beam switching (XSW) rather than STARE."""
TELLURIC_LEFT_MAX = 0.3
"""Fraction of the telluric absorption left in the flux, U(0, this) per object."""


@dataclass
class Conditions:
    """Per-object observing conditions of N objects (all (N,) arrays).

    airmass, lsf_scale: shared within groups of <= GROUP_SIZE. seeing: arcsec FWHM.
    n_sub: sub-exposures. sky_residual: 1-sigma level of the sky-model error (fraction).
    xsw: bool, cross-beam switching. throughput: 0 worst ... 1 best curve. source_re:
    half-light radius (arcsec) used for the fibre loss. wave_shift: pixels. telluric_left:
    fraction of the telluric absorption left uncorrected. fluxcal_offset, fluxcal_amp:
    (N, n_arms) the between-arm factor and the within-arm amplitude; fluxcal_coef:
    (N, n_arms, FLUXCAL_ORDER) Legendre coefficients of the within-arm shape.
    """

    airmass: np.ndarray
    lsf_scale: np.ndarray
    seeing: np.ndarray
    n_sub: np.ndarray
    sky_residual: np.ndarray
    xsw: np.ndarray
    throughput: np.ndarray
    source_re: np.ndarray
    wave_shift: np.ndarray
    telluric_left: np.ndarray
    fluxcal_offset: np.ndarray
    fluxcal_amp: np.ndarray
    fluxcal_coef: np.ndarray

    def __len__(self) -> int:
        return len(self.airmass)

    def subset(self, index) -> "Conditions":
        return Conditions(**{k: v[index] for k, v in self.__dict__.items()})

    def labels(self, arm_names: list[str], sub_exposure: float) -> dict[str, np.ndarray]:
        """Per-object labels ``nu_*`` for the store (documented in mtopnet.store)."""
        out = {"nu_airmass": self.airmass, "nu_lsf_scale": self.lsf_scale, "nu_seeing": self.seeing,
               "nu_exposure_h": self.n_sub * sub_exposure / 3600.0, "nu_sky_residual": self.sky_residual,
               "nu_xsw": self.xsw.astype(np.int8), "nu_throughput": self.throughput,
               "nu_source_r_e": self.source_re, "nu_wave_shift_pix": self.wave_shift,
               "nu_telluric_left": self.telluric_left}
        for i, arm in enumerate(arm_names):
            out[f"nu_fluxcal_offset_{arm}"] = self.fluxcal_offset[:, i]
            out[f"nu_fluxcal_amp_{arm}"] = self.fluxcal_amp[:, i]
        return out


def nominal_conditions(n: int, n_arms: int, exposure: Exposure, source_re: np.ndarray) -> Conditions:
    """The fixed conditions of ``exposure`` for N objects (what ``--nuisance fixed`` uses)."""
    full = lambda v: np.full(n, float(v))  # noqa: E731
    return Conditions(airmass=full(exposure.airmass), lsf_scale=full(1.0), seeing=full(exposure.seeing),
                      n_sub=np.full(n, exposure.n_sub, dtype=np.int64), sky_residual=full(exposure.sky_residual),
                      xsw=np.zeros(n, dtype=bool), throughput=full(0.0), source_re=np.asarray(source_re, float),
                      wave_shift=full(0.0), telluric_left=full(0.0), fluxcal_offset=np.zeros((n, n_arms)),
                      fluxcal_amp=np.zeros((n, n_arms)), fluxcal_coef=np.zeros((n, n_arms, FLUXCAL_ORDER)))


def draw_conditions(n: int, n_arms: int, exposure: Exposure, source_re: np.ndarray,
                    rng: np.random.Generator, off: tuple[str, ...] = ()) -> Conditions:
    """Randomised conditions of N objects; nuisances named in ``off`` keep nominal values.

    Every draw is made whether or not its nuisance is off, so switching one off leaves the
    others' values unchanged for the same seed.
    """
    c = nominal_conditions(n, n_arms, exposure, source_re)
    n_groups = (n + GROUP_SIZE - 1) // GROUP_SIZE
    group = np.arange(n) // GROUP_SIZE
    steps = int(round((AIRMASS_RANGE[1] - AIRMASS_RANGE[0]) / AIRMASS_STEP))
    airmass = AIRMASS_RANGE[0] + AIRMASS_STEP * rng.integers(0, steps + 1, n_groups)[group]
    lsf = rng.uniform(*LSF_SCALE_RANGE, n_groups)[group]
    seeing = rng.uniform(*SEEING_RANGE, n)
    hours = 10 ** rng.uniform(np.log10(EXPOSURE_HOURS[0]), np.log10(EXPOSURE_HOURS[1]), n)
    n_sub = np.maximum(1, np.round(hours * 3600.0 / exposure.sub_exposure)).astype(np.int64)
    sky_res = np.where(rng.random(n) < SKY_RESIDUAL_NONE, 0.0, rng.uniform(0.0, SKY_RESIDUAL_MAX, n))
    xsw = rng.random(n) < XSW_SHARE
    thr = rng.uniform(0.0, 1.0, n)
    re = np.where(rng.random(n) < POINT_SHARE, 0.0,
                  10 ** rng.uniform(np.log10(SOURCE_RE_RANGE[0]), np.log10(SOURCE_RE_RANGE[1]), n))
    shift = rng.uniform(-WAVE_SHIFT_MAX, WAVE_SHIFT_MAX, n)
    tell = rng.uniform(0.0, TELLURIC_LEFT_MAX, n)
    offset = rng.uniform(-FLUXCAL_OFFSET_MAX, FLUXCAL_OFFSET_MAX, (n, n_arms))
    amp = rng.uniform(0.0, FLUXCAL_SHAPE_MAX, (n, n_arms))
    coef = rng.normal(0.0, 1.0, (n, n_arms, FLUXCAL_ORDER))
    drawn = {  # nuisance name -> the Conditions fields it sets
        "airmass": {"airmass": airmass}, "lsf": {"lsf_scale": lsf}, "seeing": {"seeing": seeing},
        "exposure": {"n_sub": n_sub}, "sky_residual": {"sky_residual": sky_res}, "xsw": {"xsw": xsw},
        "throughput": {"throughput": thr}, "source_size": {"source_re": re}, "wavelength_shift": {"wave_shift": shift},
        "telluric": {"telluric_left": tell},
        "flux_calibration": {"fluxcal_offset": offset, "fluxcal_amp": amp, "fluxcal_coef": coef},
    }
    for name, fields in drawn.items():
        if name not in off:
            for field_name, value in fields.items():
                setattr(c, field_name, value)
    c.sky_residual = np.where(c.xsw, 0.0, c.sky_residual)  # XSW has no sky-model scale error
    return c


def fluxcal_factor(c: Conditions, arm_index: int, wave: np.ndarray) -> np.ndarray:
    """(N, L) multiplicative flux-calibration error of one arm at its pixels ``wave`` (L,).

    (1 + offset) (1 + amp P(x) / max|P|), x in [-1, 1] across the arm, P the Legendre series
    with the drawn coefficients (no constant term); exactly 1 where amp = offset = 0.
    """
    x = np.linspace(-1.0, 1.0, len(wave))
    basis = np.stack([np.polynomial.legendre.Legendre.basis(k + 1)(x) for k in range(FLUXCAL_ORDER)])  # (K, L)
    shape = c.fluxcal_coef[:, arm_index, :] @ basis  # (N, L)
    norm = np.maximum(np.abs(shape).max(axis=1, keepdims=True), 1e-12)
    return (1.0 + c.fluxcal_offset[:, arm_index, None]) * (1.0 + c.fluxcal_amp[:, arm_index, None] * shape / norm)
