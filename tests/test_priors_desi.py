"""Acceptance: a Redrock run with mtopnet's priors file on the two DESI spectra of tests/data
gives their DESI redshifts.

``mtopnet predict`` (the shipped MOONS model: z 0.6-3, MOONS arms) sees these DESI coadds as
out of its domain, so its priors file must leave Redrock free: an uninformative prior
(mtopnet.priors.UNINFORMATIVE_SIGMA). Redrock 0.21 then fits the shipped galaxy template
(rest 1560-11900 A) to the B, R and Z arms with their resolution matrices (read here without
desispec) over z 0-1 at Redrock's default galaxy step, and must land within 0.001 (1 + z) of
the DESI pipeline's Z (0.36874 and 0.00727, both GALAXY).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from astropy.io import fits

from mtopnet.cli import main
from mtopnet.priors import UNINFORMATIVE_SIGMA
from mtopnet.templates import default_template_path

pytest.importorskip("redrock.zfind")

DATA = Path(__file__).resolve().parent / "data" / "desi"
COADDS = {"coadd-4-80613-thru20210324.fits": "redrock-4-80613-thru20210324.fits",
          "coadd-special-dark-27247.fits": "redrock-special-dark-27247.fits"}
DLOG10Z = 3e-4
"""Redrock's default GALAXY redshift step in log10(1 + z)."""


def desi_resolution(diagonals: np.ndarray) -> scipy.sparse.dia_matrix:
    """A DESI RESOLUTION row (ndiag, nwave) as a sparse matrix, as desispec.resolution.Resolution
    builds it: diagonal d holds offset ndiag // 2 - d."""
    ndiag, nwave = diagonals.shape
    offsets = np.arange(ndiag // 2, -(ndiag // 2) - 1, -1)
    return scipy.sparse.dia_matrix((diagonals.astype(np.float64), offsets), shape=(nwave, nwave))


def desi_targets(path: Path) -> list:
    """Redrock Targets of a DESI coadd: one Spectrum per arm (B, R, Z) with its wavelength,
    flux, ivar (0 where MASK != 0) and resolution matrix."""
    from redrock.targets import Spectrum, Target
    with fits.open(path) as hdul:
        ids = np.asarray(hdul["FIBERMAP"].data["TARGETID"])
        targets = []
        for i, tid in enumerate(ids):
            spectra = []
            for arm in ("B", "R", "Z"):
                wave = np.asarray(hdul[f"{arm}_WAVELENGTH"].data, dtype=np.float64)
                flux = np.asarray(hdul[f"{arm}_FLUX"].data[i], dtype=np.float64)
                ivar = np.asarray(hdul[f"{arm}_IVAR"].data[i], dtype=np.float64).copy()
                ivar[np.asarray(hdul[f"{arm}_MASK"].data[i]) != 0] = 0.0
                res = desi_resolution(np.asarray(hdul[f"{arm}_RESOLUTION"].data[i]))
                spectra.append(Spectrum(wave, flux, ivar, res, None, band=arm.lower()))
            targets.append(Target(int(tid), spectra))
    return targets


@pytest.fixture(scope="module")
def priors_file(tmp_path_factory) -> Path:
    """``mtopnet predict`` on both coadds with the shipped model, ``--priors-out``."""
    tmp = tmp_path_factory.mktemp("desi-priors")
    out, priors = tmp / "cat.fits", tmp / "priors.fits"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # DomainWarning: these spectra are out of the model's domain
        assert main(["predict", *(str(DATA / name) for name in COADDS), "--out", str(out),
                     "--priors-out", str(priors), "--quiet"]) == 0
    return priors


def test_priors_file_leaves_out_of_domain_spectra_free(priors_file):
    table = fits.getdata(priors_file, "PRIORS")
    assert len(table) == 2
    assert np.all(table["SIGMA"] == UNINFORMATIVE_SIGMA)  # out of the MOONS model's domain
    expected = {int(fits.getdata(DATA / rr, "REDSHIFTS")["TARGETID"][0]) for rr in COADDS.values()}
    assert set(table["TARGETID"].tolist()) == expected


def test_redrock_with_our_priors_gives_desi_redshifts(priors_file):
    from redrock.targets import DistTargetsCopy
    from redrock.templates import DistTemplate, Template
    from redrock.zfind import zfind

    targets = [t for name in COADDS for t in desi_targets(DATA / name)]
    truth = {}
    for rr in COADDS.values():
        row = fits.getdata(DATA / rr, "REDSHIFTS")[0]
        truth[int(row["TARGETID"])] = float(row["Z"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        template = Template(str(default_template_path()))
        template._redshifts = 10 ** np.arange(0.0, np.log10(2.0) + DLOG10Z, DLOG10Z) - 1  # z 0-1
        dtargets = DistTargetsCopy(targets)
        dtemplate = DistTemplate(template, dtargets.wavegrids())
        _, zfit = zfind(dtargets, [dtemplate], mp_procs=1, priors=str(priors_file))
    best = zfit[zfit["znum"] == 0]
    assert len(best) == 2
    for row in best:
        z_desi = truth[int(row["targetid"])]
        assert abs(float(row["z"]) - z_desi) < 1e-3 * (1 + z_desi), (int(row["targetid"]), float(row["z"]), z_desi)
        assert row["spectype"] == "GALAXY"
