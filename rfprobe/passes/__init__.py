"""The analysis passes, one module each, usable from a notebook without the CLI (docs/notebooks.md): every
module has `run(...) -> xr.Dataset` (one checkpoint), `check_options(...)` where it takes options, and
`headline(ds) -> dict` (per checkpoint label, what the CLI prints and `--json` returns); figures are in
`rfprobe.plots`. Stack several checkpoints' results with `rfprobe.results.stack`.

Constants shared by several passes, and every pass's options, are declared here once (torch-free)."""

from typing import Optional

GAMMA_THRESHOLDS = (1e-3, 1e-2, 5e-2, 0.1)
"""|gamma| thresholds of the small-gamma ("disabled feature") counts: dead, sparsity's join"""

MAX_BINS = 10_000
"""the most histogram bins a pass accepts (affine's gamma/beta histograms, sparsity's per-example one)"""

ABLATE_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
"""fractions of the eligible channels on ablate's smallest-|gamma| pruning curve"""

AFFINE_BINS = 60
"""default bins of affine's gamma/beta histograms"""

SEGMENT_KINDS = ("train-train", "point-noise", "radius")
"""partition's segment kinds, in their canonical order"""

from rfprobe.options import Option  # noqa: E402  (torch-free, so the CLI can declare commands without torch)

_THRESHOLD_HELP = "|gamma| threshold, repeatable (default {})".format(" ".join(f"{t:g}" for t in GAMMA_THRESHOLDS))

PASS_OPTIONS: dict[str, tuple[Option, ...]] = {
    "affine": (Option("bins", AFFINE_BINS, "histogram bins (edges shared by all checkpoints)"),),
    "dead": (Option("threshold", None, _THRESHOLD_HELP, type=Optional[list[float]]),),
    "sparsity": (
        Option("threshold", None, _THRESHOLD_HELP.replace("threshold,", "threshold for the small-gamma join,"),
               type=Optional[list[float]]),
        Option("bins", 20, "bins of the per-example histogram on [0, 1]"),
        Option("compile", False, "fuse each ReLU and its probe into one torch.compile kernel (a one-time compile of "
                                 "~15 s, 2-3 s once torch has cached it; pays off for long passes)"),
    ),
    "ablate": (
        Option("prune_below", 0.01, "prune channels with |gamma| below this"),
        Option("keep_beta", False, "pruning sets gamma=0 but keeps beta (default: both 0)"),
        Option("seeds", 3, "random-control draws (seeds 0..N-1)"),
        Option("fractions", ",".join(f"{f:g}" for f in ABLATE_FRACTIONS),
               "comma-separated fractions of eligible channels for the smallest-|gamma| curve ('' for none)"),
        Option("reenable_pruned", False, "also restore gamma of the channels below --prune-below"),
        Option("reenable_value", "init", "init (init.pt beside the checkpoint, else median), median (of the layer's "
                                         "live |gamma|), one"),
        Option("eligible", "all", "BNs whose channels may be pruned: all, no-shortcut, relu"),
    ),
    "signal": (
        Option("input_kind", "gaussian", "gaussian (unit Gaussian noise) or data (a random batch of --dataset)",
               flags=("--input",)),
        Option("batch", 256, "examples in the one batch measured", flags=("--batch", "--batch-size")),
        Option("seed", 0, "seed of the input batch and of fresh inits"),
        Option("batch_stats", None, "BN normalises with the batch's statistics (--batch-stats) or its running ones "
                                    "(--running-stats); default: batch statistics at initialisation (fresh inits, "
                                    "epoch-0 checkpoints, files whose running statistics were never updated), "
                                    "running ones after training", type=Optional[bool],
               flags=("--batch-stats/--running-stats",)),
        Option("bn_init", None, "BN init of fresh inits that have one (not nf_*): uniform (OpenLTH's default), "
                                "fixed (gamma 1, as the paper), oneone, positivenegative", type=Optional[str]),
        Option("skip_init_gain", None, "skip gain of fresh nf_* inits (default 0, SkipInit; 1 shows the paper's SPPs)",
               type=Optional[float]),
    ),
    "partition": (
        Option("recalibrate_bn", False, "first set every BN's running mean/var to the exact statistics of the data "
                                        "(on a copy)"),
        Option("segments", 16, "segments walked per kind (train-train, point-noise, radius); 0 skips"),
        Option("kinds", ",".join(SEGMENT_KINDS), "segment kinds to walk, comma-separated (train-train segments "
                                                 "through a CIFAR ResNet cross ~1e5 regions: slow on a CPU)"),
        Option("radius", 1.0, "length of the random-direction segments, in normalised input units"),
        Option("max_breakpoints", 100_000, "stop walking a segment after this many breakpoints (recorded in "
                                           "segment_complete)"),
        Option("exact_points", 2, "points with the exact nearest-boundary distance (forward mode along every input dimension); "
                                  "0 skips"),
        Option("probes", 64, "Hutchinson directions per point for the distance on all points; 0 skips"),
        Option("lc_points", 32, "points with the local complexity (40 vertices at radius 0.005); 0 skips"),
        Option("jitter_batches", 16, "mini-batches for the BN jitter of boundary offsets; 0 skips"),
        Option("jitter_batch_size", 16, "mini-batch size B of the jitter"),
        Option("slice_plane", True, "exact 2-D slice (input plane for 2-D data, else the plane through 3 points)",
               flags=("--slice/--no-slice",)),
        Option("slice_max_regions", 2000, "stop enumerating the slice after this many regions"),
        Option("slice_resolution", 128, "raster side of the drawn slice"),
        Option("seed", 0, "seed of segments, probes, directions and batches"),
    ),
}
"""each pass's own options (rfprobe.options.Option), declared once: the CLI's flags, `rfprobe compare`'s
prefixed ones and the keys of a pass's table in `--config` all come from here; the pass's `validate(options)`
checks them and its `run_checkpoint(checkpoint, data, options, ...)` takes them"""

PASS_DATA: dict[str, dict | None] = {
    "affine": None,
    "dead": None,
    "sparsity": {"dataset": "cifar10", "limit": None, "batch_size": 500},
    "ablate": {"dataset": "cifar10", "limit": None, "batch_size": 500},
    "signal": {"dataset": "synthetic"},
    "partition": {"dataset": None, "limit": 256, "batch_size": 64},
}
"""each pass's data defaults (None: reads no data; partition's dataset None: each checkpoint's own, else cifar10)"""

SCORES_LABELS = ("sparsity", "ablate")
"""the passes that score the model's predictions against the data's labels (accuracy, loss): the model's head
must have one output per class of the dataset"""

PASSES = tuple(PASS_OPTIONS)
"""every pass, in the order a study runs them"""
