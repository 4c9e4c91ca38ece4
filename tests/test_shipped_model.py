"""The shipped MOONS LR model on spectra it must handle (issue 10's acceptance tests): a
quiescent galaxy with no lines, input with no signal, a flux scaled by a constant, and an
optical spectrum from another instrument."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mtopnet.catalogue import ZWarn
from mtopnet.config import Exposure
from mtopnet.galaxies.population import N_OLD_BINS, GalaxyParams
from mtopnet.instruments import load_instrument, observe_arm
from mtopnet.io import read_spectra
from mtopnet.predict import predict_batches
from mtopnet.simulate import galaxy_model
from mtopnet.store import SpectraBatch
from mtopnet.trained import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def model():
    return load_model("moons-lr")


def _quiescent(z: float) -> GalaxyParams:
    """A passive galaxy: log M* 11, quenched 1.5 Gyr ago, log sSFR ~ -12.5, no nebular lines to speak of."""
    one = lambda v: np.array([v], dtype=float)  # noqa: E731
    return GalaxyParams(z=one(z), logmstar=one(11.0), quiescent=np.array([True]), logsfr100_target=one(-1.5),
                        inst_ratio=one(0.0), sfh_logratio=np.zeros((1, N_OLD_BINS - 1)), quench_age=one(1.5e9),
                        log_zsol=one(0.0), log_u=one(-3.0), av=one(0.2), eta=one(1.0), sigma_v=one(200.0),
                        r_e=one(0.3))


def _observe(params: GalaxyParams, hmag: float, hours: float, seed: int = 0) -> SpectraBatch:
    inst = load_instrument("moons-lr")
    gm = galaxy_model(inst, (0.6, 3.0), "twomass-H")
    rest = gm.scale_to_magnitude(gm.rest_frame(params), params.z, hmag)
    rest = dataclasses.replace(rest, line_lum=rest.line_lum * 0.0)  # no lines at all
    exposure = Exposure(hours * 3600.0, sky_residual=0.0)
    rng = np.random.default_rng(seed)
    arms = {}
    for arm in inst.arms:
        fine = gm.observed(rest, params, arm.fine_wave, arm.fine_edges)
        s = observe_arm(arm, fine, exposure, rng, params.r_e / 1.1774)
        arms[arm.name] = {"wave": s.wave, "flux": s.flux, "ivar": s.ivar, "mask": s.mask}
    return SpectraBatch(ids=np.array([0]), arms=arms)


@pytest.mark.parametrize("z", [1.05, 1.6])
def test_a_quiescent_spectrum_without_lines_is_found_within_0001(model, z):
    batch = _observe(_quiescent(z), hmag=20.5, hours=500.0)  # practically noiseless
    row = next(predict_batches(model, [batch]))
    assert abs(row["Z"][0] - z) < 0.001, (row["Z"][0], z)


def test_the_redshift_does_not_depend_on_the_flux_scale(model):
    batch = _observe(_quiescent(1.3), hmag=22.0, hours=8.0, seed=3)
    zs, nets = [], []
    for factor in (1.0, 0.3, 3.0):
        arms = {k: {**a, "flux": a["flux"] * factor, "ivar": a["ivar"] / factor ** 2} for k, a in batch.arms.items()}
        row = next(predict_batches(model, [dataclasses.replace(batch, arms=arms)]))
        zs.append(row["Z"][0])
        nets.append(row["Z_NET"][0])
    assert max(nets) - min(nets) < 1e-6, nets  # the network: the same PDF (to float32 rounding)
    assert max(zs) - min(zs) < 1e-4, zs  # the template fit: float32 rounding of the chi2 (z_err ~ 1e-4)


def _no_signal(power_law: bool, n: int = 8, seed: int = 11) -> SpectraBatch:
    """Pure noise, or a featureless power law f ~ lambda^-1.5 at S/N ~ 4 per pixel plus noise."""
    inst = load_instrument("moons-lr")
    rng = np.random.default_rng(seed)
    arms = {}
    for arm in inst.arms:
        wave = arm.wave
        ivar = np.full((n, len(wave)), 4.0, np.float32)
        signal = 2.0 * (wave / 12000.0) ** -1.5 if power_law else np.zeros(len(wave))
        flux = (signal[None, :] + 0.5 * rng.standard_normal((n, len(wave)))).astype(np.float32)
        arms[arm.name] = {"wave": wave, "flux": flux, "ivar": ivar, "mask": np.zeros((n, len(wave)), np.uint8)}
    return SpectraBatch(ids=np.arange(n), arms=arms)


def test_pure_noise_gets_qop_at_most_2(model):
    rows = next(predict_batches(model, [_no_signal(False)]))
    assert np.all(rows["QOP"] <= 2), rows["QOP"]


@pytest.mark.parametrize("seed", [11, 0, 2])
def test_featureless_power_law_gets_qop_at_most_2(model, seed):
    """A featureless power law at S/N 4 per pixel can be fitted at z ~ 0.61, where the 4000 A
    break leaves MOONS' blue edge (FEATURE_DCHI2 up to ~55 there, above NO_FEATURES' 50): the
    quality model must still not call it certain."""
    rows = next(predict_batches(model, [_no_signal(True, seed=seed)]))
    assert np.all(rows["QOP"] <= 2), rows["QOP"]


def test_optical_desi_spectra_are_not_qop_4(model):
    batches = list(read_spectra(sorted(str(p) for p in (DATA / "desi").glob("coadd-*.fits"))))
    rows = [r for b in batches for r in [next(predict_batches(model, [b]))]]
    qop = np.concatenate([r["QOP"] for r in rows])
    zwarn = np.concatenate([r["ZWARN"] for r in rows])
    assert np.all(qop == 1)  # another instrument's arms: unreliable, not "possible"
    assert np.all(zwarn & int(ZWarn.OUT_OF_DOMAIN))
    assert np.all(np.concatenate([r["P_DZ01"] for r in rows]) <= 0.5)  # a capped object's P_DZ01 too


def test_optical_sdss_spectra_get_no_confident_probability(model):
    """Out of the MOONS domain: the calibration never saw such spectra, so neither QOP nor
    P_DZ01 may claim the redshift is certain (both capped)."""
    batches = list(read_spectra(sorted(str(p) for p in (DATA / "sdss").glob("*.fits"))))
    rows = [next(predict_batches(model, [b])) for b in batches]
    assert np.all(np.concatenate([r["QOP"] for r in rows]) == 1)
    assert np.all(np.concatenate([r["P_DZ01"] for r in rows]) <= 0.5)


def test_a_moons_spectrum_without_an_arm_is_out_of_domain_not_foreign(model):
    """A MOONS spectrum that lost an arm is OUT_OF_DOMAIN (QOP <= 2) but not another
    instrument's (QOP 1): a third of the coverage missing, less than half."""
    from mtopnet.domain import layout_problem
    batch = _observe(_quiescent(1.3), hmag=21.0, hours=8.0, seed=3)
    assert layout_problem(model, batch) == (None, False)
    two = dataclasses.replace(batch, arms={k: a for k, a in batch.arms.items() if k != "YJ"})
    problem, foreign = layout_problem(model, two)
    assert problem is not None and "covers" in problem and not foreign
    rows = next(predict_batches(model, [two]))
    assert rows["ZWARN"][0] & int(ZWarn.OUT_OF_DOMAIN) and rows["QOP"][0] <= 2


def test_the_network_alone_has_its_own_calibration(model):
    """--no-refine reads the calibration fitted on the network's PDF alone (0.4.5), so a bright
    galaxy's network redshift can be QOP 4 there too, and pure noise cannot."""
    from mtopnet.quality import FEATURES
    assert model.calibration_net is not None and tuple(model.calibration_net.features) == FEATURES
    batch = _observe(_quiescent(1.3), hmag=21.0, hours=8.0, seed=3)
    row = next(predict_batches(model, [batch], refine=False))
    assert abs(row["Z"][0] - 1.3) < 0.01 and row["QOP"][0] == 4, (row["Z"], row["QOP"])
    noise = next(predict_batches(model, [_no_signal(False)], refine=False))
    assert np.all(noise["QOP"] <= 2), noise["QOP"]
