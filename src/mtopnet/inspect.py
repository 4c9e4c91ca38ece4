"""inspect a catalogue with its spectra: a static HTML page (no server) for visual inspection

``write_inspection(catalogue, inputs, out_dir)`` writes a folder that any browser opens
from disk (``file://``), with no network access and no external library::

    DIR/index.html          the page (package data mtopnet/data/inspect/, copied)
    DIR/inspect.js, .css    its script and style (plain JS, canvas drawing)
    DIR/catalogue.js        the table: one JSON blob, column arrays, ``MTOP.catalogue({...})``
    DIR/objects/ROW.js      one object's spectra, best fit and PDF, ``MTOP.object(ROW, {...})``,
                            loaded by <script> injection when the object is opened (fetch() of
                            file:// URLs is blocked in Chromium; a script tag is not)

What is drawn for one object (docs/inspect.md):

* each arm's spectrum on its native pixels (vacuum Angstrom, 1e-17 erg/s/cm2/A, as
  :func:`mtopnet.io.read_spectra` delivers it), its 1-sigma noise as a band
  (``1/sqrt(ivar)``), and its masked pixels (mask bits set, or ``ivar == 0``) as grey spans;
* the best-fit model at the catalogue's ``z``: the refinement's basis ingredients (the
  shipped Redrock-format PCA templates, :func:`mtopnet.templates.read_templates`, and the
  emission-line groups :data:`mtopnet.lines.LINE_GROUPS` with the refinement's intrinsic
  line width ``RefineConfig.line_sigma_kms``) evaluated on each arm's native pixels,
  smoothed to one native pixel (a stand-in for the unknown line-spread function), with
  free linear amplitudes fitted by inverse-variance weighted least squares over all arms
  at once (:func:`best_fit`). z is not refitted: the curve shows how the reported z
  explains the data. Where z puts no template light on the data, nothing is drawn;
* the rest-frame lines of :data:`mtopnet.lines.LINES` (or the model's own line list) at z;
* the redshift PDF (catalogues written with ``--pdf``), zoomed on its peaks
  (:func:`mtopnet.quality.pdf_peaks`) and z, with the full range a click away.

Visual-inspection fields (VI redshift, quality 0-4, comment) are kept in the browser's
localStorage and saved as a CSV like prospect's (TARGETID, VI_Z, VI_QUALITY, VI_COMMENT).
The page runs a self-test when its URL ends in ``#selftest`` (tests/test_inspect.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import warnings
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from . import __version__
from .catalogue import read_catalogue, read_catalogue_meta, read_zbin_centres
from .columns import ZInfo, ZWarn
from .config import UserError
from .constants import C_KMS
from .io import read_spectra
from .lines import LINE_GROUPS, LINES, Line
from .provenance import inputs_mismatch
from .quality import pdf_peaks
from .refine import RefineConfig
from .store import SpectraBatch
from .templates import read_templates

COMMAND = "inspect"
ASSETS = ("index.html", "inspect.js", "inspect.css")
"""Static files of the page, package data under ``mtopnet/data/inspect/``."""

TABLE_COLUMNS: tuple[tuple[str, tuple[str, ...], str, int], ...] = (
    ("id", ("targetid",), "TARGETID", -1),
    ("z", ("z",), "Z", 5),
    ("spectype", ("spectype",), "SPECTYPE", -1),
    ("subtype", ("subtype",), "SUBTYPE", -1),
    ("qop", ("qop",), "QOP", 0),
    ("zwarn", ("zwarn",), "ZWARN", 0),
    ("p_dz01", ("p_dz01",), "P_DZ01", 3),
    ("logmstar", ("logmstar",), "log M*", 2),
    ("logsfr", ("logsfr",), "log SFR", 2),
    ("z_err", ("zerr",), "ZERR", 5),
    ("rchi2", ("rchi2",), "RCHI2", 2),
    ("delta_chi2", ("deltachi2",), "DELTACHI2", 1),
    ("zwarn_info", ("zwarn_info",), "ZWARN_INFO", 0),
    ("z_net", ("z_net",), "Z_NET", 5),
    ("scan_z", ("scan_z",), "SCAN_Z", 5),
    ("scan_dchi2", ("scan_dchi2",), "SCAN_DCHI2", 1),
    ("z_lo95", ("z_lo95",), "Z_LO95", 4),
    ("z_hi95", ("z_hi95",), "Z_HI95", 4),
)
"""Table columns: the page's key, catalogue names (any case; the first found is used; a
catalogue of the layout before the Redrock one is read in today's names by
:func:`mtopnet.catalogue.read_catalogue`), header, decimals (-1: text). TARGETID, Z, QOP,
ZWARN, P_DZ01, LOGMSTAR, LOGSFR are required; the rest are shown when the catalogue has them
(SPECTYPE, SUBTYPE: Redrock's; a row that is not GALAXY is marked on the page)."""
REQUIRED = ("id", "z", "qop", "zwarn", "p_dz01", "logmstar", "logsfr")
LEVELS = 2000
"""Spectra are written as integers: value / (robust amplitude / LEVELS), 4-5 digits each."""
PDF_LEVELS = 10000
"""PDFs are written as integers: p / max(p) * PDF_LEVELS."""
MIN_PDF_SPAN = 0.06
"""The PDF panel's zoom spans at least this in z."""
PDF_MARGIN = 0.02
"""The PDF panel's zoom reaches this far beyond the outermost peak (or z)."""


# ----------------------------------------------------------------------------- catalogue


def catalogue_table(cat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The :data:`TABLE_COLUMNS` of a catalogue (``read_catalogue``'s dict), by key.

    Column names are matched without regard to case, so Redrock-shaped names (TARGETID, Z,
    ZWARN) are read too. Raises UserError when a required column is absent.
    """
    lower = {name.lower(): name for name in cat}
    out: dict[str, np.ndarray] = {}
    for key, names, _, _ in TABLE_COLUMNS:
        found = next((lower[n] for n in names if n in lower), None)
        if found is not None:
            out[key] = np.asarray(cat[found])
    missing = [names[0].upper() for key, names, _, _ in TABLE_COLUMNS if key in REQUIRED and key not in out]
    if missing:
        raise UserError(f"the catalogue has no column {', '.join(missing)} (is it from `mtopnet predict`?)")
    return out


def pdf_zoom(pdf: np.ndarray, centres: np.ndarray, z: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Peaks and the z range that shows them, for N PDFs at once.

    pdf: (N, K) probabilities per bin; centres: (K,) bin centres; z: (N,) reported
    redshifts. Returns peak z (N, P), peak mass within +-0.01 (N, P) (NaN / 0 where absent;
    :func:`mtopnet.quality.pdf_peaks`), and the zoom's low and high ends (N,): every peak
    and z with a margin of :data:`PDF_MARGIN`, at least :data:`MIN_PDF_SPAN` wide, inside
    the bins.
    """
    centres = np.asarray(centres, dtype=np.float64)
    step = np.diff(centres)
    edges = np.concatenate([[centres[0] - 0.5 * step[0]], centres[:-1] + 0.5 * step, [centres[-1] + 0.5 * step[-1]]])
    peak_z, peak_mass = pdf_peaks(pdf, edges)
    allz = np.concatenate([peak_z, np.asarray(z, dtype=np.float64)[:, None]], axis=1)
    finite = np.isfinite(allz)
    lo = np.min(np.where(finite, allz, np.inf), axis=1) - PDF_MARGIN
    hi = np.max(np.where(finite, allz, -np.inf), axis=1) + PDF_MARGIN
    bad = ~finite.any(axis=1)
    lo, hi = np.where(bad, edges[0], lo), np.where(bad, edges[-1], hi)
    mid, half = 0.5 * (lo + hi), np.maximum(0.5 * (hi - lo), 0.5 * MIN_PDF_SPAN)
    lo, hi = np.maximum(mid - half, edges[0]), np.minimum(mid + half, edges[-1])
    return peak_z, peak_mass, lo, hi


# ----------------------------------------------------------------------------- the best fit


class NativeBasis:
    """The refinement's basis ingredients on native pixels: PCA templates and line groups.

    templates: a Redrock-format file (default: the shipped one); line_sigma_kms: the lines'
    intrinsic Gaussian sigma. Templates are smoothed per arm to the arm's median pixel width
    (cached per wavelength array).
    """

    def __init__(self, templates: str | os.PathLike | None = None,
                 line_sigma_kms: float = RefineConfig().line_sigma_kms):
        self.wave, self.flux = read_templates(templates)
        self.ln_wave = np.log(self.wave)
        self.dln = float(np.median(np.diff(self.ln_wave)))
        self.line_sigma_kms = line_sigma_kms
        self.names = tuple(f"pca{k}" for k in range(len(self.flux))) + tuple(name for name, _ in LINE_GROUPS)
        self._smoothed: dict[tuple[int, float], np.ndarray] = {}

    def pixel_kms(self, wave: np.ndarray) -> float:
        """Median pixel width of ``wave`` (L,) Angstrom, km/s."""
        return float(np.median(np.diff(np.log(wave)))) * C_KMS if len(wave) > 1 else 0.0

    def _templates(self, pixel_kms: float) -> np.ndarray:
        key = (len(self.wave), round(pixel_kms, 1))
        if key not in self._smoothed:
            sigma = pixel_kms / C_KMS / self.dln
            self._smoothed[key] = (gaussian_filter1d(self.flux, sigma, axis=1, mode="nearest", truncate=4.0)
                                   if sigma > 0.3 else self.flux).astype(np.float32)
        return self._smoothed[key]

    def design(self, wave: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The basis at redshifts ``z`` (N,) on pixels ``wave`` (L,): (N, L, K) float32, each
        vector scaled to unit maximum over the template, and (N, L) bool: the pixel is inside
        the templates' rest range."""
        wave = np.asarray(wave, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        pix = self.pixel_kms(wave)
        tpl = self._templates(pix)
        x = (np.log(wave)[None, :] - np.log1p(z)[:, None] - self.ln_wave[0]) / self.dln  # (N, L) template index
        inside = (x >= 0) & (x <= len(self.wave) - 1)
        j = np.clip(np.floor(x).astype(np.int64), 0, len(self.wave) - 2)
        frac = np.clip(x - j, 0.0, 1.0).astype(np.float32)
        cont = tpl[:, j] * (1 - frac) + tpl[:, j + 1] * frac  # (K, N, L)
        cont = np.moveaxis(cont, 0, -1) / np.abs(tpl).max(axis=1)
        cont[~inside] = 0.0
        sig = math.hypot(self.line_sigma_kms, pix) / C_KMS  # ln(lambda)
        ln_obs = np.log(wave)[None, :] - np.log1p(z)[:, None]  # rest ln(lambda) of each pixel
        lines = np.zeros(cont.shape[:2] + (len(LINE_GROUPS),), dtype=np.float32)
        for g, (_, members) in enumerate(LINE_GROUPS):
            for lam, ratio in members:
                lines[:, :, g] += ratio * np.exp(-0.5 * ((ln_obs - math.log(lam)) / sig) ** 2)
        lines /= np.maximum(lines.max(axis=(0, 1)), 1e-30)
        return np.concatenate([cont.astype(np.float32), lines], axis=2), inside


def best_fit(basis: NativeBasis, batch: SpectraBatch, z: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Linear fit of the basis at fixed ``z`` (N,) to every arm of ``batch`` at once.

    Minimises sum over arms and valid pixels (ivar > 0, mask 0, finite flux, inside the
    templates) of ivar (flux - T c)^2 for the amplitudes c (N, K), batched over objects
    (one K x K solve each; vectors absent from the data get zero amplitude). Returns the
    model per arm (N, L) float32 (NaN where it is not defined: outside the templates, or
    no valid pixel) and the reduced chi2 (N,) (NaN without enough pixels).
    """
    n = len(batch)
    k = len(basis.names)
    a = np.zeros((n, k, k))
    b = np.zeros((n, k))
    chi0 = np.zeros(n)
    npix = np.zeros(n)
    designs = {}
    for name, arm in batch.arms.items():
        t, inside = basis.design(arm["wave"], z)
        flux = np.asarray(arm["flux"], dtype=np.float32)
        ivar = np.asarray(arm["ivar"], dtype=np.float32)
        w = np.where(inside & (ivar > 0) & (np.asarray(arm["mask"]) == 0) & np.isfinite(flux), ivar, 0).astype(
            np.float32)
        f = np.where(w > 0, flux, 0).astype(np.float32)
        wt = t * w[:, :, None]
        a += np.einsum("nlk,nlj->nkj", wt, t, dtype=np.float64)
        b += np.einsum("nlk,nl->nk", wt, f, dtype=np.float64)
        chi0 += np.einsum("nl,nl->n", w * f, f, dtype=np.float64)
        npix += (w > 0).sum(axis=1)
        designs[name] = (t, inside)
    diag = np.einsum("nkk->nk", a)
    scale = np.maximum(diag.max(axis=1, keepdims=True), 1e-30)
    absent = diag <= 1e-8 * scale  # no support: the vector stays at zero
    a = a + (np.eye(k)[None] * np.where(absent, scale, 1e-9 * scale)[:, :, None])
    b = np.where(absent, 0.0, b)
    coef = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    chi2 = chi0 - np.einsum("nk,nk->n", coef, b)
    dof = npix - (~absent).sum(axis=1)
    rchi2 = np.where(dof > 0, chi2 / np.maximum(dof, 1), np.nan)
    models = {}
    fitted = npix > 0
    for name, (t, inside) in designs.items():
        m = np.einsum("nlk,nk->nl", t, coef.astype(np.float32))
        models[name] = np.where(inside & fitted[:, None], m, np.nan).astype(np.float32)
    return models, rchi2


# ----------------------------------------------------------------------------- encoding


def _quantised(values: np.ndarray, step: float) -> list:
    """Integers ``round(values / step)`` with None for NaN (a JSON list)."""
    q = np.round(np.asarray(values, dtype=np.float64) / step)
    ok = np.isfinite(q)
    out: list = np.where(ok, q, 0).astype(np.int64).tolist()
    if not ok.all():
        for i in np.flatnonzero(~ok):
            out[i] = None
    return out


def _runs(flag: np.ndarray) -> list[list[int]]:
    """[first, last] pixel index of each run of True in ``flag`` (L,)."""
    d = np.diff(np.concatenate([[0], flag.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1], axis=1).tolist()


def object_record(batch: SpectraBatch, i: int, models: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The spectra of row ``i`` of ``batch`` as a compact JSON-ready dict.

    Per arm: ``wave0`` and ``dwave`` (integer steps of 1e-3 A: wave = cumsum), ``unit``
    (the flux step, 1e-17 erg/s/cm2/A), ``flux``, ``sigma``, ``model`` as integers of
    ``unit`` (null where absent), ``masked`` [first, last] pixel runs.
    """
    arms = []
    for name, arm in batch.arms.items():
        wave = np.asarray(arm["wave"], dtype=np.float64)
        flux = np.asarray(arm["flux"][i], dtype=np.float64)
        ivar = np.asarray(arm["ivar"][i], dtype=np.float64)
        masked = (np.asarray(arm["mask"][i]) != 0) | ~(ivar > 0) | ~np.isfinite(flux)
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = np.where(masked, np.nan, 1.0 / np.sqrt(ivar))
        shown = np.where(masked, np.nan, flux)
        amp = np.nanpercentile(np.abs(shown), 99) if (~masked).any() else 1.0
        unit = float(f"{max(amp, 1e-30) / LEVELS:.3g}")
        qwave = np.round(wave * 1000).astype(np.int64)
        rec: dict[str, Any] = {"name": name, "wave0": int(qwave[0]) if len(qwave) else 0,
                               "dwave": np.diff(qwave).tolist(), "unit": unit,
                               "flux": _quantised(np.where(np.isfinite(flux), flux, np.nan), unit),
                               "sigma": _quantised(sigma, unit), "masked": _runs(masked)}
        if models is not None and name in models:
            rec["model"] = _quantised(models[name][i], unit)
        arms.append(rec)
    return {"arms": arms}


def _write_js(path: Path, head: str, payload: Any) -> int:
    """``path`` = ``head`` + JSON + ``);`` (head e.g. ``MTOP.object(7,``), written atomically;
    returns its size in bytes."""
    text = f"{head}{json.dumps(payload, separators=(',', ':'), allow_nan=False)});\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return len(text.encode())


def _clean(values: np.ndarray, decimals: int) -> list:
    """A column as a JSON list: rounded floats (None for NaN), ints, or strings."""
    values = np.asarray(values)
    if decimals < 0 or values.dtype.kind in "SUO":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    if values.dtype.kind in "iub":
        return values.astype(np.int64).tolist()
    v = np.round(values.astype(np.float64), decimals)
    out = v.tolist()
    for i in np.flatnonzero(~np.isfinite(v)):
        out[i] = None
    return out


# ----------------------------------------------------------------------------- the page


def _resolve_lines(model: Any) -> tuple[Line, ...]:
    """The line list to mark: a model's own (TrainedModel, shipped name or checkpoint path), or LINES."""
    if model is None:
        return LINES
    if isinstance(model, (str, os.PathLike)):
        from .trained import load_model
        model = load_model(model)
    return tuple(getattr(model, "lines", ()) or LINES)


def write_inspection(catalogue: str | os.PathLike, inputs: list[str | os.PathLike] | str | os.PathLike,
                     out_dir: str | os.PathLike, model: Any = None, *, templates: str | os.PathLike | None = None,
                     fit: bool = True, batch_size: int = 64, overwrite: bool = False,
                     input_format: str | None = None) -> dict[str, Any]:
    """Write the inspection page of ``catalogue`` with the spectra of ``inputs`` into ``out_dir``.

    catalogue: a catalogue of ``mtopnet predict`` (FITS/Parquet/CSV; with ``--pdf`` the PDFs
    are drawn); inputs: the spectrum files it was made from (anything
    :func:`mtopnet.io.read_spectra` reads), matched to catalogue rows by id (as text);
    model: optional TrainedModel, shipped name or checkpoint whose line list is marked
    (default :data:`mtopnet.lines.LINES`); templates: the fit's template file (default the
    shipped one); fit: draw the best fit. Raises UserError if ``out_dir`` holds a page and
    not ``overwrite``.

    Returns a summary: n_objects, n_with_spectra, index_bytes (catalogue.js),
    object_bytes (list, one per written object), has_pdf, out (index.html path).
    """
    out = Path(out_dir)
    if (out / "index.html").exists() and not overwrite:
        raise UserError(f"{out}: holds an inspection page already (use --overwrite)")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if batch_size < 1:
        raise UserError(f"batch size: must be >= 1, got {batch_size}")
    cat = read_catalogue(catalogue)
    said = inputs_mismatch(read_catalogue_meta(catalogue), [str(p) for p in inputs], "input", same_inputs=True)
    if said:
        warnings.warn(said, stacklevel=2)
    table = catalogue_table(cat)
    n = len(table["id"])
    centres = read_zbin_centres(catalogue)
    z_pdf = cat.get("Z_PDF")
    has_pdf = z_pdf is not None and centres is not None and z_pdf.shape[1] == len(centres)
    lines = _resolve_lines(model)
    basis = NativeBasis(templates) if fit else None
    batches = read_spectra([str(p) for p in inputs], format=input_format, batch_size=batch_size)  # checks inputs

    objects = out / "objects"
    if objects.is_dir():
        shutil.rmtree(objects)
    objects.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copyfile(Path(str(resources.files("mtopnet") / "data" / "inspect" / name)), out / name)

    rows_of: dict[str, list[int]] = {}
    for row, ident in enumerate(_clean(table["id"], -1)):
        rows_of.setdefault(ident, []).append(row)
    z_all = np.asarray(table["z"], dtype=np.float64)
    seen = np.zeros(n, dtype=bool)
    sizes: list[int] = []
    pdf_parts = {}
    if has_pdf:
        peak_z, peak_mass, lo, hi = pdf_zoom(z_pdf, centres, z_all)
        pdf_parts = {"peak_z": peak_z, "peak_mass": peak_mass, "lo": lo, "hi": hi}
    for batch in batches:
        ids = _clean(np.asarray(batch.ids), -1)
        rows = np.array([next((r for r in rows_of.get(ident, []) if not seen[r]), -1) for ident in ids])
        keep = np.flatnonzero(rows >= 0)
        if not len(keep):
            continue
        sub = batch.subset(keep)
        rows = rows[keep]
        seen[rows] = True
        models, rchi2 = best_fit(basis, sub, z_all[rows]) if basis is not None else (None, np.full(len(rows), np.nan))
        for j, row in enumerate(rows.tolist()):
            rec = object_record(sub, j, models)
            rec["fit_rchi2"] = None if not np.isfinite(rchi2[j]) else round(float(rchi2[j]), 3)
            if has_pdf:
                p = np.asarray(z_pdf[row], dtype=np.float64)
                pmax = float(p.max()) if len(p) and p.max() > 0 else 1.0
                rec["pdf"] = {"p": np.round(p / pmax * PDF_LEVELS).astype(np.int64).tolist(), "pmax": pmax,
                              "peaks": [[round(float(zp), 5), round(float(mp), 4)]
                                        for zp, mp in zip(pdf_parts["peak_z"][row], pdf_parts["peak_mass"][row],
                                                          strict=True) if np.isfinite(zp)],
                              "zoom": [round(float(pdf_parts["lo"][row]), 4), round(float(pdf_parts["hi"][row]), 4)]}
            sizes.append(_write_js(objects / f"{row}.js", f"MTOP.object({row},", rec))

    if seen.sum() < n:
        warnings.warn(f"{n - int(seen.sum())} of {n} catalogue rows have no spectrum in the inputs "
                      f"(ids are matched as text)", stacklevel=2)
    index = {
        "title": Path(catalogue).name,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mtopnet_version": __version__,
        "n": n,
        "columns": [{"key": key, "label": label, "decimals": dec} for key, _, label, dec in TABLE_COLUMNS
                    if key in table],
        "data": {key: _clean(table[key], dec) for key, _, _, dec in TABLE_COLUMNS if key in table},
        "has_spectrum": seen.astype(int).tolist(),
        "zwarn_bits": {str(int(bit)): bit.name for bit in ZWarn},
        "zwarn_info_bits": {str(int(bit)): bit.name for bit in ZInfo},
        "zbins": _clean(centres, 6) if has_pdf else None,
        "lines": [{"name": line.name, "wave": line.wave, "kind": line.kind} for line in lines],
        "fit": "templates + line groups at the catalogue z (native pixels)" if fit else None,
    }
    index_bytes = _write_js(out / "catalogue.js", "MTOP.catalogue(", index)
    return {"n_objects": n, "n_with_spectra": int(seen.sum()), "index_bytes": index_bytes, "object_bytes": sizes,
            "has_pdf": bool(has_pdf), "out": str(out / "index.html")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalogue", help="catalogue from `mtopnet predict` (with --pdf for the PDF panel)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="the spectrum files the catalogue was made from")
    p.add_argument("--out", required=True, help="output folder (DIR/index.html opens in any browser)")
    p.add_argument("--model", default=None, help="mark this model's line list (default: mtopnet.lines.LINES)")
    p.add_argument("--templates", default=None, help="template file of the best fit (default: the shipped one)")
    p.add_argument("--no-fit", action="store_true", help="do not draw the best-fit model")
    p.add_argument("--format", default=None, help="input format (default: detected)")
    p.add_argument("--overwrite", action="store_true", help="replace a page already in --out")


def run_cli(args: argparse.Namespace) -> int:
    info = write_inspection(args.catalogue, args.inputs, args.out, args.model, templates=args.templates,
                            fit=not args.no_fit, overwrite=args.overwrite, input_format=args.format)
    sizes = info["object_bytes"]
    mean = sum(sizes) / len(sizes) if sizes else 0
    print(f"{info['out']}: {info['n_objects']} objects ({info['n_with_spectra']} with spectra"
          f"{', PDFs' if info['has_pdf'] else ', no PDF'}); index {info['index_bytes'] / 1e3:.0f} kB, "
          f"{mean / 1e3:.0f} kB per object")
    return 0


__all__ = ["COMMAND", "ASSETS", "TABLE_COLUMNS", "catalogue_table", "pdf_zoom", "NativeBasis", "best_fit",
           "object_record", "write_inspection", "add_arguments", "run_cli"]
