"""M-TOPnet side by side with Redrock on the same simulated MOONS LR 8 h spectra.

    python benchmarks/vs_redrock.py --n 1000 --seed 3001 [--out DIR] [--model NAME_OR_PATH]
                                    [--ncpu 2] [--rr-z-step 3e-4] [--docs docs/benchmarks_redrock.md]

The tables go where ``--out`` says; docs/ is written only when ``--docs FILE`` asks for it.

1. simulates N MOONS LR spectra (8 h, H 20-25.5, 0.6 <= z <= 3) with a seed never used in
   training (default 3001), or reuses DIR's store if it was made with the same arguments;
2. runs M-TOPnet (``mtopnet.predict``, the shipped ``moons-lr`` model unless ``--model``);
3. runs Redrock with the project's templates (``mtopnet.baselines.redrock``);
4. prints last a table by H magnitude: fraction with |dz| < 0.01, catastrophic fraction
   (|dz| / (1 + z) > 0.05), sigma_NMAD of dz / (1 + z), purity of each tool's own confident
   set at its completeness (Redrock: ZWARN == 0 and DELTACHI2 > 9; M-TOPnet: qop >= 3), and
   CPU seconds per spectrum (user + system time of the process and its children, setup
   included, measured in this run), and writes it to DIR/vs_redrock.md (and, with
   ``--docs FILE``, to FILE, e.g. docs/benchmarks_redrock.md), with per-object values in
   DIR/objects.csv.

If the network model does not exist yet, Redrock's columns are still produced and the
network's are marked "not run" with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mtopnet.baselines.redrock import cpu_seconds, reap_children, run_store
from mtopnet.config import Exposure, UserError
from mtopnet.constants import SUCCESS_DZ
from mtopnet.instruments import load_instrument
from mtopnet.predict import predict_store
from mtopnet.simulate import SimulationSpec, simulate
from mtopnet.store import read_store, store_info
from mtopnet.trained import load_model

H_BINS = ((20.0, 22.0), (22.0, 23.0), (23.0, 24.0), (24.0, 25.0), (25.0, 25.5))
CATASTROPHIC = 0.05
RR_DELTACHI2 = 9.0
QOP_CONFIDENT = 3
REPO = Path(__file__).resolve().parents[1]


def sigma_nmad(x: np.ndarray) -> float:
    """1.4826 x median absolute deviation from the median (NaN for an empty set)."""
    if len(x) == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def metrics(z_true: np.ndarray, z: np.ndarray, confident: np.ndarray) -> dict:
    """Success, catastrophic fraction, sigma_NMAD, and the confident set's purity/completeness."""
    dz = z - z_true
    ok = np.abs(dz) < SUCCESS_DZ
    n = len(z_true)
    nc = int(confident.sum())
    return {"n": n, "success": ok.mean() if n else np.nan,
            "catastrophic": np.mean(np.abs(dz) / (1 + z_true) > CATASTROPHIC) if n else np.nan,
            "nmad": sigma_nmad(dz / (1 + z_true)),
            "purity": ok[confident].mean() if nc else np.nan,
            "completeness": nc / n if n else np.nan}


def simulate_store(out_dir: Path, n: int, seed: int, workers: int) -> Path:
    """The benchmark's spectra: reused if ``out_dir`` holds a store from the same arguments."""
    inst = load_instrument("moons-lr")
    obs = inst.config.observing
    exposure = Exposure(total=8 * 3600.0, sub_exposure=obs.sub_exposure, airmass=obs.airmass,
                        seeing=obs.seeing, sky_residual=obs.sky_residual)
    spec = SimulationSpec(instrument="moons-lr", exposure=exposure, n=n, seed=seed)
    path = out_dir / f"moons-lr_8h_n{n}_seed{seed}.h5"
    if path.exists():
        try:
            prov = store_info(path)["attrs"].get("provenance")
            if prov and json.loads(prov) == json.loads(json.dumps(spec.provenance())):
                print(f"reusing {path}", file=sys.stderr)
                return path
        except (UserError, ValueError):
            pass
    t0 = time.monotonic()
    simulate(spec, path, workers=workers, overwrite=True, progress=True)
    print(f"simulated {n} spectra in {time.monotonic() - t0:.0f} s -> {path}", file=sys.stderr)
    return path


def run_network(store: Path, out_dir: Path, model_name: str | None, ncpu: int):
    """(catalogue columns, CPU s, note): M-TOPnet on the store, or (None, None, reason)."""
    torch.set_num_threads(ncpu)
    cat_path = out_dir / "mtopnet.parquet"
    c0 = cpu_seconds()
    try:
        model = load_model(model_name)
        predict_store(model, [store], cat_path, overwrite=True)
    except UserError as exc:
        return None, None, str(exc)
    reap_children()
    cpu = cpu_seconds() - c0
    table = pq.read_table(cat_path)
    cols = {c: table[c].to_numpy() for c in ("TARGETID", "Z", "QOP") if c in table.column_names}
    return cols, cpu, f"model {Path(model.source).name}"


def fmt(x: float, digits: int = 3, sci: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.{digits}e}" if sci else f"{x:.{digits}f}"


def build_table(truth: dict, ours: dict | None, rr: dict, cpu_ours: float | None, cpu_rr: float) -> str:
    """Markdown table by H bin; each cell 'M-TOPnet / Redrock'."""
    head = ("| H (AB) | N | f(\\|dz\\|<0.01) | catastrophic | sigma_NMAD | purity (completeness) of confident set"
            " | CPU s / spectrum |\n|---|---|---|---|---|---|---|")
    rows = [head]
    bins = [(f"{lo:g}-{hi:g}", (truth["hmag"] >= lo) & (truth["hmag"] < hi if hi < 25.5 else truth["hmag"] <= hi))
            for lo, hi in H_BINS] + [("all", np.ones(len(truth["z"]), bool))]
    n_total = len(truth["z"])
    for label, sel in bins:
        m_rr = metrics(truth["z"][sel], rr["z"][sel], rr["confident"][sel])
        m_us = metrics(truth["z"][sel], ours["z"][sel], ours["confident"][sel]) if ours else None

        def pair(key, digits=3, sci=False, m_us=m_us, m_rr=m_rr):
            us = fmt(m_us[key], digits, sci) if m_us else "not run"
            return f"{us} / {fmt(m_rr[key], digits, sci)}"

        def pur(m_us=m_us, m_rr=m_rr):
            us = f"{fmt(m_us['purity'])} ({fmt(m_us['completeness'], 2)})" if m_us else "not run"
            return f"{us} / {fmt(m_rr['purity'])} ({fmt(m_rr['completeness'], 2)})"

        cpu = ""
        if label == "all":
            cpu = f"{fmt(cpu_ours / n_total, 4) if cpu_ours is not None else 'not run'} / {fmt(cpu_rr / n_total, 2)}"
        rows.append(f"| {label} | {m_rr['n']} | {pair('success')} | {pair('catastrophic')} | "
                    f"{pair('nmad', 1, sci=True)} | {pur()} | {cpu} |")
    return "\n".join(rows)


NOTES = "### Reading the table"
"""Heading of the hand-written notes in the ``--docs`` file, which a re-run keeps."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="spectra to simulate (>= 1000 for the reported run)")
    ap.add_argument("--seed", type=int, default=3001, help="simulation seed, never used in training (default 3001)")
    ap.add_argument("--out", default=str(REPO / "runs" / "vs_redrock"),
                    help="output folder (default runs/vs_redrock, git-ignored)")
    ap.add_argument("--model", default=None, help="M-TOPnet model name or checkpoint (default: shipped moons-lr)")
    ap.add_argument("--ncpu", type=int, default=2, help="processes/threads for each tool (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="simulation workers")
    ap.add_argument("--rr-z-step", type=float, default=None,
                    help="Redrock scan step in log10(1 + z) (default: Redrock's galaxy step, 3e-4)")
    ap.add_argument("--docs", default=None,
                    help="also write the section to this file (e.g. docs/benchmarks_redrock.md); default: not")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/vs_redrock.py " + " ".join(shlex.quote(a) for a in given)
    try:
        if args.n < 1:
            raise UserError(f"--n: must be >= 1, got {args.n}")
        if args.seed in (1001, 1002, 2001, 424242, 5151):
            raise UserError(f"--seed {args.seed} is a training/template seed; choose another (default 3001)")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        store = simulate_store(out, args.n, args.seed, args.workers)
        batch = read_store(store)
        truth = {"id": batch.ids, "z": batch.labels["z"].astype(np.float64),
                 "hmag": batch.labels["hmag"].astype(np.float64)}
        del batch

        ours_cols, cpu_ours, note = run_network(store, out, args.model, args.ncpu)
        ours = None
        if ours_cols is not None:
            if not np.array_equal(ours_cols["TARGETID"], truth["id"]):
                raise UserError("M-TOPnet's catalogue rows do not match the store's ids")
            ours = {"z": ours_cols["Z"].astype(np.float64), "confident": ours_cols["QOP"] >= QOP_CONFIDENT,
                    "qop": ours_cols["QOP"]}
            print(f"M-TOPnet: {note}, {cpu_ours / args.n:.4f} CPU s per spectrum", file=sys.stderr)
        else:
            print(f"M-TOPnet: not run: {note}", file=sys.stderr)

        c0 = cpu_seconds()
        cat = run_store([store], out / "redrock.fits", ncpu=args.ncpu, overwrite=True, progress=True,
                        z_step=args.rr_z_step)
        reap_children()
        cpu_rr = cpu_seconds() - c0
        if not np.array_equal(cat.ids, truth["id"]):
            raise UserError("Redrock's catalogue rows do not match the store's ids")
        rr = {"z": cat.z, "confident": (cat.zwarn == 0) & (cat.deltachi2 > RR_DELTACHI2)}
        print(f"Redrock: {cpu_rr / args.n:.2f} CPU s per spectrum", file=sys.stderr)
    except UserError as exc:
        print(f"vs_redrock: error: {exc}", file=sys.stderr)
        return 2

    with open(out / "objects.csv.tmp", "w") as fh:
        fh.write("id,z_true,hmag,z_mtopnet,qop,z_redrock,zwarn,deltachi2\n")
        for i in range(len(truth["z"])):
            zo = f"{ours['z'][i]:.5f},{int(ours['qop'][i])}" if ours else ","
            fh.write(f"{truth['id'][i]},{truth['z'][i]:.5f},{truth['hmag'][i]:.3f},{zo},"
                     f"{cat.z[i]:.5f},{cat.zwarn[i]},{cat.deltachi2[i]:.2f}\n")
    os.replace(out / "objects.csv.tmp", out / "objects.csv")

    table = build_table(truth, ours, rr, cpu_ours, cpu_rr)
    meta = cat.meta
    section = "\n".join([
        "## Side by side with Redrock (MOONS LR, 8 h)",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.n} simulated MOONS LR spectra, 8 h, H(AB) 20-25.5, 0.6 <= z <= 3 (seed {args.seed}, never "
        "used in training). Each cell is **M-TOPnet / Redrock**. Success: |z - z_true| < 0.01; "
        "catastrophic: |dz|/(1+z) > 0.05; sigma_NMAD of dz/(1+z) over all objects of the bin. "
        "Confident sets: M-TOPnet qop >= 3, Redrock ZWARN == 0 and DELTACHI2 > 9; purity is their "
        "success fraction, completeness their share of the bin. CPU s / spectrum: user + system "
        f"CPU time of the process and its children (setup included), {args.ncpu} processes/threads "
        "each, measured in the same run.",
        "",
        f"M-TOPnet: {note}. Redrock {meta.get('RRVER')}, templates {meta.get('TEMFIL00')} "
        f"(sha256 {str(meta.get('TEMSHA00'))[:12]}), z {meta.get('ZMIN'):.3f}-{meta.get('ZMAX'):.3f} "
        f"({meta.get('NZSCAN')} steps of {meta.get('ZSTEP'):g} in log10(1+z)). "
        f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}.",
        "",
        table,
        "",
    ])
    tmp = out / "vs_redrock.md.tmp"
    tmp.write_text(section)
    os.replace(tmp, out / "vs_redrock.md")
    if args.docs:
        docs = Path(args.docs)
        tmp = docs.with_name(docs.name + ".tmp")
        # the docs name the output folder DIR, not this machine's path
        shown = section.replace(f"--out {shlex.quote(str(args.out))}", "--out DIR")
        # the file's own reading notes (a "### Reading the table" section) are kept: they are
        # written by hand from the numbers, and must be revised by hand when those change
        old = docs.read_text() if docs.is_file() else ""
        notes = "\n" + NOTES + old.split(NOTES, 1)[1] if NOTES in old else ""
        tmp.write_text("# Benchmark: M-TOPnet vs Redrock\n\n" + shown + notes)
        os.replace(tmp, docs)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
