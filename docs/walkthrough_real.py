"""The real SDSS and DESI spectra of tests/data against a catalogue: table and figure.

    python docs/walkthrough_real.py CATALOGUE [--out docs/figures/walkthrough-sdss/real.png]

CATALOGUE is what ``mtopnet predict tests/data/desi/coadd-*.fits tests/data/sdss/*.fits
--pdf`` wrote. The survey redshifts are the pipelines' own: SDSS ``SPECOBJ.Z`` (and
``CLASS``), DESI Redrock ``REDSHIFTS.Z`` from the ``redrock-*.fits`` file beside each coadd.
Prints a Markdown table (z_true, z_pred, P_DZ01, QOP, ZWARN and its bit names) and draws
each spectrum with its redshift PDF.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from mtopnet.catalogue import ZWarn, read_catalogue, read_zbin_centres  # noqa: E402
from mtopnet.io import read_spectra  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def survey_truth() -> dict[str, tuple[float, str, str]]:
    """id -> (pipeline z, class, file name) for the five test spectra."""
    out: dict[str, tuple[float, str, str]] = {}
    for path in sorted((DATA / "sdss").glob("spec-*.fits")):
        with fits.open(path) as hdul:
            row = hdul["SPECOBJ"].data[0]
            cls = f"{row['CLASS'].strip()} {row['SUBCLASS'].strip()}".strip()
            out[path.stem[len("spec-"):]] = (float(row["Z"]), f"SDSS {cls}", path.name)
    for path in sorted((DATA / "desi").glob("redrock-*.fits")):
        with fits.open(path) as hdul:
            for row in hdul["REDSHIFTS"].data:
                out[str(int(row["TARGETID"]))] = (float(row["Z"]), f"DESI {row['SPECTYPE'].strip()}",
                                                  path.name.replace("redrock-", "coadd-"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("catalogue")
    ap.add_argument("--out", default=str(Path(__file__).parent / "figures" / "walkthrough-sdss" / "real.png"))
    args = ap.parse_args()
    cat = read_catalogue(args.catalogue)
    centres = read_zbin_centres(args.catalogue)
    truth = survey_truth()
    ids = [str(i) for i in cat["TARGETID"]]
    print("| object | survey class | z_true | z_pred | z 68% | P_DZ01 | QOP | ZWARN |")
    print("|---|---|---|---|---|---|---|---|")
    for k, oid in enumerate(ids):
        zt, cls, _ = truth.get(oid, (np.nan, "?", "?"))
        bits = ", ".join(ZWarn.names(int(cat["ZWARN"][k]))) or "-"
        print(f"| {oid} | {cls} | {zt:.4f} | {cat['Z'][k]:.4f} | {cat['Z_LO68'][k]:.3f}-{cat['Z_HI68'][k]:.3f} | "
              f"{cat['P_DZ01'][k]:.2f} | {cat['QOP'][k]} | {int(cat['ZWARN'][k])} ({bits}) |")
    inputs = sorted(str(p) for p in (DATA / "desi").glob("coadd-*.fits")) + \
        sorted(str(p) for p in (DATA / "sdss").glob("spec-*.fits"))
    spectra = {}
    for batch in read_spectra(inputs):
        for row, oid in enumerate(batch.ids):
            spectra[str(oid)] = {a: (d["wave"], d["flux"][row], d["ivar"][row]) for a, d in batch.arms.items()}
    fig, axes = plt.subplots(len(ids), 2, figsize=(12, 2.4 * len(ids)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.2]})
    for k, oid in enumerate(ids):
        zt, cls, name = truth.get(oid, (np.nan, "?", "?"))
        ax = axes[k, 0]
        for wave, flux, ivar in spectra.get(oid, {}).values():
            good = ivar > 0
            smooth = np.convolve(np.where(good, flux, 0), np.ones(9) / 9, mode="same")
            ax.plot(wave, np.where(good, smooth, np.nan), lw=0.5, color="k")
        ax.set_title(f"{name} ({oid}), {cls}: z_true {zt:.4f}, z_pred {cat['Z'][k]:.4f}, "
                     f"P_DZ01 {cat['P_DZ01'][k]:.2f}, QOP {cat['QOP'][k]}, ZWARN {int(cat['ZWARN'][k])}", fontsize=8)
        ax.set_ylabel("flux [1e-17]", fontsize=7)
        ax2 = axes[k, 1]
        if centres is not None and "Z_PDF" in cat:
            ax2.plot(centres, cat["Z_PDF"][k], lw=0.8)
        ax2.axvline(zt, color="g", lw=1, label="pipeline")
        ax2.axvline(cat["Z"][k], color="r", lw=1, ls="--", label="M-TOPnet")
        ax2.set_xlabel("z", fontsize=7)
        ax2.legend(fontsize=6)
    axes[-1, 0].set_xlabel("vacuum wavelength [A]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
