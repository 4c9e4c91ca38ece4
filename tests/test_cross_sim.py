"""benchmarks/cross_sim.py: galaxies through moons1d, back through mtopnet's reader.

Needs bagpipes, moons1d (``--no-deps``) and configobj; skipped without them. Slow (two
Bagpipes models are built, ~10 s each on the 2-core machine).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
for mod in ("bagpipes", "moons1d", "configobj", "speclite"):
    if importlib.util.find_spec(mod) is None:
        pytest.skip(f"{mod} is not installed", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import cross_sim as cs  # noqa: E402

HALPHA = 6564.61
OIII = 5008.24


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two objects: a bright star-forming galaxy at z = 1.0 (Halpha and [OIII] in YJ) and a quiescent one."""
    out = tmp_path_factory.mktemp("xsim")
    spectra = out / "spectra"
    spectra.mkdir()
    cs.R_SPEC = 5000.0  # coarser model grid: faster, still finer than the LR line-spread function
    models = cs.GalaxyModels()
    observer = cs.Moons1dObserver()
    rows = [cs.generate_one(7999, 0, spectra, models, observer, z=1.0, quiescent=False, family="constant",
                            hmag=20.5),
            cs.generate_one(7999, 1, spectra, models, observer, z=1.6, quiescent=True, family="constant")]
    return out, rows


@pytest.mark.slow
def test_files_read_back_with_three_arms(made):
    from mtopnet.io import read_spectra
    out, rows = made
    files = sorted(str(p) for p in (out / "spectra").glob("*.fits"))
    assert len(files) == 6
    batches = list(read_spectra(files))
    ids = [str(i) for b in batches for i in b.ids]
    assert ids == [cs.object_id(7999, 0), cs.object_id(7999, 1)]
    for b in batches:
        assert list(b.arms) == list(cs.ARMS)
        for arm in b.arms.values():
            assert np.isfinite(arm["flux"]).all() and (arm["ivar"] > 0).mean() > 0.9


@pytest.mark.slow
def test_truth_rows(made):
    _, (sf, q) = made
    assert sf["quiescent"] is False and sf["type"] == 0 and sf["max_line_flux"] > 1e-16
    assert q["quiescent"] is True and q["ssfr"] < cs.SSFR_QUIESCENT and q["logsfr"] == cs.LOGSFR_FLOOR
    assert abs(sf["hmag"] - 20.5) < 1e-9 and cs.H_RANGE[0] <= q["hmag"] <= cs.H_RANGE[1]
    for row in (sf, q):
        assert cs.LOGM_RANGE[0] <= row["logmstar"] <= cs.LOGM_RANGE[1]
        assert row["logmstar"] < row["logmformed"]  # living mass < formed mass
    assert sf["line_snr"] > 20 and q["line_snr"] < sf["line_snr"]


@pytest.mark.slow
def test_line_positions_match_truth_z(made):
    """Halpha and [OIII] peaks of the bright star-forming galaxy sit at (1 + z_true) x rest."""
    from mtopnet.io import read_spectra
    out, (sf, _) = made
    z = sf["z"]
    batch = next(iter(read_spectra(sorted(str(p) for p in (out / "spectra").glob(f"{sf['id']}_*.fits")))))
    for rest in (HALPHA, OIII):
        centre = rest * (1 + z)
        arm = next(a for a in batch.arms.values() if a["wave"][0] < centre < a["wave"][-1])
        wave, flux = arm["wave"], arm["flux"][0]
        near = np.abs(wave - centre) < 40
        cont = np.median(flux[near])
        peak = wave[near][np.argmax(flux[near] - cont)]
        # Bagpipes' line list is in air (2.8e-4 below vacuum): allow that plus a pixel
        assert abs(peak / rest - 1 - z) < 1e-3 * (1 + z), (rest, peak, centre)


@pytest.mark.slow
def test_resume_reuses_files(made):
    out, rows = made
    again = cs.cached_row(7999, 0, out / "spectra")
    assert again == rows[0]
    assert cs.cached_row(7999, 5, out / "spectra") is None


@pytest.mark.slow
def test_truth_table_and_store_round_trip(made, tmp_path):
    from mtopnet.store import read_store
    out, rows = made
    cs.write_truth(rows, tmp_path / "truth.fits", {"SEED": 7999})
    truth = cs.read_truth(tmp_path / "truth.fits")
    assert list(truth["id"]) == [r["id"] for r in rows]
    np.testing.assert_allclose(truth["z_drawn"], [r["z"] for r in rows])  # the redshift Bagpipes was given
    np.testing.assert_allclose(truth["z"], cs.vacuum_redshift([r["z"] for r in rows]))  # shown on the vacuum grid
    assert np.all(truth["z"] < truth["z_drawn"])
    cs.write_store_from_fits(out / "spectra", truth, tmp_path / "s.h5", {"seed": 7999})
    batch = read_store(tmp_path / "s.h5")
    assert list(batch.ids) == list(truth["id"]) and list(batch.arms) == list(cs.ARMS)
    np.testing.assert_allclose(batch.labels["z"], truth["z"])
    np.testing.assert_array_equal(batch.labels["type"], [0, 1])


def test_metrics_on_known_values():
    """|dz| success, qop purity/share, ECE and coverage on a hand-made catalogue."""
    z_true = np.array([1.0, 1.0, 2.0, 2.0])
    cat = {"Z": np.array([1.005, 1.5, 2.0, 2.02]), "QOP": np.array([4, 4, 3, 1]),
           "P_DZ01": np.array([0.95, 0.95, 0.55, 0.05]),
           "Z_LO68": z_true - 0.01, "Z_HI68": z_true + 0.01, "Z_LO95": np.array([0.9, 0.9, 2.1, 1.9]),
           "Z_HI95": np.array([1.1, 1.1, 2.2, 2.1]), "LOGMSTAR": np.array([10.1, 10.0, 9.9, 11.0]),
           "SCAN_Z": np.array([1.0, 1.0, 2.5, np.nan])}  # NaN: the scan did not run (not right)
    truth = {"hmag": np.array([21.0, 23.0, 23.5, 24.5]), "logmstar": np.array([10.0, 10.0, 10.0, 10.0])}
    m = cs.tool_metrics(z_true, cat, np.ones(4, bool), "mtopnet", truth)
    assert m["success"] == 0.5 and m["catastrophic"] == 0.25 and m["scan_success"] == 0.5
    assert m["qop4"] == {"purity": 0.5, "share": 0.5} and m["qop>=3"]["share"] == 0.75
    assert m["coverage68"] == 1.0 and m["coverage95"] == 0.75
    # bins: 0.95 (2 objects, 1 right) -> |0.95-0.5|, 0.55 (right) -> 0.45, 0.05 (wrong) -> 0.05
    assert m["ece_p_dz01"] == pytest.approx(0.5 * 0.45 + 0.25 * 0.45 + 0.25 * 0.05)
    assert m["logmstar_n_h24"] == 3 and m["logmstar_bias_h24"] == pytest.approx(0.0)
    rr = cs.tool_metrics(z_true, {"z": cat["Z"], "zwarn": np.array([0, 4, 0, 0])}, np.ones(4, bool), "redrock")
    assert rr["zwarn0"]["share"] == 0.75 and rr["zwarn0"]["purity"] == pytest.approx(2 / 3)


def test_paired_counts():
    """Discordant pairs and the McNemar error of the difference, on a hand-made sample."""
    z_true = np.array([1.0, 1.0, 2.0, 2.0, 2.5])
    ours = {"Z": np.array([1.0, 1.5, 2.0, 2.5, 2.5])}  # right: 0, 2, 4
    rr = {"z": np.array([1.5, 1.0, 2.0, 2.0, 2.5])}  # right: 1, 2, 3, 4
    p = cs.paired_counts(z_true, ours, rr, np.ones(5, bool))
    assert (p["mtopnet_only"], p["redrock_only"]) == (1, 2)
    assert p["difference"] == pytest.approx(-0.2) and p["sigma"] == pytest.approx(np.sqrt(3) / 5)
    assert cs.paired_counts(z_true, ours, rr, np.zeros(5, bool)) == {"n": 0}


def _finished_run(d: Path, seed: int, z: np.ndarray, dz_ours: np.ndarray, dz_rr: np.ndarray, sha: str) -> None:
    """A folder as the script leaves it: truth.fits, mtopnet.parquet, redrock.fits, cross_sim.json;
    the tools' z are the truth's (vacuum) z plus ``dz_ours`` and ``dz_rr``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtopnet.baselines.redrock import RedrockCatalogue, write_catalogue
    d.mkdir()
    n = len(z)
    ids = np.array([f"x{seed}-{i:06d}" for i in range(n)])
    rows = [{"id": ids[i], "index": i, "z": z[i], "z_drawn": z[i], "logmstar": 10.0, "logmformed": 10.2,
             "logsfr": 0.0, "ssfr": -10.0, "hmag": 21.0 + i, "quiescent": i % 2, "type": i % 2, "family": "delayed",
             "av": 0.5, "metallicity": 0.0, "logu": -3.0, "veldisp": 150.0, "halpha_flux": 1e-17,
             "oiii_flux": 1e-17, "max_line_flux": 1e-17, "line_snr": 5.0, "gen_cpu_s": 0.5} for i in range(n)]
    cs.write_truth(rows, d / "truth.fits", {"SEED": seed})
    z_true = cs.read_truth(d / "truth.fits")["z"]
    z_ours, z_rr = z_true + dz_ours, z_true + dz_rr
    cols = {"TARGETID": ids, "Z": z_ours, "QOP": np.full(n, 4), "P_DZ01": np.full(n, 0.9),
            "Z_LO68": z_ours - 0.01, "Z_HI68": z_ours + 0.01, "Z_LO95": z_ours - 0.02, "Z_HI95": z_ours + 0.02,
            "LOGMSTAR": np.full(n, 10.0)}
    table = pa.table(cols).replace_schema_metadata({"MODELSHA": sha})
    pq.write_table(table, d / "mtopnet.parquet")
    write_catalogue(RedrockCatalogue(ids=ids, z=z_rr, zerr=np.full(n, 1e-4), zwarn=np.zeros(n, int),
                                     deltachi2=np.full(n, 50.0), chi2=np.full(n, 1000.0),
                                     npixels=np.full(n, 10000)), d / "redrock.fits")
    (d / "cross_sim.json").write_text(json.dumps({"seed": seed}))


def test_pool_concatenates_runs_and_refuses_mixed_models(tmp_path):
    z = np.array([1.0, 1.5, 2.0])
    _finished_run(tmp_path / "a", 7001, z, np.array([0, 0.1, 0]), np.zeros(3), "aa")
    _finished_run(tmp_path / "b", 7002, z, np.zeros(3), np.array([0.1, 0, 0]), "aa")
    md, res = cs.pool([str(tmp_path / "a"), str(tmp_path / "b")])
    assert res["all"]["n"] == 6 and "7001" in md and "7002" in md
    assert res["all"]["mtopnet"]["success"] == pytest.approx(5 / 6)
    assert res["all"]["redrock"]["success"] == pytest.approx(5 / 6)
    assert (res["all"]["paired"]["mtopnet_only"], res["all"]["paired"]["redrock_only"]) == (1, 1)
    _finished_run(tmp_path / "c", 7003, z, np.zeros(3), np.zeros(3), "bb")
    with pytest.raises(RuntimeError, match="different model files"):
        cs.pool([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(RuntimeError, match="seed repeats"):
        cs.pool([str(tmp_path / "a"), str(tmp_path / "a")])
    assert cs.main(["--pool", str(tmp_path / "a"), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
