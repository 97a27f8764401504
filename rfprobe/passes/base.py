"""What a pass is (`Pass`), and the constants several passes share. Each pass is a package
`rfprobe/passes/<name>/`: its `__init__` declares the options, data defaults and one `Pass` named `PASS`
(torch-free, so the command line lists every pass without loading torch), its `compute` module does the
work; `rfprobe.passes.REGISTRY` lists them. The command line, studies, the report, the tables and
`rfprobe plot` read everything about a pass from its `Pass` and never name a pass themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from rfprobe.options import Option

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

THRESHOLD_HELP = "|gamma| threshold, repeatable (default {})".format(" ".join(f"{t:g}" for t in GAMMA_THRESHOLDS))


def _unchanged(results: list) -> list:
    return results


@dataclass(frozen=True)
class Pass:
    """One analysis pass, declared once in its module.

    - `run(checkpoint, data, options, *, batch_size, device, command, progress, load)` measures one loaded
      checkpoint (`data`: a `rfprobe.data.Data` normalised for it, None for a pass that reads none) and
      returns its Dataset; `options` are `validate`d values of `options` (the declared `Option`s: the CLI's
      flags, compare's prefixed flags and a config's table all come from them).
    - `validate(options, n_points=None)` checks the options (one line on a bad value) before anything is
      loaded; `n_points` is the data limit where a pass checks options against it.
    - `headline(ds)`: label -> the pass's headline numbers (JSON-able); the CLI table, `--json`, the study
      tables (`key_numbers`, from one checkpoint's headline) and the report summary read it.
    - `tables(ds)` the rich tables the CLI prints, `figure(ds)` the figure: both from the Dataset alone;
      `--json` prints the headline with the attrs `json_attrs` and what `json_extra(ds)` adds.
    - `data`: None for a pass that reads only the model, else its data defaults (dataset, limit, batch
      size); `reads_data(options)` says whether given options read data (signal only with `--input data`);
      `data_input(dataset, options, *, split, root, download)` loads the data for a pass that draws its own
      sample (signal's one random batch) instead of the first `limit` examples.
    - `combine(results)`: the per-checkpoint Datasets of one command or study before they are stacked
      (affine re-bins its histograms on shared edges).
    - `prepare_models(args, options, data_options)`: set for a pass whose command takes architecture names
      (fresh inits) besides checkpoint files; checks them before anything is loaded and returns
      (default labels, measure(arch, num_classes, device, command) -> list of Datasets) (rfprobe.passes.signal).
    - `version`: bumped when the pass's numbers change for the same inputs (part of a study's fingerprint)."""

    name: str
    summary: str
    options: tuple[Option, ...]
    data: dict | None
    run: Callable[..., Any]
    validate: Callable[..., dict]
    headline: Callable[[Any], dict]
    tables: Callable[[Any], list]
    figure: Callable[[Any], Any]
    key_numbers: Callable[[dict], dict]
    json_attrs: tuple[str, ...] = ()
    json_extra: Callable[[Any], dict] | None = None
    version: int = 1
    scores_labels: bool = False
    reads_data: Callable[[dict], bool] | None = None
    data_input: Callable[..., Any] | None = None
    combine: Callable[[list], list] = field(default=_unchanged)
    prepare_models: Callable[..., Any] | None = None

    def defaults(self) -> dict:
        """Every option at its declared default."""
        return {o.name: o.default for o in self.options}

    def needs_data(self, options: dict | None = None) -> bool:
        """Whether the pass with these options (default: its defaults) measures data."""
        if self.data is None:
            return False
        return self.reads_data is None or self.reads_data({**self.defaults(), **(options or {})})


COMPUTED = {"run": "run_checkpoint", "validate": "validate", "headline": "headline", "tables": "tables",
            "figure": "figure", "key_numbers": "key_numbers"}
"""the `Pass` fields every pass's compute module provides, and the names it provides them under"""


def deferred(load: Callable[[], ModuleType], name: str) -> Callable:
    """A function that calls `name` of the module `load()` imports, importing it on the first call."""
    def call(*args, **kwargs):
        return getattr(load(), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def compute_loader(package: str) -> Callable[[], ModuleType]:
    """The loader of a pass package's compute module (`<package>.compute`), imported on its first call; by
    importlib, so the package's own module `__getattr__` is never asked for it."""
    import importlib

    return lambda: importlib.import_module(f"{package}.compute")


def lazy_pass(load: Callable[[], ModuleType], **declared) -> Pass:
    """The `Pass` of a pass package: what its torch-free `__init__` declares (`declared`), and the `COMPUTED`
    functions of its compute module (`load()`), imported on first use."""
    return Pass(**{field_name: deferred(load, name) for field_name, name in COMPUTED.items()}, **declared)


def module_getattr(load: Callable[[], ModuleType]) -> Callable[[str], Any]:
    """A pass package's module `__getattr__`: any other name (`run`, `headline`, ..., `compute` itself) is
    read from its compute module (`load()`), so `from rfprobe.passes import dead; dead.run(...)` works."""
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        module = load()
        return module if name == "compute" else getattr(module, name)

    return __getattr__
