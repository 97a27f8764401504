"""The analysis passes, one module each, usable from a notebook without the CLI (docs/notebooks.md): every
module has `run(...) -> xr.Dataset` (one checkpoint), `check_options(...)` where it takes options, and
`headline(ds) -> dict` (per checkpoint label, what the CLI prints and `--json` returns); figures are in
`rfprobe.plots`. Stack several checkpoints' results with `rfprobe.results.stack`.

Constants shared by several passes are declared here once."""

GAMMA_THRESHOLDS = (1e-3, 1e-2, 5e-2, 0.1)
"""|gamma| thresholds of the small-gamma ("disabled feature") counts: dead, sparsity's join"""

MAX_BINS = 10_000
"""the most histogram bins a pass accepts (affine's gamma/beta histograms, sparsity's per-example one)"""

ABLATE_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
"""fractions of the eligible channels on ablate's smallest-|gamma| pruning curve"""
