"""How the log M* error follows the share of a galaxy's flux that its spectrum holds.

    python benchmarks/mass_aperture.py CATALOGUE STORE [CATALOGUE STORE ...] [--hmax 23]

For each (catalogue of ``mtopnet predict``, labelled HDF5 store it was made from) pair, over
the objects with a right redshift (|dz| < 0.01 (1+z)) and H <= ``--hmax``: the flux fraction
f = median flux of the H arm between 1.52 and 1.75 um / the flux density of the object's total
H magnitude at 1.63 um (``10^(-0.4 (H + 48.6)) c / lambda^2``, in the store's 1e-17
erg/s/cm2/A), and LOGMSTAR - logmstar (truth). The first pair is the reference (the training
simulator, where f varies widely): the least-squares slope of the error on log10 f there, and
its median f. Prints, per pair and per type (0 star-forming, 1 quiescent), the median log10 f,
the median error, and the median error moved to the reference fraction with the reference
slope (``err - slope (log10 f - log10 f_ref)``): what is left when the flux fraction is
matched. A spectrum that keeps its fibre loss (f < 1) and one aperture-corrected (f ~ 1)
differ in flux by 1/f; a network that reads the mass from the flux sees that as mass.

The error here is against the whole galaxy's mass (``labels/logmstar``). Since model 0.4 the
network reports the mass of the light in the spectrum (``logmstar + log10(light_fraction)``,
:func:`mtopnet.store.spectrum_property`, what ``mtopnet evaluate`` grades), so on the own
simulator that error follows log10 f by design (slope ~1); what is left at the reference
fraction is the part no aperture explains.
"""
from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np
from astropy.table import Table

H_BAND_UM = (1.52, 1.75)
H_PIVOT_A = 16300.0
C_A_PER_S = 2.998e18


def flux_fraction(store: h5py.File, n: int) -> np.ndarray:
    """(n,) median H-arm flux over the flux density of the total H magnitude (label ``hmag``)."""
    wave = store["arms/H/wave"][:]
    sel = (wave > H_BAND_UM[0] * 1e4) & (wave < H_BAND_UM[1] * 1e4)
    flux = store["arms/H/flux"][:n][:, sel]
    good = (store["arms/H/mask"][:n][:, sel] == 0) & (store["arms/H/ivar"][:n][:, sel] > 0)
    with np.errstate(invalid="ignore"):
        med = np.nanmedian(np.where(good, flux, np.nan), axis=1)
    hmag = store["labels/hmag"][:n]
    return med / (10 ** (-0.4 * (hmag + 48.6)) * C_A_PER_S / H_PIVOT_A ** 2 * 1e17)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="CATALOGUE STORE")
    ap.add_argument("--hmax", type=float, default=23.0)
    ap.add_argument("--ref", type=float, default=None,
                    help="reference flux fraction (default: the first pair's median)")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give CATALOGUE STORE pairs")
    ref, slope = args.ref, None
    print(f"{'catalogue':<40} {'type':>5} {'N':>5} {'log10 f':>8} {'bias':>7} {'bias at f_ref':>13}")
    for cat_path, store_path in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        cat = Table.read(cat_path, hdu="REDSHIFTS") if cat_path.endswith((".fits", ".fit")) else Table.read(cat_path)
        with h5py.File(store_path, "r") as store:
            n = len(cat)
            f = flux_fraction(store, n)
            z = store["labels/z"][:n]
            err = np.asarray(cat["LOGMSTAR"], dtype=np.float64) - store["labels/logmstar"][:n]
            hmag = store["labels/hmag"][:n]
            kind = store["labels/type"][:n]
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(f) & (f > 0) & (hmag <= args.hmax) & np.isfinite(err)
                  & (np.abs(np.asarray(cat["Z"], dtype=np.float64) - z) < 0.01 * (1 + z)))
        lf = np.log10(np.where(ok, f, 1.0))
        if slope is None:
            ref = ref if ref is not None else float(10 ** np.median(lf[ok]))
            slope = float(np.polyfit(lf[ok], err[ok], 1)[0])
        for name, sel in (("all", ok), ("SF", ok & (kind == 0)), ("Q", ok & (kind == 1))):
            if sel.sum() < 3:
                continue
            moved = err[sel] - slope * (lf[sel] - np.log10(ref))
            print(f"{cat_path[-40:]:<40} {name:>5} {int(sel.sum()):>5} {np.median(lf[sel]):>8.3f} "
                  f"{np.median(err[sel]):>+7.3f} {np.median(moved):>+13.3f}")
    print(f"reference: flux fraction {ref:.3f}, slope {slope:.2f} dex of log M* per dex of f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
