"""Weight and writing time of an inspection page (`mtopnet inspect`) for many objects.

    python benchmarks/inspect_weight.py [--store data/heldout.h5] [--n 10000] [--out DIR]
                                        [--catalogue CAT.fits]

Takes the first N spectra of the store (MOONS LR, three arms; a store of fewer is read again
from the start), predicts them with ``--pdf`` (the default path of the shipped model; or uses
``--catalogue``, a catalogue made with ``--pdf`` from exactly those N spectra), writes the
inspection page with ``mtopnet.inspect.write_inspection`` and prints: N, seconds to write the
page, ``catalogue.js`` bytes (the table every visit loads), the page's own files, the object
files (count, median, largest, total: loaded one at a time when an object is opened). With
``--out`` the page is kept there (open DIR/index.html), else written to a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "data" / "heldout.h5"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--catalogue", default=None, help="a --pdf catalogue of these N spectra (skips predict)")
    ap.add_argument("--out", default=None, help="keep the page here (default: a temporary folder)")
    args = ap.parse_args()

    from mtopnet.inspect import write_inspection
    from mtopnet.store import SpectraBatch, read_store, store_info, write_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        info = store_info(args.store)
        parts, have = [], 0
        while have < args.n:  # the store read again from the start where N exceeds it
            take = min(info["n"], args.n - have)
            part = read_store(args.store, 0, take)
            parts.append(dataclasses.replace(part, ids=np.arange(have, have + take)))  # unique ids
            have += take
        store = tmp_path / "spectra.h5"
        write_store(store, SpectraBatch.concatenate(parts),
                    {k: v for k, v in info["attrs"].items() if isinstance(v, str)})
        cat = args.catalogue
        if cat is None:
            cat = str(tmp_path / "cat.fits")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mtopnet.cli", "-q", "predict", str(store), "--out", cat, "--pdf"],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"predict --pdf: {time.perf_counter() - t0:.0f} s")
        out = Path(args.out) if args.out else tmp_path / "page"
        t0 = time.perf_counter()
        summary = write_inspection(cat, [str(store)], out, overwrite=True)
        dt = time.perf_counter() - t0
        own = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "catalogue.js")
        sizes = np.array(summary["object_bytes"], dtype=np.int64)
        print(f"objects {summary['n_objects']} (with spectra {summary['n_with_spectra']}), page written in {dt:.0f} s")
        print(f"catalogue.js {summary['index_bytes'] / 1e3:.0f} kB "
              f"({summary['index_bytes'] / max(summary['n_objects'], 1):.0f} bytes per object)")
        print(f"page files (html, js, css) {own / 1e3:.0f} kB")
        if len(sizes):
            print(f"object files {len(sizes)}: median {np.median(sizes) / 1e3:.0f} kB, largest "
                  f"{sizes.max() / 1e3:.0f} kB, total {sizes.sum() / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
