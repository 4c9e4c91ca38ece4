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
is left as it is. Every store given is tried; one line for each that is not a simulated store
(or not HDF5), and exit 2 if any failed. The values agree with what ``simulate`` writes to
float32 rounding (the conditions are read back from float32 labels).
"""
from __future__ import annotations

import argparse
import json
import sys

import h5py
import numpy as np

from mtopnet.config import UserError
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


def add_to(path: str) -> str:
    """Add the label to one store; the line to print. Raises ValueError with the reason."""
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        reason = "not an HDF5 file" if "signature" in str(exc) else str(exc).split(" (")[0]
        raise ValueError(reason) from None
    with f:
        labels = f.get("labels", {})
        if "light_fraction" in labels:
            return f"{path}: has light_fraction already"
        try:
            prov = json.loads(f.attrs["provenance"])
            prov["instrument"], prov["exposure"]
        except (KeyError, TypeError, ValueError):
            raise ValueError("not a store of mtopnet simulate (no provenance with instrument and exposure)") from None
        if "r_e" not in labels:
            raise ValueError("not a store of mtopnet simulate (no labels/r_e)")
        try:
            frac = fraction_for(f).astype(np.float32)
        except UserError as exc:  # e.g. an instrument this installation does not know
            raise ValueError(str(exc)) from None
        f["labels"].create_dataset("light_fraction", data=frac)
    q = np.percentile(frac, [5, 50, 95])
    return f"{path}: light_fraction added, 5/50/95th percentiles {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    args = ap.parse_args()
    failed = 0
    for path in args.stores:  # every store is tried; exit 2 if any failed
        try:
            print(add_to(path))
        except ValueError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
