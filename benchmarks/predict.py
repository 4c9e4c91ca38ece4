"""End-to-end inference speed and memory: HDF5 store (or per-object FITS files) -> catalogue.

    python benchmarks/predict.py [--store FILE.h5] [--model NAME_OR_PATH] [--sizes 2000 8000]
                                 [--batch-size 256] [--format parquet] [--threads N]
                                 [--workers 1 2] [--repeat R] [--fits "DIR/*.fits" --fits-n 500]
                                 [--no-stages]

1. **In-process, per size**: each size runs in a fresh process (so the peak RSS is that run's
   own), once with the template refinement of z (``mtopnet predict``'s default,
   mtopnet.refine) and once without (``--no-refine``): it streams the first N objects of the
   store through ``predict_batches`` (``--threads`` batches at once, default all CPUs) into
   a catalogue and prints spectra/s, the peak resident memory of the run's own process and
   the peak of its and the processes it forks for batches at once, summed (sampled every
   0.1 s; the model's pages they share are counted in each: an upper bound). Equal peaks for different
   N show memory flat in N (a size larger than the store reads it again from the start, so
   10^5 needs no 10^5 store).
2. **Stages** (the first size, default path, unless ``--no-stages``): the same run under
   cProfile with one batch at a time (cProfile sees one thread), each stage's share of the
   time: reading, preprocessing, network, full-range scan (with its combination with the
   PDF), refinement, feature evidence, writing, other.
3. **Workers** (``--workers``): the real CLI, ``mtopnet predict STORE --workers N`` (Dask
   LocalCluster for N > 1, ``--threads`` left at its default, CPUs / N; ``--shard-size``:
   the CLI's default for one worker, N/8 rows for more),
   on the first size's objects (or ``--cli-sizes``; each ``--repeat`` times), timed from
   outside (process start, model loading and the assembly included): throughput for 1 and 2
   workers, the command's own peak resident size, and the peak of it and its processes
   together (forked batch processes, Dask workers: resident sizes summed, or with ``--pss``
   proportional set sizes, which count shared pages once).
4. **FITS files** (``--fits GLOB``): the CLI on per-object files (e.g. moons1d's, one file
   per arm as ``benchmarks/cross_sim.py`` writes them), the first ``--fits-n`` objects,
   with each ``--workers`` count.

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


STAGES = (  # (stage, source file suffix, function name): cumulative time under cProfile
    ("read", "mtopnet/store.py", "read_store"),
    ("preprocess", "mtopnet/preprocess.py", "__call__"),
    ("network", "mtopnet/model/network.py", "forward"),
    ("scan", "mtopnet/predict.py", "__call__"),
    ("refine", "mtopnet/refine/fit.py", "refine"),
    ("feature evidence", "mtopnet/refine/combine.py", "feature_evidence"),
)


def _stage_shares(stats, total: float) -> dict[str, float]:
    """Seconds per stage from a pstats.Stats of a run; writing = write_catalogue minus the
    rows generator it drives (``predict._batch_rows``, which ``predict_batches`` returns);
    other = the rest."""
    def cum(suffix: str, name: str) -> float:
        return sum(v[3] for k, v in stats.stats.items() if k[0].endswith(suffix) and k[2] == name)

    out = {stage: cum(suffix, name) for stage, suffix, name in STAGES}
    rows = cum("mtopnet/predict.py", "_batch_rows") + cum("mtopnet/predict.py", "predict_batches")
    out["write"] = max(cum("mtopnet/catalogue.py", "write_catalogue") - rows - out["read"], 0.0)
    out["other"] = max(total - sum(out.values()), 0.0)
    return out


def _tree_rss_mb(pid: int, pss: bool = False) -> float:
    """Resident size (MB) of process ``pid`` and its descendants, summed: from ``/proc/PID/statm``,
    which costs the processes read nothing, with the pages that forked processes share with
    their parent (the model) counted in each (an upper bound); with ``pss``, their proportional
    set sizes from ``/proc/PID/smaps_rollup`` (shared pages counted once: what they hold
    together), whose reading walks the processes' page tables and slowed the runs measured by
    ~10% when done every 0.1 s."""
    total, todo = 0.0, [pid]
    page = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    while todo:
        p = todo.pop()
        try:
            if pss:
                with open(f"/proc/{p}/smaps_rollup") as handle:
                    total += sum(int(line.split()[1]) for line in handle if line.startswith("Pss:")) / 1024
            else:
                with open(f"/proc/{p}/statm") as handle:
                    total += int(handle.read().split()[1]) * page
            with open(f"/proc/{p}/task/{p}/children") as handle:
                todo.extend(int(c) for c in handle.read().split())
        except (OSError, ValueError):
            continue
    return total


class _TreeMemory:
    """The peak of :func:`_tree_rss_mb` for a process, sampled every 0.1 s by a thread."""

    def __init__(self, pid: int, pss: bool = False):
        import threading
        self.pid, self.pss, self.peak, self.running = pid, pss, 0.0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _tree_rss_mb(self.pid, self.pss))
            time.sleep(0.1)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.peak


class _BatchMemory:
    """Resident memory per batch: the peak while it is computed (sampled every 2 ms by a thread)
    and the size after it, with glibc's ``malloc_trim(0)`` first (what the run keeps)."""

    def __init__(self):
        import ctypes
        import threading
        self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        self.peaks, self.after, self.current, self.running = [], [], 0.0, True
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def _sample(self) -> None:
        while self.running:
            self.current = max(self.current, self._rss_mb())
            time.sleep(0.002)

    def follow(self, chunks):
        for rows in chunks:
            self.peaks.append(max(self.current, self._rss_mb()))
            self.trim(0)
            self.after.append(self._rss_mb())
            self.current = 0.0
            yield rows
        self.running = False

    def summary(self) -> dict:
        later = slice(10, None) if len(self.after) > 20 else slice(None)
        return {"batches": len(self.peaks), "peak_min": min(self.peaks), "peak_max": max(self.peaks),
                "after_min": min(self.after[later]), "after_max": max(self.after[later])}


def _worker(store: str, model: str, n: int, batch_size: int, out: str, refine: bool, threads: int,
            profile: bool = False, batch_memory: bool = False) -> dict:
    import cProfile
    import pstats

    from mtopnet.catalogue import write_catalogue
    from mtopnet.predict import predict_batches
    from mtopnet.store import read_store
    from mtopnet.trained import load_model

    m = load_model(model)
    threads = 1 if profile else threads  # cProfile sees the calling thread only
    refiner = False
    if refine:
        from mtopnet.refine import Refiner
        refiner = Refiner.from_model(m)  # built once per run, as predict_store does

    from mtopnet.store import store_info

    available = store_info(store)["n"]

    def batches():  # the store read again from the start where N exceeds it
        done = 0
        while done < n:
            lo = done % available
            take = min(batch_size, n - done, available - lo)
            yield read_store(store, lo, lo + take)
            done += take

    # warm up (first-call allocations, rebinning matrices) on a small batch, not timed
    list(predict_batches(m, [read_store(store, 0, 64)], refine=refiner, threads=threads))
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    watch = _BatchMemory() if batch_memory else None
    tree = _TreeMemory(os.getpid())
    chunks = predict_batches(m, batches(), batch_size=batch_size, refine=refiner, threads=threads)
    rows = write_catalogue(out, chunks if watch is None else watch.follow(chunks))
    if prof is not None:
        prof.disable()
    dt = time.perf_counter() - t0
    res = {"n": rows, "seconds": dt, "spectra_per_s": rows / dt,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_all_mb": tree.stop()}
    if watch is not None:
        res["batch_memory"] = watch.summary()
    if prof is not None:
        res["stages"] = _stage_shares(pstats.Stats(prof), dt)
    return res


def _cli_rate(inputs: list[str], n: int, model: str, workers: int, out: Path, shard_size: int | None,
              extra: tuple[str, ...] = (), pss: bool = False) -> dict:
    """``mtopnet predict INPUTS --workers N [--shard-size S] [extra]`` in a subprocess: wall seconds
    (process start, model loading and assembly included) and spectra/s for n objects (S None:
    the CLI's default)."""
    size = [] if shard_size is None else ["--shard-size", str(shard_size)]
    cmd = [sys.executable, "-m", "mtopnet.cli", "predict", *inputs, "--out", str(out), "--model", model,
           "--workers", str(workers), *size, "--overwrite", *extra]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        tree = _TreeMemory(proc.pid, pss)  # the command and its processes (forked batches, Dask workers) together
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak resident size (not its workers')
        dt = time.perf_counter() - t0
        peak_all = tree.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"mtopnet predict failed ({proc.returncode}): "
                               f"{err.read().decode(errors='replace').strip()[-1000:]}")
    return {"n": n, "seconds": dt, "spectra_per_s": n / dt, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_all_mb": peak_all}


def _shard_size(given: int | None, workers: int, n: int) -> int | None:
    """--shard-size for a CLI run: the one given; else the CLI's default for one worker (its
    --threads batches at once run within a shard), and N / 8 (at least 64) for more, so that
    every worker gets shards."""
    if given is not None:
        return given
    return None if workers == 1 else max(64, n // 8)


def _fits_objects(pattern: str, n: int) -> list[str]:
    """The files of the first n objects matching ``pattern`` (an object = the files sharing a
    name up to its last ``_``, as moons1d's per-arm files ``ID_ARM.fits`` do)."""
    import glob
    files = sorted(glob.glob(pattern))
    objects: dict[str, list[str]] = {}
    for f in files:
        key = Path(f).name.rsplit("_", 1)[0]
        if key in objects or len(objects) < n:
            objects.setdefault(key, []).append(f)
    return [f for fs in objects.values() for f in fs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--sizes", type=int, nargs="*", default=[2000, 8000],
                   help="in-process runs of these sizes (none: only the CLI runs)")
    p.add_argument("--batch-size", type=int, default=None, help="in-process runs (default: mtopnet predict's)")
    p.add_argument("--format", default="parquet", choices=["fits", "parquet", "csv"])
    p.add_argument("--threads", type=int, default=None,
                   help="in-process runs: batches at once, each single-threaded (default: mtopnet predict's, "
                        "the CPUs)")
    p.add_argument("--workers", type=int, nargs="*", default=[], help="CLI runs with these --workers counts")
    p.add_argument("--cli-sizes", type=int, nargs="*", default=None,
                   help="CLI runs on these numbers of spectra (the store again from the start where N exceeds "
                        "it; default: the first of --sizes, at most the store's)")
    p.add_argument("--repeat", type=int, default=1,
                   help="CLI runs on the store: each this many times, one after the other (the machine's speed "
                        "drifts by ~10%% within minutes here: compare medians)")
    p.add_argument("--pss", action="store_true",
                   help="CLI runs on the store: the memory of the command and its processes as their summed "
                        "proportional set sizes (shared pages once) instead of resident sizes (slows the runs)")
    p.add_argument("--fits", default=None, help="glob of per-object FITS files for CLI runs")
    p.add_argument("--fits-n", type=int, default=500, help="objects of --fits to predict (default 500)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="CLI runs: rows (or files) per shard (default: the CLI's with 1 worker, whose "
                        "batches at once need shards of several batches; N / 8, at least 64, with more)")
    p.add_argument("--no-stages", action="store_true", help="skip the profiled run")
    p.add_argument("--modes", nargs="+", default=["refine", "no-refine"], choices=["refine", "no-refine"],
                   help="in-process runs: with refinement (the default path), without, or both (default)")
    p.add_argument("--batch-memory", action="store_true",
                   help="in-process runs also print each batch's peak resident memory (range over the batches) "
                        "and the resident size after each batch, trimmed, from the 11th on (of the run's own "
                        "process: with --threads > 1 on Linux the batches are computed in processes it forks, so "
                        "give --threads 1)")
    p.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="in-process runs with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (a fixed threshold: "
                        "blocks this large are mapped and given back when freed; docs/benchmarks.md)")
    p.add_argument("--worker", nargs=4, metavar=("STORE", "MODEL", "N", "REFINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    from mtopnet.predict import BATCH_SIZE, default_threads
    args.batch_size = BATCH_SIZE if args.batch_size is None else args.batch_size
    args.threads = default_threads(1, None) if args.threads is None else args.threads
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.worker:
            store, model, n, refine = args.worker
            print(json.dumps(_worker(store, model, int(n), args.batch_size, str(tmp_path / f"cat.{args.format}"),
                                     refine in ("refine", "profile"), args.threads, refine == "profile",
                                     args.batch_memory)))
            return 0
        from mtopnet.store import store_info
        from mtopnet.trained import shipped_model_path
        model = args.model or (str(shipped_model_path("moons-lr")) if shipped_model_path("moons-lr").is_file()
                               else str(_untrained_model(tmp_path / "untrained.pt")))
        store = args.store or (str(ROOT / "data" / "test.h5") if (ROOT / "data" / "test.h5").is_file()
                               else str(_toy_store(tmp_path / "toy.h5", max(args.sizes))))
        available = store_info(store)["n"]
        print(f"store {store} ({available} objects), model {model}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, {args.threads} batches at once in-process")

        def worker(n: int, mode: str) -> dict:
            env = dict(os.environ)
            if args.mmap_threshold is not None:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            res = subprocess.run([sys.executable, __file__, "--worker", store, model, str(n), mode,
                                  "--batch-size", str(args.batch_size), "--format", args.format,
                                  "--threads", str(args.threads), *(["--batch-memory"] if args.batch_memory else [])],
                                 capture_output=True, text=True, check=True, env=env)
            return json.loads(res.stdout.strip().splitlines()[-1])

        print(f"{'refine':>9} {'N':>8} {'seconds':>8} {'spectra/s':>10} {'peak RSS MB':>12} {'all RSS MB':>11}")
        for n in args.sizes:
            for mode in args.modes:
                r = worker(n, mode)
                print(f"{mode:>9} {r['n']:>8} {r['seconds']:>8.1f} {r['spectra_per_s']:>10.0f} "
                      f"{r['peak_rss_mb']:>12.0f} {r['peak_all_mb']:>11.0f}", flush=True)
                if "batch_memory" in r:
                    b = r["batch_memory"]
                    print(f"{'':>9} {b['batches']} batches: peak {b['peak_min']:.0f}-{b['peak_max']:.0f} MB, "
                          f"after each (trimmed) {b['after_min']:.0f}-{b['after_max']:.0f} MB", flush=True)
        n0 = args.sizes[0] if args.sizes else min(4000, available)
        if not args.no_stages:
            r = worker(n0, "profile")
            print(f"stages of the default path, {r['n']} spectra under cProfile "
                  f"({r['spectra_per_s']:.0f} spectra/s with the profiler's overhead):")
            for stage, sec in r["stages"].items():
                print(f"  {stage:>17} {sec:8.2f} s {100 * sec / r['seconds']:5.1f}%")
        if args.workers:
            for n_cli in args.cli_sizes or [n0]:
                inputs = [store] * (n_cli // available)  # the store again from the start where N exceeds it
                rest = n_cli % available
                if rest:
                    from mtopnet.store import read_store, write_store
                    sub = tmp_path / f"sub-{rest}.h5"
                    write_store(sub, read_store(store, 0, rest),
                                {k: v for k, v in store_info(store)["attrs"].items() if isinstance(v, str)})
                    inputs.append(str(sub))
                print(f"CLI `mtopnet predict --workers N` on {n_cli} spectra of the store (default path; start "
                      f"included; peak RSS of the command's own process, and of it and its processes summed"
                      f"{' (PSS)' if args.pss else ''}):")
                for w in args.workers:
                    for _ in range(max(args.repeat, 1)):
                        r = _cli_rate(inputs, n_cli, model, w, tmp_path / f"cli-{w}.{args.format}",
                                      _shard_size(args.shard_size, w, n_cli), pss=args.pss)
                        print(f"  workers {w}: {r['seconds']:7.1f} s {r['spectra_per_s']:8.0f} spectra/s "
                              f"{r['peak_rss_mb']:8.0f} MB, all {r['peak_all_mb']:6.0f} MB", flush=True)
        if args.fits:
            files = _fits_objects(args.fits, args.fits_n)
            n_obj = len({Path(f).name.rsplit("_", 1)[0] for f in files})
            print(f"CLI on {n_obj} objects of per-object FITS files ({len(files)} files, {args.fits}):")
            for w in args.workers or [1]:
                for label, extra in (("default path", ()), ("--no-refine", ("--no-refine",))):
                    r = _cli_rate(files, n_obj, model, w, tmp_path / f"fits-{w}.{args.format}",
                                  _shard_size(args.shard_size, w, n_obj), extra)
                    print(f"  workers {w}, {label:>12}: {r['seconds']:7.1f} s {r['spectra_per_s']:8.0f} spectra/s",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
