"""train M-TOPnet on a simulated store (validation each epoch, resumable, calibrated)

``train(train_store, val_store, out_dir, config)`` does the whole job:

1. preprocess each store ONCE into a float16 cache under ``out_dir/cache/<key>/`` (key =
   store fingerprint + preprocessing constants; a complete cache is reused, e.g. on resume);
2. train with AdamW and a one-cycle schedule, batches prefetched by a thread from the
   memory-mapped cache while torch uses ``num_threads`` cores; validate every epoch (loss and
   the fraction with |dz| < 0.01); keep ``best.pt`` (lowest validation loss) and ``last.pt``
   (full resume state, written after every epoch: a killed run loses at most one epoch);
   stop early after ``patience`` epochs without improvement;
3. fit the quality calibration (``p_dz01``, QOP) on the validation set with the best weights
   and write ``model.pt``, the inference checkpoint (see :mod:`mtopnet.checkpoint`).

Files in ``out_dir``: ``config.yaml`` (resolved), ``history.jsonl`` (one line per epoch),
``last.pt``, ``best.pt``, ``model.pt``, ``summary.json``, ``cache/``.

Under ``torchrun`` (:mod:`mtopnet.devices`) the run is data-parallel: each global batch (the
single-process order) is split between the processes, rank ``r`` taking rows ``r::world``;
each process's loss is scaled so that DistributedDataParallel's averaged gradient is the
gradient of the global batch's mean loss, i.e. the update of a single-process run. Rank 0
builds the caches, validates, calibrates and writes every file; ``last.pt`` holds the plain
network's weights and rank-independent optimiser and schedule states, so a run resumes with
any number of processes (docs/scale.md).

Over 500 lines: the cache, the loop and the resume state are one workflow whose parts share
the run folder's layout; split, each part would have to re-derive it.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from . import __version__
from .checkpoint import read_checkpoint, save_checkpoint
from .config import ConfigError, UserError, from_mapping, load_yaml, to_mapping
from .devices import (
    DEVICES,
    Processes,
    all_reduce_sum,
    barrier,
    broadcast_object,
    data_parallel,
    join_process_group,
    leave_process_group,
    processes_from_env,
    resolve_device,
)
from .instruments import load_instrument
from .lines import LINES, line_waves, lines_as_records
from .logs import progress_bar, progress_enabled
from .model import LossWeights, ModelConfig, MTopNet, ZBinning, count_parameters, multitask_loss, task_losses
from .model.line_head import line_target
from .preprocess import PreprocessConfig, Preprocessor
from .quality import SUCCESS_DZ, fit_calibration, pdf_summary
from .store import (
    PROPERTY_LABELS,
    iter_store,
    open_store,
    spectrum_property,
    store_info,
    write_error,
    write_file_atomic,
)

COMMAND = "train"
log = logging.getLogger(__name__)
CACHE_VERSION = 2
_DERIVED_MODEL_FIELDS = ("n_pix", "n_continuum_features", "n_z_bins", "wave_min", "dloglam", "z_min", "z_max",
                         "line_waves", "scale_feature")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation. ``lr`` is the one-cycle peak (after ``warmup_fraction`` of the steps),
    annealed (cosine) to ``final_lr``; ``patience`` epochs without a lower validation loss
    stop the run; ``grad_clip`` bounds the gradient norm."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    final_lr: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4
    patience: int = 5
    grad_clip: float = 5.0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.final_lr < self.lr:
            raise ConfigError(f"optim.final_lr: must be within (0, lr={self.lr}), got {self.final_lr}")
        if not 0 < self.warmup_fraction < 1:
            raise ConfigError(f"optim.warmup_fraction: must be within (0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ConfigError("optim.weight_decay: must be >= 0 and optim.grad_clip > 0")


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (``configs/train-moons-lr.yaml``); every field has a default.

    instrument: name recorded in the checkpoint (default: the training store's ``instrument``
        attribute); its arms' coverage and resolution tell predict what is in-domain.
    seed: seeds weights, batch order and dropout.  num_threads: torch intra-op threads (per
        process when several train together).
    line_half_width: line-location target half-width, input pixels (paper: 5).
    """

    instrument: str | None = None
    seed: int = 0
    num_threads: int = 2
    line_half_width: float = 5.0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    redshift: ZBinning = field(default_factory=ZBinning)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.num_threads < 1:
            raise ConfigError(f"num_threads: must be >= 1, got {self.num_threads}")
        if not self.line_half_width > 0:
            raise ConfigError(f"line_half_width: must be > 0, got {self.line_half_width}")

    @classmethod
    def from_dict(cls, raw: Any, where: str = "train") -> "TrainConfig":
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            for key in _DERIVED_MODEL_FIELDS:
                if key in raw["model"]:
                    raise ConfigError(f"{where}.model.{key}: is derived (from preprocess and redshift); remove it")
        return from_mapping(cls, raw, where).resolved()

    def resolved(self) -> "TrainConfig":
        """This config with the model's derived fields filled in from preprocess, redshift and the line list."""
        model = dataclasses.replace(self.model, n_pix=self.preprocess.n_pix,
                                    n_continuum_features=self.preprocess.n_continuum_features,
                                    scale_feature=self.preprocess.scale_feature,
                                    n_z_bins=self.redshift.n_bins, wave_min=self.preprocess.wave_min,
                                    dloglam=self.preprocess.dloglam, z_min=self.redshift.z_min,
                                    z_max=self.redshift.z_max, line_waves=tuple(float(w) for w in line_waves(LINES)))
        return dataclasses.replace(self, model=model)

    def as_dict(self) -> dict:
        return to_mapping(self)


def load_train_config(path: str | Path | None) -> TrainConfig:
    """The recipe in ``path`` (YAML), or the defaults; errors name the field and the file."""
    if path is None:
        return TrainConfig().resolved()
    raw = load_yaml(path)
    try:
        return TrainConfig.from_dict(raw or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- cache


def store_fingerprint(path: str | Path) -> str:
    """A hash identifying a store's content without reading it all: size, ids, attributes,
    every arm's wavelengths and its first and last spectra."""
    h = hashlib.blake2b(digest_size=16)
    with open_store(path) as f:
        h.update(str(os.path.getsize(path)).encode())
        h.update(np.asarray(f["ids"]).tobytes())
        h.update(json.dumps({k: str(v) for k, v in sorted(f.attrs.items())}).encode())
        for arm in sorted(f["arms"]):
            g = f["arms"][arm]
            h.update(arm.encode() + np.asarray(g["wave"]).tobytes())
            if g["flux"].shape[0]:
                h.update(g["flux"][0].tobytes() + g["flux"][-1].tobytes() + g["ivar"][-1].tobytes())
    return h.hexdigest()


@dataclass
class Cache:
    """A preprocessed store on disk: float16 memmaps plus labels in memory.

    spectrum: (N, 2, n_pix) float16; continuum: (N, n_features) float16; labels: name -> (N,)
    float64 (z, logmstar, logsfr, type, hmag; NaN where the store has none; logmstar and
    logsfr of the light in the spectrum, :func:`mtopnet.store.spectrum_property`); ids (N,);
    valid_fraction (N,) float32.
    """

    path: Path
    spectrum: np.ndarray
    continuum: np.ndarray
    labels: dict[str, np.ndarray]
    ids: np.ndarray
    valid_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def stack(cls, caches: list["Cache"]) -> "Cache":
        """Several caches read as one, in the given order (the memory maps are not copied)."""
        if len(caches) == 1:
            return caches[0]
        return cls(path=caches[0].path, spectrum=_StackedRows([c.spectrum for c in caches]),
                   continuum=_StackedRows([c.continuum for c in caches]),
                   labels={k: np.concatenate([c.labels[k] for c in caches]) for k in _CACHE_LABELS},
                   ids=np.concatenate([c.ids for c in caches]),
                   valid_fraction=np.concatenate([c.valid_fraction for c in caches]))


class _StackedRows:
    """Row access to arrays (N_i, ...) of one dtype as if concatenated: ``rows[idx]`` for an
    integer index array gives (len(idx), ...) in the order of ``idx``."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for k in np.unique(which):
            rows = which == k
            out[rows] = self.parts[k][idx[rows] - self.offsets[k]]
        return out


_CACHE_LABELS = ("z", "logmstar", "logsfr", "type", "hmag")


def _open_cache(folder: Path) -> Cache:
    lab = np.load(folder / "labels.npz")
    return Cache(path=folder, spectrum=np.load(folder / "spectrum.npy", mmap_mode="r"),
                 continuum=np.load(folder / "continuum.npy", mmap_mode="r"),
                 labels={k: lab[k] for k in _CACHE_LABELS}, ids=lab["ids"], valid_fraction=lab["valid_fraction"])


def _reserved_memmaps(shapes: dict[Path, tuple[int, ...]]) -> list[np.memmap]:
    """New float16 ``.npy`` memory maps, one per path and shape, whose disk blocks are all
    allocated before any is mapped (OSError if the disk has no room, nothing left mapped), so
    writing into them cannot fail later."""
    for path, shape in shapes.items():
        header_only = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
        del header_only
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    return [np.load(path, mmap_mode="r+") for path in shapes]


def build_cache(store: str | Path, preprocess: PreprocessConfig, root: str | Path, progress: bool = True,
                chunk: int = 1024) -> Cache:
    """Preprocess ``store`` into ``root/<key>/`` once; reuse it if complete (``meta.json`` present)."""
    key = hashlib.blake2b(f"{store_fingerprint(store)}:{preprocess.key()}:{CACHE_VERSION}".encode(),
                          digest_size=10).hexdigest()
    folder = Path(root) / key
    if (folder / "meta.json").is_file():
        return _open_cache(folder)
    try:
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted build
        folder.mkdir(parents=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    info = store_info(store)
    n = info["n"]
    if n == 0:
        raise UserError(f"{store}: the store holds no objects")
    try:  # disk space reserved up front: writing a memory map to a full disk would kill the process (SIGBUS)
        spec, cont = _reserved_memmaps({folder / "spectrum.npy": (n, 2, preprocess.n_pix),
                                        folder / "continuum.npy": (n, preprocess.n_continuum_features)})
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise write_error(folder, exc) from None
    labels = {k: np.full(n, np.nan) for k in _CACHE_LABELS}
    ids = np.zeros(n, dtype=np.int64)
    valid = np.zeros(n, dtype=np.float32)
    pre = Preprocessor(preprocess)
    start = 0
    with progress_bar(total=n, desc=f"preprocess {Path(store).name}", unit="spec", progress=progress) as bar:
        for batch in iter_store(store, batch_size=chunk):
            stop = start + len(batch)
            x = pre(batch)
            spec[start:stop] = np.clip(x.spectrum, -6e4, 6e4)
            cont[start:stop] = np.clip(x.continuum, -6e4, 6e4)
            for k in _CACHE_LABELS:
                if k in PROPERTY_LABELS and k in batch.labels:
                    labels[k][start:stop] = spectrum_property(batch.labels, k)
                elif k in batch.labels:
                    labels[k][start:stop] = np.asarray(batch.labels[k], dtype=np.float64)
            ids[start:stop] = batch.ids
            valid[start:stop] = x.valid_fraction
            start = stop
            bar.update(len(batch))
    spec.flush()
    cont.flush()
    del spec, cont
    try:
        np.savez(folder / "labels.npz", ids=ids, valid_fraction=valid, **labels)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise write_error(folder, exc) from None
    meta = {"store": str(store), "n": n, "preprocess": preprocess.as_dict(), "cache_version": CACHE_VERSION,
            "arms": {a: [float(w[0]), float(w[-1]), len(w)] if len(w) else [] for a, w in info["arms"].items()},
            "attrs": {k: str(v) for k, v in info["attrs"].items()}}
    write_file_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())  # marks the cache complete
    return _open_cache(folder)


# ----------------------------------------------------------------------------- batches


@dataclass
class LabelNorm:
    """Standardisation of log M* and log SFR: (x - mean) / std."""

    logmstar: tuple[float, float]
    logsfr: tuple[float, float]

    @classmethod
    def fit(cls, labels: dict[str, np.ndarray]) -> "LabelNorm":
        def stats(x: np.ndarray) -> tuple[float, float]:
            x = x[np.isfinite(x)]
            return (float(x.mean()), float(max(x.std(), 1e-3))) if len(x) else (0.0, 1.0)
        return cls(logmstar=stats(labels["logmstar"]), logsfr=stats(labels["logsfr"]))

    def as_dict(self) -> dict:
        return {"logmstar": list(self.logmstar), "logsfr": list(self.logsfr)}


def _load_batch(cache: Cache, idx: np.ndarray, norm: LabelNorm, zbins: ZBinning) -> dict[str, torch.Tensor]:
    idx = np.sort(idx)
    lab = cache.labels
    return {
        "spectrum": torch.from_numpy(cache.spectrum[idx].astype(np.float32)),
        "continuum": torch.from_numpy(cache.continuum[idx].astype(np.float32)),
        "z": torch.from_numpy(lab["z"][idx].astype(np.float32)),
        "z_index": torch.from_numpy(zbins.index(lab["z"][idx])),
        "logmstar": torch.from_numpy(((lab["logmstar"][idx] - norm.logmstar[0]) / norm.logmstar[1]).astype(np.float32)),
        "logsfr": torch.from_numpy(((lab["logsfr"][idx] - norm.logsfr[0]) / norm.logsfr[1]).astype(np.float32)),
    }


def iterate_batches(cache: Cache, order: np.ndarray, batch_size: int, norm: LabelNorm,
                    zbins: ZBinning, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over ``order`` (indices into the cache), the next one loaded by a thread.

    shard: (rank, world): of each batch of ``batch_size`` consecutive entries of ``order``,
    only rows ``rank::world`` (possibly none); (0, 1) gives whole batches.
    """
    rank, world = shard
    starts = list(range(0, len(order), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_load_batch, cache, order[:batch_size][rank::world], norm, zbins)
        for i in range(len(starts)):
            batch = future.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                future = pool.submit(_load_batch, cache, order[nxt:nxt + batch_size][rank::world], norm, zbins)
            yield batch


class _Task:
    """What the loss needs besides the batch: line list, grid and z bins."""

    def __init__(self, config: TrainConfig, device: torch.device | None = None):
        self.config = config
        self.rest = torch.as_tensor(line_waves(LINES), dtype=torch.float32, device=device)
        self.pre = config.preprocess
        self.factor = config.model.line_factor

    def _target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return line_target(batch["z"], self.rest, self.pre.wave_min, self.pre.dloglam, self.pre.n_pix,
                           self.factor, self.config.line_half_width)

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return multitask_loss(out, batch["z_index"], self._target(batch), batch["logmstar"], batch["logsfr"],
                              self.config.loss_weights)

    def shard_loss(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], counts: dict[str, int],
                   world: int) -> tuple[torch.Tensor, dict[str, float]]:
        """One process's loss on its shard of a global batch, and its share of the batch's parts.

        Each task's loss is a mean over the batch's usable entries (:func:`task_losses`); the
        global batch's mean is sum_r (n_r / N) mean_r, with n_r the shard's and N the batch's
        count (``counts``, from :func:`_usable_counts`). Returning ``world * sum_k w_k (n_r/N_k)
        mean_rk`` makes DistributedDataParallel's average over the ``world`` processes the
        global batch's loss, uneven shards included. The parts returned are (n_r / N_k) mean_rk,
        which summed over the processes give the global batch's parts. An empty shard returns
        a zero that still reaches every parameter (each process must join the all-reduce).
        """
        if len(batch["z"]) == 0:
            return sum(v.sum() for v in out.values()) * 0.0, {k: 0.0 for k in counts}
        parts = task_losses(out, batch["z_index"], self._target(batch), batch["logmstar"], batch["logsfr"])
        local = _usable_counts(batch["z_index"].cpu().numpy(), batch["logmstar"].cpu().numpy(),
                               batch["logsfr"].cpu().numpy())
        share = {k: local[k] / counts[k] if counts[k] else 0.0 for k in parts}
        total = sum(getattr(self.config.loss_weights, k) * world * share[k] * v for k, v in parts.items())
        return total, {k: share[k] * float(v.detach()) for k, v in parts.items()}


def _usable_counts(z_index: np.ndarray, logmstar: np.ndarray, logsfr: np.ndarray) -> dict[str, int]:
    """How many entries each task's mean runs over (:func:`task_losses`): z bins >= 0, all rows
    for the line mask (times its pixels, a common factor), finite labels for M* and SFR."""
    return {"z": int(np.sum(z_index >= 0)), "line": len(z_index),
            "logmstar": int(np.sum(np.isfinite(logmstar))), "logsfr": int(np.sum(np.isfinite(logsfr)))}


def evaluate_cache(net: MTopNet, cache: Cache, task: _Task, norm: LabelNorm, zbins: ZBinning,
                   batch_size: int, keep_pdf: bool = False, device: torch.device | None = None) -> dict[str, Any]:
    """Mean losses, the fraction with |dz| < 0.01, and (optionally) the PDFs, over a cache.

    device: where ``net`` (and ``task``) live; batches are moved there (None: the CPU).
    """
    net.eval()
    sums: dict[str, float] = {}
    n_total = 0
    z_hat, pdfs = [], []
    with torch.inference_mode():
        for batch in iterate_batches(cache, np.arange(len(cache)), batch_size, norm, zbins):
            batch = _to_device(batch, device)
            out = net(batch["spectrum"], batch["continuum"])
            total, parts = task.loss(out, batch)
            b = len(batch["z"])
            for k, v in {"loss": float(total), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n_total += b
            pdf = torch.softmax(out["z_logits"], dim=1).cpu().numpy()
            z_hat.append(pdf_summary(pdf, zbins.edges)["z"])
            if keep_pdf:
                pdfs.append(pdf.astype(np.float32))
    z_hat_all = np.concatenate(z_hat)
    z_true = cache.labels["z"]
    result: dict[str, Any] = {k: v / max(n_total, 1) for k, v in sums.items()}
    result["frac_dz01"] = float(np.mean(np.abs(z_hat_all - z_true) < SUCCESS_DZ))
    if keep_pdf:
        result["pdf"] = np.concatenate(pdfs)
    return result


def _to_device(batch: dict[str, torch.Tensor], device: torch.device | None) -> dict[str, torch.Tensor]:
    """``batch`` with its tensors on ``device`` (the same dict for None or the CPU)."""
    if device is None or device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ----------------------------------------------------------------------------- the run


def instrument_info(name: str | None, arm_waves: dict[str, np.ndarray]) -> dict:
    """Arms the model was trained on: name -> wavelength range, resolution (from the named
    instrument if it loads, else None) and median log-wavelength step."""
    inst = None
    if name:
        try:
                    inst = load_instrument(name)
        except (UserError, ConfigError, ImportError, OSError):
            inst = None
    arms = []
    for arm, wave in arm_waves.items():
        wave = np.asarray(wave, dtype=np.float64)
        res = None
        if inst is not None and arm in inst.arm_names:
            res = float(inst.arm(arm).config.resolution)
        dll = float(np.median(np.diff(np.log(wave)))) if len(wave) > 1 else None
        arms.append({"name": arm, "wave_min": float(wave[0]) if len(wave) else None,
                     "wave_max": float(wave[-1]) if len(wave) else None, "resolution": res, "dloglam": dll})
    return {"name": name, "arms": arms}


def inference_payload(net: MTopNet, config: TrainConfig, norm: LabelNorm, info: dict, coverage: np.ndarray,
                      calibration: dict | None, provenance: dict) -> dict:
    """The inference checkpoint's content (see :mod:`mtopnet.checkpoint`) for ``net``.

    info: training arms from :func:`instrument_info`; coverage: (n_pix,) bool grid pixels
    those arms cover; calibration: :meth:`QualityCalibration.as_dict` or None.
    """
    return {
        "kind": "inference",
        "mtopnet_version": __version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "model_config": config.model.as_dict(),
        "train_config": config.as_dict(),
        "preprocess": config.preprocess.as_dict(),
        "z_bins": {"z_min": config.redshift.z_min, "z_max": config.redshift.z_max,
                   "max_width": config.redshift.max_width, "n_bins": config.redshift.n_bins},
        "lines": lines_as_records(LINES),
        "label_norm": norm.as_dict(),
        "instrument": info,
        "coverage": torch.from_numpy(coverage.copy()),
        "calibration": calibration,
        "provenance": provenance,
    }


def _common_arms(stores: list) -> dict:
    """The first store's :func:`store_info`, after checking every store has the same arms."""
    infos = [store_info(s) for s in stores]
    for s, info in zip(stores[1:], infos[1:], strict=True):
        same = set(info["arms"]) == set(infos[0]["arms"]) and all(
            np.array_equal(info["arms"][a], infos[0]["arms"][a]) for a in info["arms"])
        if not same:
            raise UserError(f"{s}: its arms differ from {stores[0]}'s; training stores must share one instrument")
    return infos[0]


def _init_from(net: MTopNet, path: str | Path, config: TrainConfig) -> LabelNorm:
    """Load ``path``'s weights into ``net``; returns its label standardisation (so the
    property heads keep their meaning). UserError if the model configs differ."""
    ck = read_checkpoint(path)
    if ck.get("model_config") != config.model.as_dict() or ck.get("preprocess") != config.preprocess.as_dict():
        raise UserError(f"{path}: --init needs a checkpoint with this recipe's model and preprocess settings")
    net.load_state_dict(ck["state_dict"])
    norm = ck["label_norm"]
    return LabelNorm(logmstar=tuple(norm["logmstar"]), logsfr=tuple(norm["logsfr"]))


def _write_text(path: Path, text: str) -> None:
    write_file_atomic(path, text.encode())


def train(train_store: str | Path | list, val_store: str | Path, out_dir: str | Path,
          config: TrainConfig | None = None, *, epochs: int | None = None, seed: int | None = None,
          resume: bool = False, progress: bool = True, device: str | torch.device = "cpu",
          init: str | Path | None = None, lr: float | None = None) -> dict[str, Any]:
    """Train, validate, calibrate; returns the summary (also written to ``out_dir/summary.json``).

    ``train_store``: one store or a list of stores read as one training set (same instrument
    arms; UserError otherwise). ``init``: a checkpoint (same model config) whose weights and
    label standardisation start the run (fine-tuning); optimizer and schedule start afresh.

    ``epochs``, ``seed`` and ``lr`` (peak learning rate) override the config's. Without ``resume``, an ``out_dir`` that
    already holds a run (``last.pt``) is refused; with it, training continues from ``last.pt``
    (which must come from the same config and stores; the number of processes may differ).
    ``device``: ``cpu``, ``cuda`` or ``auto`` (:func:`~mtopnet.devices.resolve_device`; under
    torchrun, each process takes GPU ``LOCAL_RANK``). Under torchrun every process calls this
    and gets the summary; rank 0 alone writes the files.
    """
    config = (config or TrainConfig()).resolved()
    if epochs is not None:
        config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, epochs=int(epochs)))
    if seed is not None:
        config = dataclasses.replace(config, seed=int(seed))
    if lr is not None:
        config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=float(lr)))
    out = Path(out_dir)
    if (out / "last.pt").exists() and not resume:
        raise UserError(f"{out}: holds a training run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not (out / "last.pt").exists():
        raise UserError(f"{out}: nothing to resume (no last.pt)")
    train_stores = [train_store] if isinstance(train_store, (str, Path)) else list(train_store)
    if not train_stores:
        raise UserError("--train: at least one store")
    for path in (*train_stores, val_store):
        open_store(path).close()
    procs = processes_from_env()
    dev = resolve_device(device, procs.local_rank)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    owns_group = join_process_group(procs, dev)
    try:
        summary = _run(train_stores, val_store, out, config, resume=resume, progress=progress and procs.is_main,
                       procs=procs, dev=dev, init=init)
        if owns_group:  # every process done (rank 0 writes last) before any leaves the group: a gloo
            barrier(procs)  # process that left early could abort at exit ("terminate called ...")
    finally:
        if owns_group:
            leave_process_group()
    return summary


def _run(train_stores: list, val_store: str | Path, out: Path, config: TrainConfig, *, resume: bool,
         progress: bool, procs: Processes, dev: torch.device, init: str | Path | None) -> dict[str, Any]:
    """The body of :func:`train` in one process of ``procs``, its network on ``dev``."""
    last_path, best_path, model_path = out / "last.pt", out / "best.pt", out / "model.pt"
    main = procs.is_main
    torch.set_num_threads(config.num_threads)

    if not main:
        barrier(procs)  # rank 0 builds the caches, the others open them
    train_cache = Cache.stack([build_cache(s, config.preprocess, out / "cache", progress) for s in train_stores])
    val_cache = build_cache(val_store, config.preprocess, out / "cache", progress)
    if main:
        barrier(procs)
    info_train = _common_arms(train_stores)
    instrument = config.instrument or str(info_train["attrs"].get("instrument", "")) or None
    inst_info = instrument_info(instrument, info_train["arms"])
    coverage = Preprocessor(config.preprocess).coverage(info_train["arms"])
    norm = LabelNorm.fit(train_cache.labels)
    zbins = config.redshift
    train_prints = [store_fingerprint(s) for s in train_stores]
    fingerprints = {"train": train_prints[0] if len(train_prints) == 1 else train_prints,
                    "val": store_fingerprint(val_store)}

    torch.manual_seed(config.seed)
    net = MTopNet(config.model).to(dev)
    if init is not None:
        norm = _init_from(net, init, config)
        fingerprints["init"] = hashlib.sha256(Path(init).read_bytes()).hexdigest()
    task = _Task(config, dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    steps_per_epoch = math.ceil(len(train_cache) / config.optim.batch_size)
    total_steps = max(steps_per_epoch * config.optim.epochs, 4)
    warmup = min(max(config.optim.warmup_fraction, 2.0 / total_steps), 0.5)  # >= 2 warm-up steps
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.optim.lr, total_steps=total_steps, pct_start=warmup,
        div_factor=25.0, final_div_factor=config.optim.lr / 25.0 / config.optim.final_lr)
    state = {"epoch": 0, "best": float("inf"), "best_epoch": -1, "patience_left": config.optim.patience,
             "history": [], "stopped": False}
    if resume:
        ck = read_checkpoint(last_path)
        if ck.get("train_config") != config.as_dict():
            raise UserError(f"{last_path}: was written with a different config; resume with the same --config, "
                            f"--epochs and --seed")
        if ck.get("provenance", {}).get("fingerprints") != fingerprints:
            raise UserError(f"{last_path}: was trained on different stores")
        net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state.update(ck["train_state"])
        torch.set_rng_state(ck["torch_rng"])
    if main:
        _write_text(out / "config.yaml", yaml.safe_dump(config.as_dict(), sort_keys=False))
    provenance = {"train_store": [str(s) for s in train_stores] if len(train_stores) > 1 else str(train_stores[0]),
                  **({"init": str(init)} if init is not None else {}), "val_store": str(val_store),
                  "fingerprints": fingerprints,
                  "seed": config.seed, "n_train": len(train_cache), "n_val": len(val_cache),
                  "n_parameters": count_parameters(net)}
    model = data_parallel(net, procs, dev)  # net itself for one process
    bs = config.optim.batch_size
    labels = train_cache.labels

    while state["epoch"] < config.optim.epochs and not state["stopped"]:
        epoch = state["epoch"]
        net.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_cache))
        if procs.distributed:  # dropout masks: each process its own stream, the same for any resume
            torch.manual_seed(int(np.random.default_rng([config.seed, epoch, procs.rank]).integers(2**62)))
        t0 = time.perf_counter()
        run: dict[str, float] = {}
        seen = 0
        bar = progress_bar(total=len(order), desc=f"epoch {epoch + 1}/{config.optim.epochs}", unit="spec",
                           progress=progress)
        batches = iterate_batches(train_cache, order, bs, norm, zbins, (procs.rank, procs.world))
        for start, batch in zip(range(0, len(order), bs), batches, strict=True):
            batch = _to_device(batch, dev)
            out_t = model(batch["spectrum"], batch["continuum"])
            if procs.distributed:
                rows = order[start:start + bs]
                counts = _usable_counts(zbins.index(labels["z"][rows]), labels["logmstar"][rows],
                                        labels["logsfr"][rows])
                loss, parts = task.shard_loss(out_t, batch, counts, procs.world)
                b, parts = len(rows), {"loss": float(loss.detach()) / procs.world, **parts}
            else:
                loss, parts = task.loss(out_t, batch)
                b, parts = len(batch["z"]), {"loss": float(loss.detach()), **parts}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
            opt.step()
            if sched.last_epoch + 1 < total_steps:
                sched.step()
            seen += b
            for k, v in parts.items():
                run[k] = run.get(k, 0.0) + v * b
            bar.update(b)
            if not procs.distributed:  # a process knows only its share of the loss
                bar.set_postfix(loss=f"{run['loss'] / seen:.3f}", z=f"{run['z'] / seen:.2f}")
        bar.close()
        train_time = time.perf_counter() - t0
        if procs.distributed:  # the shares of every process: the global batches' means
            keys = sorted(run)
            run = dict(zip(keys, all_reduce_sum([run[k] for k in keys], procs, dev), strict=True))
        val = evaluate_cache(net, val_cache, task, norm, zbins, config.optim.eval_batch_size, device=dev) \
            if main else None
        val = broadcast_object(val, procs)
        record = {"epoch": epoch + 1, "train": {k: v / max(seen, 1) for k, v in run.items()},
                  "val": val, "lr": float(sched.get_last_lr()[0]), "train_seconds": train_time,
                  "train_spectra_per_s": seen / max(train_time, 1e-9), "processes": procs.world,
                  "device": str(dev)}
        improved = val["loss"] < state["best"]
        if improved:
            state.update(best=val["loss"], best_epoch=epoch + 1, patience_left=config.optim.patience)
            if main:
                save_checkpoint(best_path, inference_payload(net, config, norm, inst_info, coverage, None,
                                                             {**provenance, "epoch": epoch + 1, "val": val}))
        else:
            state["patience_left"] -= 1
            state["stopped"] = state["patience_left"] <= 0
        state["epoch"] = epoch + 1
        state["history"].append(record)
        if main:
            log.info("epoch %d: train loss %.3f, val loss %.3f, val |dz|<0.01 %.3f, %.0f spectra/s%s", epoch + 1,
                     record["train"]["loss"], val["loss"], val["frac_dz01"], record["train_spectra_per_s"],
                     " (best)" if improved else "")
        if main:
            last = inference_payload(net, config, norm, inst_info, coverage, None, provenance)
            last.update(kind="training", optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        train_state=dict(state), torch_rng=torch.get_rng_state())
            save_checkpoint(last_path, last)
            _write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))

    result = None
    if main:  # calibration on the validation set with the best weights
        best = read_checkpoint(best_path)
        net.load_state_dict(best["state_dict"])
        val = evaluate_cache(net, val_cache, task, norm, zbins, config.optim.eval_batch_size, keep_pdf=True,
                             device=dev)
        summary = pdf_summary(val.pop("pdf"), zbins.edges)
        calibration = fit_calibration(summary, val_cache.labels["z"])
        payload = inference_payload(net, config, norm, inst_info, coverage, calibration.as_dict(),
                                    {**provenance, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                                     "val": val})
        save_checkpoint(model_path, payload)
        result = {"model": str(model_path), "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                  "val": val, "calibration": calibration.report, "n_parameters": count_parameters(net),
                  "history": state["history"]}
        _write_text(out / "summary.json", json.dumps(result, indent=1))
    return broadcast_object(result, procs)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, nargs="+", help="training store(s) (HDF5), read as one training set")
    p.add_argument("--val", required=True, help="validation store (HDF5); also calibrates p_dz01 and QOP")
    p.add_argument("--out", required=True, help="output folder (checkpoints, cache, history)")
    p.add_argument("--config", default=None, help="training recipe YAML (default: built-in defaults)")
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    p.add_argument("--seed", type=int, default=None, help="override seed")
    p.add_argument("--lr", type=float, default=None, help="override optim.lr (peak learning rate)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning; same model config)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu (default), cuda (error without a GPU) or auto; several processes: start with "
                        "torchrun (docs/scale.md)")


def run_cli(args: argparse.Namespace) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs: must be >= 1, got {args.epochs}")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr: must be positive, got {args.lr}")
    config = load_train_config(args.config)
    result = train(args.train, args.val, args.out, config, epochs=args.epochs, seed=args.seed,
                   resume=args.resume, progress=progress_enabled(), device=args.device, init=args.init,
                   lr=args.lr)
    if not processes_from_env().is_main:
        return 0
    print(f"model: {result['model']} (best epoch {result['best_epoch']}, validation |dz|<0.01: "
          f"{result['val']['frac_dz01']:.3f})")
    return 0


__all__ = ["TrainConfig", "OptimConfig", "LabelNorm", "Cache", "load_train_config", "store_fingerprint",
           "inference_payload", "instrument_info", "build_cache", "iterate_batches", "evaluate_cache", "train",
           "COMMAND", "add_arguments", "run_cli"]
