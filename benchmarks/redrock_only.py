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
from astropy.table import Table

from mtopnet.columns import SMALL_DELTA_CHI2_LIMIT
from mtopnet.constants import SUCCESS_DZ


def _text(values) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values])


def _load(run: Path) -> pd.DataFrame:
    m = pd.read_parquet(run / "mtopnet.parquet")
    m.index = _text(m["TARGETID"])
    t = Table.read(run / "truth.fits")
    truth = pd.DataFrame({"z": np.asarray(t["z"], float), "hmag": np.asarray(t["hmag"], float),
                          "quiescent": np.asarray(t["quiescent"]).astype(bool)}, index=_text(t["id"]))
    r = Table.read(run / "redrock.fits")
    rr = pd.DataFrame({"ZRR": np.asarray(r["Z"], float), "RR_DELTACHI2": np.asarray(r["DELTACHI2"], float)},
                      index=_text(r["ID"]))
    cols = ["Z", "QOP", "Z_NET", "SCAN_Z"]
    return m[cols].join(truth, how="inner").join(rr, how="inner")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished benchmarks/cross_sim.py output folders")
    args = p.parse_args()
    d = pd.concat([_load(run) for run in args.runs])
    right = lambda col: np.abs(d[col] - d["z"]) < SUCCESS_DZ  # noqa: E731
    only = d[right("ZRR") & ~right("Z")]
    pd.set_option("display.width", 200)
    print(only[["z", "Z", "QOP", "Z_NET", "SCAN_Z", "ZRR", "RR_DELTACHI2", "hmag", "quiescent"]].round(4).to_string())
    kept_net = np.abs(only["Z"] - only["Z_NET"]) < SUCCESS_DZ
    scan_right = np.abs(only["SCAN_Z"] - only["z"]) < SUCCESS_DZ
    print(f"\n{len(only)} of {len(d)} objects only Redrock gets right (mtopnet only: "
          f"{int((right('Z') & ~right('ZRR')).sum())}); of them: quiescent {int(only['quiescent'].sum())}, "
          f"QOP <= 2 {int((only['QOP'] <= 2).sum())}, Z = Z_NET {int(kept_net.sum())}, SCAN_Z right "
          f"{int(scan_right.sum())}, Redrock DELTACHI2 < {SMALL_DELTA_CHI2_LIMIT:g} "
          f"{int((only['RR_DELTACHI2'] < SMALL_DELTA_CHI2_LIMIT).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
