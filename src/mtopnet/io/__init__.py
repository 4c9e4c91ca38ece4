"""Readers: real and simulated spectrum files -> :class:`~mtopnet.store.SpectraBatch`.

Formats (``format=`` names; detected from the file content when not given):

* ``moons1d`` - per-arm FITS files of the MOONS consortium simulator (grouped per object)
* ``desi``    - DESI spectra/coadd files (B/R/Z arms, TARGETID ids)
* ``sdss``    - SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` (COADD HDU)
* ``fits``    - the generic FITS format (one BINTABLE per arm); writer :func:`write_fits`
* ``text``    - CSV/whitespace columns; writer :func:`write_text`
* ``hdf5``    - the project's own store (:mod:`mtopnet.store`)

plus specutils ``Spectrum`` objects (:func:`from_specutils`, or mixed into
:func:`read_spectra`'s inputs). Everything comes out in vacuum Angstrom and
1e-17 erg/s/cm2/A with sanitised ivar and mask bits; see docs/readers.md.
"""
from ._core import (
                    FLUX_UNIT_CGS,
                    NoiseEstimatedWarning,
                    ReaderWarning,
                    air_to_vacuum,
                    estimate_noise,
                    map_mask,
                    sanitize,
)
from .detect import FORMATS, detect_format, sniff_format
from .generic_fits import write_fits
from .passthrough import input_passthrough, stack_passthrough
from .spectrum_objects import from_specutils
from .stream import DEFAULT_BATCH_SIZE, plan_inputs, read_file, read_spectra, read_units, rebatch
from .text import write_text

__all__ = ["FORMATS", "DEFAULT_BATCH_SIZE", "FLUX_UNIT_CGS", "NoiseEstimatedWarning", "ReaderWarning",
           "read_spectra", "read_units", "read_file", "input_passthrough", "stack_passthrough", "detect_format",
           "sniff_format", "plan_inputs", "rebatch",
           "from_specutils", "write_fits", "write_text", "sanitize", "map_mask", "estimate_noise",
           "air_to_vacuum"]
