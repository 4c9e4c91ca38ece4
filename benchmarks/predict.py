"""End-to-end inference speed and memory: HDF5 store -> catalogue, with and without refinement.

    python benchmarks/predict.py [--store FILE.h5] [--model NAME_OR_PATH] [--sizes 2000 8000]
                                 [--batch-size 1024] [--format parquet] [--threads 2]

Each size runs in a fresh process (so the peak RSS is that run's own), once with the template
refinement of z (``mtopnet predict``'s default, mtopnet.refine) and once without
(``--no-refine``): it streams the first N objects of the store through ``predict_batches``
into a catalogue and prints spectra/s and the peak resident memory. Equal peaks for
different N show memory flat in N.

Defaults: the shipped model if present, else an untrained network of the shipped recipe
(same cost); the store ``data/test.h5`` if present, else a toy store on the MOONS LR pixel
grids written to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _untrained_model(path: Path) -> Path:
    import numpy as np
    import torch

    from mtopnet.checkpoint import save_checkpoint
    from mtopnet.instruments import load_instrument
    from mtopnet.model import MTopNet
    from mtopnet.preprocess import Preprocessor
    from mtopnet.train import LabelNorm, inference_payload, instrument_info, load_train_config

    cfg = load_train_config(ROOT / "configs" / "train-moons-lr.yaml")
    torch.manual_seed(0)
    net = MTopNet(cfg.model)
    waves = {a.name: a.wave for a in load_instrument("moons-lr").arms}
    norm = LabelNorm(logmstar=(10.0, 0.7), logsfr=(1.0, 0.8))
    payload = inference_payload(net, cfg, norm, instrument_info("moons-lr", waves),
                                Preprocessor(cfg.preprocess).coverage(waves), None, {"note": "untrained"})
    save_checkpoint(path, payload)
    del np
    return path


def _toy_store(path: Path, n: int) -> Path:
    from mtopnet.instruments import load_instrument
    from mtopnet.store import SpectraBatch, write_store
    from mtopnet.testing import toy_batch

    waves = {a.name: a.wave for a in load_instrument("moons-lr").arms}
    parts = [toy_batch(min(2000, n - s), waves, seed=s, start_id=s) for s in range(0, n, 2000)]
    write_store(path, SpectraBatch.concatenate(parts), {"instrument": "moons-lr"})
    return path


def _worker(store: str, model: str, n: int, batch_size: int, out: str, refine: bool, threads: int) -> dict:
    import torch

    from mtopnet.catalogue import write_catalogue
    from mtopnet.predict import predict_batches
    from mtopnet.store import read_store
    from mtopnet.trained import load_model

    torch.set_num_threads(threads)
    m = load_model(model)
    refiner = False
    if refine:
        from mtopnet.refine import Refiner
        refiner = Refiner.from_model(m)  # built once per run, as predict_store does

    def batches():
        for start in range(0, n, batch_size):
            yield read_store(store, start, min(n, start + batch_size))

    # warm up (first-call allocations, rebinning matrices) on a small batch, not timed
    list(predict_batches(m, [read_store(store, 0, 64)], refine=refiner))
    t0 = time.perf_counter()
    rows = write_catalogue(out, predict_batches(m, batches(), batch_size=batch_size, refine=refiner))
    dt = time.perf_counter() - t0
    return {"n": rows, "seconds": dt, "spectra_per_s": rows / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--format", default="parquet", choices=["fits", "parquet", "csv"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--worker", nargs=4, metavar=("STORE", "MODEL", "N", "REFINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.worker:
            store, model, n, refine = args.worker
            print(json.dumps(_worker(store, model, int(n), args.batch_size, str(tmp_path / f"cat.{args.format}"),
                                     refine == "refine", args.threads)))
            return 0
        from mtopnet.store import store_info
        from mtopnet.trained import shipped_model_path
        model = args.model or (str(shipped_model_path("moons-lr")) if shipped_model_path("moons-lr").is_file()
                               else str(_untrained_model(tmp_path / "untrained.pt")))
        store = args.store or (str(ROOT / "data" / "test.h5") if (ROOT / "data" / "test.h5").is_file()
                               else str(_toy_store(tmp_path / "toy.h5", max(args.sizes))))
        available = store_info(store)["n"]
        print(f"store {store} ({available} objects), model {model}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'refine':>9} {'N':>8} {'seconds':>8} {'spectra/s':>10} {'peak RSS MB':>12}")
        for n in args.sizes:
            n = min(n, available)
            for mode in ("refine", "no-refine"):
                res = subprocess.run([sys.executable, __file__, "--worker", store, model, str(n), mode,
                                      "--batch-size", str(args.batch_size), "--format", args.format,
                                      "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{mode:>9} {r['n']:>8} {r['seconds']:>8.1f} {r['spectra_per_s']:>10.0f} "
                      f"{r['peak_rss_mb']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
