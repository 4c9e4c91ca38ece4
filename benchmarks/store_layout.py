"""Store layouts of a simulated training set: size on disk, write and read speed, cache build.

    python benchmarks/store_layout.py --store TRAIN.h5 [--n 20000] [--shard-size 500]
                                      [--cache-n 4000] [--workdir DIR]

Cuts the first ``--n`` rows of ``--store`` into shard files of ``--shard-size`` rows, as
``mtopnet simulate`` writes them, once per compression (none, lzf, gzip: the spectra's
flux and ivar, after the byte shuffle), and prints for each:

- bytes per spectrum of flux, ivar and mask in the shards (and the ratio to uncompressed),
- the CPU time of writing a shard (what a simulation worker pays per shard on top of the
  physics),
- the seconds (wall and CPU) to read the whole set through a virtual store (``iter_store``,
  4096 rows a batch; the best of two passes, so mostly from the page cache),
- the seconds to build the training cache (``train.build_cache``, the shipped recipe's
  preprocessing) of the first ``--cache-n`` rows;

and, for the uncompressed shards, the time and bytes of the copy that ``--consolidate``
makes (what the virtual store saves); and the masks' bytes and read time, raw and as every
store writes them. "none" compresses the masks only (they always are). Files go to ``--workdir`` (a temporary folder by
default) and are removed at the end.
"""
from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import h5py

from mtopnet.store import (
    MASK_COMPRESSION,
    iter_store,
    merge_stores,
    read_store,
    store_info,
    write_store,
    write_virtual_store,
)
from mtopnet.train import build_cache, load_train_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train-moons-lr.yaml"


def _shards(src: str, n: int, shard_size: int, folder: Path, compression: str | None) -> tuple[list[Path], float]:
    """Write the shard files; returns their paths and the seconds spent in write_store."""
    folder.mkdir(parents=True)
    paths, spent = [], 0.0
    for i, start in enumerate(range(0, n, shard_size)):
        batch = read_store(src, start, min(start + shard_size, n))
        paths.append(folder / f"shard_{i:05d}.h5")
        t0 = time.process_time()
        write_store(paths[-1], batch, {"shard": i}, compression=compression)
        spent += time.process_time() - t0
    return paths, spent


def _bytes_by_kind(paths: list[Path]) -> dict[str, int]:
    """Stored bytes of flux, ivar, mask (all arms), and of the rest of the files."""
    out = {"flux": 0, "ivar": 0, "mask": 0}
    for p in paths:
        with h5py.File(p, "r") as f:
            for arm in f["arms"].values():
                for k in out:
                    out[k] += arm[k].id.get_storage_size()
    out["other"] = sum(p.stat().st_size for p in paths) - sum(out.values())
    return out


def _mask_figures(src: str, n: int, shard_size: int) -> None:
    """The masks alone, raw and as every store writes them (MASK_COMPRESSION): bytes and read time."""
    rows = min(n, 2000)
    batch = read_store(src, 0, rows)
    for name, kw in (("raw", {}), ("gzip (MASK_COMPRESSION)", MASK_COMPRESSION)):
        size, write_cpu, read_cpu = 0, 0.0, 0.0
        for start in range(0, rows, shard_size):
            buffer = io.BytesIO()
            t0 = time.process_time()
            with h5py.File(buffer, "w") as f:
                for arm, d in batch.arms.items():
                    m = d["mask"][start:start + shard_size]
                    f.create_dataset(arm, data=m, chunks=(min(len(m), 256), m.shape[1]), **kw)
            write_cpu += time.process_time() - t0
            size += len(buffer.getvalue())
            t0 = time.process_time()
            with h5py.File(buffer, "r") as f:
                for arm in batch.arms:
                    f[arm][:]
            read_cpu += time.process_time() - t0
        print(f"mask {name}: {size / rows:.0f} B/spectrum, write {write_cpu / rows * 1e6:.0f} us/spectrum, "
              f"read {read_cpu / rows * 1e6:.0f} us/spectrum ({rows} spectra)")


def _read_seconds(path: Path, passes: int = 2) -> tuple[float, float]:
    """(wall, CPU) seconds of reading the whole store with iter_store, the best of ``passes``."""
    best = (float("inf"), float("inf"))
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = sum(len(b) for b in iter_store(path, batch_size=4096))
        assert rows == store_info(path)["n"]
        best = (min(best[0], time.perf_counter() - t0), min(best[1], time.process_time() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--cache-n", type=int, default=4000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n = min(args.n, store_info(args.store)["n"])
    pre = load_train_config(RECIPE).preprocess
    root = Path(tempfile.mkdtemp(prefix="store-layout-", dir=args.workdir))
    n_shards = (n + args.shard_size - 1) // args.shard_size
    print(f"{n} spectra of {args.store}, shards of {args.shard_size}")
    k = max(1, min(args.cache_n, n) // args.shard_size)
    print(f"read: the whole set, best of 2 passes; cache build: the first {k * args.shard_size} rows")
    print("| compression | flux B/spec | ivar B/spec | mask B/spec | total kB/spec (ratio) | write CPU s/shard "
          "| read s (wall, CPU) | cache build s (wall, CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    try:
        for compression in (None, "lzf", "gzip"):
            name = compression or "none"
            paths, write_cpu = _shards(args.store, n, args.shard_size, root / name / "s.h5.shards", compression)
            virtual = root / name / "s.h5"
            write_virtual_store(virtual, paths)
            vds_size = virtual.stat().st_size
            sizes = _bytes_by_kind(paths)
            total = sum(sizes.values()) + virtual.stat().st_size
            base = base or total
            read_wall, read_cpu = _read_seconds(virtual)
            head = root / name / "head.h5"
            write_virtual_store(head, paths[:k])
            t0, c0 = time.perf_counter(), time.process_time()
            build_cache(head, pre, root / name / "cache", progress=False)
            cache_wall, cache_cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"| {name} | {sizes['flux'] / n:.0f} | {sizes['ivar'] / n:.0f} | {sizes['mask'] / n:.0f} | "
                  f"{total / n / 1e3:.1f} ({total / base:.2f}) | {write_cpu / n_shards:.2f} | "
                  f"{read_wall:.1f}, {read_cpu:.1f} | {cache_wall:.1f}, {cache_cpu:.1f} |")
            if compression is None:
                t0 = time.perf_counter()
                merge_stores(paths, root / "consolidated.h5")
                merge_s = time.perf_counter() - t0
                merged = root / "consolidated.h5"
                consolidated = (merged.stat().st_size, merge_s, *_read_seconds(merged))
                merged.unlink()
            shutil.rmtree(root / name)
        size, merge_s, r1, r2 = consolidated
        _mask_figures(args.store, n, args.shard_size)
        print(f"virtual store file itself: {vds_size / n:.0f} B/spectrum (ids, labels, mapping)")
        print(f"consolidated copy (none): {size / 1e9:.2f} GB written in {merge_s:.1f} s; "
              f"read {r1:.1f} s wall, {r2:.1f} s CPU (best of 2)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
