"""SPECTYPE: QSO and star templates against the galaxy fit (mtopnet.refine.spectype).

Synthetic QSOs and stars made from Redrock's templates through the MOONS LR instrument (with
its noise) must come out QSO / STAR with the template's redshift and star class, never with
QOP 4; galaxies, noise and the SDSS galaxy must stay GALAXY; and the three SDSS spectra of
tests/data (one galaxy, two broad-line QSOs at z 0.24 and 0.18) give what the fit says on a
grid of SDSS's optical range.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mtopnet.columns import CAPPED_P_MAX, ZWarn, capped_p, capped_qop
from mtopnet.config import ConfigError
from mtopnet.instruments import load_instrument
from mtopnet.io import read_spectra
from mtopnet.predict import predict_batches
from mtopnet.preprocess import PreprocessConfig, Preprocessor
from mtopnet.priors import UNINFORMATIVE_SIGMA, prior_columns
from mtopnet.refine import RefineConfig, Refiner, SpectypeConfig, SpectypeFitter, ZScanner, build_basis, scan_summary
from mtopnet.templates import default_template_dir
from mtopnet.testing import template_batch
from mtopnet.trained import load_model

SDSS = Path(__file__).parent / "data" / "sdss"
TEMPLATES = default_template_dir()


@pytest.fixture(scope="module")
def model():
    return load_model("moons-lr")


def _predict(model, batch) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next(predict_batches(model, [batch]))


def test_synthetic_qsos_through_moons_are_qso(model):
    z = np.array([0.9, 1.5, 2.2, 3.0])
    batch = template_batch(load_instrument("moons-lr"), TEMPLATES / "rrtemplate-QSO-None-v0.1.fits", z, 0.1, seed=1)
    rows = _predict(model, batch)
    assert list(rows["SPECTYPE"]) == ["QSO"] * 4, rows["QSO_DCHI2"]
    assert np.all(np.abs(rows["Z"] - z) < 2e-3 * (1 + z)), rows["Z"]  # the QSO fit's z, not a galaxy's
    assert np.all(rows["QOP"] <= 2) and np.all(rows["P_DZ01"] <= CAPPED_P_MAX)
    assert np.all(rows["QSO_DCHI2"] > SpectypeConfig().qso_dchi2)
    assert np.all(rows["DELTACHI2"] == rows["QSO_DCHI2"]) and np.all(rows["NCOEFF"] == 4)
    assert np.all(rows["SUBTYPE"] == "") and np.all(rows["FITMETHOD"] == "PCA")


@pytest.mark.parametrize("cls, v_kms", [("K", 90.0), ("M", -150.0), ("A", 0.0)])
def test_synthetic_stars_through_moons_are_star(model, cls, v_kms):
    z = np.full(2, v_kms / 299792.458)
    batch = template_batch(load_instrument("moons-lr"), TEMPLATES / f"rrtemplate-STAR-{cls}-v0.1.fits", z, 1.0,
                           seed=2)
    rows = _predict(model, batch)
    assert list(rows["SPECTYPE"]) == ["STAR", "STAR"], rows["STAR_DCHI2"]
    assert list(rows["SUBTYPE"]) == [cls, cls]
    assert np.all(np.abs(rows["Z"] - z) < 200.0 / 299792.458), rows["Z"] * 299792.458  # radial velocity
    assert np.all(rows["QOP"] <= 2)


def test_noise_and_the_sdss_galaxy_stay_galaxy(model):
    rng = np.random.default_rng(5)
    inst = load_instrument("moons-lr")
    noise = template_batch(inst, TEMPLATES / "rrtemplate-QSO-None-v0.1.fits", np.full(6, 1.5), 1e-4, seed=3)
    for arm in noise.arms.values():  # pure noise at the QSO spectra's noise level
        arm["flux"] = (rng.standard_normal(arm["flux"].shape) / np.sqrt(np.maximum(arm["ivar"], 1e-30))
                       * (arm["ivar"] > 0)).astype(np.float32)
    rows = _predict(model, noise)
    assert np.all(rows["SPECTYPE"] == "GALAXY"), (rows["QSO_DCHI2"], rows["STAR_DCHI2"])
    sdss_galaxy = next(read_spectra([SDSS / "spec-0295-51585-0596.fits"]))  # out of domain, but a galaxy
    assert _predict(model, sdss_galaxy)["SPECTYPE"][0] == "GALAXY"


@pytest.fixture(scope="module")
def optical_refiner():
    """A refiner on the SDSS/BOSS model grid (configs/train-sdss-boss.yaml: 3800-9200 A, 2048
    pixels, z 0-1.5) with the shipped galaxy basis, and a full-range galaxy scanner."""
    pc = PreprocessConfig(wave_min=3800.0, wave_max=9200.0, n_pix=2048, n_continuum=64)
    basis = build_basis(pc, (0.0, 1.5), 60.0, RefineConfig())
    edges = np.expm1(np.linspace(0.0, np.log1p(1.5), 400))
    scanner = ZScanner.from_refine_basis(basis, (0.0, 1.5), n_templates=6, lines=("[OII]", "[OIII]", "Halpha"))
    return Preprocessor(pc), Refiner(basis, edges), scanner


def test_sdss_spectra_on_an_optical_grid(optical_refiner):
    """The galaxy stays GALAXY; the broad-line QSO at z 0.185 (spec-1599) is QSO at its SDSS z;
    the one at z 0.245 (spec-0280, SDSS subclass AGN BROADLINE, strong host light and narrow
    lines) is fitted better by the galaxy basis with its free line groups: GALAXY."""
    pre, refiner, scanner = optical_refiner
    names = ["spec-0280-51612-0117.fits", "spec-0295-51585-0596.fits", "spec-1599-53089-0469.fits"]
    parts = [pre.rebin(b)[:2] for name in names for b in read_spectra([SDSS / name])]
    flux = np.concatenate([p[0] for p in parts])
    ivar = np.concatenate([p[1] for p in parts])
    z_scan, _, _ = scan_summary(scanner.scan(flux, ivar))
    edges = refiner.edges
    pdf = np.zeros((3, len(edges) - 1))
    pdf[np.arange(3), np.searchsorted(edges, z_scan) - 1] = 1.0
    fit = refiner.refine(flux, ivar, pdf, z_scan)
    assert np.allclose(fit.z, [0.24457, 0.13788, 0.18494], atol=5e-4)  # SDSS's Z
    res = refiner.spectype_fitter().classify(flux, ivar, fit.z, fit.coeff)
    assert list(res.spectype) == ["GALAXY", "GALAXY", "QSO"], (res.qso_dchi2, res.star_dchi2)
    assert abs(res.z[2] - 0.18494) < 2e-3
    assert res.qso_dchi2[0] < 0 and res.qso_dchi2[1] < 0 and res.qso_dchi2[2] > 1000


def test_spectype_config_and_caps():
    with pytest.raises(ConfigError, match="spectype.qso_z_range"):
        SpectypeConfig(qso_z_range=(2.0, 1.0))
    with pytest.raises(ConfigError, match="spectype.nuisance_degree"):
        SpectypeConfig(nuisance_degree=-1)
    types = np.array(["GALAXY", "QSO", "STAR"])
    assert list(capped_qop(np.array([4, 4, 4]), np.zeros(3), spectype=types)) == [4, 2, 2]
    assert list(capped_p(np.array([0.99, 0.99, 0.3]), np.zeros(3), spectype=types)) == [0.99, CAPPED_P_MAX, 0.3]


def test_a_grid_the_qso_template_cannot_cover_is_refused():
    pc = PreprocessConfig(wave_min=6000.0, wave_max=60000.0, n_pix=1024, n_continuum=64)
    refiner = Refiner(build_basis(pc, (0.0, 0.5), 30.0, RefineConfig()), np.linspace(0.0, 0.5, 51))
    with pytest.raises(ConfigError, match="QSO template covers"):
        SpectypeFitter.from_refiner(refiner, SpectypeConfig(qso_z_range=(0.0, 1.0)))


def test_priors_are_uninformative_where_mtopnet_does_not_know():
    rows = {"TARGETID": np.arange(5), "Z": np.array([1.0, 1.0, 1.0, 1.0, np.nan]),
            "Z_LO95": np.full(5, 0.99), "Z_HI95": np.full(5, 1.01), "QOP": np.array([4, 1, 4, 4, 4]),
            "ZWARN": np.array([0, 0, int(ZWarn.OUT_OF_DOMAIN), 0, 0]),
            "SPECTYPE": np.array(["GALAXY", "GALAXY", "GALAXY", "QSO", "GALAXY"])}
    cols = prior_columns(rows)
    assert cols["SIGMA"][0] == pytest.approx(0.005)
    assert np.all(cols["SIGMA"][1:] == UNINFORMATIVE_SIGMA) and cols["Z"][4] == 0.0
