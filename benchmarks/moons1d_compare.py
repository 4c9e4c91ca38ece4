#!/usr/bin/env python
"""Validate mtopnet's MOONS-LR instrument/noise model against the consortium's ``moons1d``.

    .venv/bin/python benchmarks/moons1d_compare.py [--out FILE.md]

Runs the MOONS consortium's 1D simulator ``moons1d`` (1.0.3, installed with ``--no-deps``)
and ``mtopnet.instruments.observe_arm`` on the same sources -- flat f_nu point sources at
H(AB) = 20, 22, 24 and an emission-line galaxy at z = 1.4 -- for 8 h as 16 x 1800 s, airmass
1.2, seeing 0.8", LR mode, and prints Markdown tables of the median S/N per pixel per arm
(and the integrated S/N of each emission line), with moons1d as it is and with its
conventions aligned to ours one at a time. See docs/moons1d_validation.md.

moons1d was written for astropy 4.3 / numpy 1.x. It is run unmodified; this script only
adds what it needs to import (the numpy 1 type aliases, a stand-in ``synphot`` module if
synphot is not installed: its template loader, the only user of synphot, is bypassed by
setting the template ``Spectra`` object directly) and changes moons1d's conventions by
patching the ``Simulation`` object between its steps. ``configobj`` must be installed
(``pip install configobj``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata as md
import os
import platform
import sys
import time
import types
import warnings

import numpy as np

# ----------------------------------------------------------------------------------------
# Compatibility shims: make moons1d 1.0.3 importable with numpy 2 / astropy 8.
# ----------------------------------------------------------------------------------------


def _install_shims() -> list[str]:
    notes = []
    # numpy 2 removed the aliases np.str, np.float, ... (moons1d's Sky/Atm_abs loaders use np.str).
    for name, typ in (("str", str), ("float", float), ("int", int), ("bool", bool),
                      ("object", object), ("complex", complex)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            present = True
            try:
                getattr(np, name)
            except AttributeError:
                present = False
        if not present:
            setattr(np, name, typ)
            notes.append(f"np.{name}")
    # synphot is imported at module level by moons1d.spectra/interface but used only by the
    # template loader (LoadTemplate_File) and filters, which this script does not call.
    try:
        import synphot  # noqa: F401
    except ImportError:
        class _Unavailable:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("synphot is not installed (stand-in module from moons1d_compare.py)")

        syn = types.ModuleType("synphot")
        syn_models = types.ModuleType("synphot.models")
        for cls in ("SourceSpectrum", "SpectralElement", "ReddeningLaw"):
            setattr(syn, cls, _Unavailable)
        for cls in ("Box1D", "Empirical1D", "ConstFlux1D"):
            setattr(syn_models, cls, _Unavailable)
        syn.units = types.SimpleNamespace(FLAM=None, FNU=None, VEGAMAG=None)
        syn.models = syn_models
        sys.modules["synphot"] = syn
        sys.modules["synphot.models"] = syn_models
        notes.append("synphot stand-in")
    try:
        import configobj  # noqa: F401
    except ImportError:
        sys.exit("moons1d needs configobj: .venv/bin/python -m pip install configobj")
    return notes


SHIM_NOTES = _install_shims()

import astropy.units as u  # noqa: E402
from configobj import ConfigObj  # noqa: E402
from moons1d import simulator as m1d_sim  # noqa: E402
from moons1d import spectra as m1d_spectra  # noqa: E402
from moons1d import utils as m1d_utils  # noqa: E402

from mtopnet.config import Exposure  # noqa: E402
from mtopnet.constants import C_AA_PER_S, C_KMS  # noqa: E402
from mtopnet.instruments import load_instrument, observe_arm  # noqa: E402
from mtopnet.instruments.noise import expected_pixel_flux  # noqa: E402

# ----------------------------------------------------------------------------------------
# Observation and sources
# ----------------------------------------------------------------------------------------
AIRMASS, SEEING, T_SUB, N_SUB = 1.2, 0.8, 1800.0, 16
SKY_RESIDUAL = 0.01  # mtopnet's default (Exposure.sky_residual)
SKY_RESIDUAL_SCAN = (0.0025, 0.005)  # extra mtopnet runs for Table 7
# z = 1.40 puts [OIII]5008, Halpha and [NII] on OH lines; z = 1.43 puts them between OH lines.
ELG_REDSHIFTS = (1.40, 1.43)
SIGMA_KMS = 100.0
ELG_CONT_MAG = 23.0
# (name, vacuum rest wavelength A, flux erg/s/cm2); [OII] is a doublet integrated together.
ELG_LINES = [("[OII]3726", 3727.09, 0.4e-16), ("[OII]3729", 3729.88, 0.4e-16),
             ("Hbeta", 4862.68, 0.35e-16), ("[OIII]4960", 4960.30, 0.33e-16),
             ("[OIII]5008", 5008.24, 1.0e-16), ("[NII]6550", 6549.86, 0.1e-16),
             ("Halpha", 6564.61, 1.0e-16), ("[NII]6585", 6585.27, 0.3e-16)]
# Integration windows for the line S/N: (label, member lines).
LINE_WINDOWS = [("[OII]3726,3729", ("[OII]3726", "[OII]3729")), ("Hbeta", ("Hbeta",)),
                ("[OIII]4960", ("[OIII]4960",)), ("[OIII]5008", ("[OIII]5008",)),
                ("Halpha", ("Halpha",)), ("[NII]6585", ("[NII]6585",))]
WINDOW_NSIGMA = 3.0


def flat_fnu(mag: float):
    def flam(wave):  # erg/s/cm2/A
        return 10 ** (-0.4 * (mag + 48.6)) * C_AA_PER_S / wave ** 2
    return flam


def elg(z: float | None):
    """Flat f_nu continuum at H=23 AB plus the ELG_LINES at redshift z (None: continuum only)."""
    cont = flat_fnu(ELG_CONT_MAG)

    def flam(wave):
        out = cont(wave)
        if z is not None:
            for _, rest, flux in ELG_LINES:
                centre = rest * (1 + z)
                sigma = centre * SIGMA_KMS / C_KMS
                out = out + flux / (np.sqrt(2 * np.pi) * sigma) * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
        return out
    return flam


SOURCES = {"H=20": flat_fnu(20.0), "H=22": flat_fnu(22.0), "H=24": flat_fnu(24.0),
           "ELG-cont": elg(None)}
SOURCES.update({f"ELG z={z:.2f}": elg(z) for z in ELG_REDSHIFTS})
FLAT_SOURCES = ["H=20", "H=22", "H=24"]
ARMS = ["RI", "YJ", "H"]

# ----------------------------------------------------------------------------------------
# moons1d
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded_default_rng(seed: int):
    """moons1d draws its noise from ``np.random.default_rng(None)``: make that reproducible."""
    original = np.random.default_rng
    master = original(seed)

    def patched(seed=None, *args, **kwargs):
        return master if seed is None else original(seed, *args, **kwargs)

    np.random.default_rng = patched
    try:
        yield
    finally:
        np.random.default_rng = original


def moons1d_base(band: str, atm_disp: bool, centre_pixels: bool):
    """A moons1d Simulation up to (not including) the template, as interface.config_run does.

    centre_pixels: moons1d puts pixel i at wave_min + i*dispersion and treats it as the pixel
    centre (spectres); mtopnet's pixel i is centred at wave_min + (i+0.5)*dispersion. With
    True the moons1d grid is shifted by half a pixel so that both codes use the same pixels
    (a registration convention only; see the conventions table).
    """
    modes = ConfigObj(m1d_utils.install_dir + "/models/Instrument/MOONS_mode.ini")
    obs = {"R_mode": "LR", "observing_mode": "STARE", "band": band, "ndit": N_SUB,
           "dit": T_SUB, "seeing": SEEING, "airmass": AIRMASS, "OB_name": "mtopnet"}
    sim = m1d_sim.Simulation(modes, obs)
    sim.GenerateDispersionAxis(verbose=False)
    if centre_pixels:
        sim.model.wave = sim.model.wave + 0.5 * u.pix * sim.config["dispersion"]
    sim.Generate_Telescope_Transmission(verbose=False)
    sim.Generate_Instrument_Transmission(verbose=False)
    sim.Generate_FibreLoss(atm_disp=atm_disp, verbose=False)
    sim.Generate_Total_Transmission(verbose=False)
    sky = m1d_spectra.Sky(1)
    sky.Load_ESOSkyCal_Template(sim.observation["airmass"])
    sim.setSky(sky)
    atm = m1d_spectra.Atm_abs(1)
    atm.Load_ESOSkyCal_Template(sim.observation["airmass"])
    sim.setAtms_abs(atm)
    return sim


TEMPLATE_WAVE = np.arange(5500.0, 20000.0, 0.2)  # A


def moons1d_matched(base, flam):
    """Attach a template (bypassing the synphot loader) and run Match_resolution."""
    sim = copy.deepcopy(base)
    tpl = m1d_spectra.Template(1, type_source="point-source")
    tpl.wave = TEMPLATE_WAVE * u.AA
    tpl.flux = flam(TEMPLATE_WAVE) * u.erg / u.s / u.cm ** 2 / u.AA
    tpl.meta["resolution"] = 1e7  # point-sampled model: the LSF is applied in full
    tpl.meta["dispersion"] = 0.2 * u.AA / u.pix
    tpl.meta["name"] = "mtopnet comparison source"
    sim.setTemplate(tpl)
    sim.Match_resolution()
    return sim


def moons1d_observe(matched, *, sky_no_fibre_loss=False, gain_one=False, dark_per_second=False,
                    photons_per_pixel=False, errsky="as-is", bin_y=None, n_real=20, seed=0):
    """Run ConvertFlux2Counts + n_real STARE sequences on a copy of a matched Simulation.

    Convention switches (all False / "as-is" = moons1d unchanged):
      sky_no_fibre_loss (a): the sky is not multiplied by the point-source fibre loss.
      gain_one (b): detector gain 1 (counts = electrons), as in mtopnet.
      dark_per_second (c): HYPOTHETICAL, treat the ini's dark as e-/pix/s (moons1d itself
          divides it by 3600, i.e. takes e-/pix/hour like mtopnet).
      photons_per_pixel (d): photon energy at each pixel's wavelength, not the arm centre.
      errsky (f): "as-is"; "none" = no ErrSky term in signal or variance; "mtopnet" = no
          ErrSky, and mtopnet's sky residual instead (eps ~ N(0, 0.01) per object, the
          same in all sub-exposures; variance + (0.01 * NDIT * sky)^2).
      bin_y (g, side branch): detector rows per spectral pixel in the read-noise and dark
          variance (moons1d's and mtopnet's 1).
    Returns per-pixel arrays in electrons (or ADU for gain != 1) summed over NDIT.
    """
    sim = copy.deepcopy(matched)
    if gain_one:
        sim.config["gain"] = 1.0 * u.count / u.photon
    if dark_per_second:
        sim.config["dark"] = sim.config["dark"] * 3600.0
    sim.ConvertFlux2Counts()
    fibre = sim.model.fibreLoss.to(u.dimensionless_unscaled).value
    if sky_no_fibre_loss:
        sim.model.Sky_pho = sim.model.Sky_pho / fibre
        sim.model.ErrSky_pho = sim.model.ErrSky_pho / fibre
    if photons_per_pixel:
        sim.model.Obj_pho = sim.model.Obj_pho * (sim.model.wave / sim.config["central_wave"]).to(u.dimensionless_unscaled).value
    if errsky in ("none", "mtopnet"):
        sim.model.ErrSky_pho = sim.model.ErrSky_pho * 0.0
    if bin_y is not None:
        sim.config["bin_y"] = float(bin_y) * u.pix
    ndit = int(sim.observation["NDIT"].value)
    sky_total = ndit * sim.model.Sky_pho.value
    reduced = []
    with seeded_default_rng(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n_real):
            sim.Generate_Stare_Seq(verbose=False)
            frame = sim.model.Reduced_frame.value.astype(np.float64)
            if errsky == "mtopnet":
                frame = frame - np.random.default_rng(seed * 1000 + i).normal(0.0, SKY_RESIDUAL) * sky_total
            reduced.append(frame)
    noise = sim.model.Noise_frame.value.astype(np.float64)
    if errsky == "mtopnet":
        noise = np.sqrt(noise ** 2 + (SKY_RESIDUAL * sky_total) ** 2)
    gain = sim.config["gain"].value
    return {"signal": ndit * sim.model.Obj_pho.value, "noise": noise, "reduced": np.array(reduced),
            "sky_e": sim.model.Sky_pho.value / gain, "errsky_e": sim.model.ErrSky_pho.value / gain,
            "obj_e": sim.model.Obj_pho.value / gain, "fibre": fibre, "wave": sim.model.wave.value,
            "efficiency": sim.model.transmission.to(u.dimensionless_unscaled).value / fibre,
            "dark_var": sim.config["dark"] * sim.observation["DIT"].value, "gain": gain}


# ----------------------------------------------------------------------------------------
# mtopnet
# ----------------------------------------------------------------------------------------


def ours_observe(arm, flam, sky_residual, n_obj, seed):
    exposure = Exposure(total=N_SUB * T_SUB, sub_exposure=T_SUB, airmass=AIRMASS, seeing=SEEING,
                        sky_residual=sky_residual)
    fine = flam(arm.fine_wave) / 1e-17
    spec = observe_arm(arm, np.tile(fine, (n_obj, 1)), exposure, np.random.default_rng(seed))
    resp = arm.response(AIRMASS, SEEING, T_SUB)
    truth = expected_pixel_flux(arm, fine[None], AIRMASS, SEEING, T_SUB)[0] / resp.telluric_pixel
    ivar = spec.ivar[0].astype(np.float64)
    return {"truth": truth, "ivar": ivar, "flux": spec.flux.astype(np.float64), "mask": resp.mask,
            "ivar_all": spec.ivar.astype(np.float64)}


# ----------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------


def m1d_snr(run, good):
    """Median expected S/N per pixel: NDIT*Obj / Noise_frame (moons1d's own noise)."""
    return float(np.median((run["signal"] / run["noise"])[good]))


def m1d_snr_realised(run, good):
    """moons1d's own recipe (interface.run_1obj_1band): Reduced_frame / Noise_frame."""
    return float(np.median((run["reduced"] / run["noise"])[:, good]))


def m1d_noise_ratio(run, good):
    """Scatter of the simulated spectra over the noise moons1d reports (rms over pixels)."""
    var = run["reduced"].var(axis=0, ddof=1)
    return float(np.sqrt(np.mean((var / run["noise"] ** 2)[good])))


def ours_snr(run, good):
    return float(np.median((run["truth"] * np.sqrt(run["ivar"]))[good]))


def ours_snr_realised(run, good):
    """The user's recipe: median of flux * sqrt(ivar) over objects and unmasked pixels."""
    return float(np.median((run["flux"] * np.sqrt(run["ivar_all"]))[:, good]))


def ours_noise_ratio(run, good):
    var = run["flux"].var(axis=0, ddof=1)
    return float(np.sqrt(np.mean((var * run["ivar"])[good])))


def line_windows(arm, z):
    out = []
    lsf_sigma = arm.lsf_sigma
    lines = {name: rest for name, rest, _ in ELG_LINES}
    for label, members in LINE_WINDOWS:
        centres = [lines[m] * (1 + z) for m in members]
        sigma = np.hypot(centres[0] * SIGMA_KMS / C_KMS, lsf_sigma)
        lo, hi = min(centres) - WINDOW_NSIGMA * sigma, max(centres) + WINDOW_NSIGMA * sigma
        if lo >= arm.wave[0] and hi <= arm.wave[-1]:
            out.append((label, float(np.mean(centres)), (arm.wave >= lo) & (arm.wave <= hi)))
    return out


def line_snr_m1d(run_line, run_cont, sel):
    signal = np.sum(run_line["signal"][sel] - run_cont["signal"][sel])
    return float(signal / np.sqrt(np.sum(run_line["noise"][sel] ** 2)))


def line_snr_ours(run_line, run_cont, sel):
    signal = np.sum(run_line["truth"][sel] - run_cont["truth"][sel])
    return float(signal / np.sqrt(np.sum(1.0 / run_line["ivar"][sel])))


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------
ALIGNED_AC = dict(sky_no_fibre_loss=True, gain_one=True)  # (c) needs no change, see docs
ALIGNED_AD = dict(ALIGNED_AC, photons_per_pixel=True)


def run_all(n_real: int, n_obj: int, seed: int, log=print):
    inst = load_instrument("moons-lr")
    res = {"m1d": {}, "ours": {}, "lines": {}, "diag": {}}
    for band in ARMS:
        t0 = time.time()
        arm = inst.arm(band)
        resp = arm.response(AIRMASS, SEEING, T_SUB)
        good = resp.mask == 0
        bases = {"std": moons1d_base(band, atm_disp=False, centre_pixels=True),
                 "atm": moons1d_base(band, atm_disp=True, centre_pixels=True),
                 "raw": moons1d_base(band, atm_disp=False, centre_pixels=False)}
        assert len(bases["std"].model.wave) == arm.npix
        assert np.allclose(bases["std"].model.wave.value, arm.wave, atol=1e-6)
        res["diag"][band] = {"good": int(good.sum()), "npix": arm.npix}
        for src, flam in SOURCES.items():
            m = moons1d_matched(bases["std"], flam)
            variants = {
                "as-is": {},
                "a": dict(sky_no_fibre_loss=True),
                "a-c": ALIGNED_AC,
                "a-c+c/s": dict(ALIGNED_AC, dark_per_second=True),
                "a-d": ALIGNED_AD,
                "a-d,f0": dict(ALIGNED_AD, errsky="none"),
                "a-d,f": dict(ALIGNED_AD, errsky="mtopnet"),
            }
            if src in FLAT_SOURCES:
                variants["a-d,f0,g4"] = dict(ALIGNED_AD, errsky="none", bin_y=4)
            runs = {k: moons1d_observe(m, n_real=n_real, seed=seed, **kw) for k, kw in variants.items()}
            if src in FLAT_SOURCES:
                runs["as-is,atm"] = moons1d_observe(moons1d_matched(bases["atm"], flam), n_real=n_real, seed=seed)
                runs["as-is,raw"] = moons1d_observe(moons1d_matched(bases["raw"], flam), n_real=n_real, seed=seed)
            res["m1d"][(src, band)] = runs
            res["ours"][(src, band)] = {
                "default": ours_observe(arm, flam, SKY_RESIDUAL, n_obj, seed),
                "nores": ours_observe(arm, flam, 0.0, n_obj, seed),
            }
            if src in FLAT_SOURCES:
                for sr in SKY_RESIDUAL_SCAN:
                    res["ours"][(src, band)][f"sr={sr:g}"] = ours_observe(arm, flam, sr, 8, seed)
        res["diag"][band]["good_mask"] = good
        res["lines"][band] = {z: line_windows(arm, z) for z in ELG_REDSHIFTS}
        log(f"[{band}] done in {time.time() - t0:.1f} s")
    return res


def fmt(x, nd=2):
    return f"{x:.{nd}f}"


def pct(x):
    return f"{100 * (x - 1):+.1f}%"


def build_report(res, n_real, n_obj, seed, elapsed) -> str:
    L = []
    good = {b: res["diag"][b]["good_mask"] for b in ARMS}

    def snr_m(src, band, var):
        return m1d_snr(res["m1d"][(src, band)][var], good[band])

    def snr_o(src, band, var):
        return ours_snr(res["ours"][(src, band)][var], good[band])

    L.append("### Table 1 - median S/N per pixel: moons1d as is, moons1d with (a)-(c) aligned, mtopnet\n")
    L.append("8 h = 16 x 1800 s STARE, airmass 1.2, seeing 0.8\", point source, atm_disp=False; medians over "
             "the pixels mtopnet leaves unmasked (same pixels in both codes; moons1d's grid is shifted by half a pixel "
             "onto mtopnet's pixel centres, which moves its medians by <0.5%, Table 3). mtopnet with its default "
             f"sky_residual={SKY_RESIDUAL}. Expected S/N (noiseless signal over each code's own noise).\n")
    L.append("| source | arm | moons1d as is | moons1d (a)-(c) aligned | mtopnet | mtopnet / moons1d (a)-(c) |")
    L.append("|---|---|---:|---:|---:|---:|")
    for src in FLAT_SOURCES + ["ELG-cont"]:
        for band in ARMS:
            a, b, o = snr_m(src, band, "as-is"), snr_m(src, band, "a-c"), snr_o(src, band, "default")
            name = "ELG continuum (H=23)" if src == "ELG-cont" else f"flat f_nu, {src}"
            L.append(f"| {name} | {band} | {fmt(a)} | {fmt(b)} | {fmt(o)} | {pct(o / b)} |")
    L.append("")

    L.append("### Table 2 - fully aligned: (a)-(d) aligned and the same sky-residual model (f) in both codes\n")
    L.append("Left: moons1d's ErrSky term replaced by mtopnet's 1% sky-subtraction residual (vs mtopnet as it is). "
             "Right: no sky residual at all in either code (ErrSky off; mtopnet sky_residual=0).\n")
    L.append("| source | arm | moons1d (a)-(d),(f=mtopnet) | mtopnet | ratio | moons1d (a)-(d), no residual | mtopnet, sky_residual=0 | ratio |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    worst, worst_lines = [], []
    for src in FLAT_SOURCES + ["ELG-cont"]:
        for band in ARMS:
            m1, o1 = snr_m(src, band, "a-d,f"), snr_o(src, band, "default")
            m0, o0 = snr_m(src, band, "a-d,f0"), snr_o(src, band, "nores")
            worst += [o1 / m1, o0 / m0]
            name = "ELG continuum" if src == "ELG-cont" else src
            L.append(f"| {name} | {band} | {fmt(m1)} | {fmt(o1)} | {pct(o1 / m1)} | {fmt(m0)} | {fmt(o0)} | {pct(o0 / m0)} |")
    L.append("")
    L.append(f"Largest fully-aligned difference: {100 * max(abs(w - 1) for w in worst):.1f}% "
             f"(target: within 15% in every arm).\n")

    L.append("### Table 3 - effect of each convention on moons1d's median S/N per pixel (ratio after/before)\n")
    L.append("Chain: as is -> (a) -> (b) -> (d) -> (f1) -> (f2); (e), (c*) and (g*) are side branches. "
             "(c*) is hypothetical: moons1d already takes the ini's dark as e-/pix/hour. (g*) is a shared "
             "assumption, shown for scale (applied to the (a)-(d), no-residual case).\n")
    L.append("| step | what changes | arm | H=20 | H=22 | H=24 |")
    L.append("|---|---|---|---:|---:|---:|")
    steps = [
        ("pixel grid", "half-pixel shift of moons1d's grid onto mtopnet's pixel centres (registration only)", "as-is", "as-is,raw", True),
        ("(e)", "atm_disp=True: atmospheric dispersion in the fibre loss (ref. 1.2 um)", "as-is,atm", "as-is", False),
        ("(a)", "sky not multiplied by the point-source fibre loss", "a", "as-is", False),
        ("(b)", "gain 1 instead of the ini gain (0.6 in RI; 1 in YJ, H)", "a-c", "a", False),
        ("(c*)", "dark taken as e-/pix/s (hypothetical: x3600)", "a-c+c/s", "a-c", False),
        ("(d)", "photon energy per pixel instead of at the arm centre", "a-d", "a-c", False),
        ("(f1)", "drop ErrSky (signal and variance)", "a-d,f0", "a-d", False),
        ("(f2)", "mtopnet's 1% residual, fixed over the 16 sub-exposures", "a-d,f", "a-d,f0", False),
        ("(g*)", "read noise and dark over 4 detector rows instead of 1 (bin_y=4; both codes use 1)", "a-d,f0,g4", "a-d,f0", False),
    ]
    for tag, what, after, before, inverse in steps:
        for band in ARMS:
            cells = []
            for src in FLAT_SOURCES:
                r = snr_m(src, band, after) / snr_m(src, band, before)
                cells.append(pct(1 / r if inverse else r))
            L.append(f"| {tag} | {what if band == 'RI' else ''} | {band} | " + " | ".join(cells) + " |")
    for band in ARMS:
        cells = [pct(snr_o(src, band, "default") / snr_o(src, band, "nores")) for src in FLAT_SOURCES]
        L.append(f"| mtopnet | sky_residual 0.01 vs 0 (for reference) | {band} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("(pixel grid: ratio unshifted/shifted, i.e. how much moons1d's own registration changes its median.)\n")

    L.append("### Table 4 - emission-line galaxy: integrated line S/N\n")
    L.append(f"Flat f_nu continuum at H={ELG_CONT_MAG:g} AB plus Gaussian lines of sigma {SIGMA_KMS:g} km/s "
             f"at z = {', '.join(f'{z:.2f}' for z in ELG_REDSHIFTS)} (z=1.40: [OIII]5008, Halpha, [NII] fall on OH "
             "lines; z=1.43: mostly between them). "
             f"Window: line centre(s) +/- {WINDOW_NSIGMA:g} sigma_obs (line sigma and LSF in quadrature); "
             "S/N = sum(line signal) / sqrt(sum(variance)), expected values, the continuum subtracted exactly. "
             "'sky' = mean sky in the window over the arm's median sky per unmasked pixel.\n")
    L.append("| z | line | lambda_obs (A) | arm | flux (1e-17 cgs) | sky | moons1d as is | moons1d (a)-(c) | mtopnet | ratio | moons1d (a)-(d),(f=mtopnet) | ratio | moons1d (a)-(d), no res. | mtopnet, no res. | ratio |")
    L.append("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fluxes = {}
    for label, members in LINE_WINDOWS:
        fluxes[label] = sum(f for n, _, f in ELG_LINES if n in members)
    for z in ELG_REDSHIFTS:
        src = f"ELG z={z:.2f}"
        for band in ARMS:
            ml, mc = res["m1d"][(src, band)], res["m1d"][("ELG-cont", band)]
            ol, oc = res["ours"][(src, band)], res["ours"][("ELG-cont", band)]
            sky = ml["as-is"]["sky_e"] / ml["as-is"]["fibre"]
            for label, centre, sel in res["lines"][band][z]:
                sky_ratio = np.mean(sky[sel]) / np.median(sky[good[band]])
                m_as = line_snr_m1d(ml["as-is"], mc["as-is"], sel)
                m_ac = line_snr_m1d(ml["a-c"], mc["a-c"], sel)
                m_f = line_snr_m1d(ml["a-d,f"], mc["a-d,f"], sel)
                m_0 = line_snr_m1d(ml["a-d,f0"], mc["a-d,f0"], sel)
                o_d = line_snr_ours(ol["default"], oc["default"], sel)
                o_0 = line_snr_ours(ol["nores"], oc["nores"], sel)
                L.append(f"| {z:.2f} | {label} | {centre:.0f} | {band} | {fluxes[label] / 1e-17:.1f} | {sky_ratio:.1f} | "
                         f"{fmt(m_as, 1)} | {fmt(m_ac, 1)} | {fmt(o_d, 1)} | {pct(o_d / m_ac)} | {fmt(m_f, 1)} | "
                         f"{pct(o_d / m_f)} | {fmt(m_0, 1)} | {fmt(o_0, 1)} | {pct(o_0 / m_0)} |")
                worst_lines.append(max(abs(o_d / m_f - 1), abs(o_0 / m_0 - 1)))
    L.append("")
    L.append(f"Largest fully-aligned difference in line S/N: {100 * max(worst_lines):.1f}%.\n")

    L.append("### Table 5 - internal consistency: scatter of the simulated spectra vs the reported noise\n")
    L.append(f"rms over unmasked pixels of (scatter of {n_real} moons1d realisations / Noise_frame) and of "
             f"(scatter over {n_obj} mtopnet objects x sqrt(ivar)); 1.00 = the noise a code reports is the noise "
             "in its spectra. 'realised' = median of Reduced/Noise (moons1d) or flux*sqrt(ivar) (mtopnet), "
             "the recipes a user would apply, vs the expected-value median used above.\n")
    L.append("| source | arm | moons1d as is: scatter/noise | moons1d (a)-(d), no res.: scatter/noise | mtopnet: scatter/noise | moons1d as is realised / expected | mtopnet realised / expected |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for src in FLAT_SOURCES:
        for band in ARMS:
            r = res["m1d"][(src, band)]
            o = res["ours"][(src, band)]["default"]
            g = good[band]
            L.append(f"| {src} | {band} | {fmt(m1d_noise_ratio(r['as-is'], g))} | {fmt(m1d_noise_ratio(r['a-d,f0'], g))} | "
                     f"{fmt(ours_noise_ratio(o, g))} | {fmt(m1d_snr_realised(r['as-is'], g) / m1d_snr(r['as-is'], g), 3)} | "
                     f"{fmt(ours_snr_realised(o, g) / ours_snr(o, g), 3)} |")
    L.append("")

    L.append("### Table 6 - per-pixel ingredients (H=22, moons1d (a)-(d) aligned vs mtopnet), medians over unmasked pixels\n")
    L.append("(h): moons1d resamples the tabulated throughput, QE and telescope curves with spectres, i.e. as "
             "piecewise-constant bins around each tabulated point; mtopnet interpolates them linearly. "
             "Last column: moons1d's object electrons over mtopnet's before (d) is aligned (photon energy at "
             "the arm centre).\n")
    L.append("| arm | unmasked / all pixels | object e- per sub-exp. (moons1d / mtopnet) | sky e- per sub-exp. (moons1d / mtopnet) | dark e- per sub-exp. (moons1d / mtopnet) | moons1d ErrSky / sky | fibre loss moons1d / mtopnet | (h) efficiency moons1d / mtopnet: median [5%, 95%], share off by >5% | object e- ratio, blue / red 10% of the arm, as is (d) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    inst = load_instrument("moons-lr")
    for band in ARMS:
        arm = inst.arm(band)
        resp = arm.response(AIRMASS, SEEING, T_SUB)
        g = good[band]
        r = res["m1d"][("H=22", band)]["a-d,f0"]
        ra = res["m1d"][("H=22", band)]["a-c"]
        fine = flat_fnu(22.0)(arm.fine_wave) / 1e-17
        obj_o = (expected_pixel_flux(arm, fine[None], AIRMASS, SEEING, T_SUB)[0]
                 * arm.aperture_fraction(SEEING, AIRMASS) * resp.electrons_per_flux)
        ratio_d = ra["obj_e"] / obj_o
        eff_ratio = r["efficiency"] / arm.efficiency
        n = arm.npix // 10
        gi = np.flatnonzero(g)
        blue, red = gi[gi < n], gi[gi >= arm.npix - n]
        errsky = res["m1d"][("H=22", band)]["as-is"]
        L.append(f"| {band} | {g.sum()} / {arm.npix} | {np.median(r['obj_e'][g]):.1f} / {np.median(obj_o[g]):.1f} | "
                 f"{np.median(r['sky_e'][g]):.0f} / {np.median(resp.sky_electrons[g]):.0f} | "
                 f"{r['dark_var']:.1f} / {resp.dark_electrons:.1f} | {np.median((errsky['errsky_e'] / errsky['sky_e'])[g]):.3f} | "
                 f"{np.median(r['fibre'][g] / arm.aperture_fraction(SEEING, AIRMASS)[g]):.4f} | "
                 f"{np.median(eff_ratio[g]):.3f} [{np.percentile(eff_ratio[g], 5):.3f}, "
                 f"{np.percentile(eff_ratio[g], 95):.3f}], {100 * np.mean(np.abs(eff_ratio[g] - 1) > 0.05):.0f}% | "
                 f"{np.median(ratio_d[blue]):.3f} / {np.median(ratio_d[red]):.3f} |")
    L.append("")
    L.append("### Table 7 - mtopnet's median S/N per pixel vs its sky_residual, over moons1d (a)-(c) aligned\n")
    L.append("| source | arm | " + " | ".join(f"sky_residual={sr:g}" for sr in (0.0,) + SKY_RESIDUAL_SCAN + (SKY_RESIDUAL,)) + " |")
    L.append("|---|---|" + "---:|" * (len(SKY_RESIDUAL_SCAN) + 2))
    for src in FLAT_SOURCES:
        for band in ARMS:
            ref = snr_m(src, band, "a-c")
            keys = ["nores"] + [f"sr={sr:g}" for sr in SKY_RESIDUAL_SCAN] + ["default"]
            L.append(f"| {src} | {band} | " + " | ".join(pct(snr_o(src, band, k) / ref) for k in keys) + " |")
    L.append("")
    L.append(f"Run: {n_real} moons1d realisations and {n_obj} mtopnet objects per case, seed {seed}; "
             f"{elapsed:.0f} s on {platform.machine()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
             f"numpy {np.__version__}, astropy {md.version('astropy')}, moons1d {md.version('moons1d')}; "
             f"shims: {', '.join(SHIM_NOTES) or 'none'}.")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    parser.add_argument("--n-real", type=int, default=20, help="moons1d noise realisations per case (default 20)")
    parser.add_argument("--n-obj", type=int, default=200, help="mtopnet objects per case (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.time()
    res = run_all(args.n_real, args.n_obj, args.seed, log=lambda s: print(s, file=sys.stderr))
    report = build_report(res, args.n_real, args.n_obj, args.seed, time.time() - t0)
    print(report)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
