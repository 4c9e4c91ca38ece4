"""predict redshift PDFs, stellar masses and SFRs -> catalogue (FITS, Parquet or CSV)

Library use::

    model = load_model("moons-lr")                  # shipped name, or a path to a .pt
    for rows in predict_batches(model, batches):    # any iterable of SpectraBatch
        ...                                         # dict column -> (n,) array per batch
    predict_store(model, ["a.h5"], "cat.fits")      # files -> catalogue, streaming

Catalogue columns (one row per input spectrum, input order)::

    id            input identifier
    z             the redshift: the template fit within the PDF's peaks (mtopnet.refine);
                  with --no-refine the PDF point estimate (the z maximising the PDF mass
                  within +-0.01, refined to the PDF mean inside that window, mtopnet.quality)
    z_mean        PDF mean
    z_lo68, z_hi68, z_lo95, z_hi95   central 68% / 95% intervals
    p_dz01        calibrated probability that |z - z_true| < 0.01 (from the PDF mass within
                  +-0.01 of the reported z)
    qop           4 (>= 99% reliable on validation), 3 (>= 90%), 2 (>= 50%), 1 (unreliable)
    zwarn         ZWarn bitmask (0 = no warning)
    logmstar, logmstar_err   log10 M*/Msun and its 1-sigma error
    logsfr, logsfr_err       log10 SFR/(Msun/yr) and its 1-sigma error

With refinement (the default) also, after those (mtopnet.refine, docs/refine.md)::

    z_net         the network's point estimate (the ``z`` of --no-refine)
    z_err         1-sigma error of z (chi2 curvature; half the 68% interval if not refined)
    delta_chi2    chi2 of the next-best PDF peak minus the best (NaN: one peak fitted)
    rchi2         reduced chi2 of the best template fit (NaN if not refined)
    refined       which PDF peak was reported (0 = the main one), -1 if not refined

With ``--pdf`` the PDF is added (FITS: a vector column ``z_pdf`` plus an HDU ``ZBINS`` with
the bin centres; Parquet: a fixed-size-list column ``z_pdf`` and the centres in the schema
metadata; CSV: one column per bin named ``pdf_z<centre>``). Files are written as
``NAME.tmp`` and renamed when complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import build_network, read_checkpoint
from .config import ConfigError, UserError
from .lines import Line, lines_from_records
from .model import MTopNet, ZBinning
from .preprocess import PreprocessConfig, Preprocessor
from .quality import QualityCalibration, pdf_summary
from .store import SpectraBatch, check_writable

if TYPE_CHECKING:
    from .refine import Refiner

COMMAND = "predict"
DEFAULT_MODEL = "moons-lr"
MIN_VALID_FRACTION = 0.2
"""Objects with valid data on less than this fraction of the model grid get LITTLE_COVERAGE."""


class ZWarn(enum.IntFlag):
    """Warning bits of the ``zwarn`` column (0 = no warning). Bits 9-15 are reserved."""

    LITTLE_COVERAGE = 1 << 0  # valid data on < MIN_VALID_FRACTION of the model's grid (qop forced to 1)
    ALL_MASKED = 1 << 1  # no valid pixel at all: outputs are the network's prior (qop 1, p_dz01 0)
    LOW_SN = 1 << 2  # continuum not detected (block medians below their noise); z rests on lines
    BAD_INPUT = 1 << 3  # NaN/inf flux or ivar, or negative ivar, in unmasked pixels (they were masked)
    NOISE_ESTIMATED = 1 << 4  # the reader estimated ivar from the flux scatter (mtopnet.io)
    OUT_OF_DOMAIN = 1 << 5  # wavelength coverage, sampling or resolution differs from the training data
    MULTI_PEAK = 1 << 6  # the PDF has more than one peak holding >= 5% probability within +-0.01
    LOW_PEAK_PROB = 1 << 7  # p_dz01 < 0.5
    REFINE_DISAGREE = 1 << 8  # template fit vs PDF: a weakly-supported peak fits best, or no peak fits (rchi2 > 3)

    @classmethod
    def names(cls, value: int) -> list[str]:
        """Names of the bits set in ``value``."""
        return [bit.name for bit in cls if value & bit and bit.name]


CATALOGUE_COLUMNS = ("id", "z", "z_mean", "z_lo68", "z_hi68", "z_lo95", "z_hi95", "p_dz01", "qop", "zwarn",
                     "logmstar", "logmstar_err", "logsfr", "logsfr_err")
_DTYPES = {"z": np.float64, "z_mean": np.float64, "z_lo68": np.float64, "z_hi68": np.float64,
           "z_lo95": np.float64, "z_hi95": np.float64, "p_dz01": np.float32, "qop": np.int16,
           "zwarn": np.int32, "logmstar": np.float32, "logmstar_err": np.float32, "logsfr": np.float32,
           "logsfr_err": np.float32}
REFINE_COLUMNS = ("z_net", "z_err", "delta_chi2", "rchi2", "refined")
_REFINE_DTYPES = {"z_net": np.float64, "z_err": np.float64, "delta_chi2": np.float32, "rchi2": np.float32,
                  "refined": np.int16}
"""Columns added by the refinement (mtopnet.refine), after CATALOGUE_COLUMNS."""


def _columns(rows: dict) -> dict[str, Any]:
    """Column name -> dtype of a catalogue chunk (without id and z_pdf), in catalogue order."""
    return {**_DTYPES, **{k: dt for k, dt in _REFINE_DTYPES.items() if k in rows}}


@dataclass
class TrainedModel:
    """A checkpoint ready for inference.

    network: the MTopNet in eval mode; preprocessor: built from the checkpoint's constants;
    zbins: the redshift bins; label_norm: {"logmstar": (mean, std), "logsfr": (mean, std)};
    calibration: p_dz01/QOP map (None for a checkpoint saved before calibration: p_dz01 is
    then the raw PDF mass within +-0.01 and qop is 1); coverage: (n_pix,) bool grid pixels
    the training arms cover; instrument: training arms (name, range, resolution, dloglam);
    lines: line list; source: where it was loaded from; meta: version and provenance.
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


def shipped_model_path(name: str) -> Path:
    return Path(str(resources.files("mtopnet") / "models" / f"{name}.pt"))


def load_model(name_or_path: str | os.PathLike | None = None) -> TrainedModel:
    """Load a shipped model by name (default ``moons-lr``) or a checkpoint file."""
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
        pre = Preprocessor(PreprocessConfig.from_dict(dict(payload["preprocess"])))
        zb = payload["z_bins"]
        zbins = ZBinning(float(zb["z_min"]), float(zb["z_max"]), float(zb["max_width"]))
        cal = QualityCalibration.from_dict(payload["calibration"]) if payload.get("calibration") else None
        norm = {k: (float(v[0]), float(v[1])) for k, v in payload["label_norm"].items()}
        lines = lines_from_records(payload.get("lines", []))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: inconsistent checkpoint ({exc})") from None
    if zbins.n_bins != net.config.n_z_bins:
        raise UserError(f"{path}: inconsistent checkpoint (z bins {zbins.n_bins} vs network {net.config.n_z_bins})")
    coverage = payload.get("coverage")
    coverage = np.asarray(coverage, dtype=bool) if coverage is not None else np.ones(pre.config.n_pix, bool)
    meta = {"mtopnet_version": payload.get("mtopnet_version"), "provenance": payload.get("provenance", {})}
    return TrainedModel(network=net, preprocessor=pre, zbins=zbins, label_norm=norm, calibration=cal,
                        coverage=coverage, instrument=dict(payload.get("instrument") or {}), lines=lines,
                        source=str(path), meta=meta)


class DomainWarning(UserWarning):
    """Spectra unlike the model's training data (their zwarn has OUT_OF_DOMAIN); the message
    names the model's expected arms, coverage and resolution."""


def expected_domain(model: TrainedModel) -> str:
    """What the model was trained on, in words: instrument, arms (range, R) and grid range."""
    info = model.instrument or {}
    arms = []
    for tarm in info.get("arms", []):
        if tarm.get("wave_min") is None:
            continue
        res = f", R {tarm['resolution']:.0f}" if tarm.get("resolution") else ""
        arms.append(f"{tarm['name']} {tarm['wave_min']:.0f}-{tarm['wave_max']:.0f} A{res}")
    pre = model.preprocessor.config
    name = Path(str(info["name"])).stem if info.get("name") else "its training data"
    return (f"{name} ({'; '.join(arms) or 'arms unknown'}), read on {pre.wave_min:.0f}-{pre.wave_max:.0f} A")


def domain_problem(model: TrainedModel, batch: SpectraBatch, arm_resolution: dict[str, float] | None = None,
                   tolerance: float = 0.05) -> str | None:
    """Why ``batch``'s arms differ from what the model was trained on (None if they match).

    Out of domain if the covered grid pixels differ from the training coverage by more than
    ``tolerance`` (of the training coverage), if an arm's log-wavelength sampling differs from
    the overlapping training arm's by more than a factor 2, or if a given resolution
    (``arm_resolution``: arm name -> R) differs from the overlapping training arm's by > 25%.
    """
    waves = {a: np.asarray(d["wave"], dtype=np.float64) for a, d in batch.arms.items()}
    cov = model.preprocessor.coverage(waves)
    train = model.coverage
    n_train = max(int(train.sum()), 1)
    missing, extra = (train & ~cov).sum() / n_train, (cov & ~train).sum() / n_train
    if missing > tolerance:
        return f"covers {100 * (1 - missing):.0f}% of the model's wavelengths"
    if extra > tolerance:
        return f"{100 * extra:.0f}% of its coverage is where the model saw no data"
    for name, wave in waves.items():
        w = wave[np.isfinite(wave)]
        if len(w) < 2:
            continue
        dll = float(np.median(np.diff(np.log(w))))
        for tarm in model.instrument.get("arms", []):
            if tarm.get("wave_min") is None or tarm["wave_max"] < w[0] or tarm["wave_min"] > w[-1]:
                continue
            if tarm.get("dloglam") and not 0.5 <= dll / tarm["dloglam"] <= 2.0:
                return (f"arm {name}'s pixels are {dll / tarm['dloglam']:.2f} x the width of the training "
                        f"arm {tarm['name']}'s")
            res = (arm_resolution or {}).get(name)
            if res and tarm.get("resolution") and abs(res / tarm["resolution"] - 1) > 0.25:
                return f"arm {name} has R {res:.0f}, the training arm {tarm['name']} R {tarm['resolution']:.0f}"
    return None


def domain_check(model: TrainedModel, batch: SpectraBatch, arm_resolution: dict[str, float] | None = None,
                 tolerance: float = 0.05) -> bool:
    """True if ``batch``'s arms match what the model was trained on (see :func:`domain_problem`)."""
    return domain_problem(model, batch, arm_resolution, tolerance) is None


def _describe_arms(batch: SpectraBatch) -> str:
    parts = []
    for name, arm in batch.arms.items():
        w = np.asarray(arm["wave"], dtype=np.float64)
        w = w[np.isfinite(w)]
        parts.append(f"{name} {w[0]:.0f}-{w[-1]:.0f} A" if len(w) else f"{name} (empty)")
    return ", ".join(parts)


def _chunks(batches: Iterable[SpectraBatch], size: int | None) -> Iterator[SpectraBatch]:
    for batch in batches:
        if size is None or len(batch) <= size:
            yield batch
        else:
            for start in range(0, len(batch), size):
                yield batch.subset(slice(start, start + size))


def predict_batches(model: TrainedModel, batches: Iterable[SpectraBatch], *, with_pdf: bool = False,
                    batch_size: int | None = 1024, arm_resolution: dict[str, float] | None = None,
                    min_valid_fraction: float = MIN_VALID_FRACTION,
                    refine: "bool | Refiner" = True) -> Iterator[dict[str, np.ndarray]]:
    """Catalogue rows for each batch (input order): dict column -> (n,) array.

    Columns are :data:`CATALOGUE_COLUMNS`, then (with ``refine``) :data:`REFINE_COLUMNS`;
    with ``with_pdf`` also ``z_pdf`` (n, n_bins) float32. Batches longer than
    ``batch_size`` are split. ``arm_resolution`` (arm -> R), when known, is checked against
    the training arms (ZWarn.OUT_OF_DOMAIN). ``refine``: True refines z with the shipped
    templates (:mod:`mtopnet.refine`), a :class:`~mtopnet.refine.Refiner` with its own
    basis or settings, False gives the network's estimates alone.
    """
    net, pre, zb = model.network, model.preprocessor, model.zbins
    refiner = None
    if refine is True:
        from .refine import Refiner
        refiner = Refiner.from_model(model)
    elif refine is not False and refine is not None:
        refiner = refine
    m_mu, m_sd = model.label_norm["logmstar"]
    s_mu, s_sd = model.label_norm["logsfr"]
    domain_cache: dict[bytes, bool] = {}
    for batch in _chunks(batches, batch_size):
        n = len(batch)
        if n == 0:
            continue
        x = pre(batch)
        with torch.inference_mode():
            out = net(torch.from_numpy(x.spectrum), torch.from_numpy(x.continuum))
            pdf = torch.softmax(out["z_logits"].double(), dim=1).numpy()
        summ = pdf_summary(pdf, zb.edges)
        unusable = (x.valid_fraction < min_valid_fraction) | (x.valid_fraction <= 0)
        fit = None
        if refiner is not None:
            from .refine import window_mass
            flux, ivar, _ = pre.rebin(batch)
            fit = refiner.refine(flux, ivar, pdf, summ["z"], skip=unusable,
                                 z_err_net=0.5 * (summ["z_hi68"] - summ["z_lo68"]))
            # p_dz01 and QOP describe the reported z: the PDF mass within +-0.01 of it
            summ = {**summ, "z": fit.z, "p_window": window_mass(pdf, zb.edges, fit.z, refiner.config.window)}
        if model.calibration is not None:
            p_dz01, qop = model.calibration.apply(summ)
        else:
            p_dz01, qop = summ["p_window"], np.ones(n, dtype=np.int16)
        key = b"".join(a.encode() + np.asarray(d["wave"]).tobytes()[:64] + str(len(d["wave"])).encode()
                       for a, d in batch.arms.items())
        if key not in domain_cache:
            problem = domain_problem(model, batch, arm_resolution)
            domain_cache[key] = problem is None
            if problem is not None:
                first = str(np.asarray(batch.ids)[0])
                warnings.warn(DomainWarning(
                    f"spectra with arms {_describe_arms(batch)} (first id {first}) are out of the model's domain: "
                    f"{problem}; the model expects {expected_domain(model)}; zwarn bit OUT_OF_DOMAIN "
                    f"({int(ZWarn.OUT_OF_DOMAIN)}) set"), stacklevel=2)
        zwarn = np.zeros(n, dtype=np.int32)
        zwarn |= np.where(x.valid_fraction < min_valid_fraction, int(ZWarn.LITTLE_COVERAGE), 0).astype(np.int32)
        all_masked = x.valid_fraction <= 0
        zwarn |= np.where(all_masked, int(ZWarn.ALL_MASKED), 0).astype(np.int32)
        zwarn |= np.where(~x.continuum_detected & ~all_masked, int(ZWarn.LOW_SN), 0).astype(np.int32)
        zwarn |= np.where(x.bad_input, int(ZWarn.BAD_INPUT), 0).astype(np.int32)
        if "noise_estimated" in batch.labels:
            est = np.asarray(batch.labels["noise_estimated"]).astype(bool)
            zwarn |= np.where(est, int(ZWarn.NOISE_ESTIMATED), 0).astype(np.int32)
        if not domain_cache[key]:
            zwarn |= int(ZWarn.OUT_OF_DOMAIN)
        zwarn |= np.where(summ["n_peaks"] > 1, int(ZWarn.MULTI_PEAK), 0).astype(np.int32)
        zwarn |= np.where(p_dz01 < 0.5, int(ZWarn.LOW_PEAK_PROB), 0).astype(np.int32)
        if fit is not None:
            zwarn |= np.where(fit.disagree, int(ZWarn.REFINE_DISAGREE), 0).astype(np.int32)
        qop = np.where(unusable, 1, qop).astype(np.int16)
        p_dz01 = np.where(all_masked, 0.0, p_dz01)
        rows: dict[str, np.ndarray] = {"id": np.asarray(batch.ids)}
        for k in ("z", "z_mean", "z_lo68", "z_hi68", "z_lo95", "z_hi95"):
            rows[k] = summ[k]
        rows["p_dz01"] = p_dz01
        rows["qop"] = qop
        rows["zwarn"] = zwarn
        rows["logmstar"] = out["logmstar_mean"].numpy() * m_sd + m_mu
        rows["logmstar_err"] = np.exp(out["logmstar_logsigma"].numpy()) * m_sd
        rows["logsfr"] = out["logsfr_mean"].numpy() * s_sd + s_mu
        rows["logsfr_err"] = np.exp(out["logsfr_logsigma"].numpy()) * s_sd
        for k, dt in _DTYPES.items():
            rows[k] = np.nan_to_num(np.asarray(rows[k]).astype(dt))
        if fit is not None:
            rows.update(z_net=fit.z_net, z_err=fit.z_err, delta_chi2=fit.delta_chi2, rchi2=fit.rchi2,
                        refined=fit.refined)
            for k, dt in _REFINE_DTYPES.items():
                rows[k] = np.asarray(rows[k]).astype(dt)
        if with_pdf:
            rows["z_pdf"] = pdf.astype(np.float32)
        yield rows


# ----------------------------------------------------------------------------- writers


def catalogue_format(path: str | Path) -> str:
    """'fits', 'parquet' or 'csv' from the file extension (UserError otherwise)."""
    name = str(path).lower()
    for ext, fmt in ((".fits", "fits"), (".fit", "fits"), (".fits.gz", "fits"), (".parquet", "parquet"),
                     (".pq", "parquet"), (".csv", "csv")):
        if name.endswith(ext):
            if ext == ".fits.gz":
                raise UserError(f"{path}: compressed FITS is not written; use .fits")
            return fmt
    raise UserError(f"{path}: unknown catalogue format; use .fits, .parquet or .csv")


class CatalogueWriter:
    """Streaming catalogue writer: ``write(rows)`` per batch, ``close()`` renames the temp file.

    path: output (format from the extension); zbin_centres: (K,) written with ``z_pdf``;
    meta: provenance (version, model) written into headers / metadata.
    """

    def __init__(self, path: str | Path, zbin_centres: np.ndarray | None = None, meta: dict | None = None):
        self.path = Path(path)
        self.format = catalogue_format(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.centres = zbin_centres
        self.meta = meta or {}
        self.n_rows = 0
        self._impl: Any = None

    def write(self, rows: dict[str, np.ndarray]) -> None:
        if self._impl is None:
            self._impl = {"fits": _FitsSink, "parquet": _ParquetSink, "csv": _CsvSink}[self.format](
                self.tmp, rows, self.centres, self.meta)
        self._impl.write(rows)
        self.n_rows += len(rows["id"])

    def close(self) -> None:
        if self._impl is None:  # no rows: an empty catalogue with the right columns
            empty = {"id": np.zeros(0, np.int64), **{k: np.zeros(0, dt) for k, dt in _DTYPES.items()}}
            self._impl = {"fits": _FitsSink, "parquet": _ParquetSink, "csv": _CsvSink}[self.format](
                self.tmp, empty, None, self.meta)
        self._impl.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._impl is not None:
            try:
                self._impl.close()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "CatalogueWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _id_array(ids: np.ndarray, width: int | None = None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return ids.astype(str).astype(f"S{width}" if width else "S")


class _FitsSink:
    """BINTABLE 'CATALOG' streamed to disk: header (NAXIS2 patched at the end), raw rows, padding."""

    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        from astropy.io import fits
        self.fits = fits
        ids = np.asarray(first["id"])
        self.id_width = None if ids.dtype.kind in "iu" else max(64, max((len(str(i)) for i in ids), default=1))
        fields = [("id", ">i8" if self.id_width is None else f"S{self.id_width}")]
        self.columns = _columns(first)
        fields += [(k, np.dtype(dt).newbyteorder(">").str) for k, dt in self.columns.items()]
        self.pdf = "z_pdf" in first
        if self.pdf:
            fields.append(("z_pdf", ">f4", (first["z_pdf"].shape[1],)))
        self.dtype = np.dtype(fields)
        hdu = fits.BinTableHDU.from_columns(np.zeros(0, dtype=self.dtype), name="CATALOG")
        self.header = hdu.header
        primary = fits.PrimaryHDU()
        primary.header["MTOPVER"] = (__version__, "mtopnet version")
        for key, value in meta.items():
            primary.header[key[:8].upper()] = str(value)[:68]
        self.centres = centres
        self.fh = open(tmp, "wb")
        self.fh.write(primary.header.tostring().encode("ascii"))
        self.header_at = self.fh.tell()
        self.header_bytes = self.header.tostring().encode("ascii")
        self.fh.write(self.header_bytes)
        self.n = 0

    def write(self, rows: dict) -> None:
        n = len(rows["id"])
        rec = np.zeros(n, dtype=self.dtype)
        ids = _id_array(rows["id"], self.id_width)
        if self.id_width is not None and ids.dtype.itemsize > self.id_width:
            raise UserError(f"id longer than {self.id_width} characters cannot be written to FITS; use .parquet")
        rec["id"] = ids
        for k in self.columns:
            rec[k] = rows[k]
        if self.pdf:
            rec["z_pdf"] = rows["z_pdf"]
        self.fh.write(rec.tobytes())
        self.n += n

    def close(self) -> None:
        if self.fh.closed:
            return
        size = self.n * self.dtype.itemsize
        self.fh.write(b"\0" * ((-size) % 2880))
        self.header["NAXIS2"] = self.n
        text = self.header.tostring().encode("ascii")
        assert len(text) == len(self.header_bytes)
        self.fh.seek(self.header_at)
        self.fh.write(text)
        self.fh.seek(0, os.SEEK_END)
        if self.pdf and self.centres is not None:
            data = np.asarray(self.centres, dtype=">f8")
            zb = self.fits.ImageHDU(data, name="ZBINS")
            zb.header["COMMENT"] = "redshift bin centres of the z_pdf column"
            self.fh.write(zb.header.tostring().encode("ascii"))
            self.fh.write(data.tobytes() + b"\0" * ((-data.nbytes) % 2880))
        self.fh.close()


def _arrow_fields(pa, first: dict) -> tuple[list, dict, int]:
    """Arrow fields of the id and scalar columns, the scalar columns' dtypes, PDF bin count."""
    ids = np.asarray(first["id"])
    fields = [pa.field("id", pa.int64() if ids.dtype.kind in "iu" else pa.string())]
    columns = _columns(first)
    fields += [pa.field(k, pa.from_numpy_dtype(np.dtype(dt))) for k, dt in columns.items()]
    return fields, columns, (first["z_pdf"].shape[1] if "z_pdf" in first else 0)


def _arrow_arrays(pa, rows: dict, columns: dict) -> list:
    """Arrow arrays of the id and scalar columns of a chunk of catalogue rows."""
    ids = np.asarray(rows["id"])
    cols = [pa.array(ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str))]
    return cols + [pa.array(np.asarray(rows[k])) for k in columns]


class _ParquetSink:
    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.pa = pa
        fields, self.columns, self.nbins = _arrow_fields(pa, first)
        if self.nbins:
            fields.append(pa.field("z_pdf", pa.list_(pa.float32(), self.nbins)))
        md = {"mtopnet_version": __version__, **{k: str(v) for k, v in meta.items()}}
        if self.nbins and centres is not None:
            md["z_bin_centres"] = json.dumps([float(c) for c in centres])
        self.schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in md.items()})
        self.writer = pq.ParquetWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        pa = self.pa
        cols = _arrow_arrays(pa, rows, self.columns)
        if self.nbins:
            flat = pa.array(np.ascontiguousarray(rows["z_pdf"], dtype=np.float32).ravel())
            cols.append(pa.FixedSizeListArray.from_arrays(flat, self.nbins))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _CsvSink:
    def __init__(self, tmp: Path, first: dict, centres: np.ndarray | None, meta: dict):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        self.pa = pa
        fields, self.columns, self.nbins = _arrow_fields(pa, first)
        if self.nbins:
            centres = centres if centres is not None else np.arange(self.nbins, dtype=float)
            fields += [pa.field(f"pdf_z{c:.6f}", pa.float32()) for c in centres]
        self.schema = pa.schema(fields)
        self.writer = pcsv.CSVWriter(str(tmp), self.schema)

    def write(self, rows: dict) -> None:
        pa = self.pa
        cols = _arrow_arrays(pa, rows, self.columns)
        if self.nbins:
            cols += [pa.array(np.ascontiguousarray(rows["z_pdf"][:, j])) for j in range(self.nbins)]
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def write_catalogue(path: str | Path, chunks: Iterable[dict[str, np.ndarray]], zbin_centres: np.ndarray | None = None,
                    meta: dict | None = None) -> int:
    """Write catalogue chunks (dicts of column arrays) atomically; returns the number of rows."""
    with CatalogueWriter(path, zbin_centres, meta) as writer:
        for rows in chunks:
            writer.write(rows)
    return writer.n_rows


# ----------------------------------------------------------------------------- files


_INTEGER_ID_FORMATS = ("desi", "hdf5")
"""Input formats whose ids are integers (DESI TARGETID, store ids); the others' are text."""


def _input_batches(inputs: list[str | Path], batch_size: int, format: str | None) -> Iterator[SpectraBatch]:
    try:
        from .io import plan_inputs, read_spectra
    except ImportError:
        read_spectra = None
    if read_spectra is not None:
        paths = [str(p) for p in inputs]
        with warnings.catch_warnings():  # read_spectra repeats any warning of the plan
            warnings.simplefilter("ignore")
            kinds = {unit.fmt in _INTEGER_ID_FORMATS for unit in plan_inputs(paths, format)}
        as_text = len(kinds) > 1  # integer and text ids mixed (DESI + SDSS): one text id column
        for batch in read_spectra(paths, format=format, batch_size=batch_size):
            if as_text:
                batch = dataclasses.replace(batch, ids=np.asarray(batch.ids).astype(str))
            yield batch
        return
    from .store import iter_store
    for path in inputs:
        yield from iter_store(path, batch_size)


def _store_resolution(inputs: list[str | Path]) -> dict[str, float] | None:
    """Arm resolutions of the instrument named in the first HDF5 store among ``inputs``."""
    import h5py
    for path in inputs:
        if Path(path).is_file() and h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                name = f.attrs.get("instrument")
            if name is None:
                return None
            try:
                from .instruments import load_instrument
                inst = load_instrument(name.decode() if isinstance(name, bytes) else str(name))
            except (UserError, ConfigError, OSError):
                return None
            return {a.name: float(a.config.resolution) for a in inst.arms}
    return None


def predict_store(model: TrainedModel, inputs: list[str | Path] | str | Path, out: str | Path, *,
                  batch_size: int = 1024, with_pdf: bool = False, overwrite: bool = False,
                  progress: bool = False, format: str | None = None, refine: "bool | Refiner" = True) -> int:
    """Predict for every spectrum of ``inputs`` (stores or files mtopnet.io reads) into catalogue ``out``.

    Streams: memory stays flat in the number of objects. Returns the number of rows written.
    ``refine``: as in :func:`predict_batches` (True: template refinement of z, the default).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    catalogue_format(out)
    check_writable(out, overwrite)
    if batch_size < 1:
        raise UserError(f"batch size: must be >= 1, got {batch_size}")
    for path in inputs:
        if not Path(path).exists() and not any(ch in str(path) for ch in "*?["):
            raise UserError(f"{path}: no such file")
    meta = {"model": Path(model.source).name, "modelver": model.meta.get("mtopnet_version")}
    if refine is True:
        from .refine import Refiner
        refine = Refiner.from_model(model)
    if refine is not False and refine is not None:
        meta["refine"] = Path(refine.basis.meta.get("templates", "")).name
    rows = predict_batches(model, _input_batches(list(inputs), batch_size, format), with_pdf=with_pdf,
                           batch_size=batch_size, arm_resolution=_store_resolution(list(inputs)), refine=refine)
    bar = tqdm(desc="predict", unit="spec", disable=not progress, file=sys.stderr)
    with CatalogueWriter(out, model.zbins.centres if with_pdf else None, meta) as writer:
        for chunk in rows:
            writer.write(chunk)
            bar.update(len(chunk["id"]))
    bar.close()
    return writer.n_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="spectrum stores or files (see mtopnet.io)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"shipped model name or checkpoint path (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="catalogue: .fits, .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=1024, help="spectra per batch (default 1024)")
    p.add_argument("--pdf", action="store_true", help="also write the full redshift PDF and the bin centres")
    p.add_argument("--format", default=None, help="input format (default: detected)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing catalogue")
    p.add_argument("--no-refine", action="store_true",
                   help="report the network's z alone (no template refinement, see docs/refine.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    catalogue_format(args.out)
    check_writable(args.out, args.overwrite)
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
    model = load_model(args.model)
    n = predict_store(model, args.inputs, args.out, batch_size=args.batch_size, with_pdf=args.pdf,
                      overwrite=args.overwrite, progress=not args.quiet, format=args.format,
                      refine=not args.no_refine)
    print(f"{args.out}: {n} rows")
    return 0


__all__ = ["ZWarn", "CATALOGUE_COLUMNS", "REFINE_COLUMNS", "TrainedModel", "load_model", "predict_batches", "domain_check",
           "domain_problem", "expected_domain", "DomainWarning",
           "CatalogueWriter", "write_catalogue", "catalogue_format", "predict_store", "COMMAND",
           "add_arguments", "run_cli", "shipped_model_path"]
