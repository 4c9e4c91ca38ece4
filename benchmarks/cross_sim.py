#!/usr/bin/env python
"""Cross-simulator test: Bagpipes galaxies observed with the consortium's moons1d, read by mtopnet.

    nice python benchmarks/cross_sim.py --n 1000 --seed 7001 --out /path/DIR [--workers 2]
        [--model NAME_OR_PATH] [--predict-args "..."] [--skip-redrock] [--store-out FILE.h5]
        [--skip-predict] [--docs]

1. Draws N galaxies from THIS script's own priors (below; nothing of mtopnet's population
   code is used), computes each with ``bagpipes.model_galaxy`` and normalises it to a drawn
   2MASS H (AB) magnitude.
2. Observes each with the MOONS consortium's 1D simulator ``moons1d`` 1.0.3 (installed
   with ``--no-deps``; imported through ``benchmarks/moons1d_compare.py``'s compatibility
   shims), LR mode, STARE, 16 x 1800 s = 8 h, airmass 1.2, seeing 0.8", point source,
   moons1d's own defaults otherwise (atmospheric dispersion in the fibre loss, reference
   1.2 um; ErrSky term; sky mask at 3.2 sigma; flux calibration with the aperture loss
   corrected), exactly the steps of ``moons1d.interface.run_multi_obj``. Its noise is
   seeded per object (moons1d draws from ``np.random.default_rng(None)``).
3. Writes moons1d's native per-arm FITS files (``Simulation.SavetoFits``, one
   ``<id>_<ARM>.fits`` per arm, ids ``x<seed>-<index>``) into ``DIR/spectra/``, each under a
   temporary name then renamed, and the truth table ``DIR/truth.fits``. A re-run with the
   same seed reuses the objects whose three files exist (resumable).
4. Optionally (``--store-out``) writes the same spectra, read back through mtopnet's
   moons1d reader, as an mtopnet HDF5 store with labels z, logmstar, logsfr, hmag, type
   (0 star-forming, 1 quiescent), for ``mtopnet evaluate --truth`` and calibration.
5. Runs ``mtopnet predict`` (the real CLI, in a subprocess) on ``DIR/spectra/`` and the
   project's Redrock baseline (``mtopnet.baselines.redrock``: the shipped PCA templates,
   0.6 <= z <= 3, Redrock's galaxy step) on the same spectra; the Redrock catalogue is kept
   in ``DIR/redrock.fits`` and reused by later runs (e.g. for a new model).
6. Prints the table of issue 10 by H bin and by type, mtopnet and Redrock side by side, with
   the paired comparison on the same objects (how many only one of them gets right, and the
   difference of their success fractions with its 1-sigma error), and writes it to
   ``DIR/cross_sim.md`` and ``DIR/cross_sim.json`` (and ``docs/cross_sim_table.md`` with
   ``--docs``).

``--pool DIR DIR ... --out OUT`` prints the same table over the objects of several finished
runs (seeds) together, refusing catalogues made with different model files, and writes it to
``OUT/cross_sim_pooled.md`` and ``.json``.

Seeds: 7001 (and 7002...) are TEST seeds, never to be used for training or calibration;
calibration sets use 6001 (6002...). The script refuses the project's training seeds.

Priors (per galaxy, independent draws; ``t_U(z)``: age of the Universe at z, Bagpipes'
cosmology; ages in Gyr):

* z ~ U(0.6, 3.0).
* class: quiescent with probability 0.35, else star-forming. The recorded ``quiescent`` flag
  is the model's own sSFR_100Myr < 1e-11 /yr; a galaxy drawn quiescent whose model is not
  is redrawn (up to 8 times).
* SFH family, equally likely among five, with parameters by class:

  ============  ==============================================  =================================================
  family        star-forming                                    quiescent
  ============  ==============================================  =================================================
  delayed       tau ~ logU(0.3, 10), age ~ U(0.1, t_U)           tau ~ logU(0.05, 0.4), age ~ U(max(0.8, 8 tau), t_U)
  exponential   tau ~ logU(0.5, 10), age ~ U(0.05, t_U)          tau ~ logU(0.03, 0.3), age ~ U(max(0.6, 8 tau), t_U)
  constant      age_max ~ U(0.05, t_U), age_min = 0              age_max ~ U(0.5, t_U), age_min ~ U(0.15, age_max - 0.1)
  burst_old     delayed (tau ~ logU(0.3, 3), age ~ U(1, t_U))    delayed (tau ~ logU(0.05, 0.5), age ~ U(1, t_U)) +
                + burst at age ~ U(0.003, 0.1), 1-30% of mass    burst at age ~ U(0.15, 1.0), 5-40% of mass
                                                                 (post-starburst: strong Balmer absorption)
  lognormal     tmax ~ U(0.5 t_U, 1.5 t_U), fwhm ~ U(1, 8)       tmax ~ U(0.3, max(0.4, t_U - 1.5)), fwhm ~ U(0.3, 1.5)
  ============  ==============================================  =================================================

  (an age above t_U is clipped to 0.98 t_U; ``tmax`` and ``fwhm`` are Bagpipes' lognormal
  parameters, time since the Big Bang of the peak and the width).
* metallicity: log10(Z/Zsun) ~ U(-0.7, 0.4), the same for all components and the nebular gas.
* dust: Calzetti, A_V ~ U(0, 2.5) (star-forming), U(0, 1.0) (quiescent); Bagpipes'
  default birth-cloud factor.
* nebular emission (Bagpipes/Cloudy grid, stars younger than 10 Myr): logU ~ U(-3.5, -2).
* velocity dispersion (stars and lines): sigma ~ U(40, 150) km/s (star-forming),
  U(120, 300) km/s (quiescent).
* brightness: the model is scaled to an H (AB, 2MASS H through speclite, lines included)
  drawn uniform within [20, 25.5] intersected with the H range that keeps the LIVING
  stellar mass within 9 <= log M* <= 11.7 (a galaxy whose range misses [20, 25.5] is
  redrawn). So H is uniform per galaxy but its overall distribution thins at both ends
  (massive faint galaxies do not exist at low z, low-mass bright ones not at high z); the
  realised distribution is printed.

Spectral sampling: ``bagpipes.config.R_spec = 15000`` (grid R of the model; Bagpipes' default
is 1000, far below MOONS LR's R ~ 4000-6500), ``max_redshift = 3.2``; the observed-frame
model is evaluated at 0.25 A steps over 5700-20000 A and given to moons1d as a point-sampled
template (``resolution = 1e7``, so moons1d applies its full LR line-spread function), as
moons1d_compare.py does. The stellar library (BC03 + MILES, 2.5 A FWHM rest frame) is
itself coarser than MOONS LR in the rest-frame optical; the lines are Gaussians of the drawn
sigma. Bagpipes' wavelengths are used as they are (its line list is Cloudy's, air
wavelengths; the stellar library is MILES, air), so the spectra sit at (1 + z) times air
wavelengths on moons1d's vacuum grid: a shift of 2.8e-4 (1 + z) in z (<= 0.0011). The
truth table's ``z`` is therefore the redshift the spectra show on a vacuum grid,
(1 + z_drawn) / n_air(5000 A) - 1 (``vacuum_redshift``; n_air varies by +-1e-5 over the
rest-frame 3000-9000 A, far below a pixel), and ``z_drawn`` the redshift Bagpipes was given:
without it, every right redshift is "off" by 2.8e-4 (1 + z) and the 68% intervals, ~1e-3
wide for certain objects, miss the truth. moons1d's pixel i is centred at
``wave_min + i * dispersion`` (its own convention, kept; mtopnet's grid is half a pixel
away), so Redrock is run on the files' own grid with the instrument's LSF.

Truth table columns: id, index, z (as shown on a vacuum grid, above), z_drawn, logmstar
(log10 LIVING stellar mass, Msun), logmformed,
logsfr (log10 SFR averaged over 100 Myr, Msun/yr; -3 when below 1e-3), ssfr, hmag, quiescent,
type, family, av, metallicity (log Z/Zsun), logu, veldisp, halpha_flux, oiii_flux
([OIII] 5007, erg/s/cm2, dust-attenuated), max_line_flux (of the two), line_snr (largest
integrated S/N of Halpha, [OIII] 5007, Hbeta, [OII] 3727+3729 among those inside an arm:
flux / sqrt(sum over +-3 sigma of (error x pixel width)^2), moons1d's reported error),
gen_cpu_s (CPU seconds of this object: model + 3 arms).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

ARMS = ("RI", "YJ", "H")
Z_RANGE = (0.6, 3.0)
H_RANGE = (20.0, 25.5)
LOGM_RANGE = (9.0, 11.7)
P_QUIESCENT = 0.35
SSFR_QUIESCENT = 1e-11  # /yr
FAMILIES = ("delayed", "exponential", "constant", "burst_old", "lognormal")
TEMPLATE_WAVE = np.arange(5700.0, 20000.0, 0.25)  # A, observed frame
R_SPEC = 15000.0
MAX_REDSHIFT = 3.2
LOGM_FORMED_REF = 10.0  # the model is computed at this formed mass, then scaled
LOGSFR_FLOOR = -3.0
LINE_FLUX_WEAK = 1e-18  # erg/s/cm2: "no or weak lines" below
TEST_SEEDS = (7001, 7002, 7003, 7004)
CALIB_SEEDS = (6001, 6002, 6003)
TRAINING_SEEDS = (1001, 1002, 2001, 3001, 424242, 5151)
C_KMS = 299792.458
# (label, Bagpipes line names, rest vacuum A for the window)
SNR_LINES = (("Halpha", ("H  1  6562.80A",), 6564.61), ("[OIII]5007", ("O  3  5006.84A",), 5008.24),
             ("Hbeta", ("H  1  4861.32A",), 4862.68), ("[OII]3727", ("O  2  3726.03A", "O  2  3728.81A"), 3728.48))
H_BINS = ((20.0, 22.0), (22.0, 23.0), (23.0, 24.0), (24.0, 25.0), (25.0, 25.5))
SUCCESS_DZ = 0.01
CATASTROPHIC = 0.05  # |dz| / (1 + z)
MASS_HMAX = 24.0
ECE_BINS = 10


# ----------------------------------------------------------------------------------------
# Priors and one galaxy
# ----------------------------------------------------------------------------------------


@dataclass
class GalaxyDraw:
    """One galaxy's drawn parameters (before the brightness normalisation)."""

    z: float
    quiescent_class: bool
    family: str
    components: dict[str, Any]  # Bagpipes model_components (massformed = LOGM_FORMED_REF)
    av: float
    metallicity: float  # log10 Z/Zsun
    logu: float
    veldisp: float  # km/s


def age_of_universe(z: float) -> float:
    """Age of the Universe at z in Gyr, Bagpipes' cosmology."""
    from bagpipes import utils
    return float(np.interp(z, utils.z_array, utils.age_at_z))


def draw_galaxy(rng: np.random.Generator, z: float | None = None, quiescent: bool | None = None,
                family: str | None = None) -> GalaxyDraw:
    """Draw one galaxy from the priors of the module docstring (z, class, family may be fixed)."""
    z = float(rng.uniform(*Z_RANGE)) if z is None else float(z)
    q = bool(rng.random() < P_QUIESCENT) if quiescent is None else bool(quiescent)
    fam = str(rng.choice(FAMILIES)) if family is None else family
    t_u = age_of_universe(z)
    clip = lambda age: float(min(age, 0.98 * t_u))  # noqa: E731
    logz = float(rng.uniform(-0.7, 0.4))
    metal = 10 ** logz
    m = LOGM_FORMED_REF

    def logu_(lo, hi):
        return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))

    comps: dict[str, Any]
    if fam == "delayed":
        tau = logu_(0.05, 0.4) if q else logu_(0.3, 10.0)
        age = rng.uniform(min(max(0.8, 8 * tau), 0.9 * t_u), t_u) if q else rng.uniform(0.1, t_u)
        comps = {"delayed": {"age": clip(age), "tau": tau, "massformed": m, "metallicity": metal}}
    elif fam == "exponential":
        tau = logu_(0.03, 0.3) if q else logu_(0.5, 10.0)
        age = rng.uniform(min(max(0.6, 8 * tau), 0.9 * t_u), t_u) if q else rng.uniform(0.05, t_u)
        comps = {"exponential": {"age": clip(age), "tau": tau, "massformed": m, "metallicity": metal}}
    elif fam == "constant":
        if q:
            age_max = clip(rng.uniform(min(0.5, 0.9 * t_u), t_u))
            age_min = float(rng.uniform(0.15, max(0.16, age_max - 0.1)))
            age_min = min(age_min, age_max - 0.01)
        else:
            age_max, age_min = clip(rng.uniform(0.05, t_u)), 0.0
        comps = {"constant": {"age_max": age_max, "age_min": age_min, "massformed": m, "metallicity": metal}}
    elif fam == "burst_old":
        tau = logu_(0.05, 0.5) if q else logu_(0.3, 3.0)
        age = clip(rng.uniform(min(1.0, 0.9 * t_u), t_u))
        frac = float(rng.uniform(0.05, 0.4) if q else rng.uniform(0.01, 0.3))
        burst_age = float(rng.uniform(0.15, min(1.0, 0.9 * age)) if q else rng.uniform(0.003, 0.1))
        comps = {"delayed": {"age": age, "tau": tau, "massformed": m + np.log10(1 - frac), "metallicity": metal},
                 "burst": {"age": burst_age, "massformed": m + np.log10(frac), "metallicity": metal}}
    elif fam == "lognormal":
        if q:
            tmax = float(rng.uniform(0.3, max(0.4, t_u - 1.5)))
            fwhm = float(rng.uniform(0.3, 1.5))
        else:
            tmax, fwhm = float(rng.uniform(0.5 * t_u, 1.5 * t_u)), float(rng.uniform(1.0, 8.0))
        comps = {"lognormal": {"tmax": tmax, "fwhm": fwhm, "massformed": m, "metallicity": metal}}
    else:
        raise ValueError(f"unknown SFH family {fam!r}")
    av = float(rng.uniform(0.0, 1.0) if q else rng.uniform(0.0, 2.5))
    logu = float(rng.uniform(-3.5, -2.0))
    veldisp = float(rng.uniform(120.0, 300.0) if q else rng.uniform(40.0, 150.0))
    comps.update({"redshift": z, "dust": {"type": "Calzetti", "Av": av},
                  "nebular": {"logU": logu}, "veldisp": veldisp})
    return GalaxyDraw(z=z, quiescent_class=q, family=fam, components=comps, av=av, metallicity=logz,
                      logu=logu, veldisp=veldisp)


def _bagpipes():
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")
        import bagpipes
        from bagpipes import config
    config.R_spec = R_SPEC
    config.max_redshift = MAX_REDSHIFT
    return bagpipes


class GalaxyModels:
    """``bagpipes.model_galaxy`` objects, one per set of SFH components (built once, updated)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, ...], Any] = {}

    def spectrum(self, components: dict[str, Any]):
        """The updated model for ``components`` (a deep copy is passed to Bagpipes)."""
        bp = _bagpipes()
        key = tuple(sorted(k for k, v in components.items() if isinstance(v, dict)))
        comps = copy.deepcopy(components)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if key in self._models:
                self._models[key].update(comps)
            elif not self._models:
                self._models[key] = bp.model_galaxy(comps, spec_wavs=TEMPLATE_WAVE)
            else:
                # Another SFH family: share the first model's stellar, nebular, IGM and dust
                # grids (~1 GB and ~10 s each at R_SPEC), give it its own SFH object.
                from bagpipes.models.star_formation_history import star_formation_history
                model = copy.copy(next(iter(self._models.values())))
                model.sfh = star_formation_history(comps)
                model.update(comps)
                self._models[key] = model
        return self._models[key]


def _h_filter() -> tuple[np.ndarray, np.ndarray]:
    import speclite.filters
    filt = speclite.filters.load_filter("twomass-H")
    wave = np.asarray(filt.wavelength, dtype=np.float64)
    return wave, np.asarray(filt.response, dtype=np.float64)


def ab_mag_h(wave: np.ndarray, flam: np.ndarray) -> float:
    """2MASS H AB magnitude of f_lambda (erg/s/cm2/A) sampled at ``wave`` (A)."""
    fw, fr = _h_filter()
    resp = np.interp(wave, fw, fr, left=0.0, right=0.0)
    num = np.trapezoid(flam * resp * wave, wave)
    den = np.trapezoid(resp * 2.99792458e18 / wave, wave)
    return float(-2.5 * np.log10(max(num / den, 1e-300)) - 48.6)


@dataclass
class Galaxy:
    """One normalised galaxy: template and truth."""

    wave: np.ndarray  # (L,) A, observed frame (TEMPLATE_WAVE)
    flam: np.ndarray  # (L,) erg/s/cm2/A at hmag
    truth: dict[str, Any]
    line_flux: dict[str, float]  # SNR_LINES label -> erg/s/cm2


def make_galaxy(rng: np.random.Generator, models: GalaxyModels, max_tries: int = 20, hmag: float | None = None,
                **fixed) -> Galaxy:
    """Draw, compute and H-normalise one galaxy (redrawn until it meets the class and mass rules).

    fixed: z, quiescent, family passed to :func:`draw_galaxy`; hmag: a fixed H (AB) instead of
    the drawn one (the galaxy is redrawn until its mass window allows it).
    Raises RuntimeError after ``max_tries`` rejected draws.
    """
    draw = None
    for _ in range(max_tries):
        draw = draw_galaxy(rng, **fixed)
        model = models.spectrum(draw.components)
        if model.sfh.unphysical:
            continue
        logm0 = float(model.sfh.stellar_mass)
        sfr0 = float(model.sfh.sfr)
        ssfr = sfr0 / 10 ** logm0
        quiescent = ssfr < SSFR_QUIESCENT
        if draw.quiescent_class and not quiescent:
            continue
        flam0 = np.asarray(model.spectrum[:, 1], dtype=np.float64)
        h0 = ab_mag_h(TEMPLATE_WAVE, flam0)
        if not np.isfinite(h0):
            continue
        # log M = logm0 - 0.4 (H - h0)
        h_lo = max(H_RANGE[0], h0 - 2.5 * (LOGM_RANGE[1] - logm0))
        h_hi = min(H_RANGE[1], h0 - 2.5 * (LOGM_RANGE[0] - logm0))
        if h_hi - h_lo < 0.05 or (hmag is not None and not h_lo <= hmag <= h_hi):
            continue
        h = float(rng.uniform(h_lo, h_hi)) if hmag is None else float(hmag)
        scale = 10 ** (-0.4 * (h - h0))
        lines = {label: scale * float(sum(model.line_fluxes[n] for n in names))
                 for label, names, _ in SNR_LINES}
        sfr = sfr0 * scale
        truth = {"z": draw.z, "logmstar": logm0 + np.log10(scale),
                 "logmformed": LOGM_FORMED_REF + np.log10(scale),
                 "logsfr": max(np.log10(sfr) if sfr > 0 else -np.inf, LOGSFR_FLOOR),
                 "ssfr": ssfr, "hmag": h, "quiescent": bool(quiescent), "type": int(quiescent),
                 "family": draw.family, "av": draw.av, "metallicity": draw.metallicity, "logu": draw.logu,
                 "veldisp": draw.veldisp, "halpha_flux": lines["Halpha"], "oiii_flux": lines["[OIII]5007"],
                 "max_line_flux": max(lines["Halpha"], lines["[OIII]5007"])}
        return Galaxy(wave=TEMPLATE_WAVE, flam=flam0 * scale, truth=truth, line_flux=lines)
    raise RuntimeError(f"no acceptable galaxy in {max_tries} draws (last: {draw})")


# ----------------------------------------------------------------------------------------
# moons1d
# ----------------------------------------------------------------------------------------


def observing_conditions() -> str:
    """The moons1d observation, in words (shared with moons1d_compare.py's constants)."""
    import moons1d_compare as m
    return (f"moons1d LR STARE, {m.N_SUB} x {m.T_SUB:g} s, airmass {m.AIRMASS}, seeing {m.SEEING}\", "
            "point source, atm_disp=True, sky mask 3.2 sigma, ApLoss=True")


class Moons1dObserver:
    """moons1d's per-arm Simulation set up once (sky, transmission), then one object at a time."""

    def __init__(self) -> None:
        import moons1d_compare as m1c  # noqa: F401  (installs the numpy/synphot shims)
        self._m1c = m1c
        self.bases = {}
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            for band in ARMS:
                sim = m1c.moons1d_base(band, atm_disp=True, centre_pixels=False)
                # Match_resolution degrades and resamples the sky and the atmospheric
                # absorption too, the same for every object: done once here (on a flat
                # placeholder template); _match_template does the template's part per object.
                flat = np.arange(5000.0, 25000.0, 5.0)
                sim.setTemplate(self._template(flat, np.ones_like(flat), {}))
                sim.Match_resolution()
                self.bases[band] = sim

    @staticmethod
    def _template(wave: np.ndarray, flam: np.ndarray, meta: dict[str, Any]):
        """A moons1d Template from f_lambda (erg/s/cm2/A) point-sampled at ``wave`` (A, uniform)."""
        import astropy.units as u
        from moons1d import spectra as m1d_spectra
        tpl = m1d_spectra.Template(1, type_source="point-source")
        tpl.wave = wave * u.AA
        tpl.flux = flam * u.erg / u.s / u.cm ** 2 / u.AA
        # point-sampled model: moons1d applies its whole line-spread function
        tpl.meta.update({"resolution": 1e7, "dispersion": (wave[1] - wave[0]) * u.AA / u.pix, **meta})
        return tpl

    @staticmethod
    def _match_template(sim) -> None:
        """The template branch of ``moons1d.simulator.Simulation.Match_resolution``, verbatim."""
        import astropy.units as u
        wave_range = [sim.config["wave_min"].value * 0.9, sim.config["wave_max"].value * 1.1] * u.angstrom
        tpl = sim.template
        tpl.Trim(wave_range)
        central_wave_in = np.mean(tpl.wave)
        fwhm_in = central_wave_in / tpl.meta["resolution"]
        dispersion_in = tpl.meta["dispersion"]
        fwhm_out = sim.config["central_wave"] / sim.config["resolution"]
        if fwhm_in < fwhm_out:
            tpl.Degrade_Resolution(fwhm_in, dispersion_in, fwhm_out)
        tpl.meta["resolution"] = sim.config["resolution"]
        tpl.ReSampleArr(sim.model.wave)
        tpl.meta["dispersion"] = sim.config["dispersion"]


    def observe(self, galaxy: Galaxy, object_id: str, out_dir: Path, seed: int) -> dict[str, Path]:
        """Observe ``galaxy`` in the three arms and write ``<out_dir>/<object_id>_<ARM>.fits``."""
        paths = {}
        meta = {"name": f"bagpipes {galaxy.truth['family']}", "z": galaxy.truth["z"],
                "mag": round(galaxy.truth["hmag"], 4), "type_mag": "AB", "filter": "2MASS_H"}
        for k, band in enumerate(ARMS):
            sim = copy.deepcopy(self.bases[band])
            sim.observation["OB_name"] = object_id
            with warnings.catch_warnings(), self._m1c.seeded_default_rng(seed * 10 + k):
                warnings.simplefilter("ignore")
                sim.setTemplate(self._template(galaxy.wave, galaxy.flam, meta))
                self._match_template(sim)
                sim.ConvertFlux2Counts()
                sim.sky.CreateSkyMask(sigma=3.2)
                sim.Generate_Stare_Seq(verbose=False)
                sim.Calibrate_data(ApLoss=True)
                final = out_dir / f"{object_id}_{band}.fits"
                tmp = out_dir / f".{object_id}_{band}.fits.tmp"
                sim.setFileOut(str(tmp))
                sim.SavetoFits(verbose=False)
            os.replace(tmp, final)
            paths[band] = final
        return paths


def line_snr(galaxy: Galaxy, paths: dict[str, Path]) -> float:
    """Largest integrated line S/N (moons1d's error) of SNR_LINES among those inside an arm (0 if none)."""
    from mtopnet.io.moons1d import read_moons1d
    batch = next(read_moons1d([str(p) for p in paths.values()]))
    z, sig_v = galaxy.truth["z"], galaxy.truth["veldisp"]
    best = 0.0
    for label, _, rest in SNR_LINES:
        centre = rest * (1 + z)
        for arm in batch.arms.values():
            wave = arm["wave"]
            if not wave[0] < centre < wave[-1]:
                continue
            step = float(np.median(np.diff(wave)))
            sigma = math.hypot(centre * sig_v / C_KMS, 2.5 * step / 2.3548)  # LSF FWHM ~ 2.5 px
            sel = np.abs(wave - centre) < 3 * sigma
            ivar = arm["ivar"][0][sel].astype(np.float64)
            if not np.any(ivar > 0):
                continue
            var = np.sum(np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), 0.0)) * step ** 2  # (1e-17)^2
            flux = galaxy.line_flux[label] / 1e-17
            best = max(best, float(flux / math.sqrt(var)))
    return best


# ----------------------------------------------------------------------------------------
# Generation (resumable, parallel)
# ----------------------------------------------------------------------------------------


def object_id(seed: int, index: int) -> str:
    return f"x{seed}-{index:06d}"


def object_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


_WORKER: dict[str, Any] = {}


def generate_one(seed: int, index: int, spectra_dir: Path, models: GalaxyModels | None = None,
                 observer: Moons1dObserver | None = None, **fixed) -> dict[str, Any]:
    """Make object ``index`` of ``seed``: write its 3 FITS files and return its truth row."""
    c0 = time.process_time()
    if models is None:
        if "models" not in _WORKER:
            _WORKER["models"] = GalaxyModels()
        models = _WORKER["models"]
    if observer is None:
        if "observer" not in _WORKER:
            _WORKER["observer"] = Moons1dObserver()
        observer = _WORKER["observer"]
    oid = object_id(seed, index)
    rng = object_rng(seed, index)
    galaxy = make_galaxy(rng, models, **fixed)
    paths = observer.observe(galaxy, oid, spectra_dir, seed=seed * 1_000_000 + index)
    row = {"id": oid, "index": index, **galaxy.truth, "line_snr": line_snr(galaxy, paths)}
    row["gen_cpu_s"] = time.process_time() - c0
    # the truth of one object sits next to its files so that a re-run can reuse them
    tmp = spectra_dir / f".{oid}.json.tmp"
    tmp.write_text(json.dumps(row))
    os.replace(tmp, spectra_dir / f"{oid}.truth.json")
    return row


def _init_worker() -> None:
    """One BLAS thread per worker: on a shared machine, spinning BLAS threads cost ~5x CPU."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    _WORKER["blas_limit"] = threadpool_limits(limits=1)


def _worker(task: tuple[int, int, str]) -> dict[str, Any]:
    seed, index, spectra_dir = task
    try:
        return generate_one(seed, index, Path(spectra_dir))
    except Exception as exc:  # report and carry on: one bad draw must not end a 1000-object run
        return {"id": object_id(seed, index), "index": index, "error": f"{type(exc).__name__}: {exc}"}


def cached_row(seed: int, index: int, spectra_dir: Path) -> dict[str, Any] | None:
    """The stored truth row of an object whose three arm files exist, else None."""
    oid = object_id(seed, index)
    truth = spectra_dir / f"{oid}.truth.json"
    if truth.is_file() and all((spectra_dir / f"{oid}_{b}.fits").is_file() for b in ARMS):
        return json.loads(truth.read_text())
    return None


def generate(n: int, seed: int, out: Path, workers: int = 2, log=print) -> list[dict[str, Any]]:
    """Generate (or reuse) objects 0..n-1 of ``seed`` in ``out/spectra``; returns truth rows."""
    spectra_dir = out / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict[str, Any]] = {}
    todo = []
    for i in range(n):
        row = cached_row(seed, i, spectra_dir)
        if row is None:
            todo.append((seed, i, str(spectra_dir)))
        else:
            rows[i] = row
    log(f"generation: {len(rows)} objects reused, {len(todo)} to make with {workers} worker(s)")
    t0 = time.monotonic()
    errors = []
    if todo:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for k, row in enumerate(pool.imap_unordered(_worker, todo, chunksize=1), 1):
                if "error" in row:
                    errors.append(row)
                    log(f"  {row['id']}: FAILED {row['error']}")
                    continue
                rows[row["index"]] = row
                if k % 20 == 0 or k == len(todo):
                    el = time.monotonic() - t0
                    log(f"  {k}/{len(todo)} made, {el:.0f} s wall, {el / k * workers:.2f} worker-s per object")
    if errors:
        raise RuntimeError(f"{len(errors)} object(s) failed (first: {errors[0]['error']}); re-run to retry them")
    return [rows[i] for i in range(n)]


def vacuum_redshift(z_drawn: np.ndarray | float) -> np.ndarray:
    """The redshift Bagpipes' air-wavelength spectra show on moons1d's vacuum grid:
    (1 + z_drawn) * lambda_air / lambda_vac at 5000 A (Morton 2000, specutils) - 1."""
    import astropy.units as u
    from specutils.utils.wcs_utils import air_to_vac
    ratio = float(air_to_vac(5000.0 * u.AA, scheme="inversion", method="Morton2000").to_value(u.AA)) / 5000.0
    return (1.0 + np.asarray(z_drawn, dtype=np.float64)) / ratio - 1.0


TRUTH_COLUMNS = ("id", "index", "z", "z_drawn", "logmstar", "logmformed", "logsfr", "ssfr", "hmag", "quiescent", "type",
                 "family", "av", "metallicity", "logu", "veldisp", "halpha_flux", "oiii_flux", "max_line_flux",
                 "line_snr", "gen_cpu_s")


def write_truth(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any] | None = None) -> Path:
    """The truth table as FITS (HDU ``TRUTH``), atomically."""
    from astropy.io import fits
    from astropy.table import Table
    z_shown = vacuum_redshift([r["z"] for r in rows])  # one air-to-vacuum ratio for all
    rows = [{**r, "z_drawn": r["z"], "z": float(zs)} for r, zs in zip(rows, z_shown, strict=True)]
    table = Table({c: [r[c] for r in rows] for c in TRUTH_COLUMNS})
    hdu = fits.BinTableHDU(table, name="TRUTH")
    for key, value in (meta or {}).items():
        hdu.header[key[:8].upper()] = value
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(fh)
    os.replace(tmp, path)
    return path


def read_truth(path: Path) -> dict[str, np.ndarray]:
    from astropy.table import Table
    t = Table.read(path, hdu="TRUTH")
    out = {c: np.asarray(t[c]) for c in t.colnames}
    for c in ("id", "family"):
        out[c] = out[c].astype(str)
    return out


def write_store_from_fits(spectra_dir: Path, truth: dict[str, np.ndarray], path: Path,
                          provenance: dict[str, Any]) -> Path:
    """The FITS files read through mtopnet's moons1d reader, as a store with truth labels."""
    from mtopnet.io import read_spectra
    from mtopnet.store import SpectraBatch, write_store
    files = [str(spectra_dir / f"{oid}_{b}.fits") for oid in truth["id"] for b in ARMS]
    batch = SpectraBatch.concatenate(list(read_spectra(files, format="moons1d")))
    if not np.array_equal(batch.ids.astype(str), truth["id"]):
        raise RuntimeError("the reader's object order differs from the truth table")
    batch.labels = {k: np.asarray(truth[k], dtype=np.float32 if k != "type" else np.int8)
                    for k in ("z", "logmstar", "logsfr", "hmag", "type", "max_line_flux", "line_snr")}
    batch.labels["z"] = np.asarray(truth["z"], dtype=np.float64)
    # moons1d observes point sources and corrects their aperture loss: each spectrum holds
    # all of its galaxy's light (store.spectrum_property reads a missing light_fraction as 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_store(path, batch, attrs={"instrument": "moons-lr", "provenance": provenance})
    return path


# ----------------------------------------------------------------------------------------
# The tools
# ----------------------------------------------------------------------------------------


def cpu_children() -> float:
    import resource
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ch.ru_utime + ch.ru_stime


def run_predict(spectra_dir: Path, out: Path, model: str | None, extra: str) -> tuple[Path, float, float]:
    """``mtopnet predict`` (the CLI, in a subprocess) -> (catalogue, CPU s, wall s)."""
    cat = out / "mtopnet.parquet"
    cmd = [sys.executable, "-m", "mtopnet.cli", "predict", str(spectra_dir / "*.fits"), "--out", str(cat),
           "--overwrite",
           "--quiet", "--format", "moons1d"]
    if model:
        cmd += ["--model", model]
    cmd += shlex.split(extra)
    c0, t0 = cpu_children(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mtopnet predict failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return cat, cpu_children() - c0, time.monotonic() - t0


RR_PART = 100  # objects per cached Redrock part


def run_redrock(spectra_dir: Path, ids: np.ndarray, out: Path, ncpu: int, log=print) -> dict[str, Any]:
    """The project's Redrock baseline on the FITS files, cached by parts of RR_PART objects.

    Parts live in ``out/redrock_parts/`` (catalogue + cost + template file name each) and are
    reused when their ids and templates match, so a re-run (a new model, a larger N) does not
    redo Redrock; the whole catalogue is written to ``out/redrock.fits``. Returns the
    catalogue's columns, ``cost`` (CPU and wall s summed over the parts, measured when they
    were made) and ``meta``.
    """
    from mtopnet.baselines.redrock import (
        RedrockCatalogue,
        RedrockRunner,
        cpu_seconds,
        read_catalogue,
        reap_children,
        write_catalogue,
    )
    from mtopnet.instruments import load_instrument
    from mtopnet.io import read_spectra
    from mtopnet.store import SpectraBatch
    from mtopnet.templates import TEMPLATE_FILE
    templates = TEMPLATE_FILE  # a part made with other templates is redone
    part_dir = out / "redrock_parts"
    part_dir.mkdir(exist_ok=True)
    runner = None
    parts, cost = [], {"cpu_s": 0.0, "wall_s": 0.0}
    t_all = time.monotonic()
    for start in range(0, len(ids), RR_PART):
        part_ids = ids[start:start + RR_PART]
        path = part_dir / f"part-{start:06d}-{start + len(part_ids):06d}.fits"
        meta_path = path.with_suffix(".json")
        if path.is_file() and meta_path.is_file():
            cat = read_catalogue(path)
            made_with = json.loads(meta_path.read_text()).get("templates")
            if np.array_equal(cat["id"].astype(str), part_ids) and made_with == templates:
                parts.append(cat)
                part_cost = json.loads(meta_path.read_text())["cost"]
                cost = {k: cost[k] + part_cost[k] for k in cost}
                continue
        files = [str(spectra_dir / f"{oid}_{b}.fits") for oid in part_ids for b in ARMS]
        batch = SpectraBatch.concatenate(list(read_spectra(files, format="moons1d")))
        c0, t0 = cpu_seconds(), time.monotonic()
        if runner is None:
            inst = load_instrument("moons-lr")
            arms = {}
            for name, arm in batch.arms.items():
                ref = inst.arm(name)
                lsf = np.interp(arm["wave"], ref.wave, np.broadcast_to(ref.lsf_sigma, ref.wave.shape))
                arms[name] = (arm["wave"], lsf)
            runner = RedrockRunner(arms, ncpu=ncpu)
        cat_obj = runner.run(batch)
        reap_children()
        part_cost = {"cpu_s": cpu_seconds() - c0, "wall_s": time.monotonic() - t0}
        cat_obj.meta = {**runner.meta, "INPUTS": str(spectra_dir)}
        write_catalogue(cat_obj, path)
        tmp = meta_path.with_name("." + meta_path.name + ".tmp")
        tmp.write_text(json.dumps({"cost": part_cost, "templates": templates}))
        os.replace(tmp, meta_path)
        cost = {k: cost[k] + part_cost[k] for k in cost}
        parts.append(read_catalogue(path))
        log(f"redrock: {start + len(part_ids)}/{len(ids)}, {time.monotonic() - t_all:.0f} s")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    whole = RedrockCatalogue(ids=cols["id"], z=cols["z"], zerr=cols["zerr"], zwarn=cols["zwarn"],
                             deltachi2=cols["deltachi2"], chi2=cols["chi2"], npixels=cols["npixels"],
                             meta=runner.meta if runner is not None else {})
    write_catalogue(whole, out / "redrock.fits")
    return {**cols, "cost": cost, "meta": whole.meta}


# ----------------------------------------------------------------------------------------
# Metrics and the table
# ----------------------------------------------------------------------------------------


def robust_scatter(x: np.ndarray) -> float:
    """1.4826 x MAD (NaN for an empty set)."""
    x = np.asarray(x, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def expected_calibration_error(p: np.ndarray, ok: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """sum_b (n_b / N) |mean(p)_b - mean(ok)_b| over equal-width bins of p in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    if not len(p):
        return float("nan")
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        s = idx == b
        if s.any():
            ece += s.mean() * abs(p[s].mean() - ok[s].mean())
    return float(ece)


def _nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def right(z: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """(N,) bool: |z - z_true| < SUCCESS_DZ, the success criterion of every column (NaN z: not right)."""
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(z, dtype=np.float64) - z_true) < SUCCESS_DZ


def tool_metrics(z_true: np.ndarray, cat: dict[str, np.ndarray], sel: np.ndarray, kind: str,
                 truth: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of one tool on the rows ``sel``. kind: 'mtopnet' (an mtopnet catalogue: Redrock-shaped
    names) or 'redrock' (the baseline's catalogue: lowercase names)."""
    n = int(sel.sum())
    if n == 0:
        return {"n": 0}
    z = np.asarray(cat["Z" if kind == "mtopnet" else "z"], dtype=np.float64)[sel]
    dz = z - z_true[sel]
    ok = right(z, z_true[sel])
    out: dict[str, Any] = {"n": n, "success": float(ok.mean()),
                           "catastrophic": float(np.mean(np.abs(dz) / (1 + z_true[sel]) > CATASTROPHIC))}
    if kind == "mtopnet":
        if "SCAN_Z" in cat:  # the full-range template scan's own z (NaN where it did not run)
            out["scan_success"] = float(np.mean(right(np.asarray(cat["SCAN_Z"])[sel], z_true[sel])))
        qop = np.asarray(cat["QOP"])[sel]
        for name, chosen in (("qop4", qop == 4), ("qop>=3", qop >= 3)):
            k = int(chosen.sum())
            out[name] = {"purity": _nan(ok[chosen].mean()) if k else None, "share": k / n}
        out["ece_p_dz01"] = expected_calibration_error(np.asarray(cat["P_DZ01"])[sel], ok)
        for level in ("68", "95"):
            lo, hi = np.asarray(cat[f"Z_LO{level}"])[sel], np.asarray(cat[f"Z_HI{level}"])[sel]
            out[f"coverage{level}"] = float(np.mean((lo <= z_true[sel]) & (z_true[sel] <= hi)))
        if truth is not None:
            m = sel & (truth["hmag"] <= MASS_HMAX)
            if m.any():  # moons1d's point sources, aperture-loss corrected: the spectra hold all the light
                d = np.asarray(cat["LOGMSTAR"], dtype=np.float64)[m] - truth["logmstar"][m]
                out["logmstar_bias_h24"] = float(np.median(d))
                out["logmstar_scatter_h24"] = robust_scatter(d)
                out["logmstar_n_h24"] = int(m.sum())
    else:
        conf = (np.asarray(cat["zwarn"])[sel] == 0)
        k = int(conf.sum())
        out["zwarn0"] = {"purity": _nan(ok[conf].mean()) if k else None, "share": k / n}
    return out


def paired_counts(z_true: np.ndarray, ours: dict[str, np.ndarray], rr: dict[str, np.ndarray],
                  sel: np.ndarray) -> dict[str, Any]:
    """The two tools on the same objects ``sel``: how many only mtopnet gets right (|dz| < 0.01),
    how many only Redrock, and the difference of their success fractions with its 1-sigma
    error from those discordant pairs alone (McNemar: sqrt(b + c) / n), the yardstick for
    "at least Redrock's" on one sample."""
    n = int(sel.sum())
    if n == 0:
        return {"n": 0}
    ok_m = right(np.asarray(ours["Z"])[sel], z_true[sel])
    ok_r = right(np.asarray(rr["z"])[sel], z_true[sel])
    b, c = int(np.sum(ok_m & ~ok_r)), int(np.sum(ok_r & ~ok_m))
    return {"n": n, "mtopnet_only": b, "redrock_only": c, "difference": (b - c) / n,
            "sigma": float(np.sqrt(b + c)) / n}


def selections(truth: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    h = truth["hmag"]
    sels = []
    for lo, hi in H_BINS:
        s = (h >= lo) & ((h < hi) if hi < H_RANGE[1] else (h <= hi))
        sels.append((f"H {lo:g}-{hi:g}", s))
    sels.append(("all", np.ones(len(h), bool)))
    q = truth["quiescent"].astype(bool)
    weak = truth["max_line_flux"] < LINE_FLUX_WEAK
    sels += [("quiescent", q), ("quiescent, H<=23", q & (h <= 23)), ("star-forming", ~q),
             ("line flux < 1e-18", weak), ("line flux >= 1e-18", ~weak)]
    return sels


def build_tables(truth: dict[str, np.ndarray], ours: dict[str, np.ndarray] | None,
                 rr: dict[str, np.ndarray] | None) -> tuple[str, dict[str, Any]]:
    """Markdown table and its JSON twin: rows = H bins, all, types."""
    z_true = truth["z"].astype(np.float64)
    res: dict[str, Any] = {}
    for label, sel in selections(truth):
        res[label] = {"n": int(sel.sum()),
                      "mtopnet": tool_metrics(z_true, ours, sel, "mtopnet", truth) if ours is not None else None,
                      "redrock": tool_metrics(z_true, rr, sel, "redrock") if rr is not None else None,
                      "paired": paired_counts(z_true, ours, rr, sel) if ours is not None and rr is not None
                      else None}

    def f(x, d=3):
        return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"

    def g(m, *keys, d=3):
        if m is None or m.get("n", 0) == 0:
            return "-"
        v = m
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return f(v, d)

    def paired(p):
        if p is None or p["n"] == 0:
            return "-"
        return f"{p['mtopnet_only']} / {p['redrock_only']} ({p['difference']:+.3f} +- {p['sigma']:.3f})"

    L = ["| selection | N | \\|dz\\|<0.01 mtopnet / Redrock | right only by mtopnet / only by Redrock "
         "(difference +- 1 sigma) | catastrophic mtopnet / Redrock | "
         "qop 4 purity (share) | qop>=3 purity (share) | Redrock ZWARN=0 purity (share) | p_dz01 ECE | "
         "68% / 95% coverage | log M* bias / scatter (H<=24) | mtopnet's template scan alone (SCAN_Z) |",
         "|---|---:|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in res.items():
        m, r = row["mtopnet"], row["redrock"]
        L.append(f"| {label} | {row['n']} | {g(m, 'success')} / {g(r, 'success')} | {paired(row['paired'])} | "
                 f"{g(m, 'catastrophic')} / {g(r, 'catastrophic')} | "
                 f"{g(m, 'qop4', 'purity')} ({g(m, 'qop4', 'share', d=2)}) | "
                 f"{g(m, 'qop>=3', 'purity')} ({g(m, 'qop>=3', 'share', d=2)}) | "
                 f"{g(r, 'zwarn0', 'purity')} ({g(r, 'zwarn0', 'share', d=2)}) | {g(m, 'ece_p_dz01')} | "
                 f"{g(m, 'coverage68')} / {g(m, 'coverage95')} | "
                 f"{g(m, 'logmstar_bias_h24', d=2)} / {g(m, 'logmstar_scatter_h24', d=2)} | "
                 f"{g(m, 'scan_success')} |")
    return "\n".join(L), res


def match_catalogue(cat: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of ``cat`` reordered to ``ids`` (every id must be present); ids in TARGETID (mtopnet) or id (Redrock)."""
    cid = np.asarray(cat["TARGETID" if "TARGETID" in cat else "id"]).astype(str)
    pos = {v: i for i, v in enumerate(cid)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise RuntimeError(f"{len(missing)} object(s) missing from the catalogue (first {missing[0]})")
    order = np.array([pos[i] for i in ids])
    return {k: np.asarray(v)[order] for k, v in cat.items() if hasattr(v, "__len__") and len(v) == len(cid)}


def read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    return {c: t[c].to_numpy() for c in t.column_names if c not in ("Z_PDF", "COEFF")}


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------


def pool(dirs: list[str]) -> tuple[str, dict[str, Any]]:
    """The table over the objects of several finished runs (each DIR with truth.fits,
    mtopnet.parquet, redrock.fits and cross_sim.json), pooled; refused when their mtopnet
    catalogues were made with different model files (MODELSHA) or a seed repeats."""
    import pyarrow.parquet as pq

    from mtopnet.baselines.redrock import read_catalogue
    truths, ours, rrs, seeds, shas = [], [], [], [], set()
    for d in map(Path, dirs):
        missing = [n for n in ("truth.fits", "mtopnet.parquet", "redrock.fits", "cross_sim.json")
                   if not (d / n).is_file()]
        if missing:
            raise RuntimeError(f"{d}: no {', '.join(missing)} (run the script on it first)")
        truth = read_truth(d / "truth.fits")
        seeds.append(int(json.loads((d / "cross_sim.json").read_text())["seed"]))
        meta = pq.read_schema(d / "mtopnet.parquet").metadata or {}
        shas.add(meta.get(b"MODELSHA", b"?").decode())
        truths.append(truth)
        ours.append(match_catalogue(read_parquet(d / "mtopnet.parquet"), truth["id"]))
        rrs.append(match_catalogue(read_catalogue(d / "redrock.fits"), truth["id"]))
    if len(set(seeds)) < len(seeds):
        raise RuntimeError(f"a seed repeats among {seeds}")
    if len(shas) > 1:
        raise RuntimeError(f"the mtopnet catalogues come from {len(shas)} different model files; "
                           f"re-run the script on each folder with one model")

    def cat(parts):
        keys = set.intersection(*(set(p) for p in parts))
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
    table, res = build_tables(cat(truths), cat(ours), cat(rrs))
    notes = ", ".join(f"{s} ({seed_note(s)})" for s in seeds)
    head = (f"Cross-simulator test, pooled: {sum(len(t['z']) for t in truths)} objects of seeds {notes}; "
            f"mtopnet model file SHA-256 {next(iter(shas))[:12]}...; Redrock: the project's baseline.\n")
    return head + "\n" + table + "\n", res


def _write_texts(out: Path, texts: dict[str, str]) -> None:
    """Each text to ``out/NAME`` atomically (:func:`mtopnet.store.write_file_atomic`: a full
    disk is a one-line error and leaves no half-written file)."""
    from mtopnet.store import write_file_atomic

    for name, text in texts.items():
        write_file_atomic(out / name, text.encode())


def seed_note(seed: int) -> str:
    if seed in TEST_SEEDS:
        return "a test seed, never used for training or calibration"
    if seed in CALIB_SEEDS:
        return "a calibration seed: NOT a test of calibrated flags"
    return "outside the documented test and calibration seeds"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="objects (>= 1000 for the acceptance run)")
    ap.add_argument("--seed", type=int, default=TEST_SEEDS[0],
                    help=f"seed (test: {', '.join(map(str, TEST_SEEDS))}; calibration: "
                         f"{', '.join(map(str, CALIB_SEEDS))})")
    ap.add_argument("--out", required=True, help="output folder (spectra/, truth.fits, catalogues, table)")
    ap.add_argument("--workers", type=int, default=2, help="generation processes (default 2)")
    ap.add_argument("--store-out", default=None, help="also write the spectra as an mtopnet HDF5 store")
    ap.add_argument("--model", default=None, help="mtopnet model name or checkpoint (default: shipped moons-lr)")
    ap.add_argument("--predict-args", default="", help="extra arguments for `mtopnet predict`, one string")
    ap.add_argument("--skip-predict", action="store_true", help="generate only (e.g. a calibration set)")
    ap.add_argument("--skip-redrock", action="store_true", help="do not run Redrock")
    ap.add_argument("--rr-ncpu", type=int, default=2, help="Redrock processes (default 2)")
    ap.add_argument("--docs", action="store_true", help="also write docs/cross_sim_table.md")
    ap.add_argument("--pool", nargs="+", metavar="DIR", default=None,
                    help="print the table over the objects of these finished runs' folders, pooled "
                         "(nothing is generated or run; --out: where to write cross_sim_pooled.md/.json)")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.pool:
        try:
            md, res = pool(args.pool)
        except (RuntimeError, OSError, KeyError) as exc:
            print(f"cross_sim: error: {exc}", file=sys.stderr)
            return 2
        print(md)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_texts(out, {"cross_sim_pooled.md": md,
                           "cross_sim_pooled.json": json.dumps({"dirs": args.pool, "rows": res}, indent=1)})
        return 0
    if args.n < 1:
        print("cross_sim: error: --n must be >= 1", file=sys.stderr)
        return 2
    if args.seed in TRAINING_SEEDS:
        print(f"cross_sim: error: seed {args.seed} is used for training or other benchmarks", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cross_sim.py " + " ".join(shlex.quote(a) for a in
                                                           (argv if argv is not None else sys.argv[1:]))
    t0 = time.monotonic()
    rows = generate(args.n, args.seed, out, args.workers, log)
    gen_wall = time.monotonic() - t0
    conditions = observing_conditions()
    meta = {"SEED": args.seed, "N": args.n, "RSPEC": R_SPEC, "COND": conditions}
    write_truth(rows, out / "truth.fits", meta)
    truth = read_truth(out / "truth.fits")
    gen_cpu = float(np.sum(truth["gen_cpu_s"]))
    q = truth["quiescent"].astype(bool)
    log(f"truth: {args.n} objects, {q.mean():.1%} quiescent, {np.mean(truth['max_line_flux'] < LINE_FLUX_WEAK):.1%} "
        f"with max line flux < 1e-18, {np.mean(truth['line_snr'] < 3):.1%} with line S/N < 3; "
        f"H counts per bin {[int(s.sum()) for _, s in selections(truth)[:5]]}; "
        f"log M* {np.percentile(truth['logmstar'], [5, 50, 95]).round(2).tolist()} (5/50/95%); "
        f"generation {gen_cpu / args.n:.2f} CPU s per object, median {np.median(truth['gen_cpu_s']):.2f} "
        f"(the mean includes each worker's model set-up; {gen_wall:.0f} s wall this run)")
    if args.store_out:
        prov = {"generator": "benchmarks/cross_sim.py", "seed": args.seed, "n": args.n,
                "conditions": conditions, "r_spec": R_SPEC}
        write_store_from_fits(out / "spectra", truth, Path(args.store_out), prov)
        log(f"store: {args.store_out}")
    if args.skip_predict and args.skip_redrock:
        return 0
    ours = None
    cost: dict[str, Any] = {"generation_cpu_s_per_object": gen_cpu / args.n,
                            "generation_cpu_s_median": float(np.median(truth["gen_cpu_s"]))}
    model_note = "not run"
    if not args.skip_predict:
        cat_path, cpu, wall = run_predict(out / "spectra", out, args.model, args.predict_args)
        ours = match_catalogue(read_parquet(cat_path), truth["id"])
        cost.update(predict_cpu_s_per_object=cpu / args.n, predict_wall_s=wall)
        model_note = args.model or "shipped moons-lr"
        log(f"mtopnet predict: {cpu / args.n:.4f} CPU s per object ({wall:.0f} s wall, process start included)")
    rr = None
    if not args.skip_redrock:
        rr_raw = run_redrock(out / "spectra", truth["id"], out, args.rr_ncpu, log)
        rr_cost = rr_raw.pop("cost")
        rr_raw.pop("meta", None)
        rr = match_catalogue(rr_raw, truth["id"])
        cost.update(redrock_cpu_s_per_object=rr_cost["cpu_s"] / args.n, redrock_wall_s=rr_cost["wall_s"])
    table, res = build_tables(truth, ours, rr)
    head = (f"Cross-simulator test: {args.n} Bagpipes galaxies (parametric SFHs, {q.mean():.0%} quiescent, "
            f"{np.mean(truth['max_line_flux'] < LINE_FLUX_WEAK):.0%} with max(Halpha, [OIII]) < 1e-18 erg/s/cm2) "
            f"observed with moons1d ({conditions}); seed {args.seed} ({seed_note(args.seed)}). mtopnet: {model_note}; "
            f"Redrock: the project's baseline (ZWARN == 0 = its confident "
            f"set). Cost per object: generation {cost['generation_cpu_s_median']:.2f} CPU s (median; mean "
            f"{cost['generation_cpu_s_per_object']:.2f} with set-up)"
            + (f", mtopnet predict {cost['predict_cpu_s_per_object']:.4f} CPU s"
               if "predict_cpu_s_per_object" in cost else "")
            + (f", Redrock {cost['redrock_cpu_s_per_object']:.2f} CPU s" if "redrock_cpu_s_per_object" in cost else "")
            + ".\n\nCommand: `" + command + "`\n")
    md = head + "\n" + table + "\n"
    print(md)
    _write_texts(out, {"cross_sim.md": md,
                       "cross_sim.json": json.dumps({"command": command, "seed": args.seed, "n": args.n,
                                                     "model": model_note, "cost": cost, "rows": res}, indent=1)})
    if args.docs:
        # the docs name the output folder DIR, not this machine's path
        shown = md.replace(f"--out {shlex.quote(str(args.out))}", "--out DIR")
        title = "# Cross-simulator test (benchmarks/cross_sim.py)\n\n"
        _write_texts(REPO / "docs", {"cross_sim_table.md": title + shown})
    return 0


if __name__ == "__main__":
    sys.exit(main())
