"""The dead pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.dead.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from typing import Optional

from rfprobe.options import Option
from rfprobe.passes.base import THRESHOLD_HELP, compute_loader, lazy_pass, module_getattr

OPTIONS = (Option("threshold", None, THRESHOLD_HELP, type=Optional[list[float]]),)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--dead-*` flags, a config's
[dead] table"""

DATA = None
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="dead",
    summary=("Channels with |gamma| < t per BN layer and pooled, and 'off' channels (also beta <= 0, BN "
             "feeding a ReLU)."),
    options=OPTIONS,
    data=DATA,
    json_attrs=(),
    json_extra=lambda ds: {"thresholds": [float(t) for t in ds["threshold"].values]},
)
