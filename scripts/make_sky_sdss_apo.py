"""Regenerate the package's optical sky data files from their sources (``sky_model: sdss-apo``).

Writes into ``src/mtopnet/data/sky/``:

``sdss-apo-sky.txt``
    Night-sky surface brightness at Apache Point Observatory, 3790-9200 A (vacuum), from the
    ``sky`` column of the ``COADD`` HDU of the three SDSS spectra in ``tests/data/sdss``
    (SDSS DR data model: the sky flux subtracted from that fibre, 1e-17 erg/s/cm2/A, on the
    coadd's 1e-4 dex grid). Per file: divide by the fibre's area on the sky (3 arcsec
    fibres for the SDSS spectrographs, plates < 3510; 2 arcsec for BOSS), bring it from
    above the atmosphere (the spectrophotometric calibration divides by the extinction) to
    the telescope with the KPNO extinction curve below at the plate's meridian airmass
    ``sec(latitude - dec)``, divide by that airmass (sky brightness taken proportional to
    airmass), and take the median over the files, pixel by pixel, on the first file's grid.
    Column 2 is the result: zenith sky at the telescope, 1e-17 erg/s/cm2/A/arcsec2.

``kpno-extinction.txt``
    Mean extinction at Kitt Peak National Observatory, mag per airmass, 3200-10400 A: the
    IRAF table ``noao/lib/onedstds/kpnoextinct.dat`` (IRAF, NOAO/AURA; Debian package
    ``iraf-noao``), wavelengths taken as vacuum (the table's 50-100 A sampling makes the
    air/vacuum difference irrelevant). Pass its path with ``--kpno``.

Usage (from the repository root)::

    apt-get download iraf-noao && dpkg-deb -x iraf-noao_*.deb /tmp/iraf
    python scripts/make_sky_sdss_apo.py --kpno /tmp/iraf/usr/lib/iraf/noao/lib/onedstds/kpnoextinct.dat
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from astropy.io import fits

APO_LATITUDE = 32.7803  # deg (Apache Point Observatory)
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "mtopnet" / "data" / "sky"


def read_kpno(path: Path) -> np.ndarray:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("#")[0].split()
        if len(parts) >= 2:
            rows.append((float(parts[0]), float(parts[1])))
    return np.array(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kpno", required=True, help="IRAF onedstds/kpnoextinct.dat")
    p.add_argument("--spectra", default=str(ROOT / "tests" / "data" / "sdss" / "spec-*.fits"))
    args = p.parse_args()
    ext = read_kpno(Path(args.kpno))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "kpno-extinction.txt", "w") as fh:
        fh.write("# Mean atmospheric extinction at Kitt Peak National Observatory (mag per airmass).\n"
                 "# Source: IRAF noao/lib/onedstds/kpnoextinct.dat (IRAF, NOAO/AURA; Debian package\n"
                 "# iraf-noao 2.17), copied unchanged; its last four points (>= 8708 A) come from the\n"
                 "# CTIO list, as the IRAF file notes. Regenerate: scripts/make_sky_sdss_apo.py\n"
                 "# columns: wavelength [A]  extinction [mag/airmass]\n")
        for w, k in ext:
            fh.write(f"{w:.1f} {k:.3f}\n")
    files = sorted(glob.glob(args.spectra))
    grid, values, notes = None, [], []
    for path in files:
        with fits.open(path) as hdul:
            head = hdul[0].header
            coadd = hdul["COADD"].data
            wave = 10.0 ** np.asarray(coadd["loglam"], dtype=np.float64)
            sky = np.asarray(coadd["sky"], dtype=np.float64)
            plate = int(head["PLATEID"])
            dec = float(head["DECDEG"])
        fibre = 3.0 if plate < 3510 else 2.0
        airmass = 1.0 / np.cos(np.radians(APO_LATITUDE - dec))
        k = np.interp(wave, ext[:, 0], ext[:, 1])
        at_telescope = sky / (np.pi * (fibre / 2) ** 2) * 10 ** (-0.4 * k * airmass)
        zenith = at_telescope / airmass
        if grid is None:
            grid = wave
        values.append(np.interp(grid, wave, zenith, left=np.nan, right=np.nan))
        notes.append(f"#   {Path(path).name}: plate {plate}, {fibre:.0f} arcsec fibre, dec {dec:+.2f}, "
                     f"airmass {airmass:.3f}, EXPTIME {head['EXPTIME']:.0f} s")
    med = np.nanmedian(np.array(values), axis=0)
    keep = np.isfinite(med)
    with open(OUT / "sdss-apo-sky.txt", "w") as fh:
        fh.write("# Night-sky surface brightness at Apache Point Observatory, zenith, at the telescope.\n"
                 "# Source: the pipeline sky spectrum (COADD HDU, column 'sky') of these SDSS spectra:\n")
        fh.write("\n".join(notes) + "\n")
        fh.write("# Per file: / fibre area, x KPNO extinction at the meridian airmass (to the telescope),\n"
                 "# / airmass (to zenith); then the median over the files. Wavelengths in vacuum.\n"
                 "# Regenerate: scripts/make_sky_sdss_apo.py (docs/instruments.md).\n"
                 "# columns: wavelength [A, vacuum]  sky [1e-17 erg/s/cm2/A/arcsec2]\n")
        for w, s in zip(grid[keep], med[keep], strict=True):
            fh.write(f"{w:.3f} {s:.5g}\n")
    print(f"wrote {OUT / 'sdss-apo-sky.txt'} ({keep.sum()} pixels) and {OUT / 'kpno-extinction.txt'}")


if __name__ == "__main__":
    main()
