"""What the template stages (full-range scan, combination, refinement) change in a catalogue.

    python benchmarks/scan_changes.py CATALOGUE TRUTH [CATALOGUE TRUTH ...]

CATALOGUE: an ``mtopnet predict`` catalogue (its ``Z`` and the network's own ``Z_NET``);
TRUTH: the store it was predicted from (``labels/z``, ``labels/hmag``) or a
``benchmarks/cross_sim.py`` ``truth.fits`` (``id``, ``z``, ``hmag``). Several pairs are pooled
(e.g. the four cross-simulator test seeds). Prints, for all objects and by H magnitude: how
many reported redshifts differ from the network's own by at least 0.01, how many of those the
change made right (the network was wrong) and how many it made wrong (the network was right),
and |dz| < 0.01 of the network alone and of the catalogue. Rows are matched to the truth by id.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cross_sim import read_truth as read_xsim_truth  # this folder's script
from cross_sim import right
from mtopnet.catalogue import match_ids, read_catalogue, read_truth
from mtopnet.constants import SUCCESS_DZ

H_BINS = ((20.0, 24.0), (24.0, 25.0), (25.0, 25.5))


def _truth(path: str) -> dict[str, np.ndarray]:
    """A store's labels, or a cross_sim run's truth.fits."""
    return read_xsim_truth(Path(path)) if Path(path).suffix.lower() in (".fits", ".fit") else read_truth(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", metavar="CATALOGUE TRUTH")
    args = p.parse_args()
    if len(args.pairs) % 2:
        raise SystemExit("give CATALOGUE TRUTH pairs")
    z, z_net, z_true, hmag = [], [], [], []
    for cat_path, truth_path in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        cat, truth = read_catalogue(cat_path), _truth(truth_path)
        ids = np.asarray([x.decode() if isinstance(x, bytes) else x for x in cat["TARGETID"]])
        idx = match_ids(ids.astype(np.asarray(truth["id"]).dtype), truth["id"])
        if np.any(idx < 0):
            raise SystemExit(f"{cat_path}: catalogue ids missing from {truth_path}")
        z.append(np.asarray(cat["Z"], float))
        z_net.append(np.asarray(cat["Z_NET"], float))
        z_true.append(np.asarray(truth["z"], float)[idx])
        hmag.append(np.asarray(truth.get("hmag", np.full(len(truth["z"]), np.nan)), float)[idx])
    z, z_net, z_true, hmag = map(np.concatenate, (z, z_net, z_true, hmag))
    with np.errstate(invalid="ignore"):
        changed = np.abs(z - z_net) >= SUCCESS_DZ
    ok, ok_net = right(z, z_true), right(z_net, z_true)
    rows = [("all", np.ones(len(z), bool))]
    rows += [(f"H {lo:g}-{hi:g}", (hmag > lo) & (hmag <= hi)) for lo, hi in H_BINS]
    print("| selection | N | Z differs from Z_NET | made right | made wrong | network alone | catalogue |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sel in rows:
        if not sel.any():
            continue
        n, moved = int(sel.sum()), changed & sel
        fixed, broke = int((moved & ok & ~ok_net).sum()), int((moved & ~ok & ok_net).sum())
        print(f"| {name} | {n} | {int(moved.sum())} ({moved.sum() / n:.1%}) | {fixed} | {broke} "
              f"| {ok_net[sel].mean():.3f} | {ok[sel].mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
