"""Compare two catalogues column by column for exact equality (and the ZBINS HDU of FITS files).

    python scripts/compare_catalogues.py A B      # exit 0 if identical, 1 otherwise

Every column must have the same name, order, dtype and bytes (NaN equal to NaN); FITS
headers may differ (dates); the FITS ZBINS HDU (PDF bin centres) must be equal too.
"""
from __future__ import annotations

import sys

import numpy as np

from mtopnet.catalogue import read_catalogue, read_zbin_centres


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of two arrays (dtype, shape and bytes; NaNs with equal bits compare equal)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "OU":
        return bool(np.array_equal(a, b))
    return a.tobytes() == b.tobytes()


def compare(path_a: str, path_b: str) -> list[str]:
    """Differences between two catalogues, in words (empty: identical)."""
    a, b = read_catalogue(path_a), read_catalogue(path_b)
    problems = []
    if list(a) != list(b):
        problems.append(f"columns differ: {list(a)} vs {list(b)}")
    for name in a:
        if name in b and not same(a[name], b[name]):
            problems.append(f"column {name} differs")
    ca, cb = read_zbin_centres(path_a), read_zbin_centres(path_b)
    if (ca is None) != (cb is None) or (ca is not None and not same(ca, cb)):
        problems.append("z-bin centres differ")
    return problems


def main(argv: list[str]) -> int:
    problems = compare(argv[0], argv[1])
    for p in problems:
        print(p)
    n = len(read_catalogue(argv[0])["id"])
    print(f"{argv[0]} vs {argv[1]}: {n} rows, " + ("IDENTICAL" if not problems else f"{len(problems)} differences"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
