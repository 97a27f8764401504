"""The affine pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.affine.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import AFFINE_BINS, compute_loader, deferred, lazy_pass, module_getattr

OPTIONS = (Option("bins", AFFINE_BINS, "histogram bins (edges shared by all checkpoints)"),
           Option("outlier_k", 3.0, "outlier dimensions: |gamma| or |beta| above k times the layer's median magnitude"))
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--affine-*` flags, a config's
[affine] table"""

DATA = None
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="affine",
    summary="Gamma/beta of every normalisation layer: per-channel values, histograms, per-layer and pooled summaries, outlier dimensions.",
    options=OPTIONS,
    data=DATA,
    json_attrs=(),
    combine=deferred(_impl, "rebin"),
)
