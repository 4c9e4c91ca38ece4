"""Plain-text spectra: CSV or whitespace columns, one object per file, one arm.

Columns: wavelength, flux, optionally error (1 sigma) and mask. ``#`` starts a comment.
An optional header line (or a last comment line made only of column names) names the
columns; recognised names (case-insensitive, a unit may follow in [] or ()):

* wavelength: ``wavelength wave lambda lam wl angstrom`` (``loglam``: log10 of it)
* flux: ``flux flam f_lambda f``
* noise: ``error err sigma noise uncertainty flux_err ferr e_flux std`` or ``ivar invvar``
* mask: ``mask and_mask flag flags quality qual bad``

Without a header the columns are positional: wavelength, flux[, error[, mask]] (the one
convention for unnamed columns). An unnamed error column that cannot be a 1-sigma error is
refused (:func:`check_unnamed_error`): only 0 and 1 (a mask), no positive value, or a median
more than ``ERROR_SCATTER_RATIO`` times off the flux's own pixel-to-pixel scatter (DER_SNR).
Comments of the form ``# key: value`` may give ``id`` (else the file stem), ``arm``
(default ``ALL``), ``airorvac`` (``air`` converts to vacuum), ``wave_unit`` (default
Angstrom), ``flux_unit`` (default 1e-17 erg/s/cm2/A) and ``noise_estimated``.

:func:`write_text` writes one arm of one object with an ``ivar`` column and shortest
round-tripping numbers, so a write-then-read round trip is exact.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..store import SpectraBatch, check_writable
from ._core import RawArm, build_block, estimate_noise, fail, flux_factor, parse_unit, wave_to_angstrom

ARM = "ALL"
ERROR_SCATTER_RATIO = 30.0
"""An unnamed error column whose median differs from the flux's DER_SNR scatter by more than
this factor (either way) is not taken as an error. Resampled (pixel-correlated) spectra make
DER_SNR a few times low; a sky, continuum or S/N column is off by far more."""
NAMING_HINT = ("name the columns with a header line, e.g. 'wave flux err', 'wave flux ivar', "
               "'wave flux mask' or 'wave flux err mask'")
_ALIASES = {
    "wave": {"wavelength", "wave", "lambda", "lam", "wl", "angstrom", "wavelength_vac", "wavelength_air"},
    "loglam": {"loglam", "log_lambda", "log_wave", "loglambda"},
    "flux": {"flux", "flam", "f_lambda", "f", "flux_density", "fluxdensity"},
    "error": {"error", "err", "sigma", "noise", "uncertainty", "flux_err", "ferr", "e_flux", "std",
              "flux_error", "fluxerr", "error_flux", "err_flux"},
    "ivar": {"ivar", "invvar", "inverse_variance", "flux_ivar"},
    "mask": {"mask", "and_mask", "flag", "flags", "quality", "qual", "bad"},
}
_NAME_UNIT = re.compile(r"^\s*([^\[\(]+?)\s*(?:[\[\(](.*)[\]\)])?\s*$")
_META = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*[:=]\s*(.*?)\s*$")


def _role(token: str) -> tuple[str | None, str | None]:
    match = _NAME_UNIT.match(token)
    if not match:
        return None, None
    name = match.group(1).strip().lower().replace("-", "_").replace(" ", "_")
    for role, names in _ALIASES.items():
        if name in names:
            return role, (match.group(2) or None)
    return None, None


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter:
        return [field.strip() for field in line.split(delimiter)]
    return line.split()


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def decode_sample(head: bytes) -> str | None:
    """The start of a file as UTF-8 text (a byte-order mark dropped), or None if it is not text:
    a NUL byte, or bytes that do not decode (a multi-byte character cut at the end of the
    sample is fine)."""
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return head[:-4].decode("utf-8-sig")
        except UnicodeDecodeError:
            return None


def looks_like_text_spectrum(path: str, max_bytes: int = 65536) -> bool:
    """Whether a file's start reads as a text spectrum (numbers in >= 2 columns)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(max_bytes)
    except OSError:
        return False
    text = decode_sample(head)
    if text is None:
        return False
    lines = [ln.strip() for ln in text.splitlines()]
    if len(head) == max_bytes and lines:
        lines = lines[:-1]
    content = [ln for ln in lines if ln and not ln.startswith("#")]
    if not content:
        return False
    delimiter = "," if "," in content[0] else None
    first = _split(content[0], delimiter)
    if all(_is_number(tok) for tok in first):
        return len(first) >= 2
    if len(content) < 2:
        return False
    second = _split(content[1], delimiter)
    return len(second) >= 2 and all(_is_number(tok) for tok in second)


def check_unnamed_error(path: str, flux: np.ndarray, error: np.ndarray, position: int, width: int) -> None:
    """UserError unless ``error`` (L,) can be the 1-sigma noise of ``flux`` (L,) (same unit).

    Refused: finite values but none positive (all zeros), values 0 and 1 only (a mask), or
    a median error more than ERROR_SCATTER_RATIO times above or below the flux's pixel-to-pixel
    scatter (:func:`~mtopnet.io.estimate_noise`, DER_SNR). A noise-free flux (scatter below
    1e-6 of its level: a model spectrum) is not compared; an all-NaN column is "no noise given"
    (the noise is then estimated and flagged).
    """
    finite = error[np.isfinite(error)]
    problem = None
    if not finite.size:
        return  # no noise at all (NaN): estimated from the flux and flagged, as for a named column
    if np.all((finite == 0) | (finite == 1)) and np.any(finite == 1) and np.any(finite == 0):
        problem = "it holds only 0 and 1, like a bad-pixel mask"
    elif not np.any(finite > 0):
        problem = "it is all zeros" if np.all(finite == 0) else "it has no positive value"
    else:
        good = np.isfinite(flux) & np.isfinite(error) & (error > 0)
        scatter = float(np.nanmedian(estimate_noise(flux, good))) if good.sum() >= 10 else np.nan
        level = float(np.nanmedian(np.abs(flux[good]))) if good.any() else 0.0
        median = float(np.median(error[good])) if good.any() else np.nan
        if np.isfinite(scatter) and scatter > 1e-6 * level and np.isfinite(median):
            ratio = median / scatter
            if not 1.0 / ERROR_SCATTER_RATIO <= ratio <= ERROR_SCATTER_RATIO:
                problem = (f"its median {median:.3g} is {ratio:.3g} times the flux's pixel-to-pixel "
                           f"scatter {scatter:.3g}")
    if problem:
        raise fail(path, f"column {position + 1} of {width} unnamed columns is read as the 1-sigma error, but "
                         f"{problem}; {NAMING_HINT}")


def read_text(path: str) -> Iterator[SpectraBatch]:
    """One SpectraBatch with one row from a text spectrum."""
    try:
        with open(path, "r", encoding="utf-8-sig") as handle:  # a byte-order mark is skipped
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except UnicodeDecodeError:
        raise fail(path, "not a text file (not UTF-8)") from None
    meta: dict[str, str] = {}
    header: list[str] | None = None
    last_comment: list[str] | None = None
    delimiter: str | None = None
    rows: list[list[str]] = []
    row_lines: list[int] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _META.match(line)
            if match:
                meta[match.group(1).strip().lower().replace(" ", "_")] = match.group(2)
            else:
                last_comment = line.lstrip("#").replace(",", " ").split()
            continue
        if delimiter is None and not rows and header is None:
            delimiter = "," if "," in line else None
        fields = _split(line, delimiter)
        if not rows and header is None and not all(_is_number(tok) for tok in fields):
            header = fields
            continue
        rows.append(fields)
        row_lines.append(number)
    if not rows:
        raise fail(path, "no data lines (expected columns: wavelength, flux[, error[, mask]])")
    if header is None and last_comment and all(_role(tok)[0] for tok in last_comment) \
            and len(last_comment) == len(rows[0]):
        header = last_comment
    width = len(header) if header is not None else len(rows[0])
    for fields, number in zip(rows, row_lines, strict=False):
        if len(fields) != width:
            raise fail(path, f"line {number}: {len(fields)} columns, expected {width} (mismatched lengths)")
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError:
        for fields, number in zip(rows, row_lines, strict=False):
            for tok in fields:
                if not _is_number(tok):
                    raise fail(path, f"line {number}: cannot read {tok!r} as a number") from None
        raise
    roles: dict[str, int] = {}
    units: dict[str, str | None] = {}
    if header is not None:
        for index, token in enumerate(header):
            role, unit = _role(token)
            if role and role not in roles:
                roles[role], units[role] = index, unit
        if "wave" not in roles and "loglam" not in roles or "flux" not in roles:
            raise fail(path, f"header {' '.join(header)!r} names no wavelength and flux columns")
    else:
        if width < 2 or width > 4:
            raise fail(path, f"{width} columns without a header line; expected wavelength, flux[, error[, mask]] "
                             "(add a header line naming the columns)")
        roles = {"wave": 0, "flux": 1}
        if width >= 3:
            roles["error"] = 2
            check_unnamed_error(path, table[:, 1], table[:, 2], 2, width)
        if width == 4:
            roles["mask"] = 3
    wave = table[:, roles["wave"]] if "wave" in roles else 10.0 ** table[:, roles["loglam"]]
    wave_unit = units.get("wave") or meta.get("wave_unit") or meta.get("wavelength_unit")
    wave = wave_to_angstrom(wave, parse_unit(wave_unit, path, "wavelength unit") if wave_unit else None, path)
    flux_unit = units.get("flux") or meta.get("flux_unit")
    factor = flux_factor(parse_unit(flux_unit, path, "flux unit") if flux_unit else None, wave, path)
    flux = table[:, roles["flux"]] * factor
    noise, kind = None, "ivar"
    if "ivar" in roles:
        noise = table[:, roles["ivar"]] / np.asarray(factor) ** 2
    elif "error" in roles:
        noise, kind = table[:, roles["error"]] * factor, "error"
    mask = None
    if "mask" in roles:
        mask = table[:, roles["mask"]]
    airorvac = meta.get("airorvac", "vac").strip().lower()
    if airorvac not in ("air", "vac", "vacuum"):
        raise fail(path, f"airorvac: {airorvac!r}, expected 'air' or 'vac'")
    object_id = meta.get("id") or meta.get("objid") or Path(path).name.split(".")[0]
    arm = (meta.get("arm") or ARM).strip() or ARM
    flag = np.array([meta.get("noise_estimated", "false").strip().lower() in ("true", "1", "yes", "t")])
    raw = RawArm(wave=wave, flux=flux[None, :], noise=None if noise is None else noise[None, :],
                 noise_kind=kind, mask=None if mask is None else mask[None, :])
    yield build_block(path, [object_id.strip()], {arm: raw}, air=airorvac == "air", noise_estimated=flag)


def _format(values: np.ndarray) -> list[str]:
    """Shortest decimal strings that read back (float64 parse, then the array's dtype) exactly."""
    out = []
    dtype = values.dtype
    for value in values:
        text = str(value) if dtype == np.float32 else repr(float(value))
        if dtype.type(float(text)) != value:
            text = repr(float(value))
        out.append(text)
    return out


def write_text(path: str | Path, batch: SpectraBatch, row: int = 0, arm: str | None = None,
               overwrite: bool = False) -> Path:
    """Write one arm of row ``row`` of ``batch`` as a text spectrum (columns
    ``wavelength flux ivar mask``, vacuum Angstrom, 1e-17 erg/s/cm2/A). Atomic write.
    """
    path = check_writable(path, overwrite)
    batch.validate()
    if arm is None:
        if len(batch.arms) != 1:
            raise ValueError(f"the batch has arms {list(batch.arms)}; pass arm= to pick one")
        arm = next(iter(batch.arms))
    data = batch.arms[arm]
    flag = batch.labels.get("noise_estimated")
    estimated = bool(flag[row]) if flag is not None else False
    columns = [
        _format(np.asarray(data["wave"], dtype=np.float64)),
        _format(np.asarray(data["flux"][row], dtype=np.float32)),
        _format(np.asarray(data["ivar"][row], dtype=np.float32)),
        [str(int(m)) for m in np.asarray(data["mask"][row])],
    ]
    lines = [
        "# mtopnet text spectrum: vacuum Angstrom, flux in 1e-17 erg/s/cm2/A, ivar in its inverse square,",
        "# mask bits 1 bad pixel, 2 strong sky line, 4 deep telluric band",
        f"# id: {batch.ids[row]}",
        f"# arm: {arm}",
        "# airorvac: vac",
        f"# noise_estimated: {'true' if estimated else 'false'}",
        "wavelength flux ivar mask",
    ]
    lines += [" ".join(fields) for fields in zip(*columns, strict=False)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
