"""calibrate a model's redshift combination, p_dz01, QOP and intervals on validation data

``mtopnet calibrate MODEL.pt VAL_STORE.h5 [VAL_STORE.h5 ...] [--scan] --out NEW.pt`` (or
``--overwrite`` to replace MODEL.pt) runs the model over VALIDATION stores (never the test or
held-out sets) and writes the checkpoint with the new calibration and its provenance.

Without ``--scan`` (:func:`recalibrate`): refits :func:`mtopnet.quality.fit_calibration` on
the refined z and the PDF mass around it (the PDF statistics alone).

With ``--scan`` (:func:`calibrate_with_scan`), four fits, each on the validation data:

1. the weights of the full-range template scan against the network's PDF
   (:func:`mtopnet.refine.fit_combination`: ``w_net``, ``t``), on objects with a redshift
   inside the bins, each simulator's stores weighing the same (up to 3,000 objects, shared
   equally; the simulator is a store's provenance ``generator``): a large set from the
   training simulator must not outvote a small one made another way, where the network is
   least to be trusted, and a second store from the same simulator adds data, not weight;
2. the quality model -- a logistic regression on the PDF statistics and the evidence of the
   fit (:data:`mtopnet.quality.FIT_FEATURES`) followed by an isotonic map -- giving
   ``p_dz01`` and the QOP thresholds, on the full prediction (scan, combination,
   refinement); ``garbage_fraction`` of extra spectra with no galaxy in them (pure noise,
   and featureless power laws, on the validation spectra's own wavelengths and noise) are
   added as certain failures, so that no-signal input is learnt to be unreliable;
3. the central-interval levels that held the truth 68% and 95% of the time
   (:func:`mtopnet.quality.fit_interval_levels`);
4. the same quality model and levels for the network's PDF alone (``calibration_net``: what
   ``mtopnet predict --no-refine`` reports), on the PDF statistics alone
   (:data:`mtopnet.quality.FEATURES`); ``--network-alone`` fits only this one
   (:func:`calibrate_network_alone`).

Validation sets should include spectra unlike the training set (another simulator's, other
galaxy histories): a calibration on the training simulator alone is too confident elsewhere.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .catalogue import match_ids, read_truth
from .checkpoint import read_checkpoint, save_checkpoint
from .columns import capped_p, capped_qop
from .config import ConfigError, UserError
from .constants import SUCCESS_DZ
from .lines import LINE_GROUPS
from .logs import progress_bar, progress_enabled
from .predict import BATCH_SIZE, predict_batches, training_instrument
from .preprocess import apply_sky_masks
from .quality import (
    FEATURES,
    FIT_FEATURES,
    QualityCalibration,
    fit_calibration,
    fit_intervals,
    fit_levels_by_class,
    interval_coverage,
    pdf_summary,
    qop_report,
    refined_summary,
    reliability,
)
from .refine import (
    RefineConfig,
    Refiner,
    ScanConfig,
    ZScanner,
    fit_combination,
    scan_on_bins,
    sky_residual_vectors,
)
from .store import SpectraBatch, check_writable, iter_store, store_info
from .trained import load_model

COMMAND = "calibrate"
log = logging.getLogger(__name__)


def recalibrate(model_path: str | os.PathLike, val_store: str | os.PathLike, out: str | os.PathLike | None = None,
                config: RefineConfig | None = None, batch_size: int = BATCH_SIZE, progress: bool = False) -> dict:
    """Refit a checkpoint's p_dz01 / QOP calibration with refinement applied, on a VALIDATION store.

    Runs the model with refinement over ``val_store`` (never the test or held-out set), fits
    :func:`mtopnet.quality.fit_calibration` on the refined z and the PDF mass around it,
    and writes the checkpoint (``out``, default: in place, atomically) with the new
    calibration and its provenance. Returns {"before": ..., "after": ...}: the QOP report
    and p_dz01 reliability (:func:`reliability`) of the old calibration applied to the
    refined z, and of the new one (both on the validation store itself).
    """
    model = load_model(model_path)
    refiner = Refiner.from_model(model, config)
    truth = read_truth(val_store)
    pdfs, zs, ids, qops, pds = [], [], [], [], []
    with progress_bar(total=store_info(val_store)["n"], desc="recalibrate", unit="spec", progress=progress) as bar:
        for rows in predict_batches(model, iter_store(val_store, batch_size), with_pdf=True, batch_size=batch_size,
                                    refine=refiner):
            pdfs.append(rows["Z_PDF"])
            zs.append(rows["Z"])
            ids.append(rows["TARGETID"])
            qops.append(rows["QOP"])
            pds.append(rows["P_DZ01"])
            bar.update(len(rows["Z"]))
    if not zs:
        raise UserError(f"{val_store}: no spectra")
    pdf = np.concatenate(pdfs).astype(np.float64)
    z = np.concatenate(zs)
    idx = match_ids(np.concatenate(ids), truth["id"])
    if np.any(idx < 0):
        raise UserError(f"{val_store}: ids of the predictions do not match the store's")
    z_true = np.asarray(truth["z"], dtype=np.float64)[idx]
    summ = refined_summary(pdf, model.zbins.edges, z, refiner.config.window)
    success = np.abs(z - z_true) < SUCCESS_DZ
    before = {"success_fraction": float(success.mean()), **qop_report(np.concatenate(qops), success),
              "reliability": reliability(np.concatenate(pds), success)}
    cal = fit_calibration(summ, z_true)
    p_new, _ = cal.apply(summ)
    cal.report["reliability"] = reliability(p_new, success)
    payload = read_checkpoint(model_path)
    payload["calibration"] = cal.as_dict()
    prov = dict(payload.get("provenance") or {})
    prov["calibration"] = {"refined": True, "val_store": str(val_store), "n": int(len(z)),
                           "refine_config": {k: v for k, v in refiner.config.as_dict().items()},
                           "templates": Path(refiner.basis.meta.get("templates", "")).name}
    payload["provenance"] = prov
    save_checkpoint(out if out is not None else model_path, payload)
    return {"before": before, "after": cal.report}


def garbage_batch(template: SpectraBatch, rng: np.random.Generator, start_id: int) -> SpectraBatch:
    """Spectra with no galaxy in them, on ``template``'s arms, noise and masks: half pure noise,
    half a featureless power law (f_lambda ~ lambda^beta, beta in [-3, 1]) at S/N 0.3-30
    per pixel, plus noise. ids ``garbage-<start_id + i>``; their z is NaN (always a failure)."""
    n = len(template)
    arms = {}
    kind = rng.random(n) < 0.5
    beta = rng.uniform(-3.0, 1.0, n)
    snr = 10 ** rng.uniform(-0.5, 1.5, n)
    for name, arm in template.arms.items():
        wave = np.asarray(arm["wave"], dtype=np.float64)
        ivar = np.asarray(arm["ivar"], dtype=np.float32)
        sigma = np.where(ivar > 0, 1.0 / np.sqrt(np.maximum(ivar, 1e-30)), 0.0)
        level = snr[:, None] * np.nanmedian(np.where(ivar > 0, sigma, np.nan), axis=1, keepdims=True)
        law = (wave[None, :] / 12000.0) ** beta[:, None]
        signal = np.where(kind[:, None], 0.0, np.nan_to_num(level) * law)
        flux = (signal + sigma * rng.standard_normal(ivar.shape)).astype(np.float32)
        arms[name] = {"wave": arm["wave"], "flux": flux, "ivar": ivar, "mask": arm["mask"]}
    ids = np.array([f"garbage-{start_id + i}" for i in range(n)])
    return SpectraBatch(ids=ids, arms=arms)


def simulator_of(info: dict) -> str:
    """The simulator that made a store (:func:`mtopnet.store.store_info`): its provenance's
    ``generator``, or ``"mtopnet simulate"`` (the project's simulator writes none)."""
    try:
        prov = json.loads(info["attrs"].get("provenance") or "{}")
    except (TypeError, ValueError):
        prov = {}
    return str(prov.get("generator") or "mtopnet simulate") if isinstance(prov, dict) else "mtopnet simulate"


def simulator_groups(infos: list[dict]) -> tuple[list[str], list[int]]:
    """The simulators of validation stores (:func:`simulator_of`, in order of first appearance)
    and each store's group in the combination's fit: stores made by one simulator form one
    group, and each group weighs the same (:func:`mtopnet.refine.fit_combination`), however
    many stores or spectra it holds."""
    keys = [simulator_of(info) for info in infos]
    order = list(dict.fromkeys(keys))
    return order, [order.index(k) for k in keys]


def _quality_pass(model, refine, val_stores: list, truths: list[dict], n_val: int, garbage_fraction: float,
                  batch_size: int, seed: int, progress: bool, features: tuple[str, ...], desc: str) -> dict:
    """Predict the validation stores (with ``refine``: a Refiner, or False for the network's PDF
    alone) with no-signal spectra added as failures, and fit the quality model on ``features``
    and the interval levels (global and per QOP class, after the caps prediction applies).
    The no-signal spectra come from a generator seeded by ``seed`` alone, so that two passes
    see the same ones."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6A2B]))
    cols: dict[str, list[np.ndarray]] = {}
    zt_all, pdf_all = [], []
    n_garbage = 0
    bar = progress_bar(total=n_val, desc=desc, unit="spec", progress=progress)

    def batches():
        nonlocal n_garbage
        for path, truth in zip(val_stores, truths, strict=True):
            for batch in iter_store(path, batch_size):
                ids = np.asarray(batch.ids).astype(str)
                zt_all.append(truth["z"][match_ids(ids, truth["id"])])
                yield batch
                bar.update(len(batch))  # the validation spectra; the no-signal ones are extra
                k = int(rng.binomial(len(batch), garbage_fraction)) if garbage_fraction > 0 else 0
                if k:
                    junk = garbage_batch(batch.subset(slice(0, k)), rng, n_garbage)
                    n_garbage += k
                    zt_all.append(np.full(k, np.nan))
                    yield junk

    for rows in predict_batches(model, batches(), batch_size=None, refine=refine, with_pdf=True,
                                with_net_pdf=True):
        for k, v in rows.items():
            if k.startswith("q_") or k in ("Z", "Z_NET", "ZWARN"):
                cols.setdefault(k, []).append(np.asarray(v))
        pdf_all.append(rows["Z_PDF"])
    bar.close()
    log.info("%s: %d validation spectra and %d no-signal spectra", desc, n_val, n_garbage)
    zb = model.zbins
    summary = {k[2:]: np.concatenate(v) for k, v in cols.items() if k.startswith("q_")}
    z_true = np.concatenate(zt_all)
    z = np.concatenate(cols["Z"])
    real = np.isfinite(z_true)  # the no-signal spectra have no redshift to hold
    pdf = np.concatenate(pdf_all)[real].astype(np.float64)
    zt_real = z_true[real]
    temperature, levels = fit_intervals(pdf, zb.edges, zt_real)
    cal = fit_calibration(summary, z_true, features=features, interval_levels=levels)
    p_new, qop = cal.apply(summary)
    zwarn_all = np.concatenate(cols["ZWARN"])
    caps = refine is not False  # as prediction caps: with the scan only
    qop, p_new = capped_qop(qop, zwarn_all, caps), capped_p(p_new, zwarn_all, caps)
    qop_real = qop[real]
    by_qop = fit_levels_by_class(pdf, zb.edges, zt_real, qop_real, temperature=temperature)
    cal = dataclasses.replace(cal, interval_temperature=temperature, interval_levels_by_qop=by_qop)
    z_net = np.concatenate(cols["Z_NET"]) if "Z_NET" in cols else z
    return {"cal": cal, "temperature": temperature, "levels": levels, "by_qop": by_qop, "p": p_new, "z": z,
            "z_true": z_true, "pdf": pdf, "zt_real": zt_real, "qop_real": qop_real, "n_garbage": n_garbage,
            "z_net": z_net}


def _fit_network_alone(model, val_stores: list, truths: list[dict], n_val: int, garbage_fraction: float,
                       batch_size: int, seed: int, progress: bool) -> QualityCalibration:
    """The quality model of the network's PDF alone (what ``--no-refine`` reports), with its
    validation report (success, classes, reliability)."""
    q_net = _quality_pass(model, False, val_stores, truths, n_val, garbage_fraction, batch_size, seed, progress,
                          FEATURES, "calibrate (network alone)")
    with np.errstate(invalid="ignore"):
        success = np.abs(q_net["z"] - q_net["z_true"]) < SUCCESS_DZ
    return dataclasses.replace(q_net["cal"], report={
        **q_net["cal"].report, "n": int(len(q_net["z"])), "success_fraction": float(success.mean()),
        "reliability": reliability(q_net["p"], success)})


def _validation_truths(val_stores: list) -> tuple[list[dict], list[dict]]:
    """Each validation store's ids (as text) and true z, and its :func:`store_info`."""
    truths = []
    for path in val_stores:
        truth = read_truth(path)
        truths.append({"id": np.asarray(truth["id"]).astype(str), "z": np.asarray(truth["z"], dtype=np.float64)})
    return truths, [store_info(path) for path in val_stores]


def calibrate_network_alone(model_path: str | os.PathLike, val_stores: list[str | os.PathLike],
                            out: str | os.PathLike | None = None, garbage_fraction: float = 0.05,
                            batch_size: int = 512, seed: int = 0, progress: bool = False) -> dict:
    """Fit only the calibration of the network's PDF alone (``calibration_net``: p_dz01 and QOP
    of ``mtopnet predict --no-refine``) on VALIDATION stores and write the checkpoint (``out``,
    default in place, atomically) with everything else as it was: for a model calibrated with
    the scan before ``calibrate_with_scan`` fitted both (the default path's catalogue is
    unchanged). The no-signal spectra are those ``calibrate_with_scan`` adds with the same seed.
    Returns the fit's validation report. UserError: a model not calibrated with the scan."""
    model = load_model(model_path)
    if model.scan is None:
        raise UserError(f"--network-alone: {model_path} is not calibrated with the scan; calibrate it with --scan "
                        "(which fits both)")
    truths, infos = _validation_truths(val_stores)
    n_val = sum(info["n"] for info in infos)
    model.calibration = model.calibration_net = None
    cal_net = _fit_network_alone(model, val_stores, truths, n_val, garbage_fraction, batch_size, seed, progress)
    payload = read_checkpoint(model_path)
    payload["calibration_net"] = cal_net.as_dict()
    prov = dict(payload.get("provenance") or {})
    prov["calibration_net"] = {"val_stores": [str(p) for p in val_stores], "n": cal_net.report["n"],
                               "garbage_fraction": garbage_fraction, "seed": seed}
    payload["provenance"] = prov
    save_checkpoint(out if out is not None else model_path, payload)
    return {"network_alone": cal_net.report}


def calibrate_with_scan(model_path: str | os.PathLike, val_stores: list[str | os.PathLike],
                        out: str | os.PathLike | None = None, scan: ScanConfig | None = None,
                        garbage_fraction: float = 0.05, batch_size: int = 512, seed: int = 0,
                        progress: bool = False) -> dict:
    """Fit the scan combination, the quality model and the interval levels (module docstring)
    on VALIDATION stores; write the checkpoint (``out``, default in place, atomically).
    Returns a report: the fitted weights, the QOP classes, reliability and interval coverage
    on the validation data, and the share of objects whose answer the scan changed."""
    scan = scan or ScanConfig(sky=True)
    model = load_model(model_path)
    refiner = Refiner.from_model(model)
    zb = model.zbins
    instrument = training_instrument(model)  # its sky masks, as prediction applies them (predict_batches)
    asked_sky, scan = scan.sky, dataclasses.replace(scan, sky=scan.sky and instrument is not None)
    sky = sky_residual_vectors(instrument, model.preprocessor) if scan.sky else None
    scanner = ZScanner.from_scan_config(refiner.basis, (zb.z_min, zb.z_max), scan, sky=sky)
    if asked_sky and not scan.sky:
        log.warning("calibrate: the training instrument cannot be loaded: the scan fits no sky vectors")
    truths, infos = _validation_truths(val_stores)
    n_val = sum(info["n"] for info in infos)
    _, group_of = simulator_groups(infos)
    # 1. the combination's weights, from the network's PDFs and the scan on every object,
    #    on the spectra as prediction sees them
    pdfs, chi2s, oks, ztrue, pnet, groups = [], [], [], [], [], []
    bar = progress_bar(total=n_val, desc="calibrate (scan)", unit="spec", progress=progress)
    for store_index, (path, truth) in enumerate(zip(val_stores, truths, strict=True)):
        for batch in iter_store(path, batch_size):
            groups.append(np.full(len(batch), group_of[store_index]))
            x = model.preprocessor(batch if instrument is None else apply_sky_masks(batch, instrument))
            with torch.inference_mode():
                logits = model.network(torch.from_numpy(x.spectrum), torch.from_numpy(x.continuum))["z_logits"]
            pdf_b = torch.softmax(logits.double(), dim=1).numpy()
            pnet.append(pdf_summary(pdf_b, zb.edges)["p_window"])
            pdfs.append(pdf_b.astype(np.float32))
            res, chi2_bins, _ = scan_on_bins(scanner, x.flux, x.ivar, zb.edges, scan.clip_sigma)
            chi2s.append(chi2_bins.astype(np.float32))
            oks.append(res.ok)
            ztrue.append(truth["z"][match_ids(np.asarray(batch.ids).astype(str), truth["id"])])
            bar.update(len(batch))
    bar.close()
    if not pdfs:
        raise UserError("calibrate: the validation stores hold no spectra")
    w_net, t, info = fit_combination(np.concatenate(pdfs), np.concatenate(chi2s), zb.edges, np.concatenate(ztrue),
                                     ok=np.concatenate(oks), p_net=np.concatenate(pnet), gammas=(0.0, 1.0, 2.0, 3.0),
                                     seed=seed, objective="success", max_objects=3000,
                                     groups=np.concatenate(groups))
    del pdfs, chi2s
    scan = dataclasses.replace(scan, w_net=float(w_net), t=float(t), gamma=float(info["gamma"]))
    model.scan = scan
    model.calibration = model.calibration_net = None
    # 2. the quality model, on the full prediction, with no-signal spectra as failures
    fitted = _quality_pass(model, refiner, val_stores, truths, n_val, garbage_fraction, batch_size, seed, progress,
                           FEATURES + FIT_FEATURES, "calibrate (quality)")
    cal, temperature, levels, by_qop = fitted["cal"], fitted["temperature"], fitted["levels"], fitted["by_qop"]
    z, z_true, pdf, zt_real, qop_real = (fitted[k] for k in ("z", "z_true", "pdf", "zt_real", "qop_real"))
    p_new, n_garbage = fitted["p"], fitted["n_garbage"]
    with np.errstate(invalid="ignore"):
        success = np.abs(z - z_true) < SUCCESS_DZ
    changed = np.abs(fitted["z_net"] - z) > SUCCESS_DZ
    # 3. the quality model of the network's PDF alone (--no-refine), on the same spectra
    cal_net = _fit_network_alone(model, val_stores, truths, n_val, garbage_fraction, batch_size, seed, progress)
    coverage_by_qop = {}
    for q, lvs in by_qop.items():
        sel = qop_real == int(q)
        coverage_by_qop[q] = [interval_coverage(pdf[sel], zb.edges, zt_real[sel], lv, temperature) for lv in lvs]
    report = {
        "w_net": float(w_net), "t": float(t), "gamma": float(info["gamma"]), "combination_fit": info,
        "n": int(len(z)), "n_garbage": n_garbage, "success_fraction": float(success.mean()),
        "scan_changed_answer": float(changed.mean()),
        "interval_levels": list(levels),
        "interval_temperature": temperature,
        "coverage68": interval_coverage(pdf, zb.edges, zt_real, levels[0], temperature),
        "coverage95": interval_coverage(pdf, zb.edges, zt_real, levels[1], temperature),
        "interval_levels_by_qop": by_qop,
        "coverage_by_qop": coverage_by_qop,
        **cal.report,
        "reliability": reliability(p_new, success),
        "network_alone": {k: cal_net.report[k] for k in ("success_fraction", "qop4", "qop3", "qop2", "qop1")
                          if k in cal_net.report},
    }
    cal = dataclasses.replace(cal, report=report)
    payload = read_checkpoint(model_path)
    payload["calibration"] = cal.as_dict()
    payload["calibration_net"] = cal_net.as_dict()
    payload["scan"] = scan.as_dict()
    prov = dict(payload.get("provenance") or {})
    prov["calibration"] = {"scan": True, "val_stores": [str(p) for p in val_stores], "n": int(len(z)),
                           "garbage_fraction": garbage_fraction, "seed": seed,
                           "templates": Path(refiner.basis.meta.get("templates", "")).name}
    payload["provenance"] = prov
    save_checkpoint(out if out is not None else model_path, payload)
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="checkpoint (.pt)")
    p.add_argument("val_stores", nargs="+", metavar="VAL_STORE", help="validation stores (never the test set)")
    p.add_argument("--out", default=None,
                   help="the calibrated checkpoint to write (required unless --overwrite replaces MODEL in place)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists; without --out, replace MODEL itself")
    p.add_argument("--scan", action="store_true",
                   help="calibrate the full-range template scan and the fit-evidence quality model (docs/quality.md)")
    p.add_argument("--garbage-fraction", type=float, default=0.05,
                   help="with --scan: no-signal spectra added as failures, per validation spectrum (default 0.05)")
    p.add_argument("--select-below", type=float, default=ScanConfig.select_below,
                   help="with --scan: scan objects whose network p_dz01 is below this (default: all)")
    p.add_argument("--scan-templates", type=int, default=None,
                   help=f"with --scan: PCA vectors the scan fits, at least 1 and at most the basis's "
                        f"(default {ScanConfig.n_templates})")
    p.add_argument("--scan-lines", default=None,
                   help="with --scan: emission-line groups the scan fits with free amplitudes, comma-separated, "
                        f"or 'none'; groups: {', '.join(g[0] for g in LINE_GROUPS)} "
                        f"(default {','.join(ScanConfig.lines)})")
    p.add_argument("--no-scan-sky", action="store_true",
                   help="with --scan: do not fit the training arms' night sky beside the templates (a sky-subtraction "
                        "residual; fitted by default when the training instrument can be loaded)")
    p.add_argument("--network-alone", action="store_true",
                   help="with --scan: fit only the calibration of the network's PDF alone (p_dz01 and QOP of "
                        "`predict --no-refine`) and keep the rest of MODEL's (for a model calibrated before it)")
    p.add_argument("--batch-size", type=int, default=512, help="spectra per batch (default 512)")


def _scan_basis(n_templates: int | None, lines: str | None) -> tuple[int, tuple[str, ...]]:
    """The scan's PCA vectors and line groups from ``--scan-templates`` and ``--scan-lines``
    (None: the defaults). UserError: fewer than one vector, an empty or unknown line group."""
    n = ScanConfig.n_templates if n_templates is None else n_templates
    if n < 1:
        raise UserError(f"--scan-templates: must be at least 1, got {n}")
    if lines is None:
        return n, ScanConfig.lines
    if lines.strip().lower() == "none":
        return n, ()
    names = tuple(name.strip() for name in lines.split(","))
    known = [g[0] for g in LINE_GROUPS]
    bad = [name for name in names if name not in known]
    if bad:
        raise UserError(f"--scan-lines: unknown line groups {bad}; known: {', '.join(known)}, or 'none'")
    return n, names


MIN_VALIDATION = 1000
"""Below this many validation spectra ``mtopnet calibrate`` warns: the fits it makes (isotonic
p_dz01, QOP thresholds, interval levels per class) need hundreds of objects per class."""


def _json_safe(value):
    """``value`` with NaN and infinities as None, so that the printed report is valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def _warn_if_few(stores: list[str]) -> None:
    """A UserWarning when the validation stores hold fewer than :data:`MIN_VALIDATION` spectra."""
    n_val = sum(store_info(path)["n"] for path in stores)
    if n_val < MIN_VALIDATION:
        warnings.warn(f"calibrate: {n_val} validation spectra; p_dz01, QOP and the interval levels fitted on "
                      f"fewer than {MIN_VALIDATION:,} are noisy and may leave QOP classes empty "
                      "(docs/quality.md)", UserWarning, stacklevel=3)


def run_cli(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
    for path in args.val_stores:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
    if args.out is None and not args.overwrite:
        raise UserError("calibrate: name the calibrated checkpoint with --out NEW.pt, or pass --overwrite to "
                        f"replace {args.model} in place")
    if not Path(args.model).is_file():
        raise UserError(f"{args.model}: no such file")
    check_writable(args.out or args.model, overwrite=args.overwrite or args.out is None)
    if args.scan:
        if not 0 <= args.garbage_fraction < 1:
            raise UserError(f"--garbage-fraction: must be within [0, 1), got {args.garbage_fraction}")
        n_templates, lines = _scan_basis(args.scan_templates, args.scan_lines)
        _warn_if_few(args.val_stores)
        if args.network_alone:
            report = calibrate_network_alone(args.model, args.val_stores, args.out,
                                             garbage_fraction=args.garbage_fraction, batch_size=args.batch_size,
                                             progress=progress_enabled())
            print(json.dumps(_json_safe(report), indent=1, default=float))
            print(f"wrote {args.out or args.model}")
            return 0
        try:
            report = calibrate_with_scan(args.model, args.val_stores, args.out,
                                         ScanConfig(select_below=args.select_below, n_templates=n_templates,
                                                    lines=lines, sky=not args.no_scan_sky),
                                         garbage_fraction=args.garbage_fraction, batch_size=args.batch_size,
                                         progress=progress_enabled())
        except ConfigError as exc:  # the scan's basis: name the option the user gave
            text = str(exc)
            if text.startswith("zscan.n_templates"):
                raise UserError(text.replace("zscan.n_templates", "--scan-templates", 1)) from None
            raise
    else:
        if args.scan_templates is not None or args.scan_lines is not None or args.no_scan_sky or args.network_alone:
            raise UserError("--scan-templates, --scan-lines, --no-scan-sky and --network-alone go with the "
                            "full-range scan: they need --scan")
        if len(args.val_stores) != 1:
            raise UserError("without --scan, calibrate takes one validation store")
        _warn_if_few(args.val_stores)
        report = recalibrate(args.model, args.val_stores[0], args.out, batch_size=args.batch_size,
                             progress=progress_enabled())
    print(json.dumps(_json_safe(report), indent=1, default=float))  # the result: the report, and where it wrote
    print(f"wrote {args.out or args.model}")
    return 0


__all__ = ["recalibrate", "calibrate_with_scan", "calibrate_network_alone", "simulator_of", "simulator_groups",
           "garbage_batch", "COMMAND", "add_arguments", "run_cli"]
