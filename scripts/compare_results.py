"""Compare the result stores of two demo (or any) output directories: every `*.zarr` under A must exist under B
with identical data variables and coordinates (`xarray.testing.assert_identical`; attrs may differ, e.g. gain
fields). `checkpoint_sha256` is left out: a checkpoint records its epochs' wall times, so two trainings of the
same weights hash differently. Exit 1 with the differing store named, else print how many stores matched.

    python scripts/compare_results.py /tmp/demo-before/results demo-output/results
"""

import sys
from pathlib import Path

import xarray as xr


def main(a: str, b: str) -> int:
    stores = sorted(Path(a).glob("**/*.zarr"))
    if not stores:
        print(f"no zarr stores under {a}", file=sys.stderr)
        return 1
    for store in stores:
        other = Path(b) / store.relative_to(a)
        if not other.exists():
            print(f"{store.relative_to(a)}: missing under {b}", file=sys.stderr)
            return 1
        left, right = (xr.open_zarr(p).load().drop_vars("checkpoint_sha256", errors="ignore") for p in (store, other))
        try:
            xr.testing.assert_identical(left.drop_attrs(), right.drop_attrs())
        except AssertionError as e:
            print(f"{store.relative_to(a)} differs: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    print(f"{len(stores)} stores identical (data variables and coordinates)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
