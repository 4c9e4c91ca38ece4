"""The MOONS simulator: instrument physics, galaxy spectra, the simulate command."""
from __future__ import annotations

import contextlib
import io
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from mtopnet import simulate as sim
from mtopnet.cli import main
from mtopnet.config import Exposure
from mtopnet.constants import C_AA_PER_S
from mtopnet.galaxies.population import N_OLD_BINS, GalaxyParams, age_of_universe, sample_params
from mtopnet.instruments import MASK_SKYLINE, load_instrument, observe_arm
from mtopnet.store import read_store


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
    expected *= arm.aperture_fraction(0.8, 1.2, 0.0) / arm.aperture_fraction(0.8, 1.2, 0.0)  # point source
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


def _same_store(a, b) -> None:
    """Stores ``a`` and ``b`` hold the same ids, labels and spectra (arrays equal)."""
    ra, rb = read_store(a), read_store(b)
    assert np.array_equal(ra.ids, rb.ids) and list(ra.labels) == list(rb.labels)
    for k in ra.labels:
        assert np.array_equal(ra.labels[k], rb.labels[k], equal_nan=True), k
    for arm in ra.arms:
        for k in ("wave", "flux", "ivar", "mask"):
            assert np.array_equal(ra.arms[arm][k], rb.arms[arm][k]), (arm, k)


def test_same_seed_same_bytes_and_worker_independent(tmp_path):
    """A 2-worker Dask LocalCluster run writes the 1-worker run's shards and store, byte for byte
    (same output name, in another folder)."""
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    a, b = tmp_path / "one" / "s.h5", tmp_path / "two" / "s.h5"
    sim.simulate(_spec(shard_size=10), a, workers=1, progress=False)
    sim.simulate(_spec(shard_size=10), b, workers=2, progress=False)
    assert a.read_bytes() == b.read_bytes()
    for i in range(3):
        name = f"s.h5.shards/shard_{i:05d}.h5"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    _same_store(a, b)
    with h5py.File(a) as f:
        assert f["ids"].shape == (30,) and len(set(f["ids"][:])) == 30
        assert f["arms/H/flux"].shape[0] == 30 and f["arms/H/flux"].is_virtual
        h = f["labels/hmag"][:]
        assert np.all((h >= 20) & (h <= 25.5))


_THREADS_SCRIPT = """
import numpy as np
from threadpoolctl import threadpool_limits
from mtopnet import simulate as sim
from mtopnet.config import Exposure
spec = sim.SimulationSpec(instrument="moons-lr", exposure=Exposure(8 * 3600), n=10, seed=3, shard_size=10)
shards = []
for threads in (4, 1):
    with threadpool_limits(limits=threads, user_api="blas"):
        shards.append(sim.simulate_shard(spec, 0))
a, b = shards
assert all(np.array_equal(a.arms[k][x], b.arms[k][x]) for k in a.arms for x in ("flux", "ivar", "mask"))
print("same")
"""


def test_a_shard_does_not_depend_on_the_blas_thread_count():
    """OpenBLAS's Haswell kernels give float32 products that depend on the thread count; a shard
    made here (all cores) must equal one made on a single-threaded Dask worker."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists() or " avx2" not in cpuinfo.read_text():
        pytest.skip("needs an x86-64 CPU with AVX2 (OpenBLAS's Haswell kernels)")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_NUM_THREADS="4")
    done = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_killed_run_resumes_to_the_same_file(tmp_path):
    (tmp_path / "full").mkdir(), (tmp_path / "resumed").mkdir()
    full, resumed = tmp_path / "full" / "s.h5", tmp_path / "resumed" / "s.h5"
    spec = _spec(shard_size=10)
    sim.simulate(spec, full, progress=False)
    shard_dir = tmp_path / "resumed" / "s.h5.shards"
    shard_dir.mkdir()
    sim._run_shard(spec, 1, str(shard_dir / "shard_00001.h5"))  # one shard done before the kill
    (shard_dir / "shard_00002.h5.tmp").write_bytes(b"half-written")  # the shard in flight
    sim.simulate(spec, resumed, progress=False)
    assert resumed.read_bytes() == full.read_bytes()
    assert sorted(p.name for p in shard_dir.iterdir()) == [f"shard_{i:05d}.h5" for i in range(3)]


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


# --- training prior and randomised nuisances (issue 10) ------------------------------------

from mtopnet.galaxies.population import SFH_FAMILIES, TrainingPrior, sample_training_params  # noqa: E402
from mtopnet.instruments import nuisance as nu  # noqa: E402
from mtopnet.instruments.noise import observe_arm_conditions  # noqa: E402

SURVEY_CONTENT = {
    "labels": {"av": 5.292388252913952, "eta": 24.0, "halpha_flux": 129.8360892534256, "hmag": 283.6507091522217,
               "log_u": -30.711613655090332, "log_zsol": -7.97445210814476, "logmstar": 109.58660125732422,
               "logsfr": 5.8460074588656425, "logsfr_inst": 5.261745493859053, "oiii_flux": 123.57552909851074,
               "r_e": 3.1025536507368088, "sigma_v": 778.7752571105957, "type": 0.0, "z": 14.366183085623065},
    # arm: sum of flux, sum of flux^2, sum of ivar, masked pixels
    "arms": {"H": (-124.87535986877458, 44345.93776321363, 406979697.8983667, 9144),
             "RI": (2045.814900834369, 428.78094470249636, 67031098.82745767, 2772),
             "YJ": (1155.2087685590573, 2704.2701962628994, 255068950.8285358, 9132)},
}
"""Shard 0 of the survey + fixed default (n=12, seed=5), summed: the same output as before the
training prior and the nuisances existed (without the later ``light_fraction`` label). Sums,
not a hash of the bytes: numpy's exp and log differ in the last bits between CPUs (its AVX-512
kernels against the others), so the bytes do. The sum of flux in the H arm (~-125 of pixels
~+-25) is compared to the arm's absolute scale."""


def test_survey_default_output_unchanged():
    spec = _spec(n=12, seed=5)
    assert not spec.extended
    assert {"population", "nuisance", "training_prior"}.isdisjoint(spec.provenance())
    batch = sim.simulate_shard(spec, 0)
    assert set(batch.labels) - {"light_fraction"} == set(SURVEY_CONTENT["labels"])
    for k, total in SURVEY_CONTENT["labels"].items():
        assert float(np.asarray(batch.labels[k], dtype=np.float64).sum()) == pytest.approx(total, rel=1e-6, abs=1e-6), k
    assert set(batch.arms) == set(SURVEY_CONTENT["arms"])
    for a, (f_sum, f2_sum, ivar_sum, n_masked) in SURVEY_CONTENT["arms"].items():
        f = batch.arms[a]["flux"].astype(np.float64)
        scale = float(np.abs(f).sum())
        assert abs(f.sum() - f_sum) <= 1e-6 * scale, a
        assert (f ** 2).sum() == pytest.approx(f2_sum, rel=1e-6), a
        assert batch.arms[a]["ivar"].astype(np.float64).sum() == pytest.approx(ivar_sum, rel=1e-6), a
        assert int(batch.arms[a]["mask"].astype(bool).sum()) == n_masked, a


def test_training_prior_covers_mass_evenly_at_every_z(rng):
    prior = TrainingPrior(quiescent_fraction=0.4, logm_range=(9.0, 12.0))
    p = sample_training_params(20000, rng, (0.6, 3.0), prior)
    for lo in (0.6, 1.2, 1.8, 2.4):
        m = p.logmstar[(p.z >= lo) & (p.z < lo + 0.6)]
        counts = np.histogram(m, bins=6, range=(9.0, 12.0))[0]
        assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()
    assert p.quiescent.mean() == pytest.approx(0.4, abs=0.02)
    ssfr = p.logsfr100_target - p.logmstar
    assert ssfr.min() < -12.8 and ssfr.max() > -8.5
    assert np.all(ssfr[p.quiescent] <= -11.0) and np.all(ssfr[~p.quiescent] >= -11.0)
    assert set(np.unique(p.sfh_family)) == set(SFH_FAMILIES)
    assert p.av.min() < 0.05 and p.av.max() > 2.8
    assert p.sigma_v.min() < 35 and p.sigma_v.max() > 350
    assert p.log_zsol.min() < -1.4 and p.log_zsol.max() > 0.3
    assert 0.02 < p.agn.mean() < 0.06


def test_training_sfh_families_have_their_shapes(model, rng):
    """Post-starbursts: a young (0.1-0.5 Gyr) burst and little star formation now."""
    p = sample_training_params(600, rng, (0.6, 3.0))
    rest = model.rest_frame(p)
    psb = p.sfh_family == 5
    assert np.all(p.quiescent[psb]) and np.all(~p.quiescent[p.sfh_family == 4])
    assert np.all(rest.logsfr[psb] - rest.logmstar[psb] <= -11.0 + 1e-6)
    # the burst bin dominates the old bins' SFR: ratios jump down going back in time
    assert np.all(p.sfh_logratio[psb].min(axis=1) <= -1.0)


def test_training_spectra_have_enough_without_lines():
    """>= 30% of the training population's spectra have no line at S/N >= 3."""
    spec = _spec(n=200, seed=11, population="training", nuisance="randomised", shard_size=200)
    b = sim.simulate_shard(spec, 0)
    snr, q = b.labels["line_snr"], b.labels["quiescent"].astype(bool)
    assert (snr < sim.LINE_DETECTED_SNR).mean() >= 0.30
    assert 0.2 < q.mean() < 0.45
    assert np.median(snr[q]) < 3 < np.median(snr[~q])
    assert np.all((b.labels["hmag"] >= 20) & (b.labels["hmag"] <= 25.5))
    assert b.labels["max_line_flux"].max() < 1e-13  # erg/s/cm2, not 1e-17 units
    for key in ("nu_airmass", "nu_xsw", "nu_fluxcal_amp_H", "sfh_family"):
        assert key in b.labels and len(b.labels[key]) == 200


def test_training_randomised_run_virtual_equals_consolidated(tmp_path):
    spec = _spec(n=16, seed=4, population="training", nuisance="randomised", nuisance_off=("lsf",), shard_size=8)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    sim.simulate(spec, a, workers=1, progress=False)
    sim.simulate(spec, b, workers=1, progress=False, consolidate=True)  # the shards of 2 Dask workers: above
    _same_store(a, b)
    assert not (tmp_path / "b.h5.shards").exists()
    with h5py.File(a) as f:
        assert np.all(f["labels/nu_lsf_scale"][:] == 1.0)
        assert "training_prior" in f.attrs["provenance"]


def test_nuisance_draws_within_documented_ranges(rng):
    exp = Exposure(8 * 3600)
    c = nu.draw_conditions(3000, 3, exp, np.full(3000, 0.3), rng)
    assert np.all((c.airmass >= 1.0) & (c.airmass <= 2.0)) and np.ptp(c.airmass) > 0.9
    assert np.all((c.seeing >= 0.5) & (c.seeing <= 1.3))
    hours = c.n_sub * exp.sub_exposure / 3600
    assert hours.min() == 1.0 and hours.max() == 12.0
    assert np.median(hours) == pytest.approx(np.sqrt(12.0), rel=0.15)  # log-uniform
    assert np.all((c.sky_residual >= 0) & (c.sky_residual <= 0.02))
    assert (c.sky_residual[~c.xsw] == 0).mean() == pytest.approx(nu.SKY_RESIDUAL_NONE, abs=0.03)
    assert np.all(c.sky_residual[c.xsw] == 0) and c.xsw.mean() == pytest.approx(nu.XSW_SHARE, abs=0.03)
    assert np.all((c.source_re >= 0) & (c.source_re <= 1.5)) and (c.source_re == 0).mean() > 0.1
    assert np.all((c.lsf_scale >= 0.85) & (c.lsf_scale <= 1.15))
    assert np.all(np.abs(c.wave_shift) <= 0.3) and np.all((c.telluric_left >= 0) & (c.telluric_left <= 0.3))
    assert np.all((c.throughput >= 0) & (c.throughput <= 1))
    for start in range(0, 3000, nu.GROUP_SIZE):  # shared within groups of <= 25
        g = slice(start, start + nu.GROUP_SIZE)
        assert np.ptp(c.airmass[g]) == 0 and np.ptp(c.lsf_scale[g]) == 0
    wave = np.linspace(6470, 9340, 500)
    cal = nu.fluxcal_factor(c, 0, wave)
    base = 1 + c.fluxcal_offset[:, 0, None]
    assert np.all(np.abs(cal / base - 1) <= 0.2 + 1e-9) and np.all(np.abs(base - 1) <= 0.1)
    assert np.max(np.abs(cal / base - 1)) > 0.19


@pytest.mark.parametrize("name", nu.NUISANCES)
def test_each_nuisance_switches_off_alone(name):
    exp = Exposure(8 * 3600)
    re = np.full(400, 0.3)
    on = nu.draw_conditions(400, 3, exp, re, np.random.default_rng(5))
    off = nu.draw_conditions(400, 3, exp, re, np.random.default_rng(5), off=(name,))
    fixed = nu.nominal_conditions(400, 3, exp, re)
    changed = [k for k in on.__dict__ if not np.array_equal(getattr(on, k), getattr(off, k))]
    assert changed, name
    fixed.sky_residual = np.where(off.xsw, 0.0, fixed.sky_residual)  # XSW objects have no scale error
    for k in changed:
        if not (name == "xsw" and k == "sky_residual"):
            assert np.array_equal(getattr(off, k), getattr(fixed, k)), (name, k)


def test_nominal_conditions_reproduce_the_fixed_observation(inst, rng):
    """With every nuisance off, the per-object path gives the fixed path's ivar and noise."""
    arm = inst.arm("H")
    src = _flat_fnu(arm, 20.0, n=300)
    for exp in (Exposure(8 * 3600), Exposure(8 * 3600, sky_residual=0.0)):
        ref = observe_arm(arm, src, exp, np.random.default_rng(1), 0.2)
        cond = nu.nominal_conditions(300, 3, exp, np.full(300, 0.2 * 1.1774))
        new = observe_arm_conditions(arm, 2, src, exp.sub_exposure, cond, np.random.default_rng(2))
        good = (ref.ivar[0] > 0) & ((ref.mask[0] & MASK_SKYLINE) == 0)
        assert np.allclose(new.ivar[:, good], ref.ivar[:, good], rtol=1e-4)
    assert np.array_equal(new.mask, ref.mask)
    expected = np.median(ref.flux[:, good])  # sky_residual 0: the mean flux of the source
    assert np.median(new.flux[:, good]) == pytest.approx(expected, rel=0.01)
    assert new.gain[0, good] == pytest.approx(np.median(new.gain[0, good]), rel=0.02)


def test_xsw_doubles_the_background_variance(inst):
    arm = inst.arm("H")
    n = 400
    src = _flat_fnu(arm, 28.0, n=n)  # sky-limited
    cond = nu.nominal_conditions(n, 3, Exposure(8 * 3600), np.zeros(n))
    cond.sky_residual[:] = 0.0
    stare = observe_arm_conditions(arm, 2, src, 1800.0, cond, np.random.default_rng(3))
    cond.xsw[:] = True
    xsw = observe_arm_conditions(arm, 2, src, 1800.0, cond, np.random.default_rng(4))
    good = (stare.ivar[0] > 0) & ((stare.mask[0] & MASK_SKYLINE) == 0)
    ratio = np.median(stare.ivar[0, good] / xsw.ivar[0, good])
    assert ratio == pytest.approx(2.0, rel=0.05)
    pull = (xsw.flux[:, good] - xsw.flux[:, good].mean(axis=0)) * np.sqrt(xsw.ivar[:, good])
    assert pull.std() == pytest.approx(1.0, abs=0.05)


def test_training_options_refused_with_the_survey_population(tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(out), "--quiescent-fraction", "0.5",
                 "--quiet"]) == 2
    assert "--population training" in capsys.readouterr().err
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(out), "--nuisance-off", "lsf", "--quiet"]) == 2
    assert "--nuisance randomised" in capsys.readouterr().err
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(out), "--population", "training",
                 "--nuisance", "randomised", "--nuisance-off", "moon", "--quiet"]) == 2
    assert "unknown moon" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_line_snr_scales_with_flux_and_counts_the_sky_error_coherently(inst, model):
    rng = np.random.default_rng(8)
    p = sample_training_params(24, rng, (0.6, 1.5), TrainingPrior(quiescent_fraction=0.0))
    rest = model.rest_frame(p)
    cond = nu.nominal_conditions(24, 3, Exposure(8 * 3600), p.r_e)
    cond.sky_residual[:] = 0.0
    arms = sim.observe_galaxies_conditions(inst, model, p, rest, cond, 1800.0, rng)
    snr = sim.line_snr(inst, model, p, rest, arms, cond)
    double = rest.__class__(rest.cont, rest.line_lum * 2, rest.logmstar, rest.logsfr, rest.logsfr_inst)
    assert np.allclose(sim.line_snr(inst, model, p, double, arms, cond), 2 * snr, rtol=1e-6)
    # Without sky error, F sqrt(sum phi^2 ivar) of the strongest line: >= 3 for most star-forming
    assert np.median(snr) > 3
    cond.sky_residual[:] = 0.02
    noisy = sim.observe_galaxies_conditions(inst, model, p, rest, cond, 1800.0, np.random.default_rng(8))
    worse = sim.line_snr(inst, model, p, rest, noisy, cond)
    assert np.all(worse <= snr * 1.001 + 1e-9) and np.median(worse / np.maximum(snr, 1e-9)) < 0.98


# --- the share of a galaxy's light in its spectrum -------------------------------------------

from mtopnet.instruments import light_fraction  # noqa: E402


def test_light_fraction_is_the_calibrated_flux_of_an_extended_source_over_a_point_source(inst, rng):
    """An extended source's calibrated spectrum holds light_fraction of its flux (the
    calibration corrects a point source's aperture loss), a point source all of it."""
    exp = Exposure(8 * 3600, seeing=1.0, airmass=1.3)
    ratios, weights = [], []
    for arm in inst.arms:
        src = _flat_fnu(arm, 14.0, 2)  # bright: photon noise < 1e-3 per pixel
        spec = observe_arm(arm, src, exp, rng, source_sigma=np.array([0.0, 0.5 / 1.1774]))
        good = spec.ivar[0] > 0
        ratios.append(np.median(spec.flux[1, good] / spec.flux[0, good]))
        weights.append(len(arm.wave))
    measured = np.average(ratios, weights=weights)
    f = light_fraction(inst, 1.0, 1.3, [0.0, 0.5])
    assert f[0] == pytest.approx(1.0)
    assert measured == pytest.approx(f[1], abs=0.01)
    assert 0.3 < f[1] < 0.95


def test_light_fraction_falls_with_source_size_and_rises_with_seeing(inst):
    f = light_fraction(inst, 0.8, 1.2, [0.0, 0.2, 0.5, 1.0, 2.0])
    assert np.all(np.diff(f) < 0) and f[-1] > 0
    assert light_fraction(inst, 1.3, 1.2, 0.5)[0] > light_fraction(inst, 0.5, 1.2, 0.5)[0]


@pytest.mark.parametrize("kw", [{}, {"population": "training", "nuisance": "randomised"}])
def test_simulate_records_light_fraction_and_the_backfill_script_agrees(tmp_path, kw):
    """Every simulated store holds light_fraction; scripts/add_light_fraction.py computes the
    same from what an older store recorded (its conditions or its exposure and r_e)."""
    spec = _spec(n=24, seed=8, shard_size=24, **kw)
    out = tmp_path / "s.h5"
    sim.simulate(spec, out, workers=1, progress=False, consolidate=True)
    with h5py.File(out, "r+") as f:
        frac = f["labels/light_fraction"][:]
        assert frac.dtype == np.float32 and np.all((frac > 0) & (frac <= 1.0 + 1e-6))
        assert frac.std() > 0  # galaxies of different sizes (and conditions)
        del f["labels/light_fraction"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "add_light_fraction.py"
    run = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with h5py.File(out, "r") as f:
        assert np.allclose(f["labels/light_fraction"][:], frac, rtol=1e-5)
    again = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and "already" in again.stdout
    junk = tmp_path / "junk.h5"
    junk.write_text("not a store")
    bad = subprocess.run([sys.executable, str(script), str(junk), str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"{junk}: not an HDF5 file"
    assert "already" in bad.stdout  # the stores after a bad one are still done
