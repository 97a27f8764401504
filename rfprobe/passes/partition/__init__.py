"""The partition pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.partition.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import SEGMENT_KINDS, compute_loader, lazy_pass, module_getattr

OPTIONS = (
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
    json_extra=lambda ds: {"recalibrate_bn": bool(ds.attrs.get("recalibrate_bn"))},
)
