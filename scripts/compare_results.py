"""Compare the result stores of two demo (or any) output directories: every `*.zarr` under A must exist under B
with identical data variables and coordinates (`xarray.testing.assert_identical`; attrs may differ, e.g. gain
fields). `checkpoint_sha256` is left out: a checkpoint records its epochs' wall times, so two trainings of the
same weights hash differently. With `--added-ok`, B may hold variables and coordinates A does not (a version that
adds results): every one of A's must still be in B and identical. Exit 1 with the differing store named, else
print how many stores matched.

    python scripts/compare_results.py [--added-ok] /tmp/demo-before/results demo-output/results
"""

import sys
from pathlib import Path

import xarray as xr


def main(a: str, b: str, added_ok: bool = False) -> int:
    stores = sorted(Path(a).glob("**/*.zarr"))
    if not stores:
        print(f"no zarr stores under {a}", file=sys.stderr)
        return 1
    added = set()
    for store in stores:
        other = Path(b) / store.relative_to(a)
        if not other.exists():
            print(f"{store.relative_to(a)}: missing under {b}", file=sys.stderr)
            return 1
        left, right = (xr.open_zarr(p).load().drop_vars("checkpoint_sha256", errors="ignore") for p in (store, other))
        if added_ok:
            extra = [v for v in right.variables if v not in left.variables]
            added.update(extra)
            right = right.drop_vars(extra)
        try:
            xr.testing.assert_identical(left.drop_attrs(), right.drop_attrs())
        except AssertionError as e:
            print(f"{store.relative_to(a)} differs: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    print(f"{len(stores)} stores identical (data variables and coordinates)"
          + (f"; added in B: {', '.join(sorted(added))}" if added else ""))
    return 0


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    sys.exit(main(*paths[:2], added_ok="--added-ok" in flags))
