"""Checkpoints: one ``torch.save`` dict holding everything inference needs.

Content (all builtins and tensors, so ``torch.load(weights_only=True)`` reads it)::

    format            "mtopnet-checkpoint";   format_version  1
    mtopnet_version   package version that wrote it
    kind              "inference" (best weights + calibration) or "training" (resume state)
    state_dict        network weights
    model_config      ModelConfig as a dict        preprocess   PreprocessConfig as a dict
    train_config      the resolved TrainConfig     z_bins       {z_min, z_max, max_width, n_bins}
    lines             [{name, wave, kind}, ...]    label_norm   {logmstar: [mean, std], logsfr: [...]}
    instrument        {name, arms: [{name, wave_min, wave_max, resolution, dloglam}]}
    coverage          (n_pix,) bool tensor: grid pixels the training arms cover
    calibration       QualityCalibration as a dict (None until training ends)
    provenance        stores' paths and fingerprints, seed, epochs, validation metrics
    (training only)   optimizer, scheduler, epoch, best, patience_left, history

Files are written under ``NAME.tmp`` and renamed, so a killed job never leaves half a file.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, UserError
from .model import ModelConfig, MTopNet

FORMAT = "mtopnet-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (with format keys added) to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); any failure is one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, AttributeError, IndexError, TypeError):
        raise UserError(f"{path}: not a readable mtopnet checkpoint (corrupt, truncated or foreign file)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an mtopnet checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {payload.get('format_version')} is not supported "
                        f"(this mtopnet reads version {FORMAT_VERSION})")
    missing = [k for k in ("state_dict", "model_config", "preprocess", "z_bins", "label_norm") if k not in payload]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def build_network(payload: dict[str, Any], path: str | Path = "checkpoint") -> torch.nn.Module:
    """The network described by a checkpoint, with its weights loaded, in eval mode."""
    try:
        net = MTopNet(ModelConfig.from_dict(dict(payload["model_config"])))
        net.load_state_dict(payload["state_dict"])
    except (ConfigError, RuntimeError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: checkpoint weights do not match its model config "
                        f"({str(exc).splitlines()[0]})") from None
    return net.eval()


__all__ = ["FORMAT", "FORMAT_VERSION", "save_checkpoint", "read_checkpoint", "build_network"]
