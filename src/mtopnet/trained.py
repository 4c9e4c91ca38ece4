"""A checkpoint ready for inference: :func:`load_model` turns a shipped name or a ``.pt`` file
(:mod:`mtopnet.checkpoint`) into a :class:`TrainedModel` (network, preprocessor, z bins,
calibration, training arms, line list).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_network, read_checkpoint
from .config import ConfigError, UserError
from .constants import C_KMS
from .devices import resolve_device
from .lines import Line, lines_from_records
from .model import MTopNet, ZBinning
from .preprocess import PreprocessConfig, Preprocessor
from .quality import QualityCalibration
from .refine import ScanConfig

DEFAULT_MODEL = "moons-lr"
"""The model ``mtopnet predict`` uses without ``--model``."""


def lsf_sigma_kms(instrument: dict) -> float:
    """One LSF sigma (km/s) for the model grid, from a checkpoint's ``instrument`` record:
    each training arm's resolution (FWHM = c/R)
    and native pixel (a box: sigma = width / sqrt(12)) in quadrature, weighted by the arm's
    span in log-wavelength. 30 km/s for MOONS LR; 0 without resolution information."""
    total, weight = 0.0, 0.0
    for arm in instrument.get("arms", []) if instrument else []:
        if not arm.get("resolution") or not arm.get("wave_min") or not arm.get("wave_max"):
            continue
        s_lsf = C_KMS / arm["resolution"] / 2.3548
        s_pix = C_KMS * (arm.get("dloglam") or 0.0) / math.sqrt(12.0)
        span = math.log(arm["wave_max"] / arm["wave_min"])
        total += span * math.hypot(s_lsf, s_pix)
        weight += span
    return total / weight if weight > 0 else 0.0


@dataclass
class TrainedModel:
    """A checkpoint ready for inference.

    network: the MTopNet in eval mode, on the device it was loaded to; preprocessor: built
    from the checkpoint's constants;
    zbins: the redshift bins; label_norm: {"logmstar": (mean, std), "logsfr": (mean, std)};
    calibration: p_dz01/QOP map (None for a checkpoint saved before calibration: p_dz01 is
    then the raw PDF mass within +-0.01 and qop is 1); coverage: (n_pix,) bool grid pixels
    the training arms cover; instrument: training arms (name, range, resolution, dloglam);
    lines: line list; source: where it was loaded from; meta: version, provenance, train_config;
    scan: how prediction scans the templates over the whole z range and combines them with
    the PDF (None for a checkpoint calibrated without it: the PDF alone, refined);
    calibration_net: the p_dz01/QOP map of the network's PDF alone, for ``--no-refine``
    (``mtopnet calibrate --scan`` fits it beside ``calibration``; None in checkpoints made
    before it, whose ``--no-refine`` flags then come from ``calibration``, made for the
    default path).
    The preprocessor voids data outside ``coverage`` (NetInputs.outside_coverage).
    """

    network: MTopNet
    preprocessor: Preprocessor
    zbins: ZBinning
    label_norm: dict[str, tuple[float, float]]
    calibration: QualityCalibration | None
    coverage: np.ndarray
    instrument: dict
    lines: tuple[Line, ...]
    source: str
    meta: dict
    scan: ScanConfig | None = None
    calibration_net: QualityCalibration | None = None

    @property
    def lsf_sigma_kms(self) -> float:
        """The training arms' line-spread function as one sigma, km/s (:func:`lsf_sigma_kms`)."""
        return lsf_sigma_kms(self.instrument)


def shipped_model_path(name: str) -> Path:
    """Path of the shipped checkpoint ``name`` (``mtopnet/models/NAME.pt``; it may not exist)."""
    return Path(str(resources.files("mtopnet") / "models" / f"{name}.pt"))


def load_model(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a shipped model by name (default ``moons-lr``) or a checkpoint file.

    device: where the network runs, ``cpu`` (default) or ``cuda`` (UserError without a GPU;
    :func:`~mtopnet.devices.resolve_device`); everything else stays on the CPU.
    """
    dev = resolve_device(device)
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    path = Path(name)
    if not (path.suffix == ".pt" or path.exists() or os.sep in name):
        path = shipped_model_path(name)
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.pt"))
            raise UserError(f"model {name!r} is not shipped with this mtopnet "
                            f"(shipped: {', '.join(shipped) or 'none yet'}); train one with `mtopnet train` "
                            f"and pass --model PATH")
    payload = read_checkpoint(path)
    try:
        net = build_network(payload, path)
        pre_config = PreprocessConfig.from_dict(dict(payload["preprocess"]))
        zb = payload["z_bins"]
        zbins = ZBinning(float(zb["z_min"]), float(zb["z_max"]), float(zb["max_width"]))
        cal = QualityCalibration.from_dict(payload["calibration"]) if payload.get("calibration") else None
        cal_net = QualityCalibration.from_dict(payload["calibration_net"]) if payload.get("calibration_net") else None
        norm = {k: (float(v[0]), float(v[1])) for k, v in payload["label_norm"].items()}
        lines = lines_from_records(payload.get("lines", []))
        scan = ScanConfig.from_dict(dict(payload["scan"])) if payload.get("scan") else None
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: inconsistent checkpoint ({exc})") from None
    if zbins.n_bins != net.config.n_z_bins:
        raise UserError(f"{path}: inconsistent checkpoint (z bins {zbins.n_bins} vs network {net.config.n_z_bins})")
    coverage = payload.get("coverage")
    coverage = np.asarray(coverage, dtype=bool) if coverage is not None else np.ones(pre_config.n_pix, bool)
    if coverage.shape != (pre_config.n_pix,):
        raise UserError(f"{path}: inconsistent checkpoint (coverage {coverage.shape}, grid {pre_config.n_pix})")
    pre = Preprocessor(pre_config, coverage=coverage)
    meta = {"mtopnet_version": payload.get("mtopnet_version"), "provenance": payload.get("provenance", {}),
            "train_config": payload.get("train_config")}
    return TrainedModel(network=net.to(dev), preprocessor=pre, zbins=zbins, label_norm=norm, calibration=cal,
                        coverage=coverage, instrument=dict(payload.get("instrument") or {}), lines=lines,
                        source=str(path), meta=meta, scan=scan, calibration_net=cal_net)


__all__ = ["DEFAULT_MODEL", "lsf_sigma_kms", "TrainedModel", "load_model", "shipped_model_path"]
