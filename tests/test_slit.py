"""Slit apertures, the Paranal optical sky below 6000 A, and the X-shooter-like example."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import erf

from mtopnet.config import ApertureConfig, ConfigError, InstrumentConfig
from mtopnet.instruments import Aperture, Instrument, load_instrument
from mtopnet.instruments.sky import (
    PARANAL_JOIN,
    _skycalc,
    load_sky,
    paranal_components,
    paranal_extinction,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "xshooter-like.yaml"

SLIT = {"kind": "slit", "width": 0.9, "length": 11.0, "extraction": 2.0}

BASE = {
    "name": "slit-test",
    "sky_model": "none",
    "aperture": SLIT,
    "telescope": {"diameter": 8.2},
    "observing": {"airmass": 1.2, "seeing": 0.8, "sub_exposure": 600},
    "arms": {"A": {"wave_min": 10000.0, "wave_max": 10500.0, "resolution": 5000, "read_noise": 3.0}},
}


def _instrument(**changes) -> Instrument:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return Instrument(InstrumentConfig.from_yaml(raw))


# ----------------------------------------------------------------------------- aperture


def test_slit_passes_the_gaussian_fraction_of_a_point_source():
    ap = Aperture(ApertureConfig.from_yaml({"kind": "slit", "width": 0.8, "length": 11.0, "extraction": 11.0}))
    sigma = 0.8 / 2.3548  # seeing FWHM = slit width
    # the width passes erf(w / (2 sqrt 2 sigma)) = erf(0.8326) = 0.7610; the long extraction ~all
    assert ap.fraction(sigma ** 2) == pytest.approx(0.7610, abs=2e-4)
    assert ap.slit_loss(0.8) == pytest.approx(1 - 0.7610, abs=2e-4)
    # a Monte Carlo image through the same slit
    rng = np.random.default_rng(1)
    xy = rng.normal(0.0, 0.5, size=(200_000, 2))
    narrow = Aperture(ApertureConfig.from_yaml({"kind": "slit", "width": 0.6, "length": 5.0, "extraction": 1.0}))
    inside = (np.abs(xy[:, 0]) < 0.3) & (np.abs(xy[:, 1]) < 0.5)
    assert narrow.fraction(0.25) == pytest.approx(inside.mean(), abs=3e-3)
    assert narrow.fraction(0.25) == pytest.approx(erf(0.3 / (np.sqrt(2) * 0.5)) * erf(0.5 / (np.sqrt(2) * 0.5)))


def test_slit_loss_grows_with_seeing_and_shrinks_with_width():
    seeing = np.array([0.5, 0.8, 1.2, 2.0])
    wide = Aperture(ApertureConfig(kind="slit", width=1.5, length=11.0, extraction=3.0))
    narrow = Aperture(ApertureConfig(kind="slit", width=0.6, length=11.0, extraction=3.0))
    assert np.all(np.diff(narrow.slit_loss(seeing)) > 0)
    assert np.all(narrow.slit_loss(seeing) > wide.slit_loss(seeing))
    assert narrow.sky_area == pytest.approx(0.6 * 3.0)  # sky per spectrum: width x extracted length


def test_fibre_aperture_is_the_encircled_energy_and_the_short_form_is_the_same():
    raw = copy.deepcopy(BASE)
    del raw["aperture"]
    raw["fibre_diameter"] = 1.2
    a = Instrument(InstrumentConfig.from_yaml(raw))
    raw2 = copy.deepcopy(BASE)
    raw2["aperture"] = {"kind": "fibre", "diameter": 1.2}
    b = Instrument(InstrumentConfig.from_yaml(raw2))
    assert a.aperture.config == b.aperture.config and a.config.fibre_diameter == 1.2
    psf_var = 0.3 ** 2
    assert a.aperture.fraction(psf_var) == -np.expm1(-0.5 * 0.6 ** 2 / psf_var)
    assert a.aperture.sky_area == pytest.approx(np.pi * 0.36)


def test_slit_width_sets_the_sky_and_the_source_light():
    narrow = _instrument(aperture={**SLIT, "width": 0.5}, sky_model="skycalc-paranal")
    wide = _instrument(aperture={**SLIT, "width": 1.0}, sky_model="skycalc-paranal")
    rn, rw = narrow.arms[0].response(1.2, 0.8, 600.0), wide.arms[0].response(1.2, 0.8, 600.0)
    np.testing.assert_allclose(rw.sky_electrons, 2.0 * rn.sky_electrons, rtol=1e-12)
    point_n = narrow.arms[0].aperture_fraction(0.8, 1.2)
    point_w = wide.arms[0].aperture_fraction(0.8, 1.2)
    assert np.all(point_w > point_n) and np.all(point_w < 1.0)
    # an extended source loses more light than a point source
    assert np.all(narrow.arms[0].aperture_fraction(0.8, 1.2, np.array([0.5]))[0] < point_n)


@pytest.mark.parametrize("aperture, message", [
    ({"width": 1.0}, r"aperture\.kind: must be one of fibre, slit, got None"),
    ({"kind": "pinhole"}, r"aperture\.kind: must be one of fibre, slit, got 'pinhole'"),
    ({"kind": "slit", "length": 11.0}, r"aperture\.width: missing"),
    ({"kind": "slit", "width": -1, "length": 11.0}, r"aperture\.width: must be > 0"),
    ({"kind": "slit", "width": 12.0, "length": 11.0}, r"aperture\.width: a slit is narrower than it is long"),
    ({"kind": "slit", "width": 1.0, "length": 11.0, "extraction": 12.0}, r"aperture\.extraction: cannot exceed"),
    ({"kind": "slit", "width": 1.0, "length": 11.0, "diameter": 1.0}, r"aperture\.diameter: unknown field"),
    ({"kind": "fibre", "width": 1.0}, r"aperture\.width: unknown field"),
    ("slit", r"aperture: expected a mapping"),
])
def test_bad_apertures_are_named(aperture, message):
    raw = copy.deepcopy(BASE)
    raw["aperture"] = aperture
    with pytest.raises(ConfigError, match=message):
        InstrumentConfig.from_yaml(raw)


def test_fibre_diameter_and_aperture_together_is_an_error(tmp_path, capsys):
    from mtopnet.cli import main
    raw = copy.deepcopy(BASE)
    raw["fibre_diameter"] = 1.0
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="both.yaml: fibre_diameter: give either fibre_diameter or aperture"):
        load_instrument(str(path))
    code = main(["simulate", "--instrument", str(path), "--n", "2", "--seed", "1", "--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "give either fibre_diameter or aperture" in err[0]


# ----------------------------------------------------------------------------- the Paranal sky


@pytest.mark.parametrize("airmass", [1.0, 1.5, 2.0])
def test_paranal_sky_is_continuous_at_6000_A(airmass):
    """Across the join of the optical model and SkyCalc the continuum (median over 100 A on
    either side) changes by less than 15% and the transmission by less than 0.01."""
    sky = load_sky("skycalc-paranal", airmass)
    assert sky.wave[0] == pytest.approx(3000.0) and sky.wave[-1] == pytest.approx(18000.0)
    assert np.all(np.diff(sky.wave) > 0) and np.all(sky.emission >= 0)
    blue = (sky.wave >= PARANAL_JOIN - 100) & (sky.wave < PARANAL_JOIN)
    red = (sky.wave >= PARANAL_JOIN) & (sky.wave < PARANAL_JOIN + 100)
    ratio = np.median(sky.emission[red]) / np.median(sky.emission[blue])
    assert 1 / 1.15 < ratio < 1.15
    assert abs(np.median(sky.transmission[red]) - np.median(sky.transmission[blue])) < 0.01


def test_paranal_optical_sky_has_its_airglow_lines_and_the_ozone_cutoff():
    sky = load_sky("skycalc-paranal", 1.0)
    near = (sky.wave > 5540) & (sky.wave < 5620)
    cont = np.median(sky.emission[near])
    peak = sky.emission[near].max()
    assert abs(sky.wave[near][np.argmax(sky.emission[near])] - 5578.9) < 0.2  # [OI] 5577 (air) in vacuum
    # its flux above the continuum is the tabulated 200 R at zenith
    flux = np.sum(sky.emission[near] - cont) * 0.1
    assert flux == pytest.approx(200 * 1e6 / (4 * np.pi) / 4.254517e10, rel=0.05)
    assert peak > 20 * cont
    hg = np.abs(sky.wave - 5462.27) < 1.0  # Hg 5461 (vacuum): no artificial light at Paranal
    assert sky.emission[hg].max() < 2 * cont
    k = paranal_extinction(np.array([3050.0, 3300.0, 3600.0, 4500.0, 5900.0]))
    assert np.all(np.diff(k) < 0) and k[0] > 1.5 and 0.10 < k[-1] < 0.14
    assert set(paranal_components()) >= {"site", "rayleigh", "ozone_cross_section", "bands", "lines"}


def test_arms_redwards_of_6000_A_see_skycalc_unchanged():
    """An arm above 6000 A is read from SkyCalc's table alone: MOONS's numbers do not change."""
    full = load_sky("skycalc-paranal", 1.3)
    alone = _skycalc(1.3)
    red = full.from_wave(6400.0)
    assert red.wave is not alone.wave
    np.testing.assert_array_equal(red.wave, alone.wave)
    np.testing.assert_array_equal(red.emission, alone.emission)
    np.testing.assert_array_equal(red.transmission, alone.transmission)
    assert full.from_wave(5000.0) is full


# ----------------------------------------------------------------------------- the example


def test_xshooter_like_example_loads_and_simulates(tmp_path):
    """The example of docs/slit.md: a VLT slit spectrograph from 3000 A (UVB) to 18000 A."""
    from mtopnet.cli import main
    from mtopnet.store import read_store
    inst = load_instrument(str(EXAMPLE))
    assert inst.aperture.kind == "slit" and inst.arm_names == ["UVB", "VIS", "NIR"]
    assert inst.wave_range == (3000.0, 18000.0)
    out = tmp_path / "xs.h5"
    assert main(["simulate", "--instrument", str(EXAMPLE), "--exposure", "1h", "--n", "3", "--seed", "4",
                 "--z-range", "0.3", "1.2", "--out", str(out)]) == 0
    batch = read_store(out)
    assert list(batch.arms) == ["UVB", "VIS", "NIR"] and len(batch) == 3
    for name, arm in batch.arms.items():
        good = arm["ivar"] > 0
        assert good.mean() > 0.5, name
        assert np.all(np.isfinite(arm["flux"]))
    # the telluric A band (7600 A) is mostly masked in VIS, sky lines (bit 2) in NIR
    vis = batch.arms["VIS"]
    a_band = (vis["wave"] > 7594) & (vis["wave"] < 7630)
    assert np.mean(vis["mask"][:, a_band] & 4 != 0) > 0.5
    assert np.mean(batch.arms["NIR"]["mask"] & 2 != 0) > 0.05


def test_xshooter_like_recipe_resolves_on_its_grid():
    from mtopnet.train import load_train_config
    cfg = load_train_config(EXAMPLE.with_name("train-xshooter-like.yaml"))
    assert (cfg.preprocess.wave_min, cfg.preprocess.wave_max) == (3100.0, 18000.0)
    assert cfg.model.n_pix == cfg.preprocess.n_pix == 4096
    lo, hi = load_instrument(str(EXAMPLE)).wave_range
    assert lo <= cfg.preprocess.wave_min and cfg.preprocess.wave_max <= hi
    assert 1215.67 * (1 + cfg.redshift.z_max) < lo  # no Lyman alpha in the arms: no IGM in the simulator
