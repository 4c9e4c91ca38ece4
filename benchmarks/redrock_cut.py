"""What Redrock users' cut ``ZWARN == 0 & DELTACHI2 > 9`` keeps of a catalogue, against its truth store.

    mtopnet predict data/heldout.h5 --out held.fits
    python benchmarks/redrock_cut.py held.fits data/heldout.h5

Prints the share of QOP-4 objects the cut keeps (docs/catalogue.md asks >= 95%), the
success (|dz| < 0.01) of what it keeps, how often each ZWARN bit is set (all objects, QOP 4)
and why QOP-4 objects are dropped. Catalogue rows are matched to the store by id, so a
catalogue of a part of the store works too.
"""
from __future__ import annotations

import argparse

import numpy as np

from mtopnet.catalogue import match_ids, read_catalogue, read_truth
from mtopnet.columns import SMALL_DELTA_CHI2_LIMIT, ZWarn
from mtopnet.constants import SUCCESS_DZ


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("catalogue")
    p.add_argument("truth", help="the store the catalogue was predicted from (labels/z)")
    args = p.parse_args()
    cat, truth = read_catalogue(args.catalogue), read_truth(args.truth)
    idx = match_ids(cat["TARGETID"], truth["id"])
    if np.any(idx < 0):
        raise SystemExit("catalogue ids missing from the truth store")
    ok = np.abs(cat["Z"] - np.asarray(truth["z"])[idx]) < SUCCESS_DZ
    q4 = cat["QOP"] == 4
    with np.errstate(invalid="ignore"):
        cut = (cat["ZWARN"] == 0) & (cat["DELTACHI2"] > SMALL_DELTA_CHI2_LIMIT)
    fitted = cat["FITMETHOD"] == "PCA"
    print(f"{len(ok)} objects, {int(q4.sum())} QOP 4; the cut keeps {cut[q4].mean():.4f} of QOP 4 "
          f"({int(cut[q4].sum())}/{int(q4.sum())}), {cut.mean():.4f} of all")
    print(f"success |dz| < {SUCCESS_DZ}: kept {ok[cut].mean():.4f}, QOP 4 {ok[q4].mean():.4f}, all {ok.mean():.4f}")
    print(f"DELTACHI2 finite where the template fit gave Z: {np.isfinite(cat['DELTACHI2'][fitted]).mean():.4f} "
          f"of {int(fitted.sum())}")
    print("bit                 all   QOP 4")
    for bit in ZWarn:
        hit = (cat["ZWARN"] & int(bit)) != 0
        if hit.any():
            print(f"{bit.name:18s} {int(hit.sum()):5d} {int(hit[q4].sum()):6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
