"""Toy spectra for tests and benchmarks: a smooth continuum and Gaussian lines at known z.

Not a galaxy simulator (that is :mod:`mtopnet.simulate`): the spectra here are cheap,
deterministic given a seed, and have the store's exact layout, so tests can assert line
positions and the network can learn z, M* and SFR from them in seconds.
"""
from __future__ import annotations

import numpy as np

from .constants import C_KMS
from .lines import LINES
from .store import SpectraBatch

TOY_ARMS = {"A": (6500.0, 9300.0), "B": (9400.0, 13400.0), "C": (14500.0, 18000.0)}
"""A three-arm layout like MOONS LR (with gaps), vacuum Angstrom."""

_EMISSION = {"[OII]_3727": 0.35, "[OII]_3730": 0.45, "Hbeta": 0.35, "[OIII]_4960": 0.3,
             "[OIII]_5008": 0.9, "[NII]_6550": 0.1, "Halpha": 1.0, "[NII]_6585": 0.3,
             "[SII]_6718": 0.15, "[SII]_6733": 0.12, "[SIII]_9071": 0.1, "[SIII]_9533": 0.25,
             "HeI_10833": 0.1, "Pa_gamma": 0.05, "Pa_beta": 0.08, "Hgamma": 0.15}
_ABSORPTION = {"CaII_K": 0.4, "CaII_H": 0.35, "MgI_5174": 0.15, "NaI_D2": 0.1,
               "CaII_8544": 0.2, "CaII_8665": 0.15, "Hdelta": 0.1}


def toy_arm_waves(n_per_arm: int = 600, arms: dict[str, tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
    """Linear pixel centres per arm: name -> (n_per_arm,) vacuum Angstrom."""
    arms = arms or TOY_ARMS
    return {name: np.linspace(lo, hi, n_per_arm) for name, (lo, hi) in arms.items()}


def toy_batch(n: int, arm_waves: dict[str, np.ndarray] | None = None, *, z_range: tuple[float, float] = (0.6, 3.0),
              seed: int = 0, noise: float = 0.02, sky_fraction: float = 0.03,
              start_id: int = 0) -> SpectraBatch:
    """``n`` toy galaxies on ``arm_waves`` (default: :func:`toy_arm_waves`).

    Continuum: a power law with a 4000 A break whose level follows log M*; emission lines
    (flux following log SFR, sigma 100 km/s) for star-forming objects (type 0) and absorption
    lines for quiescent ones (type 1). Gaussian noise of ``noise`` (1e-17 erg/s/cm2/A) per
    pixel; a random ``sky_fraction`` of pixels is flagged as sky lines (mask bit 2) with
    inflated noise. Labels: z, logmstar, logsfr, hmag, type.
    """
    rng = np.random.default_rng(seed)
    arm_waves = arm_waves if arm_waves is not None else toy_arm_waves()
    z = rng.uniform(*z_range, n)
    logm = rng.uniform(9.5, 11.5, n)
    typ = (rng.random(n) < 0.25).astype(np.int8)
    logsfr = np.where(typ == 0, 0.8 * (logm - 10.0) + 1.0 + 0.25 * rng.standard_normal(n),
                      logm - 11.5 + 0.3 * rng.standard_normal(n))
    dist = ((1.0 + 1.5) / (1.0 + z)) ** 3
    level = 0.02 * 10 ** (logm - 10.5) * dist
    slope = rng.uniform(-1.5, 0.5, n)
    brk = np.where(typ == 1, 0.5, 0.2)
    line_flux = 3.0 * 10 ** (logsfr - 1.0) * dist  # 1e-17 erg/s/cm2 for Halpha
    names = {line.name: line.wave for line in LINES}
    arms: dict[str, dict[str, np.ndarray]] = {}
    hmag = np.full(n, 30.0)
    for name, wave in arm_waves.items():
        wave = np.asarray(wave, dtype=np.float64)
        rest = wave[None, :] / (1.0 + z[:, None])
        cont = level[:, None] * (rest / 5000.0) ** slope[:, None]
        cont *= np.where(rest < 4000.0, 1.0 - brk[:, None], 1.0)
        flux = cont.copy()
        for line, ratio in _EMISSION.items():
            centre = names[line] * (1.0 + z)
            sig = centre * 100.0 / C_KMS
            amp = np.where(typ == 0, ratio * line_flux, 0.0) / (np.sqrt(2 * np.pi) * sig)
            flux += amp[:, None] * np.exp(-0.5 * ((wave[None, :] - centre[:, None]) / sig[:, None]) ** 2)
        for line, depth in _ABSORPTION.items():
            centre = names[line] * (1.0 + z)
            sig = centre * 150.0 / C_KMS
            d = np.where(typ == 1, depth, 0.3 * depth)
            flux -= (d * 1.0)[:, None] * cont * np.exp(-0.5 * ((wave[None, :] - centre[:, None]) / sig[:, None]) ** 2)
        sky = rng.random(wave.shape) < sky_fraction
        sigma = np.where(sky, 10.0 * noise, noise) * np.ones((n, 1))
        obs = flux + sigma * rng.standard_normal(flux.shape)
        mask = np.where(sky, 2, 0).astype(np.uint8) * np.ones((n, 1), dtype=np.uint8)
        arms[name] = {"wave": wave, "flux": obs.astype(np.float32),
                      "ivar": (1.0 / sigma ** 2).astype(np.float32), "mask": mask}
        in_h = (wave > 15000) & (wave < 17500)
        if in_h.any():
            fl = cont[:, in_h].mean(axis=1)
            fnu = np.maximum(fl, 1e-8) * 1e-17 * (16250.0 ** 2) / 2.998e18
            hmag = -2.5 * np.log10(fnu) - 48.6
    labels = {"z": z, "logmstar": logm, "logsfr": logsfr, "hmag": hmag, "type": typ}
    return SpectraBatch(ids=np.arange(start_id, start_id + n, dtype=np.int64), arms=arms, labels=labels)


def template_batch(instrument, template: str, z: np.ndarray, flux_level: float, *, seed: int = 0,
                   coeff: np.ndarray | None = None, exposure_s: float = 8 * 3600.0,
                   start_id: int = 0) -> SpectraBatch:
    """Spectra of a Redrock template file observed through ``instrument`` (an
    :class:`~mtopnet.instruments.Instrument`) with its noise: one object per ``z`` (N,).

    The rest-frame model is ``coeff`` (K,) times the file's basis vectors (default: the first
    vector alone, its sign made positive), redshifted, scaled so that its median over the instrument's pixels the
    template covers is ``flux_level`` (1e-17 erg/s/cm2/A), zero outside the template's range
    (such pixels get ivar 0). Observed by :func:`mtopnet.instruments.noise.observe_arm`
    (``exposure_s`` seconds, the instrument's nominal conditions).
    """
    from .config import Exposure
    from .instruments.noise import observe_arm
    from .templates import read_templates

    rng = np.random.default_rng(seed)
    wave_t, basis = read_templates(template)
    model = basis[0] if coeff is None else np.asarray(coeff, dtype=np.float64) @ basis[:len(coeff)]
    model = model * np.sign(np.median(model))  # a PCA vector's sign is arbitrary
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    exposure = Exposure(exposure_s)
    arms: dict[str, dict[str, np.ndarray]] = {}
    fine = {}
    for arm in instrument.arms:
        rest = arm.fine_wave[None, :] / (1 + z[:, None])
        fine[arm.name] = np.where((rest >= wave_t[0]) & (rest <= wave_t[-1]), np.interp(rest, wave_t, model), np.nan)
    covered = np.concatenate([f for f in fine.values()], axis=1)
    scale = flux_level / np.nanmedian(np.where(covered > 0, covered, np.nan), axis=1)
    for arm in instrument.arms:
        inside = np.isfinite(fine[arm.name])
        spec = observe_arm(arm, np.where(inside, fine[arm.name], 0.0) * scale[:, None], exposure, rng)
        edge = arm.convolve_and_bin(inside.astype(np.float64)) < 0.999  # pixels the template does not cover
        arms[arm.name] = {"wave": spec.wave, "flux": spec.flux, "ivar": np.where(edge, 0, spec.ivar).astype(np.float32),
                          "mask": spec.mask}
    labels = {"z": z, "logmstar": np.full(len(z), np.nan), "logsfr": np.full(len(z), np.nan),
              "hmag": np.full(len(z), np.nan), "type": np.full(len(z), -1, np.int8)}
    return SpectraBatch(ids=np.arange(start_id, start_id + len(z), dtype=np.int64), arms=arms, labels=labels)


__all__ = ["TOY_ARMS", "toy_arm_waves", "toy_batch", "template_batch"]
