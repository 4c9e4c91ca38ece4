"""Regenerate the package's QSO and STAR templates (``src/mtopnet/data/templates``) from Redrock's.

Reads the Redrock templates (desihub/redrock-templates, BSD 3-clause licence, (c) DESI
Collaboration) from a clone of that repository and writes, in Redrock's file format:

``rrtemplate-QSO-None-v0.1.fits``
    Copied unchanged (4 PCA vectors, rest 450-10400 A, log10 sampling 1e-4).
``rrtemplate-STAR-<class>-v0.1.fits`` (A, B, CV, F, G, K, M, WD)
    Trimmed: rest 3550-11000 A (the optical arms of every instrument mtopnet describes, with
    600 km/s to spare; the templates stop at 11000 A), the first ``--vectors`` (4) basis
    vectors (the others hold 1-2% of the archetypes' norm), and averaged from the 0.1 A linear
    grid onto a log10 grid of 20 km/s pixels (``CRVAL1``/``CDELT1``, ``LOGLAM = 1``): finer than
    the line-spread function of every instrument here except MOONS HR. Stored as float32.
    The header keeps the original's RRTYPE, RRSUBTYP, RRVER, VERSION, SEED and says what was
    done (``TRIMMED``, ``ORIGFILE``).

Usage (from the repository root)::

    git clone https://github.com/desihub/redrock-templates /tmp/rrt
    python scripts/trim_redrock_templates.py /tmp/rrt
"""
from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

OUT = Path(__file__).resolve().parents[1] / "src" / "mtopnet" / "data" / "templates"
STAR_CLASSES = ("A", "B", "CV", "F", "G", "K", "M", "WD")
WAVE_RANGE = (3550.0, 11000.0)
PIXEL_KMS = 20.0
C_KMS = 299792.458


def trim_star(src: Path, dst: Path, n_vectors: int) -> None:
    with fits.open(src) as hdul:
        hdr = hdul[0].header.copy()
        flux = np.asarray(hdul[0].data, dtype=np.float64)[:n_vectors]
    n = flux.shape[1]
    wave = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(n)
    if hdr.get("LOGLAM", 0):
        raise SystemExit(f"{src}: expected a linear grid")
    step = PIXEL_KMS / C_KMS / math.log(10)  # log10 pixel
    lo, hi = math.log10(WAVE_RANGE[0]), math.log10(WAVE_RANGE[1])
    m = int((hi - lo) / step)
    edges = 10 ** (lo + step * (np.arange(m + 1) - 0.5))
    # mean of the linear-grid flux (piecewise constant, pixel edges half-way) over each log pixel
    src_edges = np.concatenate([wave - 0.5 * hdr["CDELT1"], [wave[-1] + 0.5 * hdr["CDELT1"]]])
    cum = np.concatenate([np.zeros((len(flux), 1)), np.cumsum(flux * hdr["CDELT1"], axis=1)], axis=1)
    integ = np.stack([np.interp(edges, src_edges, c) for c in cum])
    out = (np.diff(integ, axis=1) / np.diff(edges)).astype(np.float32)
    new = fits.Header()
    for key in ("RRTYPE", "RRSUBTYP", "RRVER", "VERSION", "SEED"):
        if key in hdr:
            new[key] = hdr[key]
    new["CRVAL1"] = (lo, "log10 of the first pixel's centre (A, vacuum)")
    new["CDELT1"] = (step, "log10 pixel step (20 km/s)")
    new["LOGLAM"] = (1, "log10 wavelength grid")
    new["ORIGFILE"] = (src.name, "desihub/redrock-templates (BSD)")
    new["TRIMMED"] = (f"{WAVE_RANGE[0]:.0f}-{WAVE_RANGE[1]:.0f} A, {len(out)} vectors, 20 km/s",
                      "scripts/trim_redrock_templates.py")
    fits.PrimaryHDU(out, header=new).writeto(dst, overwrite=True)
    hdul = fits.open(dst, mode="update")
    hdul[0].header["EXTNAME"] = "BASIS_VECTORS"
    hdul.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repo", type=Path, help="a clone of desihub/redrock-templates")
    p.add_argument("--vectors", type=int, default=4)
    args = p.parse_args()
    shutil.copyfile(args.repo / "rrtemplate-QSO-None-v0.1.fits", OUT / "rrtemplate-QSO-None-v0.1.fits")
    for cls in STAR_CLASSES:
        name = f"rrtemplate-STAR-{cls}-v0.1.fits"
        trim_star(args.repo / name, OUT / name, args.vectors)
        print(name, (OUT / name).stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
