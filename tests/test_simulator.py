"""The MOONS simulator: instrument physics, galaxy spectra, the simulate command."""
from __future__ import annotations

import contextlib
import io
import warnings

import h5py
import numpy as np
import pytest

from mtopnet import simulate as sim
from mtopnet.cli import main
from mtopnet.config import Exposure
from mtopnet.constants import C_AA_PER_S
from mtopnet.galaxies.population import N_OLD_BINS, GalaxyParams, age_of_universe, sample_params
from mtopnet.instruments import MASK_SKYLINE, load_instrument, observe_arm


@pytest.fixture(scope="module")
def inst():
    return load_instrument("moons-lr")


@pytest.fixture(scope="module")
def model(inst):
    return sim.galaxy_model(inst, (0.6, 3.0), "twomass-H")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _one_galaxy(z: float, sigma_v: float = 80.0, logz: float = np.log10(0.4)) -> GalaxyParams:
    one = lambda v: np.array([v], dtype=float)  # noqa: E731
    return GalaxyParams(z=one(z), logmstar=one(10.0), quiescent=np.array([False]), logsfr100_target=one(1.0),
                        inst_ratio=one(0.0), sfh_logratio=np.zeros((1, N_OLD_BINS - 1)), quench_age=one(0.0),
                        log_zsol=one(logz), log_u=one(-2.5), av=one(0.3), eta=one(2.0), sigma_v=one(sigma_v),
                        r_e=one(0.2))


def _flat_fnu(arm, mag: float, n: int = 1) -> np.ndarray:
    """A flat f_nu source of AB magnitude ``mag`` on the arm's fine grid, 1e-17 erg/s/cm2/A."""
    fnu = 10 ** (-0.4 * (mag + 48.6))
    return np.tile(fnu * C_AA_PER_S / arm.fine_wave ** 2 / 1e-17, (n, 1))


# --- instrument -------------------------------------------------------------------------

def test_arm_grids_follow_moons1d_convention(inst):
    ri = inst.arm("RI")
    assert ri.dispersion == pytest.approx(0.5 * (6470 + 9340) / (4200 * 2.7))
    assert ri.wave[0] > 6470 and ri.wave[-1] < 9340
    assert np.allclose(np.diff(ri.wave), ri.dispersion)
    assert ri.lsf_fwhm / ri.dispersion == pytest.approx(2.7)
    assert [a.name for a in inst.arms] == ["RI", "YJ", "H"]


def test_lsf_convolution_conserves_flux(inst):
    arm = inst.arm("YJ")
    fine = np.zeros((1, len(arm.fine_wave)))
    centre = len(arm.fine_wave) // 2
    fine[0, centre] = 1.0 / arm.fine_step  # a line of unit flux in one fine bin
    pix = arm.convolve_and_bin(fine)
    assert pix.sum() * arm.dispersion == pytest.approx(1.0, rel=1e-6)
    # and the width is the LSF's
    w = arm.wave
    mean = (pix[0] * w).sum() / pix[0].sum()
    sigma = np.sqrt((pix[0] * (w - mean) ** 2).sum() / pix[0].sum())
    expected = np.hypot(arm.lsf_sigma, arm.dispersion / np.sqrt(12))
    assert sigma == pytest.approx(expected, rel=0.05)


def test_snr_grows_as_sqrt_time_when_background_limited(inst, rng):
    """Empirical S/N (mean / scatter over noise realisations) of a faint, sky-limited source."""
    arm = inst.arm("H")
    src = _flat_fnu(arm, 25.0, n=400)
    snr = {}
    for hours in (2, 8):
        s = observe_arm(arm, src, Exposure(total=hours * 3600, sub_exposure=1800, sky_residual=0.0), rng)
        good = s.mask[0] == 0
        snr[hours] = np.median(s.flux[:, good].mean(axis=0) / s.flux[:, good].std(axis=0))
    assert snr[8] / snr[2] == pytest.approx(2.0, rel=0.05)


def test_noise_is_what_ivar_says(inst, rng):
    arm = inst.arm("RI")
    src = _flat_fnu(arm, 22.0, n=300)
    s = observe_arm(arm, src, Exposure(8 * 3600, sky_residual=0.0), rng)
    expected = arm.convolve_and_bin(src[:1] * arm.response(1.2, 0.8, 1800).telluric_fine)[0]
    expected *= arm.fibre_fraction(0.8, 1.2, 0.0) / arm.fibre_fraction(0.8, 1.2, 0.0)  # point source
    good = s.mask[0] == 0
    pulls = ((s.flux - expected / arm.response(1.2, 0.8, 1800).telluric_pixel) * np.sqrt(s.ivar))[:, good]
    assert abs(np.mean(pulls)) < 0.05
    assert np.std(pulls) == pytest.approx(1.0, abs=0.05)


def test_sky_mask_flags_oh_lines_in_h(inst):
    arm = inst.arm("H")
    resp = arm.response(1.2, 0.8, 1800)
    sky_line = (resp.mask & MASK_SKYLINE) > 0
    assert 0.05 < sky_line.mean() < 0.4
    assert resp.sky_electrons[sky_line].min() > resp.sky_electrons[~sky_line].min()


# --- galaxies ---------------------------------------------------------------------------

@pytest.mark.parametrize("z", [0.8, 1.45, 2.3])
def test_emission_lines_land_at_redshifted_vacuum_wavelength(inst, model, z):
    p = _one_galaxy(z, sigma_v=60.0)
    rest = model.rest_frame(p)
    for rest_vac in (6564.61, 5008.24, 4862.68):  # single lines (not the [OII] doublet)
        obs = rest_vac * (1 + z)
        arms = [a for a in inst.arms if a.wave[5] < obs < a.wave[-5]]
        if not arms:
            continue
        arm = arms[0]
        fine = model.observed(rest, p, arm.fine_wave, arm.fine_edges)
        pix = arm.convolve_and_bin(fine)[0]
        window = np.abs(arm.wave - obs) < 8 * arm.lsf_sigma
        near = (np.abs(arm.wave - obs) > 15 * arm.lsf_sigma) & (np.abs(arm.wave - obs) < 40 * arm.lsf_sigma)
        cont = np.median(pix[near])
        peak = arm.wave[window][np.argmax(pix[window] - cont)]
        assert abs(peak - obs) <= arm.dispersion


def test_hmag_of_noiseless_spectrum_equals_requested(model, rng):
    import speclite.filters
    p = sample_params(40, rng, (0.6, 3.0))
    requested = rng.uniform(20.0, 25.5, len(p))
    rest = model.scale_to_magnitude(model.rest_frame(p), p.z, requested)
    filt = speclite.filters.load_filter("twomass-H")
    wave = np.arange(14100.0, 18800.0, 0.5)
    edges = np.append(wave - 0.25, wave[-1] + 0.25)
    flux = model.observed(rest, p, wave, edges) * 1e-17  # erg/s/cm2/A, lines included
    mags = filt.get_ab_magnitude(flux, wave)
    assert np.max(np.abs(mags - requested)) < 0.02


def test_sed_matches_bagpipes_model_galaxy(model):
    """The vectorised path against Bagpipes' own model_galaxy for a constant SFH."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bagpipes as bp
    z, av, logz, logu = 1.3, 0.5, np.log10(0.4), -2.5
    g = model.grids
    t_univ = age_of_universe(np.array([z]))[0]
    overlap = np.clip(np.minimum(g.age_edges[1:], t_univ) - g.age_edges[:-1], 0, None)
    m_live = (overlap * model._live_frac(np.array([logz]))[0]).sum()  # SFR = 1 M_sun/yr throughout
    p = _one_galaxy(z, sigma_v=1.0, logz=logz)
    p.logmstar[:] = np.log10(m_live)
    p.logsfr100_target[:] = 0.0
    p.log_u[:], p.av[:] = logu, av
    rest = model.rest_frame(p)
    comp = {"redshift": z, "constant": {"age_max": t_univ / 1e9, "age_min": 0.0, "massformed": np.log10(t_univ),
                                        "metallicity": 10 ** logz},
            "nebular": {"logU": logu}, "dust": {"type": "Calzetti", "Av": av, "eta": 2.0}}
    wav = np.arange(6500.0, 18000.0, 2.0)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bp.model_galaxy(comp, spec_wavs=wav)
    assert ref.sfh.stellar_mass == pytest.approx(np.log10(m_live), abs=1e-3)
    ours = model.observed_continuum(rest, p.z, wav)[0] * 1e-17
    edges = np.arange(6600.0, 17900.0, 200.0)
    ratios = [np.median(ours[(wav >= a) & (wav < b)]) / np.median(ref.spectrum[(wav >= a) & (wav < b), 1])
              for a, b in zip(edges[:-1], edges[1:], strict=False)]
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)
    assert np.percentile(np.abs(np.array(ratios) - 1), 90) < 0.02
    fluxes = model.line_fluxes(rest, p.z)[0] * 1e-17
    for name, vac in (("H  1  6562.80A", 6564.61), ("O  3  5006.84A", 5008.24)):
        i = int(np.argmin(np.abs(g.line_wave - vac)))
        assert fluxes[i] == pytest.approx(ref.line_fluxes[name], rel=0.01)


def test_population_labels_are_consistent(model, rng):
    p = sample_params(300, rng, (0.6, 3.0))
    rest = model.rest_frame(p)
    assert np.allclose(rest.logmstar, p.logmstar)
    assert np.all(np.isfinite(rest.cont)) and np.all(rest.cont >= 0)
    sf = ~p.quiescent
    # SFR over 100 Myr follows the main-sequence target unless capped for extreme sSFR
    assert np.median(np.abs(rest.logsfr[sf] - p.logsfr100_target[sf])) < 1e-6
    assert np.all(rest.logsfr <= p.logmstar - 7.0 + 1e-6)  # at most half the mass in 100 Myr: sSFR <= 5e-9


# --- the simulate command ---------------------------------------------------------------

def _spec(n=30, seed=3, **kw):
    return sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(8 * 3600), n=n, seed=seed, **kw)


def test_same_seed_same_bytes_and_worker_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "SHARD_SIZE", 10)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    sim.simulate(_spec(), a, workers=1, progress=False)
    sim.simulate(_spec(), b, workers=2, progress=False)
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a) as f:
        assert f["ids"].shape == (30,) and len(set(f["ids"][:])) == 30
        assert f["arms/H/flux"].shape[0] == 30
        h = f["labels/hmag"][:]
        assert np.all((h >= 20) & (h <= 25.5))


def test_killed_run_resumes_to_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "SHARD_SIZE", 10)
    full, resumed = tmp_path / "full.h5", tmp_path / "resumed.h5"
    sim.simulate(_spec(), full, progress=False)
    spec = _spec()
    shard_dir = tmp_path / "resumed.h5.shards"
    shard_dir.mkdir()
    sim._run_shard((spec, 1, str(shard_dir / "shard_00001.h5")))  # one shard done before the kill
    (shard_dir / "shard_00002.h5.tmp").write_bytes(b"half-written")  # the shard in flight
    sim.simulate(spec, resumed, progress=False)
    assert resumed.read_bytes() == full.read_bytes()
    assert not shard_dir.exists()


@pytest.mark.parametrize("args, message", [
    (["--instrument", "moons-xx"], "unknown instrument"),
    (["--exposure=-2h"], "exposure"),
    (["--exposure", "0s"], "exposure"),
    (["--exposure", "eight hours"], "exposure"),
    (["--airmass", "2.5"], "airmass"),
    (["--z-range", "0.6", "5.5"], "--z-range"),
    (["--hmag-range", "25", "20"], "--hmag-range"),
    (["--n", "0"], "--n"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    base = {"--n": "5", "--seed": "1", "--out": str(out)}
    for i in range(0, len(args), 1):
        if args[i] in base:
            base.pop(args[i])
    argv = ["simulate", *[x for kv in base.items() for x in kv], *args, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_existing_or_unwritable_output_refused(tmp_path, capsys):
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(tmp_path / "no" / "x.h5"), "--quiet"]) == 2
    assert "no such directory" in capsys.readouterr().err
