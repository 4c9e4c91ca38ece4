"""The whole chain on a tiny instrument and a tiny network, through the CLI:
instrument YAML -> simulate -> train -> predict (a store and real SDSS files) -> evaluate.

Kept to well under a minute on two cores: one 600-pixel arm, 300 spectra, a ~20k-parameter
network, two epochs. Only loose accuracy is asserted: the point is that every step runs
from the user's own files and writes what the next step reads.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtopnet.catalogue import CATALOGUE_COLUMNS, CATALOGUE_DTYPES, ZWarn, read_catalogue
from mtopnet.cli import main

DATA = Path(__file__).parent / "data"
SDSS_FILES = sorted(str(p) for p in (DATA / "sdss").glob("spec-*.fits"))
DESI_FILES = sorted(str(p) for p in (DATA / "desi").glob("coadd-*.fits"))

INSTRUMENT = {
    "name": "tiny-optical",
    "description": "one-arm optical test spectrograph",
    "site": "Apache Point Observatory",
    "sky_model": "sdss-apo",
    "fibre_diameter": 2.0,
    "telescope": {"diameter": 2.5, "obscuration": 1.08},
    "observing": {"airmass": 1.2, "seeing": 1.4, "sub_exposure": 900},
    "arms": {"V": {"wave_min": 4500.0, "wave_max": 7500.0, "resolution": 600, "sampling": 2.0,
                   "read_noise": 3.0, "dark": 2.0, "throughput": 0.25}},
}

TRAIN_CONFIG = {
    "seed": 0,
    "num_threads": 2,
    "line_half_width": 2.0,
    "preprocess": {"wave_min": 4500.0, "wave_max": 7500.0, "n_pix": 256, "n_continuum": 16,
                   "continuum_window_kms": 6000.0},
    "redshift": {"z_min": 0.0, "z_max": 0.6, "max_width": 0.01},
    "model": {"stem_channels": 8, "stem_kernel": 4, "stem_stride": 2, "stage_channels": [8, 16, 16],
              "line_factor": 4, "line_hidden": 16, "continuum_hidden": 16, "latent": 32, "z_hidden": 32,
              "property_hidden": 16, "dropout": 0.0},
    "optim": {"epochs": 2, "batch_size": 32, "lr": 0.003, "final_lr": 1e-5, "patience": 3, "eval_batch_size": 128},
}


def _cli(argv: list[str], capsys) -> tuple[str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err


@pytest.mark.slow  # simulates, trains and predicts: ~50 s on two cores
def test_simulate_train_predict_evaluate_on_a_users_instrument(tmp_path, capsys):
    torch.set_num_threads(2)
    inst = tmp_path / "tiny-optical.yaml"
    inst.write_text(yaml.safe_dump(INSTRUMENT))
    cfg = tmp_path / "train-tiny.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CONFIG))
    common = ["--instrument", str(inst), "--exposure", "1h", "--band", "sdss2010-r", "--mag-range", "15", "19.5",
              "--z-range", "0.01", "0.5", "--quiet"]
    stores = {}
    for name, n, seed in (("train", 160, 1), ("val", 80, 2), ("test", 60, 3)):
        stores[name] = tmp_path / f"{name}.h5"
        _cli(["simulate", *common, "--n", str(n), "--seed", str(seed), "--out", str(stores[name])], capsys)

    run = tmp_path / "run"
    out, _ = _cli(["train", "--train", str(stores["train"]), "--val", str(stores["val"]), "--out", str(run),
                   "--config", str(cfg), "--quiet"], capsys)
    assert "model:" in out
    for name in ("model.pt", "best.pt", "last.pt", "config.yaml", "history.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and np.isfinite(summary["val"]["loss"])
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["instrument"]["name"] == str(inst)  # the store's instrument, a user's YAML
    assert ckpt["instrument"]["arms"][0]["resolution"] == 600.0
    assert ckpt["z_bins"]["z_min"] == 0.0 and ckpt["z_bins"]["z_max"] == 0.6

    cat = tmp_path / "cat.csv"
    out, err = _cli(["predict", str(stores["test"]), "--model", str(run / "model.pt"), "--out", str(cat),
                     "--quiet"], capsys)
    assert "60 rows" in out and "warning" not in err
    rows = read_catalogue(cat)
    assert set(CATALOGUE_COLUMNS) <= set(rows) and len(rows["TARGETID"]) == 60
    for col, dt in CATALOGUE_DTYPES.items():
        if dt.kind != "U" and col not in ("CHI2", "DELTACHI2"):  # text; NaN where no fit ran
            assert np.all(np.isfinite(rows[col].astype(float))), col
    assert np.all((rows["Z"] >= 0) & (rows["Z"] <= 0.6)) and set(np.unique(rows["QOP"])) <= {1, 2, 3, 4}
    assert not np.any(rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN)

    report = tmp_path / "report"
    out, _ = _cli(["evaluate", str(cat), "--truth", str(stores["test"]), "--report", str(report)], capsys)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_matched"] == 60 and metrics["selection_band"] == "r"
    z_all = metrics["redshift"]["all"]
    for key in ("frac_dz01", "frac_dz1", "catastrophic", "coverage68", "coverage95", "brier"):
        assert np.isfinite(z_all[key]), key
    assert z_all["frac_dz1"] > 0.1  # loose: two epochs of a tiny net beat nothing
    assert np.isfinite(metrics["logmstar"]["all"]["scatter"])
    assert any(k.startswith("15<r<=") or "<r<=" in k for k in metrics["redshift_by_hmag"])
    for name in ("metrics.md", "success_vs_mag.png", "dz_vs_z.png", "reliability.png", "examples.png"):
        assert (report / name).is_file(), name

    # real DESI and SDSS spectra: read by mtopnet.io, predicted into one catalogue (DESI's
    # integer TARGETIDs and SDSS's names as one text id column), flagged as unlike the
    # training data (0.8 A and 1e-4 dex pixels vs the tiny arm's 5 A), with one-line
    # warnings naming the model's domain
    real = tmp_path / "real.csv"
    out, err = _cli(["predict", *DESI_FILES, *SDSS_FILES, "--model", str(run / "model.pt"), "--out", str(real),
                     "--quiet"], capsys)
    assert "5 rows" in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1  # one for the run, counting the arm layouts: the DESI grid, three SDSS grids
    assert warnings[0].startswith("mtopnet predict: warning: 5 spectra in 4 arm layouts; the first, with arms ")
    assert re.search(r"the model expects tiny-optical \(V 450\d-749\d A, R 600\), read on 4500-7500 A", warnings[0])
    rows = read_catalogue(real)
    assert [str(i) for i in rows["TARGETID"]] == ["39633345008634465", "39089837499744649", "0280-51612-0117",
                                            "0295-51585-0596", "1599-53089-0469"]
    assert np.all(rows["ZWARN"] & ZWarn.OUT_OF_DOMAIN)


@pytest.mark.parametrize("bad, message", [
    ({"redshift": {"z_min": 0.5, "z_max": 0.2}}, "redshift.z_max"),
    ({"preprocess": {"n_pix": 250, "n_continuum": 16}}, "preprocess.n_continuum"),
])
def test_a_bad_training_recipe_names_the_field(tmp_path, capsys, bad, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**TRAIN_CONFIG, **bad}))
    store = tmp_path / "none.h5"
    code = main(["train", "--train", str(store), "--val", str(store), "--out", str(tmp_path / "run"),
                 "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
