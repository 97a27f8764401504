"""The ablate pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.ablate.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import ABLATE_FRACTIONS, compute_loader, lazy_pass, module_getattr

OPTIONS = (
    Option("prune_below", 0.01, "prune channels with |gamma| below this"),
    Option("keep_beta", False, "pruning sets gamma=0 but keeps beta (default: both 0)"),
    Option("seeds", 3, "random-control draws (seeds 0..N-1)"),
    Option("fractions", ",".join(f"{f:g}" for f in ABLATE_FRACTIONS),
           "comma-separated fractions of eligible channels for the smallest-|gamma| curve ('' for none)"),
    Option("reenable_pruned", False, "also restore gamma of the channels below --prune-below"),
    Option("reenable_value", "init", "init (init.pt beside the checkpoint, else median), median (of the layer's "
                                     "live |gamma|), one"),
    Option("eligible", "all", "BNs whose channels may be pruned: all, no-shortcut, relu"),
)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--ablate-*` flags, a config's
[ablate] table"""

DATA = {"dataset": "cifar10", "limit": None, "batch_size": 500}
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="ablate",
    summary=("Accuracy after pruning small-|gamma| channels, vs random and largest-|gamma| controls, a "
             "pruning curve, re-enabling."),
    options=OPTIONS,
    data=DATA,
    json_attrs=("dataset", "split", "n_examples", "normalization", "prune_below", "prune_operation", "eligible_bns"),
    scores_labels=True,
)
