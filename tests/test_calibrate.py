"""Calibration with the full-range template scan: the combination weights, the fit-evidence
quality model, the interval levels, and what prediction does with them."""
from __future__ import annotations

import json

import numpy as np

from mtopnet.calibrate import calibrate_with_scan, garbage_batch
from mtopnet.catalogue import ZWarn
from mtopnet.checkpoint import read_checkpoint
from mtopnet.predict import predict_batches, scan_sky, training_instrument
from mtopnet.quality import FEATURES, FIT_FEATURES
from mtopnet.store import iter_store, read_store
from mtopnet.trained import load_model


def test_garbage_spectra_carry_no_galaxy(toy_stores):
    batch = read_store(toy_stores[1], 0, 20)
    junk = garbage_batch(batch, np.random.default_rng(1), 7)
    assert len(junk) == 20 and str(junk.ids[0]) == "garbage-7"
    for name, arm in junk.arms.items():
        assert arm["flux"].shape == batch.arms[name]["flux"].shape
        assert np.array_equal(arm["ivar"], batch.arms[name]["ivar"])
        assert np.all(np.isfinite(arm["flux"]))


def test_calibrate_with_scan_writes_scan_and_fit_features(tiny_model_path, toy_stores, tmp_path):
    out = tmp_path / "scan.pt"
    report = calibrate_with_scan(tiny_model_path, [toy_stores[1]], out, garbage_fraction=0.2, batch_size=64)
    payload = read_checkpoint(out)
    assert payload["scan"]["w_net"] == report["w_net"] and payload["scan"]["t"] == report["t"]
    assert set(FIT_FEATURES) <= set(payload["calibration"]["features"])
    assert report["n_garbage"] > 0 and report["n"] == 120 + report["n_garbage"]
    lo68, lo95 = payload["calibration"]["interval_levels"]
    assert 0 < lo68 <= lo95 < 1
    assert abs(report["coverage68"] - 0.68) < 0.1
    model = load_model(out)
    assert model.scan is not None
    # the training arms' sky is fitted by default, where the instrument loads (not the toy one's)
    assert model.scan.sky is (training_instrument(model) is not None)
    assert (scan_sky(model) is None) is not model.scan.sky
    rows = next(predict_batches(model, iter_store(toy_stores[2], 40)))
    assert {"SCANNED", "SCAN_Z", "SCAN_DCHI2"} <= set(rows)
    assert rows["SCANNED"].sum() > 0
    capped = (rows["ZWARN"] & int(ZWarn.OUT_OF_DOMAIN | ZWarn.REFINE_DISAGREE | ZWarn.SCAN_DISAGREE)) != 0
    assert np.all(rows["QOP"][capped] <= 2)
    # DELTACHI2 is finite wherever a fit ran: the scan's where the refinement fitted one peak
    fitted = rows["FITMETHOD"] == "PCA"
    assert fitted.any() and np.all(np.isfinite(rows["DELTACHI2"][fitted]))
    # no-signal input is never confident
    junk = garbage_batch(read_store(toy_stores[2], 0, 40), np.random.default_rng(5), 0)
    jrows = next(predict_batches(model, [junk]))
    assert np.all(jrows["QOP"] <= 2)
    # the network's PDF alone (--no-refine) has a calibration of its own, on the network's features
    assert payload["calibration_net"]["features"] == list(FEATURES)
    assert report["network_alone"]["qop4"]["n"] >= 0 and model.calibration_net is not None
    net = next(predict_batches(model, iter_store(toy_stores[2], 40), refine=False, with_net_pdf=True))
    summary = {k[2:]: v for k, v in net.items() if k.startswith("q_")}
    p_net, qop_net = model.calibration_net.apply(summary)
    assert np.allclose(net["P_DZ01"], p_net.astype(net["P_DZ01"].dtype)) and np.array_equal(net["QOP"], qop_net)
    assert not np.allclose(net["P_DZ01"], model.calibration.apply(summary)[0].astype(net["P_DZ01"].dtype))


def test_calibrate_cli_chooses_the_scan_basis(tiny_model_path, toy_stores, tmp_path, capsys):
    """``--scan-templates`` and ``--scan-lines`` set the scan's basis in the checkpoint; an
    unknown line group is one line and exit code 2."""
    from mtopnet.cli import main
    out = tmp_path / "scan4.pt"
    assert main(["-q", "calibrate", str(tiny_model_path), str(toy_stores[1]), "--scan", "--scan-templates", "4",
                 "--scan-lines", "none", "--no-scan-sky", "--garbage-fraction", "0", "--out", str(out)]) == 0
    scan = read_checkpoint(out)["scan"]
    assert scan["n_templates"] == 4 and list(scan["lines"]) == [] and scan["sky"] is False
    capsys.readouterr()
    assert main(["-q", "calibrate", str(tiny_model_path), str(toy_stores[1]), "--scan", "--scan-lines", "Hgamma-ish",
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Hgamma-ish" in err[0] and not (tmp_path / "x.pt").exists()
    # errors name the option; the scan's options without --scan are refused, not ignored
    for argv, message in ((["--scan", "--scan-templates", "0"], "--scan-templates: must be at least 1"),
                          (["--scan", "--scan-templates", "99"], "--scan-templates: must be 1-"),
                          (["--scan", "--scan-lines", ""], "--scan-lines: unknown line groups ['']"),
                          (["--scan-lines", "none"], "they need --scan"),
                          (["--no-scan-sky"], "they need --scan")):
        assert main(["-q", "calibrate", str(tiny_model_path), str(toy_stores[1]), *argv,
                     "--out", str(tmp_path / "y.pt")]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "120 validation spectra" not in line]
        assert len(err) == 1 and message in err[0], (argv, err)  # (the toy store's size is warned of)
    assert not (tmp_path / "y.pt").exists()


def test_validation_stores_are_grouped_by_simulator():
    """Two stores of one simulator are one group of the combination's fit, not two votes."""
    from mtopnet.calibrate import simulator_groups

    own = {"attrs": {"provenance": '{"seed": 1002, "population": "training"}'}}
    xsim = [{"attrs": {"provenance": f'{{"generator": "benchmarks/cross_sim.py", "seed": {s}}}'}}
            for s in (6001, 6002)]
    other = {"attrs": {"provenance": '{"generator": "someone else"}'}}
    bare = {"attrs": {}}
    assert simulator_groups([own, *xsim]) == (["mtopnet simulate", "benchmarks/cross_sim.py"], [0, 1, 1])
    assert simulator_groups([xsim[0], own, other, xsim[1], bare])[1] == [0, 1, 2, 0, 1]


def test_calibrate_never_replaces_the_model_unasked(tiny_model_path, toy_stores, tmp_path, capsys):
    """Without --out, calibrate needs --overwrite to replace MODEL; an existing --out needs
    --overwrite too, and an unwritable one is refused before any work. Each refusal is one line,
    exit code 2, and leaves the files as they were."""
    import shutil

    from mtopnet.cli import main
    model = tmp_path / "m.pt"
    shutil.copy(tiny_model_path, model)
    before = model.read_bytes()
    assert main(["-q", "calibrate", str(model), str(toy_stores[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--overwrite" in err[0]
    existing = tmp_path / "old.pt"
    existing.write_bytes(b"keep")
    assert main(["-q", "calibrate", str(model), str(toy_stores[1]), "--out", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"keep"
    assert main(["-q", "calibrate", str(model), str(toy_stores[1]), "--out", str(tmp_path / "no" / "x.pt")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert main(["-q", "calibrate", str(model), str(toy_stores[1]), "--overwrite", "--batch-size", "64"]) == 0
    assert model.read_bytes() != before
    out = capsys.readouterr()
    assert "warning" in out.err and "120 validation spectra" in out.err  # few: said, not refused
    report = out.out
    json.loads(report[:report.rindex("}") + 1])  # valid JSON: no NaN


def test_network_alone_is_added_without_touching_the_rest(tiny_model_path, toy_stores, tmp_path, capsys):
    """``calibrate --scan --network-alone`` fits the --no-refine calibration alone: the same one
    a full ``--scan`` calibration fits (same data and seed), and the default path's calibration
    and scan stay as they were."""
    import torch

    from mtopnet.checkpoint import save_checkpoint
    from mtopnet.cli import main
    full = tmp_path / "full.pt"
    calibrate_with_scan(tiny_model_path, [toy_stores[1]], full, garbage_fraction=0.2, batch_size=64)
    old = read_checkpoint(full)
    bare = dict(old)
    del bare["calibration_net"]
    older = tmp_path / "older.pt"
    save_checkpoint(older, bare)
    out = tmp_path / "added.pt"
    assert main(["-q", "calibrate", str(older), str(toy_stores[1]), "--scan", "--network-alone",
                 "--garbage-fraction", "0.2", "--batch-size", "64", "--out", str(out)]) == 0
    new = read_checkpoint(out)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert same(new["calibration"], old["calibration"]) and new["scan"] == old["scan"]
    assert all(torch.equal(new["state_dict"][k], old["state_dict"][k]) for k in old["state_dict"])
    assert same(new["calibration_net"], old["calibration_net"])
    capsys.readouterr()
    assert main(["-q", "calibrate", str(tiny_model_path), str(toy_stores[1]), "--network-alone",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "need --scan" in capsys.readouterr().err
