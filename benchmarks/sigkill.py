"""SIGKILL at random moments of `mtopnet simulate`, `predict` and `train`; then re-run.

For each command: one uninterrupted run (the reference, timed), then ``--kills`` times: start
the command, SIGKILL it at a uniformly random moment within the reference's duration, re-run
it to completion (simulate and predict: the same command, which resumes; train: --resume when
the killed run left last.pt), and compare the output with the reference's (simulate: every
array of the store; predict: the catalogue's bytes, FITS; train: the final model's weights).
Also checks that no partial catalogue (``*.tmp``) is left by predict.

Predict runs in shards (``--shard-size`` rows, ``--workers`` processes; mtopnet.shards). After
each kill the benchmark reads the work folder ``OUT.shards/``: the shards done (their record
written) and those in flight (started: their lock or temporary file is there, no record); the
re-run says how many shards it reused. A shard done before the kill must be reused, so the
re-run redoes only the shards in flight (at most ``--workers``).

Prints a table: command, kills, re-runs completed, outputs equal to the reference, leftovers
(temporary files left after the re-run; for predict also a partial catalogue under the final
name); for predict also, per kill, the shards done, in flight, reused and computed again.

    python benchmarks/sigkill.py [--n 1000] [--kills 10] [--epochs 2] [--workdir DIR]
    python benchmarks/sigkill.py --only predict --store A.h5 A.h5 --shard-size 2048 --kills 5
"""
from __future__ import annotations

import argparse
import os
import re
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


def _run(cmd: list[str], kill_after: float | None = None, cwd: Path | None = None) -> tuple[int, float]:
    """Run ``cmd`` (killed with SIGKILL after ``kill_after`` s if given): (return code, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=cwd)
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


def _run_output(cmd: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """Run ``cmd`` to completion: (return code, stdout)."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False, cwd=cwd)
    return proc.returncode, proc.stdout


def _shard_state(work: Path) -> tuple[int, int]:
    """(shards done, shards in flight) in a predict work folder ``OUT.shards/``."""
    if not work.is_dir():
        return 0, 0
    done = {p.name.split(".")[0] for p in work.glob("shard_*.json")}
    started = {p.name.split(".")[0] for p in work.glob("shard_*.parquet.*")}  # lock or temporary file
    return len(done), len(started - done)


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
    ap.add_argument("--store", nargs="+", default=None,
                    help="predict these stores instead of the simulated one (e.g. one store twice)")
    ap.add_argument("--shard-size", type=int, default=256,
                    help="simulate: objects, predict: rows per shard (default 256)")
    ap.add_argument("--workers", type=int, default=1, help="simulate, predict: processes (default 1)")
    ap.add_argument("--no-refine", action="store_true", help="predict: the network's z alone (faster)")
    args = ap.parse_args()
    from conftest import tiny_train_config
    from mtopnet.train import _DERIVED_MODEL_FIELDS
    rng = np.random.default_rng(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sigkill-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "ref.h5"
    sim = ["simulate", "--n", str(args.n), "--seed", str(args.seed), "--quiet", "--workers", str(args.workers),
           "--shard-size", str(args.shard_size)]
    rows = []
    t_sim = 0.0
    if args.store is None or {"simulate", "train"} & set(args.only):
        code, t_sim = _run(_mtopnet(*sim, "--out", str(store)))
        assert code == 0, "the reference simulate failed"

    if "simulate" in args.only:
        done = equal = left = 0
        for k in range(args.kills):
            out = work / f"sim{k}.h5"
            at = rng.uniform(0, t_sim)
            _run(_mtopnet(*sim, "--out", str(out)), kill_after=at)
            folder = work / f"sim{k}.h5.shards"
            before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.h5")}
            in_flight = len(list(folder.glob("*.tmp")))
            code = 0 if out.exists() else _run(_mtopnet(*sim, "--out", str(out)))[0]
            reused = sum(p.stat().st_mtime_ns == before.get(p.name) for p in folder.glob("shard_*.h5"))
            print(f"simulate kill {k} at {at:.0f} s: {len(before)} shards done, {in_flight} in flight; "
                  f"the re-run reused {reused} and computed {len(list(folder.glob('shard_*.h5'))) - reused}",
                  flush=True)
            done += code == 0 and out.exists()
            equal += out.exists() and _same_store(out, store)
            left += any(p.name.endswith((".tmp", ".lock")) for p in [*work.glob(f"sim{k}.h5*"),
                                                                    *work.glob(f"sim{k}.h5.shards/*")])
            shutil.rmtree(work / f"sim{k}.h5.shards", ignore_errors=True)
            out.unlink(missing_ok=True)
        rows.append(("simulate", args.kills, done, equal, left))
        print("done:", *rows[-1], flush=True)

    if "predict" in args.only:
        from mtopnet.provenance import without_date
        inputs = [str(Path(p).resolve()) for p in (args.store or [str(store)])]
        opts = ["--quiet", "--shard-size", str(args.shard_size), "--workers", str(args.workers)]
        opts += ["--no-refine"] if args.no_refine else []
        # every run in its own folder with the same relative output name, so that the command
        # line the catalogue's header records is the same for the reference and the re-runs
        name = "cat.fits"
        ref_dir = work / "ref"
        ref_dir.mkdir(exist_ok=True)
        ref = ref_dir / name
        code, t_pred = _run(_mtopnet("predict", *inputs, "--out", name, *opts), cwd=ref_dir)
        assert code == 0, "the reference predict failed"
        done = equal = left = redone_done = max_flight = 0
        print(f"{'kill':>4s} {'at s':>6s} {'shards done':>11s} {'in flight':>9s} {'reused':>6s} {'computed':>8s} "
              f"{'equal':>5s}", flush=True)
        for k in range(args.kills):
            run_dir = work / f"kill{k}"
            run_dir.mkdir(exist_ok=True)
            out = run_dir / name
            at = rng.uniform(0, t_pred)
            _run(_mtopnet("predict", *inputs, "--out", name, *opts), kill_after=at, cwd=run_dir)
            left += out.exists() and not _same_catalogue(out, ref)  # a partial catalogue under the final name
            n_done, n_flight = _shard_state(run_dir / f"{name}.shards")
            if out.exists():  # killed after the catalogue was complete: nothing to resume
                code, said = 0, ""
            else:
                code, said = _run_output(_mtopnet("predict", *inputs, "--out", name, *opts), cwd=run_dir)
            found = re.search(r"\((\d+) of (\d+) shards from an earlier run\)", said)
            reused, n_shards = (int(found.group(1)), int(found.group(2))) if found else (0, None)
            same = out.exists() and without_date(out.read_bytes()) == without_date(ref.read_bytes())
            computed = (n_shards - reused) if n_shards is not None else ("-" if not said else "all")
            print(f"{k:4d} {at:6.1f} {n_done:11d} {n_flight:9d} {reused:6d} {computed!s:>8s} {same!s:>5s}",
                  flush=True)
            redone_done += bool(said) and reused != n_done  # a shard done before the kill computed again
            max_flight = max(max_flight, n_flight)
            done += code == 0
            equal += same
            left += any(p.name != name for p in run_dir.iterdir())  # after: the catalogue alone (no
            # temporary file, no lock file, no work folder)
            out.unlink(missing_ok=True)
        rows.append(("predict", args.kills, done, equal, left))
        print("done:", *rows[-1], flush=True)
        print(f"predict: {len(inputs)} input(s), shards of {args.shard_size} rows, {args.workers} worker(s); "
              f"re-runs that computed a shard done before the kill again: {redone_done}; most shards in flight "
              f"at a kill: {max_flight}", flush=True)

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
