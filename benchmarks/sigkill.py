"""SIGKILL at random moments of `mtopnet simulate`, `predict` and `train`; then re-run.

For each command: one uninterrupted run (the reference, timed), then ``--kills`` times: start
the command, SIGKILL it at a uniformly random moment within the reference's duration, re-run
it to completion (simulate: the same command, which resumes; predict: the same command with
--overwrite; train: --resume when the killed run left last.pt), and compare the output with the
reference's (simulate: every array of the store; predict: every catalogue column; train: the
final model's weights). Also checks that no partial catalogue (``*.tmp``) is left by predict.

Prints a table: command, kills, re-runs completed, outputs equal to the reference, leftovers
(temporary files left after the re-run; for predict also a partial catalogue under the final name).

    python benchmarks/sigkill.py [--n 1000] [--kills 10] [--epochs 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny training recipe of the test suite (conftest.tiny_train_config)


def _mtopnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtopnet.cli", *args]


def _run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float]:
    """Run ``cmd`` (killed with SIGKILL after ``kill_after`` s if given): (return code, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
        proc.wait()
    return proc.returncode, time.perf_counter() - t0


def _same_store(a: Path, b: Path) -> bool:
    import h5py
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names: list[str] = []
        fa.visit(lambda name: names.append(name) if isinstance(fa[name], h5py.Dataset) else None)
        other: list[str] = []
        fb.visit(lambda name: other.append(name) if isinstance(fb[name], h5py.Dataset) else None)
        return sorted(names) == sorted(other) and all(
            np.array_equal(np.asarray(fa[n]), np.asarray(fb[n]), equal_nan=fa[n].dtype.kind == "f") for n in names)


def _same_catalogue(a: Path, b: Path) -> bool:
    from mtopnet.catalogue import read_catalogue
    ca, cb = read_catalogue(a), read_catalogue(b)
    return sorted(ca) == sorted(cb) and all(
        np.array_equal(ca[k], cb[k], equal_nan=np.asarray(ca[k]).dtype.kind == "f") for k in ca)


def _same_model(a: Path, b: Path) -> bool:
    import torch
    sa = torch.load(a, weights_only=False)["state_dict"]
    sb = torch.load(b, weights_only=False)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="spectra simulated (default 1000)")
    ap.add_argument("--kills", type=int, default=10, help="kills per command (default 10)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workdir", default=None, help="folder for the runs (default: a temporary one, removed)")
    ap.add_argument("--only", nargs="+", default=("simulate", "predict", "train"))
    args = ap.parse_args()
    from conftest import tiny_train_config
    from mtopnet.train import _DERIVED_MODEL_FIELDS
    rng = np.random.default_rng(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sigkill-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "ref.h5"
    sim = ["simulate", "--n", str(args.n), "--seed", str(args.seed), "--quiet"]
    rows = []
    code, t_sim = _run(_mtopnet(*sim, "--out", str(store)))
    assert code == 0, "the reference simulate failed"

    if "simulate" in args.only:
        done = equal = left = 0
        for k in range(args.kills):
            out = work / f"sim{k}.h5"
            _run(_mtopnet(*sim, "--out", str(out)), kill_after=rng.uniform(0, t_sim))
            code = 0 if out.exists() else _run(_mtopnet(*sim, "--out", str(out)))[0]
            done += code == 0 and out.exists()
            equal += out.exists() and _same_store(out, store)
            left += any(p.name.endswith(".tmp") for p in work.glob(f"sim{k}.h5*"))
            shutil.rmtree(work / f"sim{k}.h5.shards", ignore_errors=True)
            out.unlink(missing_ok=True)
        rows.append(("simulate", args.kills, done, equal, left))
        print("done:", *rows[-1], flush=True)

    if "predict" in args.only:
        ref = work / "ref.fits"
        code, t_pred = _run(_mtopnet("predict", str(store), "--out", str(ref), "--quiet"))
        assert code == 0, "the reference predict failed"
        done = equal = left = 0
        for k in range(args.kills):
            out = work / f"cat{k}.fits"
            _run(_mtopnet("predict", str(store), "--out", str(out), "--quiet"), kill_after=rng.uniform(0, t_pred))
            left += out.exists() and not _same_catalogue(out, ref)  # a partial catalogue under the final name
            code = _run(_mtopnet("predict", str(store), "--out", str(out), "--quiet", "--overwrite"))[0]
            done += code == 0
            equal += out.exists() and _same_catalogue(out, ref)
            left += any(p.name != out.name for p in work.glob(f"cat{k}.fits*"))  # after: the catalogue alone (no
            # temporary file, no lock file)
            out.unlink(missing_ok=True)
        rows.append(("predict", args.kills, done, equal, left))
        print("done:", *rows[-1], flush=True)

    if "train" in args.only:
        config = work / "tiny.yaml"
        recipe = tiny_train_config(args.epochs).as_dict()
        recipe["model"] = {k: v for k, v in recipe["model"].items() if k not in _DERIVED_MODEL_FIELDS}
        config.write_text(yaml.safe_dump(recipe, sort_keys=False))
        train = ["train", "--train", str(store), "--val", str(store), "--config", str(config), "--quiet"]
        ref_dir = work / "train_ref"
        code, t_train = _run(_mtopnet(*train, "--out", str(ref_dir)))
        assert code == 0, "the reference train failed"
        done = equal = left = 0
        for k in range(args.kills):
            out = work / f"train{k}"
            _run(_mtopnet(*train, "--out", str(out)), kill_after=rng.uniform(0, t_train))
            if not (out / "model.pt").exists():
                resume = ["--resume"] if (out / "last.pt").exists() else []
                code = _run(_mtopnet(*train, "--out", str(out), *resume))[0]
            done += (out / "model.pt").exists()
            equal += (out / "model.pt").exists() and _same_model(out / "model.pt", ref_dir / "model.pt")
            left += any(p.name.endswith(".tmp") for p in out.rglob("*"))
            shutil.rmtree(out, ignore_errors=True)
        rows.append(("train", args.kills, done, equal, left))
        print("done:", *rows[-1], flush=True)

    print(f"reference times: simulate {t_sim:.0f} s" + (f", predict {t_pred:.0f} s" if "predict" in args.only else "")
          + (f", train {t_train:.0f} s" if "train" in args.only else ""))
    print(f"{'command':10s} {'kills':>5s} {'re-runs completed':>18s} {'output equal':>13s} {'leftover tmp':>13s}")
    for name, kills, done, equal, left in rows:
        print(f"{name:10s} {kills:5d} {done:18d} {equal:13d} {left:13d}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
