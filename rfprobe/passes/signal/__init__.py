"""The signal pass, declared: its options, data defaults and registry entry (`PASS`). The computation, with
its tables and figure, is `rfprobe.passes.signal.compute`, imported on first use so that the command line lists
every pass without loading torch; any other name (`run`, `headline`, ...) is read from there."""

from typing import Optional

from rfprobe.options import Option
from rfprobe.passes.base import compute_loader, deferred, lazy_pass, module_getattr

OPTIONS = (
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
)
"""the pass's own options (rfprobe.options.Option): its flags, compare's `--signal-*` flags, a config's
[signal] table"""

DATA = {"dataset": "synthetic"}
"""data defaults (None: the pass reads only the model)"""


_impl = compute_loader(__name__)


__getattr__ = module_getattr(_impl)

PASS = lazy_pass(
    _impl,
    name="signal",
    summary=("Signal propagation plots: squared mean, variance and residual-branch variance after the stem "
             "and every residual block."),
    options=OPTIONS,
    data=DATA,
    json_attrs=("input", "n_examples"),
    reads_data=lambda options: options["input_kind"] == "data",
    data_input=lambda dataset, options, **where: _impl().data_input(dataset, options["batch"], options["seed"],
                                                                    **where),
    prepare_models=deferred(_impl, "prepare_models"),
)
