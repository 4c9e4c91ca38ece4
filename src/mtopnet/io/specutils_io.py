"""specutils' own readers as a fallback, and mtopnet's moons1d reader registered with specutils.

* **Fallback**: a file that none of mtopnet's readers recognises (:func:`~mtopnet.io.detect.sniff_format`)
  but that one of specutils' registered loaders identifies (a 1-D FITS image with a
  wavelength WCS, as IRAF and many archives write: ``wcs1d-fits``; the instrument formats of
  ``specutils.io.default_loaders``) is read with ``SpectrumList.read`` and converted with
  :func:`~mtopnet.io.spectrum_objects.from_specutils` (format name ``specutils``; ``--format
  specutils`` forces it). Only named files get the fallback; files of unknown format inside a
  folder or glob are skipped as before (identification tries every loader: slow).
* **Registration**: importing this module registers mtopnet's moons1d reader with specutils
  as the loader ``mtopnet-moons1d``, so that ``specutils.Spectrum.read(path)`` reads one
  moons1d arm file (the consortium simulator's per-arm FITS, ``<id>_<ARM>.fits``): flux in
  1e-17 erg/s/cm2/A, inverse-variance uncertainty, mask = moons1d's quality flags, meta
  ``id`` and ``band``. (specutils takes ~2 s to import, so ``import mtopnet.io`` does not do it.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..store import SpectraBatch
from ._core import fail
from .detect import sniff_format
from .moons1d import read_moons1d
from .spectrum_objects import from_specutils

MOONS1D_LOADER = "mtopnet-moons1d"
"""The name of mtopnet's moons1d loader in specutils' registry."""


def read_specutils(path: str) -> Iterator[SpectraBatch]:
    """Every spectrum ``SpectrumList.read(path)`` finds, one SpectraBatch each (UserError,
    one line, if specutils cannot read it)."""
    import warnings

    from specutils import SpectrumList
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # specutils' own chatter (e.g. WCS fixes)
            spectra = SpectrumList.read(str(path))
    except Exception as exc:
        raise fail(path, f"specutils could not read it ({type(exc).__name__}: {exc})") from None
    if not spectra:
        raise fail(path, "specutils read no spectrum from it")
    name = Path(path).name
    for k, spectrum in enumerate(spectra):
        yield from_specutils(spectrum, source=name if len(spectra) == 1 else f"{name}[{k}]")


def to_specutils(batch: SpectraBatch) -> Any:
    """A specutils Spectrum of a one-arm, one-object SpectraBatch (flux 1e-17 erg/s/cm2/A,
    InverseVariance uncertainty, mask where the batch's mask is non-zero, meta id and band)."""
    import astropy.units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    if len(batch) != 1 or len(batch.arms) != 1:
        raise ValueError(f"one object with one arm expected, got {len(batch)} objects and {len(batch.arms)} arms")
    band, arm = next(iter(batch.arms.items()))
    unit = u.Unit("1e-17 erg / (s cm2 Angstrom)")
    ivar = np.asarray(arm["ivar"][0], dtype=np.float64)
    return Spectrum(flux=np.asarray(arm["flux"][0], dtype=np.float64) * unit,
                    spectral_axis=np.asarray(arm["wave"], dtype=np.float64) * u.AA,
                    uncertainty=InverseVariance(ivar, unit=unit ** -2), mask=np.asarray(arm["mask"][0]) != 0,
                    meta={"id": str(np.asarray(batch.ids)[0]), "band": band})


def _is_moons1d(origin: str, *args: Any, **kwargs: Any) -> bool:
    path = getattr(args[0], "name", args[0]) if args else None  # a path, or a file object opened on one
    if not isinstance(path, (str, Path)):
        return False
    try:
        return sniff_format(str(path)) == "moons1d"
    except Exception:
        return False


def register_moons1d() -> None:
    """Register :data:`MOONS1D_LOADER` with specutils (once; nothing if already there)."""
    from astropy.io import registry
    from specutils import Spectrum
    from specutils.io.registers import data_loader

    if MOONS1D_LOADER in registry.get_formats(Spectrum, "Read")["Format"]:
        return

    @data_loader(MOONS1D_LOADER, identifier=_is_moons1d, dtype=Spectrum, extensions=["fits", "fits.gz"],
                 priority=10)
    def _load_moons1d(path: Any, **kwargs: Any) -> Any:
        return to_specutils(next(read_moons1d([str(getattr(path, "name", path))])))  # a path or a file object


register_moons1d()

__all__ = ["MOONS1D_LOADER", "read_specutils", "to_specutils", "register_moons1d"]
