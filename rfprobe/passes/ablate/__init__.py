"""The ablate pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.ablate.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from rfprobe.options import Option
from rfprobe.passes.base import ABLATE_FRACTIONS, Pass

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


def _impl():
    import rfprobe.passes.ablate.compute as compute  # not `from ... import`: that would ask __getattr__ first

    return compute


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    module = _impl()
    return module if name == "compute" else getattr(module, name)


PASS = Pass(
    name="ablate",
    summary=("Accuracy after pruning small-|gamma| channels, vs random and largest-|gamma| controls, a "
             "pruning curve, re-enabling."),
    options=OPTIONS,
    data=DATA,
    run=lambda *args, **kwargs: _impl().run_checkpoint(*args, **kwargs),
    validate=lambda *args, **kwargs: _impl().validate(*args, **kwargs),
    headline=lambda *args, **kwargs: _impl().headline(*args, **kwargs),
    tables=lambda *args, **kwargs: _impl().tables(*args, **kwargs),
    figure=lambda *args, **kwargs: _impl().figure(*args, **kwargs),
    key_numbers=lambda *args, **kwargs: _impl().key_numbers(*args, **kwargs),
    json_attrs=("dataset", "split", "n_examples", "normalization", "prune_below", "prune_operation", "eligible_bns"),
    scores_labels=True,
)
