"""The sparsity pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.sparsity.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from typing import Optional

from rfprobe.options import Option
from rfprobe.passes.base import THRESHOLD_HELP, compute_loader, lazy_pass, module_getattr

OPTIONS = (
    Option("threshold", None, THRESHOLD_HELP.replace("threshold,", "threshold for the small-gamma join,"),
           type=Optional[list[float]]),
    Option("bins", 20, "bins of the per-example histogram on [0, 1]"),
    Option("compile", False, "fuse each ReLU and its probe into one torch.compile kernel (a one-time compile of "
                             "~15 s, 2-3 s once torch has cached it; pays off for long passes)"),
)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--sparsity-*` flags, a config's
[sparsity] table"""

DATA = {"dataset": "cifar10", "limit": None, "batch_size": 500}
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="sparsity",
    summary=("Activation sparsity at every ReLU site (zero fraction, dead channels, per-example zero "
             "channels), joined with small |gamma|."),
    options=OPTIONS,
    data=DATA,
    json_attrs=("dataset", "split", "n_examples", "normalization"),
    scores_labels=True,
)
