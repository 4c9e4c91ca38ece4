"""Instrument descriptions beyond MOONS: sdss-boss, desi, user YAML files, the sdss-apo sky,
log-lambda pixel grids, and the validation messages that name the field."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml

from mtopnet import simulate as sim
from mtopnet.cli import main
from mtopnet.config import ConfigError, Exposure, InstrumentConfig, UserError
from mtopnet.constants import C_AA_PER_S
from mtopnet.galaxies.population import sample_params
from mtopnet.instruments import available_instruments, load_instrument, observe_arm
from mtopnet.instruments.sky import kpno_transmission, load_sky, sdss_apo_skycalc_scale

TINY_YAML = {
    "name": "tiny-optical",
    "description": "a one-arm test spectrograph",
    "site": "nowhere",
    "sky_model": "sdss-apo",
    "fibre_diameter": 2.0,
    "telescope": {"diameter": 2.5, "obscuration": 1.0},
    "observing": {"airmass": 1.2, "seeing": 1.2, "sub_exposure": 900},
    "arms": {"V": {"wave_min": 5000.0, "wave_max": 6500.0, "resolution": 800, "sampling": 2.0,
                   "read_noise": 3.0, "dark": 2.0, "throughput": 0.25}},
}


def _write_yaml(path, raw) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _point_source_snr2(arm, mag_fibre: float, lo: float, hi: float, hours: float = 1.0) -> float:
    """Median (S/N)^2 per pixel over [lo, hi] A of a flat-f_nu source whose flux *in the
    fibre* has AB magnitude ``mag_fibre`` (BOSS's fib2 magnitudes), no sky residual."""
    cfg = arm.instrument.config.observing
    exposure = Exposure(total=hours * 3600, sub_exposure=cfg.sub_exposure, airmass=cfg.airmass,
                        seeing=cfg.seeing, sky_residual=0.0)
    n_sub = exposure.n_sub
    resp = arm.response(exposure.airmass, exposure.seeing, exposure.total / n_sub)
    flam = 10 ** (-0.4 * (mag_fibre + 48.6)) * C_AA_PER_S / arm.wave ** 2 / 1e-17
    obj = flam * resp.telluric_pixel * resp.electrons_per_flux
    var = n_sub * (obj + resp.sky_electrons + resp.dark_electrons + resp.read_noise ** 2)
    good = (arm.wave > lo) & (arm.wave < hi) & (resp.mask == 0)
    return float(np.median(((n_sub * obj) ** 2 / var)[good]))


# --- the shipped descriptions ----------------------------------------------------------

def test_shipped_instruments_are_listed(capsys):
    assert {"moons-lr", "moons-hr", "sdss-boss", "desi"} <= set(available_instruments())
    assert main(["instruments"]) == 0
    out = capsys.readouterr().out
    assert "sdss-boss" in out and "B 3600-6350 A" in out and "desi" in out and "Z 7470-9800 A" in out


def test_sdss_boss_has_log_pixels_of_1e4_dex_and_constant_velocity_lsf():
    inst = load_instrument("sdss-boss")
    assert inst.arm_names == ["B", "R"]
    assert inst.config.sky_model == "sdss-apo" and inst.config.telescope_obscuration == 1.08
    for arm in inst.arms:
        dex = np.diff(np.log10(arm.wave))
        assert np.allclose(dex, 1e-4, rtol=2e-3)
        assert arm.wave[0] >= arm.config.wave_min and arm.wave[-1] <= arm.config.wave_max
        assert np.allclose(arm.lsf_fwhm / arm.wave, 1 / arm.config.resolution)
        assert np.allclose(arm.dispersion, np.diff(arm.wave_edges))
    assert inst.wave_range == (3600.0, 10400.0)


def test_desi_has_three_arms_of_08_angstrom_pixels():
    inst = load_instrument("desi")
    assert inst.arm_names == ["B", "R", "Z"]
    for arm in inst.arms:
        assert arm.dispersion == pytest.approx(0.8, abs=2e-4)
    assert inst.arm("B").config.read_noise == pytest.approx(3.29)
    assert inst.arm("Z").config.wave_max == 9800.0


def test_log_grid_convolution_conserves_flux_and_has_the_lsf_width():
    arm = load_instrument("sdss-boss").arm("R")
    fine = np.zeros((1, len(arm.fine_wave)))
    centre = len(arm.fine_wave) // 2
    fine[0, centre] = 1.0 / arm.fine_step[centre]  # a line of unit flux in one fine bin
    pix = arm.convolve_and_bin(fine)[0]
    assert (pix * arm.dispersion).sum() == pytest.approx(1.0, rel=1e-3)
    mean = (pix * arm.wave).sum() / pix.sum()
    sigma = np.sqrt((pix * (arm.wave - mean) ** 2).sum() / pix.sum())
    k = np.argmin(np.abs(arm.wave - mean))
    expected = np.hypot(arm.lsf_sigma[k], arm.dispersion[k] / np.sqrt(12))
    assert sigma == pytest.approx(expected, rel=0.05)
    assert abs(mean - arm.fine_wave[centre]) < 0.5 * arm.dispersion[k]


def test_boss_throughput_reproduces_the_survey_depth():
    """(S/N)^2 per 1e-4 dex pixel in 1 h: 10 at g_fib2 = 22 (blue), 22 at i_fib2 = 21 (red),
    the BOSS survey's thresholds (Dawson et al. 2013) that set the throughput constants."""
    inst = load_instrument("sdss-boss")
    assert _point_source_snr2(inst.arm("B"), 22.0, 4000, 5500) == pytest.approx(10, rel=0.1)
    assert _point_source_snr2(inst.arm("R"), 21.0, 7000, 8500) == pytest.approx(22, rel=0.1)


def test_obscuration_reduces_the_collecting_area(tmp_path):
    raw = dict(TINY_YAML, sky_model="none")
    clear = load_instrument(_write_yaml(tmp_path / "clear.yaml", {**raw, "telescope": {"diameter": 2.5}}))
    blocked = load_instrument(_write_yaml(tmp_path / "blocked.yaml", raw))
    a = clear.arms[0].response(1.2, 1.2, 900).electrons_per_flux
    b = blocked.arms[0].response(1.2, 1.2, 900).electrons_per_flux
    assert np.allclose(b / a, 1 - (1.0 / 2.5) ** 2)


# --- the sdss-apo sky ------------------------------------------------------------------

def test_sdss_apo_sky_covers_the_optical_and_joins_skycalc():
    sky = load_sky("sdss-apo", 1.2)
    assert sky.wave[0] <= 3500.0 and sky.wave[-1] >= 17999.0
    assert np.all(np.diff(sky.wave) > 0) and np.all(sky.emission >= 0)
    assert np.all((sky.transmission >= 0) & (sky.transmission <= 1))
    # blue: the KPNO extinction curve (0.365 mag/airmass at 4000 A)
    i4000 = np.argmin(np.abs(sky.wave - 4000))
    assert sky.transmission[i4000] == pytest.approx(10 ** (-0.4 * 0.365 * 1.2), rel=2e-3)
    assert kpno_transmission(np.array([4000.0]), 1.0)[0] == pytest.approx(10 ** (-0.4 * 0.365))
    # red: SkyCalc's transmission (the O2 A band is deep) and scaled emission
    a_band = (sky.wave > 7600) & (sky.wave < 7630)
    assert sky.transmission[a_band].min() < 0.3
    sc = load_sky("skycalc-paranal", 1.2)
    red = (sc.wave > 8000) & (sc.wave < 8100)
    mine = (sky.wave > 8000) & (sky.wave < 8100)
    assert np.allclose(sky.emission[mine], sdss_apo_skycalc_scale() * sc.emission[red])
    assert 0.3 < sdss_apo_skycalc_scale() < 3
    # the [OI] 5577 A line of the SDSS sky is there, the cross-fade has no jump
    line = (sky.wave > 5570) & (sky.wave < 5590)
    near = (sky.wave > 5500) & (sky.wave < 5560)
    assert sky.emission[line].max() > 10 * np.median(sky.emission[near])
    join = (sky.wave > 5950) & (sky.wave < 6250)
    smooth = np.median(sky.emission[join][:50]) / np.median(sky.emission[join][-50:])
    assert 0.5 < smooth < 2


def test_sky_is_brighter_and_more_absorbed_at_higher_airmass():
    lo, hi = load_sky("sdss-apo", 1.0), load_sky("sdss-apo", 1.8)
    blue = lo.wave < 6000
    assert np.all(hi.emission[blue] > lo.emission[blue])
    assert np.all(hi.transmission[blue] < lo.transmission[blue])


def test_arm_outside_the_sky_model_is_a_one_line_error(tmp_path, capsys):
    raw = json.loads(json.dumps(TINY_YAML))
    raw["arms"]["V"].update(wave_min=3000.0, wave_max=4000.0)
    path = _write_yaml(tmp_path / "uv.yaml", raw)
    argv = ["simulate", "--instrument", path, "--n", "3", "--seed", "1", "--out", str(tmp_path / "x.h5"),
            "--z-range", "0.05", "0.3", "--band", "sdss2010-g", "--mag-range", "15", "20", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "arms.V: 3000-4000 A lies outside the sky model sdss-apo (3500-18000 A)" in err
    assert not (tmp_path / "x.h5").exists()


# --- validation names the field ---------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda r: r["arms"]["V"].update(pixel_grid="sqrt"), "arms.V.pixel_grid: must be one of linear, log"),
    (lambda r: r["arms"]["V"].update(resolutoin=800), "arms.V.resolutoin: unknown field"),
    (lambda r: r["telescope"].update(obscuration=3.0), "telescope.obscuration: must be smaller"),
    (lambda r: r["telescope"].update(mirror=3.0), "telescope.mirror: unknown field"),
    (lambda r: r.update(sky_model="mauna-kea"), "sky_model: unknown sky model 'mauna-kea' (known: skycalc-paranal, "
                                                "sdss-apo, none)"),
    (lambda r: r.update(fiber_diameter=2.0), "instrument.fiber_diameter: unknown field"),
    (lambda r: r["arms"]["V"].update(resolution=-5), "arms.V.resolution: must be > 0"),
])
def test_bad_instrument_fields_are_named(tmp_path, edit, message):
    raw = json.loads(json.dumps(TINY_YAML))
    edit(raw)
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        InstrumentConfig.from_yaml(raw)
    with pytest.raises(UserError, match="bad.yaml: " + message.split(":")[0]):
        load_instrument(_write_yaml(tmp_path / "bad.yaml", raw))


# --- a user's own YAML, end to end; --band ------------------------------------------------

def test_user_yaml_simulates_end_to_end_with_an_optical_band(tmp_path, capsys):
    path = _write_yaml(tmp_path / "mine.yaml", TINY_YAML)
    out = tmp_path / "mine.h5"
    argv = ["simulate", "--instrument", path, "--exposure", "1h", "--n", "12", "--seed", "4", "--out", str(out),
            "--z-range", "0.02", "0.4", "--band", "sdss2010-r", "--mag-range", "15", "19", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        assert f.attrs["instrument"] == path
        prov = json.loads(f.attrs["provenance"])
        assert prov["band"] == "sdss2010-r" and prov["hmag_range"] == [15.0, 19.0]
        assert "hmag" not in f["labels"]
        mag = f["labels/mag"][:]
        assert np.all((mag >= 15) & (mag <= 19))
        wave = f["arms/V/wave"][:]
        assert wave[0] > 5000 and wave[-1] < 6500 and f["arms/V/flux"].shape == (12, len(wave))
        ivar = f["arms/V/ivar"][:]
        assert np.all(np.isfinite(ivar)) and (ivar > 0).mean() > 0.9


def test_bad_band_is_a_one_line_error(tmp_path, capsys):
    argv = ["simulate", "--n", "3", "--seed", "1", "--out", str(tmp_path / "x.h5"), "--band", "johnson-q", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--band: 'johnson-q' is not a speclite filter name" in err


def test_galaxy_on_a_log_grid_has_its_lines_at_the_redshifted_wavelength():
    rng = np.random.default_rng(5)
    inst = load_instrument("sdss-boss")
    model = sim.galaxy_model(inst, (0.05, 0.2), "sdss2010-r")
    p = sample_params(40, rng, (0.1, 0.1001))
    p.quiescent[:] = False
    rest = model.rest_frame(p)
    arm = inst.arm("R")
    fine = model.observed(rest, p, arm.fine_wave, arm.fine_edges)
    pix = arm.convolve_and_bin(fine)
    best = int(np.argmax(model.line_fluxes(rest, p.z)[:, np.argmin(np.abs(model.grids.line_wave - 6564.61))]))
    obs = 6564.61 * (1 + p.z[best])
    window = np.abs(arm.wave - obs) < 5 * arm.lsf_fwhm
    peak = arm.wave[window][np.argmax(pix[best, window])]
    k = np.argmin(np.abs(arm.wave - obs))
    assert abs(peak - obs) <= arm.dispersion[k]
    # and the line flux is conserved by the log-grid binning of add_lines
    flux = model.add_lines(np.zeros((1, len(arm.fine_wave))), rest.__class__(
        rest.cont[best:best + 1], rest.line_lum[best:best + 1], rest.logmstar[best:best + 1],
        rest.logsfr[best:best + 1], rest.logsfr_inst[best:best + 1]), p.z[best:best + 1],
        p.sigma_v[best:best + 1], arm.fine_edges)
    inside = (model.grids.line_wave * (1 + p.z[best]) > arm.fine_edges[0] + 50) & \
             (model.grids.line_wave * (1 + p.z[best]) < arm.fine_edges[-1] - 50)
    total = model.line_fluxes(rest, p.z)[best, inside].sum()
    assert (flux[0] * arm.fine_step).sum() == pytest.approx(total, rel=1e-6)
    spectra = observe_arm(arm, fine[best:best + 1], Exposure(3600, 900), np.random.default_rng(0))
    assert np.isfinite(spectra.flux).all()
