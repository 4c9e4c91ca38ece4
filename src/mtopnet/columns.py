"""The catalogue's columns and flag bits: the one table of names, dtypes, units and descriptions.

A catalogue of ``mtopnet predict`` is a Redrock-shaped REDSHIFTS table: first the columns of
Redrock 0.21's own table, with its names and dtypes (:data:`REDROCK_SCHEMA`, as
``redrock.external.desi.write_zbest`` writes them), then mtopnet's (:data:`BASE_SCHEMA`). Every
column has a unit (``""``: dimensionless by declaration) and a description of at most 68
characters: the FITS TUNIT/TCOMM and the Parquet field metadata are both written from here.

``ZWARN`` (:class:`ZWarn`) uses Redrock's meaning for every bit Redrock defines and mtopnet's
own warnings in bits 16-23 (which Redrock reserves for other tools): ``ZWARN == 0`` is the
usual cut. Informational flags, which say nothing against the redshift, are in ``ZWARN_INFO``
(:class:`ZInfo`). Both are tabulated in docs/catalogue.md.

Catalogues written before this layout (lowercase ``id``, ``z``, ``zwarn`` ...) are read
through :func:`upgrade_legacy`: names mapped, old ``zwarn`` bits moved to the new layout.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class ZWarn(enum.IntFlag):
    """Bits of ``ZWARN`` (0 = no warning). Bits 0-11: Redrock's ``ZWarningMask`` (same
    meaning; the ones mtopnet never sets say so); bits 16-23: mtopnet's own."""

    SKY = 1 << 0  # sky fibre (not set: mtopnet reads no fibre type)
    LITTLE_COVERAGE = 1 << 1  # valid data on < MIN_VALID_FRACTION of the model's grid (QOP forced to 1)
    SMALL_DELTA_CHI2 = 1 << 2  # DELTACHI2 < SMALL_DELTA_CHI2_LIMIT: another z > 1000 km/s away fits almost as well
    NEGATIVE_MODEL = 1 << 3  # synthetic spectrum is negative (not set)
    MANY_OUTLIERS = 1 << 4  # > 5% of pixels 5 sigma from the model (not set: see FIT_OUTLIERS)
    Z_FITLIMIT = 1 << 5  # z within 0.01 of the model's redshift range: a featureless spectrum's pile-up (QOP <= 2)
    NEGATIVE_EMISSION = 1 << 6  # a QSO line with negative emission (not set)
    UNPLUGGED = 1 << 7  # fibre unplugged or broken (not set)
    BAD_TARGET = 1 << 8  # catastrophically bad targeting data (not set)
    NODATA = 1 << 9  # no valid pixel at all: outputs are the network's prior (QOP 1, P_DZ01 0)
    BAD_MINFIT = 1 << 10  # a template fit ran but found no usable chi2 minimum: Z is the network's
    POORDATA = 1 << 11  # NaN/inf flux or ivar, or negative ivar, in unmasked pixels (they were masked)
    OUT_OF_DOMAIN = 1 << 16  # coverage (masks counted), sampling or resolution unlike training (QOP <= 2)
    REFINE_DISAGREE = 1 << 17  # another PDF peak fits better by >= 25 in chi2, or the fit was rejected (QOP <= 2)
    IMPLAUSIBLE_FLUX = 1 << 18  # flux scale impossible for a galaxy (wrong unit?): M*, SFR meaningless (QOP <= 2)
    SCAN_DISAGREE = 1 << 19  # the full-range scan prefers another z by more than 9 in chi2 (QOP <= 2)
    FIT_OUTLIERS = 1 << 20  # a few pixels far from the fit dominated it; fitted without them (QOP <= 3)
    NET_EXCLUDES = 1 << 21  # the network PDF holds < 0.1% within +-0.01 of the reported z (QOP <= 2)
    LOW_PEAK_PROB = 1 << 22  # P_DZ01 < 0.5
    NO_FEATURES = 1 << 23  # the templates at Z fit no better than a smooth continuum (FEATURE_DCHI2 < 50; QOP <= 2)

    @classmethod
    def names(cls, value: int) -> list[str]:
        """Names of the bits set in ``value``."""
        return [bit.name for bit in cls if value & bit and bit.name]


QOP_CAP_2 = (ZWarn.OUT_OF_DOMAIN | ZWarn.REFINE_DISAGREE | ZWarn.SCAN_DISAGREE | ZWarn.IMPLAUSIBLE_FLUX
             | ZWarn.Z_FITLIMIT | ZWarn.NET_EXCLUDES | ZWarn.NO_FEATURES)
"""Bits that cap QOP at 2 (models calibrated with the scan): what a calibration cannot see in a
validation set (docs/quality.md)."""


def capped_qop(qop: np.ndarray, zwarn: np.ndarray, caps: bool = True,
               spectype: np.ndarray | None = None) -> np.ndarray:
    """(N,) int16 QOP after the caps of ``zwarn`` (N,): 1 without usable data (LITTLE_COVERAGE,
    NODATA), at most 3 for FIT_OUTLIERS, and with ``caps`` at most 2 for :data:`QOP_CAP_2`;
    at most 2 where ``spectype`` (N,) is not GALAXY (QOP grades a galaxy redshift, which the
    calibration never saw such spectra give). One function for ``mtopnet predict`` and
    ``mtopnet calibrate``."""
    zwarn = np.asarray(zwarn, dtype=np.int64)
    qop = np.asarray(qop)
    if spectype is not None:
        qop = np.where(np.asarray(spectype) != "GALAXY", np.minimum(qop, 2), qop)
    if caps:
        qop = np.where((zwarn & int(QOP_CAP_2)) != 0, np.minimum(qop, 2), qop)
    qop = np.where((zwarn & int(ZWarn.FIT_OUTLIERS)) != 0, np.minimum(qop, 3), qop)
    return np.where((zwarn & int(ZWarn.LITTLE_COVERAGE | ZWarn.NODATA)) != 0, 1, qop).astype(np.int16)


CAPPED_P_MAX = 0.5
"""P_DZ01 of an object outside the calibration's domain (:data:`P_CAP`) is at most this."""
P_CAP = ZWarn.OUT_OF_DOMAIN | ZWarn.IMPLAUSIBLE_FLUX
"""Bits that cap P_DZ01 at :data:`CAPPED_P_MAX`: spectra unlike any the calibration saw (other
arms or resolution, a flux scale no galaxy has), whose calibrated probability means nothing.
The other QOP caps (:data:`QOP_CAP_2`) flag evidence that the validation data do hold, where
P_DZ01 stays calibrated (capping it too put the cross-simulator ECE from 0.012 to 0.053:
bright spectra whose fit had a reduced chi2 > 3, then part of REFINE_DISAGREE, are right)."""


def capped_p(p_dz01: np.ndarray, zwarn: np.ndarray, caps: bool = True,
             spectype: np.ndarray | None = None) -> np.ndarray:
    """(N,) P_DZ01 after the caps of ``zwarn`` (N,): at most :data:`CAPPED_P_MAX` where a
    :data:`P_CAP` bit is set (with ``caps``) or ``spectype`` (N,) is not GALAXY, 0 without any
    valid pixel (NODATA)."""
    zwarn = np.asarray(zwarn, dtype=np.int64)
    p = np.asarray(p_dz01)
    if spectype is not None:
        p = np.where(np.asarray(spectype) != "GALAXY", np.minimum(p, CAPPED_P_MAX), p)
    if caps:
        p = np.where((zwarn & int(P_CAP)) != 0, np.minimum(p, CAPPED_P_MAX), p)
    return np.where((zwarn & int(ZWarn.NODATA)) != 0, 0.0, p).astype(np.asarray(p_dz01).dtype)


class ZInfo(enum.IntFlag):
    """Bits of ``ZWARN_INFO``: facts about the input that do not make Z less reliable."""

    NOISE_ESTIMATED = 1 << 0  # the file had no error column: ivar estimated from the flux scatter (mtopnet.io)
    LOW_SN = 1 << 1  # continuum not detected (block medians below their noise): Z rests on lines
    MULTI_PEAK = 1 << 2  # the PDF has more than one peak holding >= 5% within +-0.01 (see DELTACHI2)
    UNTRAINED_PIXELS = 1 << 3  # data where the model saw none in training (voided before the network)
    SKY_MASKED = 1 << 4  # the training instrument's sky-line / telluric masks voided pixels the file had not masked
    POOR_FIT = 1 << 5  # best fit's reduced chi2 > 3: templates miss part of a bright spectrum (Z right on validation)

    @classmethod
    def names(cls, value: int) -> list[str]:
        """Names of the bits set in ``value``."""
        return [bit.name for bit in cls if value & bit and bit.name]


SMALL_DELTA_CHI2_LIMIT = 9.0
"""DELTACHI2 below this sets ZWarn.SMALL_DELTA_CHI2 (Redrock's threshold)."""


@dataclass(frozen=True)
class Column:
    """One catalogue column: name, numpy dtype (vector columns: of each element), unit (FITS
    TUNIT, in the FITS standard's syntax so astropy parses it; "" dimensionless by declaration:
    logarithms such as LOGMSTAR too, FITS having no dex), description (<= 68 characters: TCOMM)."""

    name: str
    dtype: str
    unit: str
    description: str


REDROCK_SCHEMA: tuple[Column, ...] = (
    Column("TARGETID", "i8", "", "input id (integer ids as int64, text ids as text)"),
    Column("Z", "f8", "", "redshift: template fit within the PDF's peaks (else PDF estimate)"),
    Column("ZERR", "f8", "", "1-sigma error of Z (chi2 curvature; else half the 68% interval)"),
    Column("ZWARN", "i8", "", "warning bits (Redrock's bits 0-11, mtopnet's 16-23); 0 = none"),
    Column("CHI2", "f8", "", "chi2 of the template fit at Z (NaN where no fit ran)"),
    Column("COEFF", "f8", "10**-17 erg Angstrom-1 s-1 cm-2", "coefficients of the refinement basis at Z"),
    Column("FITMETHOD", "U4", "", "PCA: Z from the template fit; NONE: from the PDF alone"),
    Column("NPIXELS", "i8", "", "model-grid pixels the fit used (ivar > 0, outliers clipped)"),
    Column("SPECTYPE", "U6", "", "GALAXY, or QSO / STAR where those templates fit much better"),
    Column("SUBTYPE", "U20", "", "star class (A, B, CV, F, G, K, M, WD) of a STAR; else empty"),
    Column("NCOEFF", "i8", "", "number of valid entries of COEFF (0: no fit)"),
    Column("DELTACHI2", "f8", "", "chi2 of the best minimum > 1000 km/s from Z minus CHI2"),
)
"""Redrock 0.21's REDSHIFTS columns, in its order, with its dtypes (tests/test_catalogue_redrock.py)."""

BASE_SCHEMA: tuple[Column, ...] = REDROCK_SCHEMA + (
    Column("Z_MEAN", "f8", "", "mean of the redshift PDF"),
    Column("Z_LO68", "f8", "", "lower end of the central 68% interval of z"),
    Column("Z_HI68", "f8", "", "upper end of the central 68% interval of z"),
    Column("Z_LO95", "f8", "", "lower end of the central 95% interval of z"),
    Column("Z_HI95", "f8", "", "upper end of the central 95% interval of z"),
    Column("P_DZ01", "f4", "", "calibrated probability that |Z - z_true| < 0.01"),
    Column("QOP", "i2", "", "4: >= 99% reliable, 3: >= 90%, 2: >= 50%, 1: unreliable"),
    Column("ZWARN_INFO", "i4", "", "informational bits (ZInfo); not part of ZWARN"),
    Column("LOGMSTAR", "f4", "", "log10 of the stellar mass in solar masses, M*/Msun"),
    Column("LOGMSTAR_ERR", "f4", "", "1-sigma error of LOGMSTAR (dex)"),
    Column("LOGSFR", "f4", "", "log10 of the star-formation rate in Msun/yr"),
    Column("LOGSFR_ERR", "f4", "", "1-sigma error of LOGSFR (dex)"),
)
"""Every catalogue's columns, in order (TARGETID's dtype follows the input's ids)."""

REFINE_SCHEMA: tuple[Column, ...] = (
    Column("Z_NET", "f8", "", "the network's own point estimate of z"),
    Column("RCHI2", "f8", "", "reduced chi2 of the best template fit (NaN if not refined)"),
    Column("REFINED", "i2", "", "PDF peak reported (0 = the main one); -1: not refined"),
    Column("FEATURE_DCHI2", "f8", "", "chi2 gain of the templates at Z over a smooth continuum per arm"),
    Column("QSO_DCHI2", "f8", "", "chi2 of the galaxy fit minus the QSO fit's (rescaled; NaN: none)"),
    Column("STAR_DCHI2", "f8", "", "chi2 of the galaxy fit minus the star fit's (rescaled; NaN: none)"),
)
"""Columns of the template refinement (mtopnet.refine), after :data:`BASE_SCHEMA`."""

SCAN_SCHEMA: tuple[Column, ...] = (
    Column("SCANNED", "i2", "", "1 where the full-range template scan ran"),
    Column("SCAN_Z", "f8", "", "the full-range scan's best redshift (NaN: no scan)"),
    Column("SCAN_DCHI2", "f8", "", "scan: chi2 of best minimum > 1000 km/s away minus best"),
)
"""Columns of the full-range template scan (models calibrated with it), after :data:`REFINE_SCHEMA`."""

PDF_SCHEMA = Column("Z_PDF", "f4", "", "redshift PDF: probability per bin (centres: HDU ZBINS)")
"""With ``--pdf``: FITS vector / Parquet fixed-size list; CSV: one PDF_Z<centre> column per bin."""

ALL_COLUMNS: dict[str, Column] = {c.name: c for c in BASE_SCHEMA + REFINE_SCHEMA + SCAN_SCHEMA + (PDF_SCHEMA,)}
"""Name -> :class:`Column`, every column a catalogue can have."""


# ----------------------------------------------------------------------------- old catalogues

LEGACY_NAMES = {"id": "TARGETID", "z_err": "ZERR", "zwarn": "ZWARN", "delta_chi2": "DELTACHI2",
                "z_pdf": "Z_PDF"}
"""Names of catalogues before the Redrock layout that are not just upper-cased."""

_LEGACY_ZWARN = {0: ZWarn.LITTLE_COVERAGE, 1: ZWarn.NODATA, 2: ZInfo.LOW_SN, 3: ZWarn.POORDATA,
                 4: ZInfo.NOISE_ESTIMATED, 5: ZWarn.OUT_OF_DOMAIN, 6: ZInfo.MULTI_PEAK, 7: ZWarn.LOW_PEAK_PROB,
                 8: ZWarn.REFINE_DISAGREE, 9: ZInfo.UNTRAINED_PIXELS, 10: ZWarn.IMPLAUSIBLE_FLUX,
                 11: ZWarn.SCAN_DISAGREE, 12: ZWarn.FIT_OUTLIERS, 13: ZWarn.Z_FITLIMIT, 14: ZWarn.NET_EXCLUDES}
"""Old ``zwarn`` bit -> its flag now (a ZWarn or a ZInfo bit)."""


def upgrade_legacy(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns of a catalogue in the layout before the Redrock one (lowercase ``id``,
    ``zwarn``, ...; also the Redrock baseline's, mtopnet.baselines.redrock, and an upper-cased
    ``ID`` as its FITS files had it) renamed, and an
    mtopnet catalogue's ``zwarn`` bits split into ZWARN and ZWARN_INFO. A catalogue in
    today's layout (it has TARGETID) is returned unchanged."""
    if "TARGETID" not in cols and "id" not in cols and "ID" in cols:  # upper-cased by FITS
        cols = {("TARGETID" if k == "ID" else k): v for k, v in cols.items()}
    if "TARGETID" in cols or "id" not in cols:
        return cols
    out = {LEGACY_NAMES.get(k, k.upper()): v for k, v in cols.items() if not k.startswith("pdf_z")}
    if "ZWARN" in out and "QOP" in out:  # an mtopnet catalogue (the Redrock baseline's has Redrock's bits)
        old = np.asarray(out["ZWARN"]).astype(np.int64)
        zwarn, info = np.zeros(len(old), np.int64), np.zeros(len(old), np.int32)
        for bit, flag in _LEGACY_ZWARN.items():
            hit = (old >> bit) & 1 == 1
            if isinstance(flag, ZInfo):
                info[hit] |= int(flag)
            else:
                zwarn[hit] |= int(flag)
        out["ZWARN"], out["ZWARN_INFO"] = zwarn, info
    return out


__all__ = ["ZWarn", "ZInfo", "QOP_CAP_2", "capped_qop", "CAPPED_P_MAX", "P_CAP", "capped_p",
           "SMALL_DELTA_CHI2_LIMIT", "Column", "REDROCK_SCHEMA", "BASE_SCHEMA", "REFINE_SCHEMA",
           "SCAN_SCHEMA", "PDF_SCHEMA", "ALL_COLUMNS", "LEGACY_NAMES", "upgrade_legacy"]
