"""The `rfprobe` command line: one command per pass; each parses, calls the pass, saves, prints, plots.

Errors in the user's input print one line on stderr and exit with 2; anything else is an internal error
(exit 1). `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from rfprobe import __version__
from rfprobe.errors import RfprobeError
from rfprobe.passes import ABLATE_FRACTIONS

app = typer.Typer(
    name="rfprobe",
    help="Analysis passes over BatchNorm / random-feature checkpoints. Results go to zarr "
         "(open with xr.open_zarr) and optional figures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()

# Options shared by the passes (docs/cli.md).
CheckpointsArg = Annotated[list[Path], typer.Argument(help="checkpoint file(s): rfprobe .pt or .safetensors, or a bare state dict with --arch")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="architecture of a bare state dict, e.g. cifar_resnet_20, torchvision:resnet50")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="classes of a bare state dict (default: rows of its last 2-D weight)")]
LabelOpt = Annotated[Optional[list[str]], typer.Option("--label", help="label per checkpoint (default: run name or file stem)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="cifar10, cifar100, synthetic, toy2d[:moons|circles|spirals|blobs]")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="data directory (default $RFPROBE_DATA, else ~/.cache/rfprobe)")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="download CIFAR through torchvision if missing (needs internet)")]
SplitOpt = Annotated[str, typer.Option("--split", help="train or test")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="use the first N examples")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="examples per forward pass")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
NormalizationOpt = Annotated[Optional[str], typer.Option(
    "--normalization", help="input normalisation preset for every checkpoint: cifar10, cifar100, imagenet (OpenLTH's "
                            "for CIFAR), kuangliu, half, synthetic, none (default: each checkpoint's recorded one, "
                            "else the dataset's)")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="per-channel input mean instead of a preset, e.g. 0.485,0.456,0.406 (with --std)")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="per-channel input std, e.g. 0.229,0.224,0.225 (with --mean)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="zarr store to write (default results/<label>/<pass>.zarr)")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="also write a figure (.png, .pdf, .svg)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing --out / --plot (only an rfprobe result store / a figure file)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout and nothing else")]


def _version(value: bool) -> None:
    if value:
        print(f"rfprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks (also accepted after the command)")] = False,
) -> None:
    """`--debug` is taken off the command line by rfprobe.entrypoint.run_app before parsing; it is declared
    here so that --help lists it."""


def warn(message: str) -> None:
    """One unwrapped line on stderr (rich would wrap it at the console width)."""
    print(f"rfprobe: warning: {message}", file=sys.stderr)


def load_one(path: Path, arch: str | None = None, num_classes: int | None = None, device="cpu"):
    """Load one checkpoint, turning NaN/inf warnings into one stderr line each (they are recorded too)."""
    from rfprobe.checkpoint import load_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = load_checkpoint(path, arch=arch, num_classes=num_classes, device=device)
    for w in caught:
        warn(str(w.message))
    return ckpt


def load_checkpoints(paths: list[Path], arch: str | None = None, num_classes: int | None = None, device="cpu"):
    return [load_one(path, arch, num_classes, device) for path in paths]


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def labels_for(items, labels: list[str] | None, defaults: list[str] | None = None, what: str = "checkpoint") -> list[str]:
    """`--label` values (one per checkpoint) or the defaults (default: each checkpoint path's label, run name
    or file stem); known from the command line alone, so outputs are checked before anything is loaded."""
    from rfprobe.checkpoint import label_of

    if labels:
        if len(labels) != len(items):
            raise RfprobeError(f"--label given {len(labels)} times for {len(items)} {what}s; give one per {what}")
        return list(labels)
    return list(defaults) if defaults is not None else [label_of(p) for p in items]


def check_files(paths: list[Path]) -> None:
    """Every checkpoint path names an existing file (one line otherwise), checked before any is loaded."""
    from rfprobe.checkpoint import check_file

    for path in paths:
        check_file(Path(path))


def check_positive(**options: int | None) -> None:
    """`--limit`, `--batch-size`, ...: each given value must be at least 1 (option names from the keywords)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise RfprobeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def prepare_outputs(pass_name: str, labels: list[str], out: Path | None, plot: Path | None, overwrite: bool):
    """Resolve `--out` (default results/<label>/<pass>.zarr) and refuse outputs that cannot be written
    (rfprobe.results.check_writable, rfprobe.plots.check_plot_path) *before* any work."""
    from rfprobe.plots import check_plot_path
    from rfprobe.results import check_writable, default_output

    path = check_writable(out or default_output(pass_name, labels), overwrite)
    if plot is not None:
        check_plot_path(plot, overwrite)
    return path, plot


def write_outputs(ds, path: Path, plot: Path | None, draw, overwrite: bool) -> dict:
    """Save the Dataset (atomically) and, with `--plot`, the figure `draw(ds)`; return what was written."""
    from rfprobe.plots import save_figure
    from rfprobe.results import save_result

    written = {"result": str(save_result(ds, path, overwrite=overwrite))}
    if plot is not None:
        written["plot"] = str(save_figure(draw(ds), plot, overwrite=overwrite))
    return written


def report_written(written: dict) -> None:
    for kind, where in written.items():
        console.print(f"{kind}: {where}", highlight=False)


def warn_dataset_mismatch(checkpoint, data) -> None:
    """One stderr line for a checkpoint trained on another dataset than the one it is measured on (when the
    shapes match: mismatched shapes are the pass's one-line error, not a warning)."""
    shape_fits = tuple(data.x.shape[1:]) == tuple(getattr(checkpoint.model, "rfprobe_input_shape", ()))
    if checkpoint.dataset not in ("unknown", data.name) and shape_fits:
        warn(f"{checkpoint.path} was trained on {checkpoint.dataset}; measuring it on {data.name}")


class DataOptions:
    """The data options of a pass, validated at once (before anything is loaded); `load` reads the data."""

    def __init__(self, dataset: str | None, split: str, data_root: Path | None, download: bool, limit: int | None,
                 normalization: str | None, mean: str | None, std: str | None):
        from rfprobe.data import check_dataset_name, check_split
        from rfprobe.normalization import from_options

        if dataset is not None:
            check_dataset_name(dataset)
        check_split(split)
        check_positive(limit=limit)
        self.dataset, self.split, self.root, self.download, self.limit = dataset, split, data_root, download, limit
        self.override = from_options(normalization, mean, std)

    def load(self, dataset: str | None = None):
        from rfprobe.data import load_dataset

        return load_dataset(self.dataset or dataset, self.split, root=self.root, download=self.download, limit=self.limit)

    def for_checkpoint(self, checkpoint, data):
        """`data` normalised as `checkpoint` needs (rfprobe.normalization.resolve), warning where it is a guess."""
        from rfprobe.normalization import resolve

        if checkpoint is not None:
            warn_dataset_mismatch(checkpoint, data)
        resolved = resolve(checkpoint, data.name, self.override)
        if resolved.warning:
            warn(resolved.warning)
        return data.with_normalization(resolved.normalization, resolved.source)


def each_checkpoint(paths: list[Path], arch, num_classes, device, data_options: DataOptions | None = None,
                    default_dataset=lambda ckpt: None, description: str = "", progress: bool = False):
    """Yield `(checkpoint, data)` one checkpoint at a time (memory bounded by one model), with `data` loaded
    once (the dataset `default_dataset(first checkpoint)` when `--dataset` is not given) and normalised for
    each checkpoint (`DataOptions.for_checkpoint`); `data` is None without `data_options`."""
    from rfprobe.progress import track

    data = None
    if data_options is not None and data_options.dataset is not None:
        data = data_options.load()
    for path in track(paths, len(paths), description, enabled=progress and len(paths) > 1):
        ckpt = load_one(path, arch, num_classes, device)
        if data_options is None:
            yield ckpt, None
            continue
        if data is None:
            data = data_options.load(default_dataset(ckpt))
        yield ckpt, data_options.for_checkpoint(ckpt, data)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _cell(value) -> str:
    """A table cell: `-` for None, text and integers as they are, other numbers to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, (str, bool, int, np.integer)):
        return str(value)
    return f"{value:.4g}"


def checkpoint_table(title: str, summary: dict[str, dict], rows) -> Table:
    """A table with one column per checkpoint; `rows` are (name, cell) pairs, cell(one summary) -> str."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("")
    for lab in summary:
        table.add_column(lab, justify="right")
    for name, cell in rows:
        table.add_row(name, *[cell(one) for one in summary.values()])
    return table


# ---------------------------------------------------------------- info, export


def _normalization_report(ckpt) -> dict:
    """The normalisation data passes use for `ckpt` by default, and where it comes from (for `info`)."""
    from rfprobe.normalization import DATASET_DEFAULTS, resolve

    dataset = ckpt.dataset if ckpt.dataset.partition(":")[0] in DATASET_DEFAULTS else "cifar10"
    resolved = resolve(ckpt, dataset)
    source = {"checkpoint": "recorded in the checkpoint",
              "training dataset default": f"not recorded: the default of its training dataset {ckpt.dataset}, "
                                          "which the trainer used",
              "dataset default": f"not recorded: the measured dataset's default ({dataset} shown); "
                                 "override with --normalization or --mean/--std"}[resolved.source]
    return {**resolved.normalization.to_meta(), "source": source}


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint file")],
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Architecture, mode, epoch, metrics, parameter counts by group and the BN layers with their roles."""
    from rfprobe.sites import find_sites
    from rfprobe.trainable import GROUPS, MODES, parameter_groups, select

    ckpt = load_one(checkpoint, arch, num_classes)
    model = ckpt.model
    sites = find_sites(model)
    groups = parameter_groups(model, sites)
    params = dict(model.named_parameters())
    totals = {g: sum(params[n].numel() for n in params if groups[n] == g) for g in GROUPS}
    trainable = None
    if ckpt.mode in MODES:
        also = tuple(ckpt.hparams.get("also") or ())
        plan = select(model, ckpt.mode, also=also, masks=ckpt.masks or None, sites=sites)
        trainable = {g: 0 for g in GROUPS}
        for name in plan.tensors:
            trainable[groups[name]] += int(plan.masks[name].sum()) if name in plan.masks else params[name].numel()
    report = {
        "checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "arch": ckpt.arch, "num_classes": ckpt.num_classes,
        "format": "bare state dict" if ckpt.bare else ckpt.meta.get("format"), "mode": ckpt.mode,
        "dataset": ckpt.dataset, "epoch": ckpt.epoch, "metrics": ckpt.metrics,
        "normalization": _normalization_report(ckpt),
        "parameters": {"total": sum(totals.values()), **totals},
        "trainable": None if trainable is None else {"total": sum(trainable.values()), **trainable},
        "nonfinite_tensors": ckpt.nonfinite,
        "bn_layers": [{"name": s.name, "depth": s.depth, "stage": s.stage, "block": s.block,
                       "channels": s.n_channels, "role": s.role} for s in sites.bn],
    }
    if json_out:
        print_json(report)
        return
    head = Table(show_header=False, box=None)
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")
    for key in ("checkpoint", "arch", "num_classes", "format", "mode", "dataset", "epoch"):
        head.add_row(key, str(report[key]))
    norm = report["normalization"]
    head.add_row("normalization", f"{norm['name']} (mean {', '.join(f'{v:g}' for v in norm['mean'])}; "
                                  f"std {', '.join(f'{v:g}' for v in norm['std'])})")
    head.add_row("", norm["source"])
    for key, value in ckpt.metrics.items():
        head.add_row(f"metrics.{key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    if ckpt.nonfinite:
        head.add_row("non-finite", ", ".join(ckpt.nonfinite))
    console.print(head)
    counts = Table(title="parameters")
    counts.add_column("group")
    counts.add_column("total", justify="right")
    counts.add_column("trainable", justify="right")
    for group in ("total", *GROUPS):
        total = report["parameters"][group]
        train = "-" if trainable is None else f"{report['trainable'][group]:,}"
        counts.add_row(group, f"{total:,}", train)
    console.print(counts)
    layers = Table(title=f"BatchNorm layers ({len(sites.bn)})")
    for column in ("#", "layer", "stage", "block", "channels", "role"):
        layers.add_column(column, justify="right" if column in ("#", "stage", "block", "channels") else "left")
    for s in sites.bn:
        layers.add_row(str(s.depth), s.name, str(s.stage), str(s.block), str(s.n_channels), s.role)
    console.print(layers)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint file (rfprobe .pt, or a bare state dict with --arch)")],
    out: Annotated[Path, typer.Argument(help="the .safetensors file to write")],
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing .safetensors file")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a checkpoint as safetensors (no pickle): tensors, masks and its metadata; loads back as the same checkpoint."""
    from rfprobe.checkpoint import export_safetensors
    from rfprobe.results import check_writable

    if out.suffix != ".safetensors":
        raise RfprobeError(f"{out}: the export is a safetensors file; give a path ending in .safetensors")
    check_writable(out, overwrite, replaceable=lambda p: p.is_file() and not p.is_symlink(),
                   what="a safetensors file", option="OUT")
    check_files([checkpoint])
    ckpt = load_one(checkpoint, arch, num_classes)
    path, left_out = export_safetensors(ckpt, out)
    if json_out:
        print_json({"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "written": str(path), "left_out": left_out})
        return
    console.print(f"safetensors: {path}", highlight=False)
    if left_out:
        console.print(f"left out (training state, not part of the model): {', '.join(left_out)}", highlight=False)


# ---------------------------------------------------------------- affine, dead (data-free)


@app.command()
def affine(
    checkpoints: CheckpointsArg,
    bins: Annotated[int, typer.Option("--bins", help="histogram bins (edges shared by all checkpoints)")] = 60,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Gamma/beta of every BN layer: per-channel values, histograms, per-layer and pooled summaries."""
    from rfprobe.passes import affine as affine_pass
    from rfprobe.plots.affine import affine_figure

    affine_pass.shared_edges([], bins)  # validates --bins before any work
    labels = labels_for(checkpoints, label)
    path, plot = prepare_outputs("affine", labels, out, plot, overwrite)
    check_files(checkpoints)
    ds = affine_pass.run_checkpoints(load_checkpoints(checkpoints, arch, num_classes), labels, bins=bins)
    written = write_outputs(ds, path, plot, affine_figure, overwrite)
    summary = affine_pass.headline(ds)
    if json_out:
        print_json({"pass": "affine", "checkpoints": summary, "written": written})
        return
    rows = [("BN layers", lambda s: str(s["n_layers"])), ("channels", lambda s: str(s["n_channels"])),
            ("gamma mean", lambda s: f"{s['gamma_mean']:.4g}"), ("gamma std", lambda s: f"{s['gamma_std']:.4g}"),
            ("gamma < 0", lambda s: _pct(s["gamma_frac_negative"])),
            *[(f"|gamma| q{k}", lambda s, k=k: f"{s['abs_gamma_quantiles'][k]:.3g}") for k in ("0", "0.05", "0.5", "0.95", "1")],
            ("beta mean", lambda s: f"{s['beta_mean']:.4g}"), ("beta std", lambda s: f"{s['beta_std']:.4g}"),
            ("beta < 0", lambda s: _pct(s["beta_frac_negative"]))]
    console.print(checkpoint_table("BatchNorm gamma / beta, pooled over all BN channels", summary, rows))
    report_written(written)


@app.command()
def dead(
    checkpoints: CheckpointsArg,
    threshold: Annotated[Optional[list[float]], typer.Option("--threshold", help="|gamma| threshold, repeatable (default 1e-3 1e-2 5e-2 0.1)")] = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Channels with |gamma| < t per BN layer and pooled, and 'off' channels (also beta <= 0, BN feeding a ReLU)."""
    from rfprobe.passes import dead as dead_pass
    from rfprobe.plots.dead import dead_figure

    thresholds = dead_pass.check_thresholds(threshold)
    labels = labels_for(checkpoints, label)
    path, plot = prepare_outputs("dead", labels, out, plot, overwrite)
    check_files(checkpoints)
    ds = dead_pass.run_checkpoints(load_checkpoints(checkpoints, arch, num_classes), labels, thresholds=thresholds)
    written = write_outputs(ds, path, plot, dead_figure, overwrite)
    if json_out:
        print_json({"pass": "dead", "thresholds": [float(t) for t in thresholds],
                    "checkpoints": dead_pass.headline(ds), "written": written})
        return
    from rich import box

    pool_names = {"all": "all", "no_shortcut": "no shortcut", "relu": "relu"}
    for lab in ds["checkpoint"].values:
        one = ds.sel(checkpoint=lab)
        layers = one.isel(layer=np.flatnonzero(np.isfinite(np.asarray(one["n_channels"].values, float))))
        table = Table(title=f"{lab}: dead (|gamma| < t) / off (also beta <= 0, BN feeding a ReLU)",
                      caption="cells dead/off: % of the pool's channels on pooled lines, channel counts on layer lines",
                      box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
        table.add_column("layer", no_wrap=True)
        table.add_column("role/pool", no_wrap=True)
        table.add_column("ch", justify="right")
        for t in thresholds:
            table.add_column(f"t={t:g}", justify="right")
        for pool, name in pool_names.items():
            p = one.sel(pool=pool)
            table.add_row("pooled", name, str(int(p["pooled_n_channels"])),
                          *[f"{100 * d:.1f}/{100 * o:.1f}" for d, o in zip(p["pooled_frac_dead"].values, p["pooled_frac_off"].values)],
                          style="bold", end_section=pool == "relu")
        for i in range(layers.sizes["layer"]):
            row = layers.isel(layer=i)
            table.add_row(str(row["layer"].values), str(row["role"].values), str(int(row["n_channels"])),
                          *[f"{int(d)}/{int(o)}" for d, o in zip(row["n_dead"].values, row["n_off"].values)])
        console.print(table)
    report_written(written)


# ---------------------------------------------------------------- sparsity, ablate (data passes)


@app.command()
def sparsity(
    checkpoints: CheckpointsArg,
    dataset: DatasetOpt = "cifar10",
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 500,
    threshold: Annotated[Optional[list[float]], typer.Option("--threshold", help="|gamma| threshold for the small-gamma join, repeatable (default 1e-3 1e-2 5e-2 0.1)")] = None,
    bins: Annotated[int, typer.Option("--bins", help="bins of the per-example histogram on [0, 1]")] = 20,
    normalization: NormalizationOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Activation sparsity at every ReLU site (zero fraction, dead channels, per-example zero channels), joined with small |gamma|."""
    from rfprobe.data import resolve_device
    from rfprobe.passes import sparsity as sparsity_pass
    from rfprobe.plots.sparsity import sparsity_figure
    from rfprobe.results import stack

    thresholds = sparsity_pass.check_options(threshold, bins)
    data_options = DataOptions(dataset, split, data_root, download, limit, normalization, mean, std)
    check_positive(batch_size=batch_size)
    dev = resolve_device(device)
    labels = labels_for(checkpoints, label)
    path, plot = prepare_outputs("sparsity", labels, out, plot, overwrite)
    check_files(checkpoints)
    results = []
    for c, data in each_checkpoint(checkpoints, arch, num_classes, dev, data_options):
        results.append(sparsity_pass.run(c.model, data, batch_size=batch_size, device=dev, thresholds=thresholds,
                                         bins=bins, checkpoint=c, command=sys.argv, progress=not json_out))
    ds = stack(results, labels)
    written = write_outputs(ds, path, plot, sparsity_figure, overwrite)
    summary = sparsity_pass.headline(ds)
    if json_out:
        print_json({"pass": "sparsity", "dataset": data.name, "split": data.split, "n_examples": len(data),
                    "normalization": ds.attrs["normalization"],
                    "checkpoints": summary, "written": written})
        return
    rows = [("accuracy", lambda s: _pct(s["accuracy"])),
            ("ReLU outputs = 0", lambda s: _pct(s["zero_fraction"])),
            ("dead channels", lambda s: f"{s['dead']} / {s['channels']} ({_pct(s['dead_fraction'])})"),
            ("  of them at BN sites", lambda s: str(s["bn_dead"])),
            *[(f"  dead & |gamma| < {t}", lambda s, t=t: f"{s['dead_small_gamma'][t]} / {s['small_gamma'][t]} small")
              for t in next(iter(summary.values()))["small_gamma"]],
            ("entirely-0 channels / example", lambda s: _pct(s["example_zero_channel_fraction"]))]
    console.print(checkpoint_table(f"activation sparsity: {data.name} {data.split}, {len(data)} examples", summary, rows))
    report_written(written)


@app.command()
def ablate(
    checkpoints: CheckpointsArg,
    dataset: DatasetOpt = "cifar10",
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 500,
    prune_below: Annotated[float, typer.Option("--prune-below", help="prune channels with |gamma| below this")] = 0.01,
    keep_beta: Annotated[bool, typer.Option("--keep-beta", help="pruning sets gamma=0 but keeps beta (default: both 0)")] = False,
    seeds: Annotated[int, typer.Option("--seeds", help="random-control draws (seeds 0..N-1)")] = 3,
    fractions: Annotated[str, typer.Option("--fractions", help="comma-separated fractions of eligible channels for the smallest-|gamma| curve ('' for none)")] = ",".join(f"{f:g}" for f in ABLATE_FRACTIONS),
    reenable_pruned: Annotated[bool, typer.Option("--reenable-pruned", help="also restore gamma of the channels below --prune-below")] = False,
    reenable_value: Annotated[str, typer.Option("--reenable-value", help="init (init.pt beside the checkpoint, else median), median (of the layer's live |gamma|), one")] = "init",
    eligible: Annotated[str, typer.Option("--eligible", help="BNs whose channels may be pruned: all, no-shortcut, relu")] = "all",
    normalization: NormalizationOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy after pruning small-|gamma| channels, vs random and largest-|gamma| controls, a pruning curve, re-enabling."""
    from rfprobe.data import resolve_device
    from rfprobe.passes import ablate as ablate_pass
    from rfprobe.plots.ablate import ablate_figure
    from rfprobe.results import stack

    curve = ablate_pass.check_options(prune_below, seeds, fractions, eligible, reenable_value)
    data_options = DataOptions(dataset, split, data_root, download, limit, normalization, mean, std)
    check_positive(batch_size=batch_size)
    dev = resolve_device(device)
    labels = labels_for(checkpoints, label)
    path, plot = prepare_outputs("ablate", labels, out, plot, overwrite)
    check_files(checkpoints)
    results = []
    for c, data in each_checkpoint(checkpoints, arch, num_classes, dev, data_options):
        init = None
        if reenable_pruned and reenable_value == "init" and (c.path.parent / "init.pt").exists():
            init = load_one(c.path.parent / "init.pt", arch, num_classes, device=dev)
        results.append(ablate_pass.run(
            c.model, data, prune_below=prune_below, keep_beta=keep_beta, seeds=seeds, fractions=curve,
            reenable=reenable_pruned, reenable_value=reenable_value, init_model=init.model if init else None,
            eligible=eligible, batch_size=batch_size, device=dev, checkpoint=c, init_checkpoint=init,
            command=sys.argv, progress=not json_out))
    ds = stack(results, labels)
    written = write_outputs(ds, path, plot, ablate_figure, overwrite)
    summary = ablate_pass.headline(ds)
    if json_out:
        print_json({"pass": "ablate", "dataset": data.name, "split": data.split, "n_examples": len(data),
                    "normalization": ds.attrs["normalization"],
                    "prune_below": prune_below, "prune_operation": ds.attrs["prune_operation"],
                    "eligible_bns": eligible, "checkpoints": summary, "written": written})
        return
    from rich import box

    for lab, s in summary.items():
        table = Table(title=f"{lab}: {s['n_pruned']} of {s['n_eligible']} eligible channels have |gamma| < {prune_below:g} "
                            f"({_pct(s['pruned_fraction'])}; {ds.attrs['prune_operation']}; BNs: {eligible})",
                      box=box.SIMPLE_HEAD)
        for column in ("variant", "channels", "accuracy", "loss"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for variant, v in s["variants"].items():
            spread = f" ± {100 * v['accuracy_std']:.1f}" if v["n_seeds"] > 1 else ""
            table.add_row(variant, str(v["n_changed"]), f"{_pct(v['accuracy'])}{spread}", f"{v['loss']:.4f}")
        console.print(table)
        if s["curve"]:
            curve_table = Table(title=f"{lab}: pruning the smallest-|gamma| fraction vs random", box=box.SIMPLE_HEAD)
            for column in ("fraction", "channels", "smallest", "random (mean)"):
                curve_table.add_column(column, justify="right")
            for point in s["curve"]:
                curve_table.add_row(f"{point['fraction']:g}", str(point["n_pruned"]), _pct(point["smallest"]),
                                    _pct(point["random"]))
            console.print(curve_table)
    report_written(written)


# ---------------------------------------------------------------- signal (signal propagation plots)


def _fresh_options(arg: str, given: dict) -> dict | None:
    """The build options of `given` that the architecture `arg` takes; None when `arg` is an existing file
    (a checkpoint); a one-line error when it is neither a file nor an architecture name."""
    from rfprobe.models import architecture_options, architecture_patterns

    if Path(arg).exists():
        return None
    try:
        taken = architecture_options(arg)
    except RfprobeError:
        raise RfprobeError(f"{arg}: neither an existing checkpoint file nor an architecture name "
                           f"({'; '.join(architecture_patterns())})") from None
    defaults = {"bn_init": "uniform"} if "bn_init" in taken else {}
    return {**defaults, **{k: v for k, v in given.items() if k in taken}}


def _signal_subject(arg: str, options: dict | None, arch, num_classes, device, seed: int):
    """(checkpoint, model) of an existing file, or (None, a fresh init of the architecture `arg` from `seed`)."""
    from rfprobe.models import build_model

    if options is None:
        ckpt = load_one(Path(arg), arch, num_classes, device=device)
        return ckpt, ckpt.model
    return None, build_model(arg, num_classes or 10, seed=seed, **options).to(device)


@app.command()
def signal(
    models: Annotated[list[str], typer.Argument(help="checkpoint file(s) and/or architecture name(s) for a fresh "
                                                     "init (an existing file is a checkpoint), e.g. nf_resnet_110")],
    input_kind: Annotated[str, typer.Option("--input", help="gaussian (unit Gaussian noise) or data (a random batch of --dataset)")] = "gaussian",
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="examples in the one batch measured")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="seed of the input batch and of fresh inits")] = 0,
    batch_stats: Annotated[bool, typer.Option("--batch-stats", help="BN normalises with the batch's statistics also for "
                                                                    "trained checkpoints (always for fresh inits and epoch-0 checkpoints)")] = False,
    bn_init: Annotated[Optional[str], typer.Option("--bn-init", help="BN init of fresh inits that have one (not nf_*): uniform (OpenLTH's default), fixed (gamma 1, as the paper), oneone, positivenegative")] = None,
    skip_init_gain: Annotated[Optional[float], typer.Option("--skip-init-gain", help="skip gain of fresh nf_* inits (default 0, SkipInit; 1 shows the paper's SPPs)")] = None,
    dataset: DatasetOpt = "synthetic",
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    split: SplitOpt = "test",
    normalization: NormalizationOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Signal propagation plots: squared mean, variance and residual-branch variance after the stem and every residual block."""
    from rfprobe.checkpoint import label_of
    from rfprobe.data import resolve_device
    from rfprobe.models import check_bn_init
    from rfprobe.passes import signal as signal_pass
    from rfprobe.plots.signal import signal_figure
    from rfprobe.results import stack

    signal_pass.check_options(input_kind, batch)
    given = {k: v for k, v in (("bn_init", bn_init), ("skip_init_gain", skip_init_gain)) if v is not None}
    check_bn_init(bn_init)
    data_options = DataOptions(dataset, split, data_root, download, None, normalization, mean, std)
    if input_kind != "data" and data_options.override is not None:
        raise RfprobeError("--normalization / --mean / --std apply to --input data (Gaussian input is not normalised)")
    build_options = [_fresh_options(a, given) for a in models]
    for name in given:
        if not any(o is not None and name in o for o in build_options):
            raise RfprobeError(f"--{name.replace('_', '-')} sets an option of fresh inits; no architecture argument "
                               f"takes it (--bn-init: OpenLTH-style BN models; --skip-init-gain: nf_* models)")
    dev = resolve_device(device)
    labels = labels_for(models, label, defaults=[label_of(a) if Path(a).exists() else a for a in models], what="model")
    path, plot = prepare_outputs("signal", labels, out, plot, overwrite)
    batch_data = (signal_pass.data_input(dataset, batch, seed, split=split, root=data_root, download=download)
                  if input_kind == "data" else None)
    results = []
    for arg, options in zip(models, build_options):
        ckpt, model = _signal_subject(arg, options, arch, num_classes, dev, seed)
        if batch_data is not None:
            x = data_options.for_checkpoint(ckpt, batch_data)
        else:
            x = signal_pass.gaussian_input(model.rfprobe_input_shape, batch, seed).to(dev)
        at_init = ckpt is None or ckpt.epoch == 0
        init = {} if ckpt is not None else {"init_seed": seed, "bn_init": options.get("bn_init", ""),
                                            "skip_init_gain": options.get("skip_init_gain", "")}
        results.append(signal_pass.run(model, x, batch_stats=batch_stats or at_init, checkpoint=ckpt,
                                       input_kind=input_kind, split=split, seed=seed, command=sys.argv, **init))
    ds = stack(results, labels)
    written = write_outputs(ds, path, plot, signal_figure, overwrite)
    summary = signal_pass.headline(ds)
    if json_out:
        print_json({"pass": "signal", "input": input_kind, "n_examples": int(ds.attrs["n_examples"]),
                    "checkpoints": summary, "written": written})
        return
    rows = [("residual blocks", "blocks"), ("BN statistics", "bn_statistics"), ("variance: stem", "variance_stem"),
            ("variance: last block", "variance_last"), ("variance: max", "variance_max"),
            ("squared mean: max", "squared_mean_max"), ("residual variance: mean", "residual_variance_mean"),
            ("expected variance: last", "expected_variance_last")]
    title = f"signal propagation (block 0 = stem), {input_kind} input, batch {ds.attrs['n_examples']}"
    console.print(checkpoint_table(title, summary, [(name, lambda s, k=key: _cell(s[k])) for name, key in rows]))
    report_written(written)


# ---------------------------------------------------------------- partition (exact linear regions)


@app.command()
def partition(
    checkpoints: CheckpointsArg,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="cifar10, cifar100, synthetic, toy2d[:moons|circles|spirals|blobs] (default: the checkpoint's own, else cifar10)")] = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    split: SplitOpt = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", help="use the first N examples (every statistic runs on these)")] = 256,
    batch_size: BatchSizeOpt = 64,
    recalibrate_bn: Annotated[bool, typer.Option("--recalibrate-bn", help="first set every BN's running mean/var to the exact statistics of the data (on a copy)")] = False,
    segments: Annotated[int, typer.Option("--segments", help="segments walked per kind (train-train, point-noise, radius); 0 skips")] = 16,
    kinds: Annotated[str, typer.Option("--kinds", help="segment kinds to walk, comma-separated (train-train segments through a CIFAR ResNet cross ~1e5 regions: slow on a CPU)")] = "train-train,point-noise,radius",
    radius: Annotated[float, typer.Option("--radius", help="length of the random-direction segments, in normalised input units")] = 1.0,
    max_breakpoints: Annotated[int, typer.Option("--max-breakpoints", help="stop walking a segment after this many breakpoints (recorded in segment_complete)")] = 100_000,
    exact_points: Annotated[int, typer.Option("--exact-points", help="points with the exact nearest-boundary distance (one JVP per input dim each); 0 skips")] = 2,
    probes: Annotated[int, typer.Option("--probes", help="Hutchinson directions per point for the distance on all points; 0 skips")] = 64,
    lc_points: Annotated[int, typer.Option("--lc-points", help="points with the local complexity (40 vertices at radius 0.005); 0 skips")] = 32,
    jitter_batches: Annotated[int, typer.Option("--jitter-batches", help="mini-batches for the BN jitter of boundary offsets; 0 skips")] = 16,
    jitter_batch_size: Annotated[int, typer.Option("--jitter-batch-size", help="mini-batch size B of the jitter")] = 16,
    slice_plane: Annotated[bool, typer.Option("--slice/--no-slice", help="exact 2-D slice (input plane for 2-D data, else the plane through 3 points)")] = True,
    slice_max_regions: Annotated[int, typer.Option("--slice-max-regions", help="stop enumerating the slice after this many regions")] = 2000,
    slice_resolution: Annotated[int, typer.Option("--slice-resolution", help="raster side of the drawn slice")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="seed of segments, probes, directions and batches")] = 0,
    normalization: NormalizationOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    label: LabelOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Exact linear-region statistics: region walks along segments, nearest-boundary distances, per-layer
    distances, local complexity, BN jitter, a 2-D slice (float64, BN in eval mode)."""
    from rfprobe.data import DATASETS, resolve_device
    from rfprobe.passes import partition as partition_pass
    from rfprobe.plots.partition import partition_figure
    from rfprobe.results import stack

    data_options = DataOptions(dataset, split, data_root, download, limit, normalization, mean, std)
    segment_kinds = partition_pass.check_options(
        segments, kinds, radius, max_breakpoints, exact_points, probes, lc_points, jitter_batches, jitter_batch_size,
        slice_resolution, slice_max_regions, n_points=limit)
    check_positive(batch_size=batch_size)
    dev = resolve_device(device)
    labels = labels_for(checkpoints, label)
    path, plot = prepare_outputs("partition", labels, out, plot, overwrite)
    check_files(checkpoints)
    results = []
    for c, data in each_checkpoint(checkpoints, arch, num_classes, dev, data_options,
                                   default_dataset=lambda c: c.dataset if c.dataset in DATASETS else "cifar10",
                                   description="partition", progress=not json_out):
        results.append(partition_pass.run(
            c.model, data, checkpoint=c, segments_per_kind=segments, segment_kinds=segment_kinds, radius=radius,
            max_breakpoints=max_breakpoints, exact_points=exact_points,
            probes=probes, lc_points=lc_points, jitter_batches=jitter_batches, jitter_batch_size=jitter_batch_size,
            slice_plane=slice_plane, slice_max_regions=slice_max_regions, slice_resolution=slice_resolution,
            recalibrate=recalibrate_bn, batch_size=batch_size, device=dev, seed=seed, command=sys.argv))
    ds = stack(results, labels)
    written = write_outputs(ds, path, plot, partition_figure, overwrite)
    summary = partition_pass.headline(ds)
    if json_out:
        print_json({"pass": "partition", "dataset": data.name, "split": data.split, "n_examples": len(data),
                    "normalization": ds.attrs["normalization"],
                    "recalibrate_bn": recalibrate_bn, "checkpoints": summary, "written": written})
        return
    title = f"linear regions: {data.name} {data.split}, {len(data)} points{', BN recalibrated on them' if recalibrate_bn else ''}"
    keys = dict.fromkeys(k for row in summary.values() for k in row)
    console.print(checkpoint_table(title, summary, [(k.replace("_", " "), lambda s, k=k: _cell(s.get(k))) for k in keys]))
    report_written(written)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input -> one stderr line and exit code 2 (rfprobe.entrypoint)."""
    from rfprobe.entrypoint import run_app

    run_app(app, "rfprobe", argv)


if __name__ == "__main__":
    main()
