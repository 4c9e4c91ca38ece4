"""Make the simulator figures of docs/simulator.md.

    python docs/make_figures.py [--out docs/figures] [--n 2000] [--seed 424242]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mtopnet.config import Exposure
from mtopnet.demo import DEMO_SEED, simulator_figures
from mtopnet.simulate import SimulationSpec, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=DEMO_SEED)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sample.h5"
        simulate(SimulationSpec("moons-lr", Exposure(8 * 3600), args.n, args.seed), store, workers=2)
        for path in simulator_figures(Path(args.out), store=store, seed=args.seed):
            print(path)


if __name__ == "__main__":
    main()
