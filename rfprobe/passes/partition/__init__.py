"""The partition pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.partition.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import SEGMENT_KINDS, compute_loader, lazy_pass, module_getattr

OPTIONS = (
    Option("recalibrate_bn", False, "first set every BN's running mean/var to the exact statistics of the data "
                                    "(on a copy)"),
    Option("segments", 16, "segments walked per kind (train-train, point-noise, radius); 0 skips"),
    Option("kinds", "radius", f"segment kinds to walk, comma-separated, of {', '.join(SEGMENT_KINDS)} (a "
                              "train-train or point-noise segment through a CIFAR ResNet crosses 1e4-1e5 regions, "
                              "seconds to minutes each on a CPU core: docs/passes/partition.md)"),
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
    Option("slice_max_regions", 500, "stop enumerating the slice after this many regions (a plane through three "
                                     "CIFAR images holds more than 1e4: docs/passes/partition.md)"),
    Option("slice_resolution", 64, "raster side of the drawn slice (its side squared float64 forwards)"),
    Option("seed", 0, "seed of segments, probes, directions and batches"),
    Option("jobs", 0, "worker processes walking segments (0: one per CPU core on a CPU for a network of at "
                      "least 100,000 units, or 10,000 with train-train or point-noise segments; else this process); "
                      "the numbers do not depend on it",
           decides_result=False),
)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--partition-*` flags, a config's
[partition] table"""

DATA = {"dataset": None, "limit": 256, "batch_size": 64}
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="partition",
    summary=("Exact linear-region statistics: region walks along segments, nearest-boundary distances, "
             "per-layer distances, local complexity, BN jitter, a 2-D slice (float64, BN in eval mode)."),
    options=OPTIONS,
    data=DATA,
    json_attrs=("dataset", "split", "n_examples", "normalization", "recalibrate_bn"),
    version=2,  # 2: Hutchinson's directions in float32; a stopped walk's density over the part walked
    json_extra=lambda ds: {"recalibrate_bn": bool(ds.attrs.get("recalibrate_bn"))},
)
