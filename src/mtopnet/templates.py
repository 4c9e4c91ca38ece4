"""The shipped Redrock-format template basis: where it lives and how to read it.

:mod:`mtopnet.baselines.make_templates` writes the file, :mod:`mtopnet.refine` and the
Redrock baseline read it.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
from astropy.io import fits

from .config import UserError

SPECTYPE = "GALAXY"
SUBTYPE = "MOONS"
VERSION = "2.0"
TEMPLATE_FILE = f"rrtemplate-{SPECTYPE}-{SUBTYPE}-v{VERSION}.fits"
"""File name in Redrock's convention rrtemplate-SPECTYPE-SUBTYPE-vVERSION.fits."""


def default_template_dir() -> Path:
    """The package's shipped template folder (``mtopnet/data/templates``)."""
    return Path(str(resources.files("mtopnet") / "data" / "templates"))


def default_template_path() -> Path:
    """The shipped basis, ``mtopnet/data/templates/`` + :data:`TEMPLATE_FILE`."""
    return default_template_dir() / TEMPLATE_FILE


def read_templates(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame basis of a Redrock template file: wave (L,) vacuum A (log-uniform), flux (K, L)."""
    path = Path(path) if path is not None else default_template_path()
    if not path.is_file():
        raise UserError(f"{path}: no template file (build one with mtopnet make-templates)")
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        flux = np.asarray(hdul[0].data, dtype=np.float64)
        n = flux.shape[-1]
        if hdr.get("LOGLAM", 0):
            wave = 10 ** (hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(n))
        else:
            wave = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(n)
    return wave, np.atleast_2d(flux)


__all__ = ["SPECTYPE", "SUBTYPE", "VERSION", "TEMPLATE_FILE", "default_template_dir", "default_template_path",
           "read_templates"]
