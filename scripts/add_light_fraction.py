"""Add ``labels/light_fraction`` to stores that ``mtopnet simulate`` wrote before it had it.

    python scripts/add_light_fraction.py STORE [STORE ...]

``mtopnet simulate`` records, for every galaxy, the share of its light that its calibrated
spectrum holds (:func:`mtopnet.instruments.light_fraction`: the aperture's fraction for the
source over a point source's, which the flux calibration corrects). Training and evaluation
read log M* and log SFR of that light (:func:`mtopnet.store.spectrum_property`). Stores
simulated before the label existed lack it; this computes it from what they recorded, with
the same function: each object's seeing, airmass and source size (``nu_seeing``,
``nu_airmass``, ``nu_source_r_e``) where the store has them (``--nuisance randomised``,
``--population training``), else the run's exposure (provenance) and the galaxy's
``r_e``. The label is written in place (the spectra are not touched); a store that has it
is left as it is. One line and exit 2 for a store that is not a simulated one.
"""
from __future__ import annotations

import argparse
import json
import sys

import h5py
import numpy as np

from mtopnet.instruments import light_fraction, load_instrument


def fraction_for(f: h5py.File) -> np.ndarray:
    """(N,) light fraction of the store's objects from its labels and provenance."""
    prov = json.loads(f.attrs["provenance"])
    inst = load_instrument(prov["instrument"])
    lab = f["labels"]
    if {"nu_seeing", "nu_airmass", "nu_source_r_e"} <= set(lab):
        return light_fraction(inst, lab["nu_seeing"][:], lab["nu_airmass"][:], lab["nu_source_r_e"][:])
    exp = prov["exposure"]
    return light_fraction(inst, exp["seeing"], exp["airmass"], lab["r_e"][:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    args = ap.parse_args()
    for path in args.stores:
        try:
            with h5py.File(path, "r+") as f:
                if "light_fraction" in f.get("labels", {}):
                    print(f"{path}: has light_fraction already")
                    continue
                if "provenance" not in f.attrs or "r_e" not in f.get("labels", {}):
                    print(f"{path}: not a store of mtopnet simulate (no provenance or labels/r_e)", file=sys.stderr)
                    return 2
                frac = fraction_for(f).astype(np.float32)
                f["labels"].create_dataset("light_fraction", data=frac)
        except OSError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        q = np.percentile(frac, [5, 50, 95])
        print(f"{path}: light_fraction added, 5/50/95th percentiles {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
