"""Telling a file's format from its content (never from its name alone)."""
from __future__ import annotations

import gzip
from pathlib import Path

from ._core import fail
from ._fits import hdu_names, open_fits, primary_header, table_columns, walk_fits
from .desi import desi_arms
from .generic_fits import arm_tables
from .text import _role, decode_sample, looks_like_text_spectrum

FORMATS = ("moons1d", "desi", "sdss", "fits", "text", "hdf5", "specutils")
"""Names accepted by ``format=``: moons1d, desi, sdss, fits (generic), text, hdf5 (store)."""

_FITS_MAGIC = b"SIMPLE  ="
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


def _head(path: str, size: int = 16) -> bytes:
    try:
        with open(path, "rb") as handle:
            head = handle.read(size)
            if head.startswith(_GZIP_MAGIC):
                handle.seek(0)
                try:
                    with gzip.open(handle) as inner:
                        return b"gz:" + inner.read(size)
                except (OSError, EOFError):
                    return b"gz:"
            return head
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except IsADirectoryError:
        raise fail(path, "is a directory") from None
    except OSError as exc:
        raise fail(path, f"cannot open ({exc.strerror or exc})") from None


def sniff_format(path: str) -> str | None:
    """The format of ``path`` (one of FORMATS), or None if it is none of them.

    Raises UserError when the file is missing, unreadable, or a damaged FITS file.
    """
    head = _head(path)
    body = head[3:] if head.startswith(b"gz:") else head
    if body.startswith(_HDF5_MAGIC):
        return "hdf5"
    if body.startswith(_FITS_MAGIC):
        return _sniff_fits(path)
    if head.startswith(b"gz:"):
        return None
    if looks_like_text_spectrum(path):
        return "text"
    return None


def _sniff_fits(path: str) -> str | None:
    primary = primary_header(path)  # moons1d writes INST = 'MOONS_SIM' there: one 2880-byte block read
    if primary is not None and _moons1d_headers([primary]):
        return "moons1d"  # a damaged one is refused, in words, when it is read
    hdus = walk_fits(path)  # a clean moons1d file is known from its headers alone (no astropy)
    if hdus is not None and not any("EXTNAME" in h.header for h in hdus) and _moons1d_headers(
            [h.header for h in hdus]):
        return "moons1d"
    with open_fits(path) as hdul:
        names = hdu_names(hdul)
        if desi_arms(names):
            return "desi"
        if "COADD" in names and "LOGLAM" in table_columns(hdul, "COADD"):
            return "sdss"
        if _moons1d_headers([h.header for h in hdul]):
            return "moons1d"
        if arm_tables(hdul):
            return "fits"
    return None


def _moons1d_headers(headers: list) -> bool:
    """True for the HDU headers of a moons1d file: INST = 'MOONS_SIM', or HDU 1 named DATA_<BAND>."""
    if str(headers[0].get("INST", "")).strip().upper() == "MOONS_SIM":
        return True
    return len(headers) > 1 and str(headers[1].get("NAME", "")).strip().upper().startswith("DATA_")


FORCE_HINT = "--format (format= in Python) forces a format"


def unknown_format_problem(path: str) -> str:
    """What is wrong with a file that :func:`sniff_format` recognises as no format (one phrase)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not head:
        return "file is empty"
    if head.startswith(_GZIP_MAGIC):
        return "gzip-compressed, but holds no FITS, HDF5 or text spectrum"
    if b"\x00" in head:
        return f"not a spectrum file (binary, neither FITS nor HDF5; it starts with {head[:8]!r})"
    text = decode_sample(head)
    if text is None:
        return f"not a spectrum file (neither FITS, HDF5 nor UTF-8 text; it starts with {head[:8]!r})"
    content = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not content:
        return "text with no data rows (only comments or blank lines)"
    names = content[0].replace(",", " ").split()
    if len(content) == 1 and names and all(_role(name)[0] for name in names):
        return "text with no data rows (a header line of column names, no numbers under it)"
    return ("text, but no numeric columns of wavelength and flux (not a text spectrum); "
            "expected columns: wavelength, flux[, error[, mask]]")


def specutils_formats(path: str | Path) -> list[str]:
    """The specutils loaders that identify ``path``, for FITS and ASDF files that none of
    mtopnet's readers knows (a 1-D image with a wavelength WCS, an instrument's own layout);
    empty for anything else (text: specutils' ASCII loader would take any table), or if
    specutils is missing. Reading: :mod:`mtopnet.io.specutils_io`."""
    head = _head(str(path))
    body = head[3:] if head.startswith(b"gz:") else head
    if not (body.startswith(_FITS_MAGIC) or body.startswith(b"#ASDF")):
        return []
    try:
        from astropy.io import registry
        from specutils import SpectrumList
    except ImportError:
        return []
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(registry.identify_format("read", SpectrumList, str(path), None, [], {}))
    except Exception:  # an identifier that fails on this file identifies nothing
        return []


def _redshift_catalogue(path: str | Path) -> bool:
    """Whether ``path`` is a FITS file with an HDU named REDSHIFTS (a catalogue, not spectra)."""
    head = _head(str(path))
    if not head.startswith(_FITS_MAGIC):
        return False
    try:
        from astropy.io import fits
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            return any(h.name == "REDSHIFTS" for h in hdul)
    except Exception:  # a damaged file is not a catalogue; the caller says what is wrong
        return False


def detect_format(path: str | Path) -> str:
    """The format of one file; UserError (one line) if it is not a known spectrum format,
    saying what is wrong with the file (empty, no data rows, not FITS, ...). A file none of
    mtopnet's readers knows but one of specutils' loaders identifies is ``specutils``
    (:mod:`mtopnet.io.specutils_io`)."""
    fmt = sniff_format(str(path))
    if fmt is None:
        if _redshift_catalogue(path):  # e.g. DESI's redrock-*.fits beside its coadd-*.fits, by a shell glob
            raise fail(path, "a redshift catalogue (HDU REDSHIFTS: Redrock's or mtopnet's output), not spectra; "
                             "leave it out of the inputs (a folder or a quoted glob skips such files)")
        if specutils_formats(path):  # specutils' registry: a fallback (slow, so last)
            return "specutils"
        raise fail(path, f"{unknown_format_problem(str(path))}: not a moons1d, DESI, SDSS, generic FITS or text "
                         f"spectrum, nor an mtopnet store; {FORCE_HINT}")
    return fmt
