"""Opening FITS files so that truncation and corruption end as one-line UserErrors."""
from __future__ import annotations

import bz2
import gzip
import warnings
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ._core import fail, first_line

_CORRUPT_HINTS = ("truncated", "corrupt", "missing end card", "not a multiple of 2880",
                  "not multiple of 2880")


_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"


def check_compressed(path: str, chunk: int = 1 << 20) -> None:
    """UserError if ``path`` is a gzip or bzip2 file whose compressed stream is cut short or
    damaged (CRC or data error); a no-op for any other file.

    astropy decompresses only as far as it needs and reads a truncated ``.fits.gz`` as if it
    ended where the stream stops; decompressing the whole stream once (in ``chunk``-byte
    pieces, so memory stays flat) finds the damage that its CRC and length trailer reveal.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(3)
    except OSError:
        return  # the caller's open reports it
    opener = gzip.open if head[:2] == _GZIP_MAGIC else bz2.open if head == _BZIP2_MAGIC else None
    if opener is None:
        return
    try:
        with opener(path, "rb") as stream:
            while stream.read(chunk):
                pass
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise fail(path, f"file is truncated or damaged: the compressed data {_compressed_problem(exc)}") from None


def _compressed_problem(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "end before the end-of-stream marker"
    return f"do not decompress ({first_line(exc)})"


@contextmanager
def open_fits(path: str) -> Iterator[Any]:
    """Open a FITS file read-only with all headers parsed; raise UserError if it is damaged.

    astropy reports a file shorter than its headers promise only as a warning; here any
    truncation/corruption warning becomes ``UserError("<path>: file is truncated or damaged: ...")``.
    A gzip/bzip2-compressed file is first checked whole (:func:`check_compressed`).
    """
    from astropy.io import fits

    check_compressed(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except FileNotFoundError:
            raise fail(path, "no such file") from None
        except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
            raise fail(path, f"not a readable FITS file ({first_line(exc)})") from None
    for record in caught:
        message = str(record.message)
        if any(hint in message.lower() for hint in _CORRUPT_HINTS):
            hdul.close()
            raise fail(path, f"file is truncated or damaged: FITS ({first_line(Exception(message))})")
    try:
        yield hdul
    finally:
        hdul.close()


def hdu_names(hdul: Any) -> list[str]:
    return [str(h.name).upper() for h in hdul]


def read_data(hdul: Any, key: str | int, path: str) -> np.ndarray:
    """An HDU's data as an array, with damage reported as UserError naming the HDU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = hdul[key].data
        except KeyError:
            raise fail(path, f"no HDU {key!r}") from None
        except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
            raise fail(path, f"HDU {key!r} is truncated or corrupt ({first_line(exc)})") from None
    if data is None:
        raise fail(path, f"HDU {key!r} holds no data")
    return data


def table_columns(hdul: Any, key: str | int) -> dict[str, str]:
    """Upper-case column name -> the name as written, for a binary table HDU."""
    cols = getattr(hdul[key], "columns", None)
    return {} if cols is None else {str(c).upper(): str(c) for c in cols.names}


def column(data: Any, names: dict[str, str], wanted: str, path: str, hdu: str) -> np.ndarray:
    """A table column by case-insensitive name; UserError if missing or unreadable."""
    if wanted.upper() not in names:
        raise fail(path, f"HDU {hdu}: no column {wanted}")
    try:
        return np.asarray(data[names[wanted.upper()]])
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise fail(path, f"HDU {hdu}: column {wanted} is truncated or corrupt ({first_line(exc)})") from None
