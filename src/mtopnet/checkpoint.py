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
    weights_sha256    SHA-256 of the state_dict's tensors (:func:`weights_sha256`), added on save
    (training only)   optimizer, scheduler, epoch, best, patience_left, history

Files are written under ``NAME.tmp`` and renamed, so a killed job never leaves half a file; a
full disk or read-only folder is a one-line UserError (:func:`mtopnet.store.write_file_atomic`).
Reading verifies integrity before anything is used: the CRC of every member of the archive
(``torch.save`` writes a zip file), then, when the checkpoint stores one, the weights' hash.
Damaged bytes inside a tensor therefore end as a one-line :class:`UserError` naming the
file; checkpoints written before the hash was added are checked by the CRCs alone.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, UserError
from .model import ModelConfig, MTopNet
from .store import write_file_atomic

FORMAT = "mtopnet-checkpoint"
FORMAT_VERSION = 1


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state_dict: for each entry in sorted key order, its name, dtype, shape
    and the tensor's raw bytes (CPU, contiguous). Independent of how the file was zipped."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (with format keys and ``weights_sha256`` added) to ``path``."""
    extra = {"weights_sha256": weights_sha256(payload["state_dict"])} if "state_dict" in payload else {}
    buffer = io.BytesIO()  # built in memory, written with plain I/O: a full disk is a one-line UserError
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload, **extra}, buffer)
    write_file_atomic(path, buffer.getbuffer())


def _check_archive(path: Path) -> None:
    """UserError if a zip-format checkpoint has a member whose CRC does not match its bytes."""
    if not zipfile.is_zipfile(path):
        return  # torch.load reports foreign and legacy files
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise UserError(f"{path}: not a readable mtopnet checkpoint (corrupt, truncated or foreign file)") from None
    if broken is not None:
        raise UserError(f"{path}: model file is damaged (checksum error in {broken}); "
                        "restore it from a good copy or reinstall mtopnet")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); any failure is one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    _check_archive(path)
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
    stored = payload.get("weights_sha256")
    if stored is not None:
        try:
            actual = weights_sha256(payload["state_dict"])
        except (AttributeError, TypeError, RuntimeError):
            actual = None
        if actual != stored:
            raise UserError(f"{path}: model weights are damaged (SHA-256 of the weights does not match the "
                            "one stored at saving); restore the file from a good copy")
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


__all__ = ["FORMAT", "FORMAT_VERSION", "weights_sha256", "save_checkpoint", "read_checkpoint", "build_network"]
