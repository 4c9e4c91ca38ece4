"""refit a model's p_dz01 / QOP calibration with template refinement applied

``mtopnet calibrate MODEL.pt VAL_STORE.h5 [--out NEW.pt]`` runs the model with refinement
over a VALIDATION store (never the test or held-out set), fits
:func:`mtopnet.quality.fit_calibration` on the refined z and the PDF mass around it, and
writes the checkpoint with the new calibration and its provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .catalogue import match_ids, read_truth
from .checkpoint import read_checkpoint, save_checkpoint
from .config import UserError
from .constants import SUCCESS_DZ
from .predict import predict_batches
from .quality import fit_calibration, qop_report, refined_summary, reliability
from .refine import RefineConfig, Refiner
from .store import iter_store
from .trained import load_model

COMMAND = "calibrate"


def recalibrate(model_path: str | os.PathLike, val_store: str | os.PathLike, out: str | os.PathLike | None = None,
                config: RefineConfig | None = None, batch_size: int = 1024, progress: bool = False) -> dict:
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
    done = 0
    for rows in predict_batches(model, iter_store(val_store, batch_size), with_pdf=True, batch_size=batch_size,
                                refine=refiner):
        pdfs.append(rows["z_pdf"])
        zs.append(rows["z"])
        ids.append(rows["id"])
        qops.append(rows["qop"])
        pds.append(rows["p_dz01"])
        done += len(rows["z"])
        if progress:
            print(f"  recalibrate: {done} spectra", file=sys.stderr)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="checkpoint (.pt)")
    p.add_argument("val_store", metavar="VAL_STORE", help="validation store (never the test set)")
    p.add_argument("--out", default=None, help="write here instead of replacing MODEL")
    p.add_argument("--batch-size", type=int, default=1024, help="spectra per batch (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_cli(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if not Path(args.val_store).is_file():
        raise UserError(f"{args.val_store}: no such file")
    report = recalibrate(args.model, args.val_store, args.out, batch_size=args.batch_size, progress=not args.quiet)
    print(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out or args.model}")
    return 0


__all__ = ["recalibrate", "COMMAND", "add_arguments", "run_cli"]
