"""The affine pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.affine.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import AFFINE_BINS, Pass

OPTIONS = (Option("bins", AFFINE_BINS, "histogram bins (edges shared by all checkpoints)"),)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--affine-*` flags, a config's
[affine] table"""

DATA = None
"""data defaults (None: the pass reads only the model)"""


def _impl():
    import rfprobe.passes.affine.compute as compute  # not `from ... import`: that would ask __getattr__ first

    return compute


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    module = _impl()
    return module if name == "compute" else getattr(module, name)


PASS = Pass(
    name="affine",
    summary="Gamma/beta of every BN layer: per-channel values, histograms, per-layer and pooled summaries.",
    options=OPTIONS,
    data=DATA,
    run=lambda *args, **kwargs: _impl().run_checkpoint(*args, **kwargs),
    validate=lambda *args, **kwargs: _impl().validate(*args, **kwargs),
    headline=lambda *args, **kwargs: _impl().headline(*args, **kwargs),
    tables=lambda *args, **kwargs: _impl().tables(*args, **kwargs),
    figure=lambda *args, **kwargs: _impl().figure(*args, **kwargs),
    key_numbers=lambda *args, **kwargs: _impl().key_numbers(*args, **kwargs),
    json_attrs=(),
    combine=lambda *args, **kwargs: _impl().rebin(*args, **kwargs),
)
