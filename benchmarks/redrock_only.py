"""The objects only Redrock gets right in a cross-simulator run, and what mtopnet said about them.

    python benchmarks/redrock_only.py DIR [DIR ...]

DIR: a finished ``benchmarks/cross_sim.py`` run (``mtopnet.parquet``, ``redrock.fits``,
``truth.fits``); several are pooled. Lists the objects whose Redrock Z is within 0.01 of the
truth while mtopnet's is not, with mtopnet's Z, QOP, the network's own Z_NET and the template
scan's SCAN_Z, Redrock's DELTACHI2, H and type; then counts: quiescent, QOP <= 2, Z equal to
Z_NET (the network's answer kept), SCAN_Z right, Redrock DELTACHI2 < 9 (outside Redrock's own
confident set). Use it on calibration seeds to learn where the deficit is; on test seeds only
to report it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cross_sim import match_catalogue, read_parquet, read_truth, right  # this folder's script
from mtopnet.baselines.redrock import read_catalogue
from mtopnet.columns import SMALL_DELTA_CHI2_LIMIT


def _load(run: Path) -> pd.DataFrame:
    """One run's objects: truth (z, hmag, quiescent), mtopnet's columns and Redrock's, in truth order."""
    truth = read_truth(run / "truth.fits")
    ours = match_catalogue(read_parquet(run / "mtopnet.parquet"), truth["id"])
    rr = match_catalogue(read_catalogue(run / "redrock.fits"), truth["id"])
    cols = {"z": truth["z"], "hmag": truth["hmag"], **{k: ours[k] for k in ("Z", "QOP", "Z_NET", "SCAN_Z")},
            "ZRR": rr["z"], "RR_DELTACHI2": rr["deltachi2"]}
    frame = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, index=truth["id"])
    return frame.assign(quiescent=np.asarray(truth["quiescent"]).astype(bool))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished benchmarks/cross_sim.py output folders")
    args = p.parse_args()
    d = pd.concat([_load(run) for run in args.runs])
    ok, ok_rr = right(d["Z"], d["z"]), right(d["ZRR"], d["z"])
    only = d[ok_rr & ~ok]
    pd.set_option("display.width", 200)
    print(only[["z", "Z", "QOP", "Z_NET", "SCAN_Z", "ZRR", "RR_DELTACHI2", "hmag", "quiescent"]].round(4).to_string())
    moved = ~right(only["Z"], only["Z_NET"])  # |Z - Z_NET| >= 0.01: not the network's own answer
    low_rr = only["RR_DELTACHI2"] < SMALL_DELTA_CHI2_LIMIT
    print(f"\n{len(only)} of {len(d)} objects only Redrock gets right (mtopnet only: {int((ok & ~ok_rr).sum())}); "
          f"of them: quiescent {int(only['quiescent'].sum())}, QOP <= 2 {int((only['QOP'] <= 2).sum())}, "
          f"Z = Z_NET {int((~moved).sum())}, SCAN_Z right {int(right(only['SCAN_Z'], only['z']).sum())}, "
          f"Redrock DELTACHI2 < {SMALL_DELTA_CHI2_LIMIT:g} {int(low_rr.sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
