"""The `rfprobe` command line: one command per pass; each parses, calls the pass, saves, prints, plots.

Errors in the user's input print one line on stderr and exit with 2; anything else is an internal error
(exit 1). `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from rfprobe import __version__
from rfprobe.errors import RfprobeError
from rfprobe.loading import DataOptions, build_options, check_positive, each_checkpoint, load_one
from rfprobe.options import Option, changed
from rfprobe.passes import REGISTRY
from rfprobe.passes.base import Pass
from rfprobe.studyconfig import (DATA_OPTIONS, LOAD_OPTIONS, OUTPUT_OPTIONS, SHARED, STUDY_OPTIONS,
                                 flatten_study_config, own_options, pass_data_options, read_toml, study_request)

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

def annotated(option: Option, prefix: str = ""):
    """The typer annotation of an option (rfprobe.options), its flags prefixed with `prefix`."""
    return Annotated[option.annotation, typer.Option(*option.spellings(prefix), help=option.help)]


def parameter(option: Option, prefix: str = "") -> inspect.Parameter:
    name = f"{prefix.replace('-', '_')}_{option.name}" if prefix else option.name
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                             annotation=annotated(option, prefix))


CHECKPOINTS = inspect.Parameter("checkpoints", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
    list[Path], typer.Argument(help="checkpoint file(s): rfprobe .pt or .safetensors, or a bare state dict with --arch")])
ArchOpt, NumClassesOpt, ArchKwargsOpt, InputShapeOpt, JsonOpt = (
    annotated(SHARED[n]) for n in ("arch", "num_classes", "arch_kwargs", "input_shape", "json_out"))


def data_options_of(p: Pass) -> tuple[Option, ...]:
    """The data options a pass takes, with its own defaults (`Pass.data`)."""
    own = p.data
    if own is None:
        return ()
    taken = tuple(o for o in DATA_OPTIONS if o.name in own or o.name not in ("limit", "batch_size"))
    changes = {name: {"default": value} for name, value in own.items()}
    if own.get("dataset", "") is None:
        changes["dataset"]["help"] = SHARED["dataset"].help + " (default: the checkpoint's own, else cifar10)"
    return changed(taken, **changes)


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


def run_pass(pass_name: str, labels: list[str], measure, *, out: Path | None, plot: Path | None, overwrite: bool,
             json_out: bool, files=()) -> None:
    """The skeleton every pass command calls once its options are validated: check the outputs (`--out`,
    default results/<label>/<pass>.zarr, and `--plot`) and the checkpoint `files` before any work, then
    `measure()` (load and run one checkpoint at a time, stack), save atomically, print the pass's tables
    (rfprobe.report_tables) or its `--json` object, and what was written."""
    from rfprobe.plots import check_plot_path, figure, save_figure
    from rfprobe.report_tables import json_report, tables
    from rfprobe.results import check_writable, default_output, save_result

    path = check_writable(out or default_output(pass_name, labels), overwrite)
    if plot is not None:
        check_plot_path(plot, overwrite)
    check_files(files)
    ds = measure()
    written = {"result": str(save_result(ds, path, overwrite=overwrite))}
    if plot is not None:
        written["plot"] = str(save_figure(figure(ds), plot, overwrite=overwrite))
    if json_out:
        print_json(json_report(ds, written))
        return
    for table in tables(ds):
        console.print(table)
    for kind, where in written.items():
        console.print(f"{kind}: {where}", highlight=False)


# ---------------------------------------------------------------- info, export


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint file")],
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    input_shape: InputShapeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Architecture, mode, epoch, metrics, parameter counts by group, the normalisation layers (kind, axis,
    role) and the activation sites."""
    from rfprobe.describe import describe
    from rfprobe.trainable import GROUPS

    report = describe(load_one(checkpoint, arch, num_classes, **build_options(arch_kwargs, input_shape)))
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
    for key, value in report["metrics"].items():
        head.add_row(f"metrics.{key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    if report["nonfinite_tensors"]:
        head.add_row("non-finite", ", ".join(report["nonfinite_tensors"]))
    console.print(head)
    counts = Table(title="parameters")
    counts.add_column("group")
    counts.add_column("total", justify="right")
    counts.add_column("trainable", justify="right")
    for group in ("total", *GROUPS):
        total = report["parameters"][group]
        train = "-" if report["trainable"] is None else f"{report['trainable'][group]:,}"
        counts.add_row(group, f"{total:,}", train)
    console.print(counts)
    kinds = sorted({s["kind"] for s in report["norm_layers"]})
    layers = Table(title=f"normalisation layers ({len(report['norm_layers'])}: {', '.join(kinds) or 'none'})")
    for column in ("#", "layer", "kind", "axis", "stage", "block", "channels", "role"):
        layers.add_column(column, justify="right" if column in ("#", "stage", "block", "channels") else "left")
    for s in report["norm_layers"]:
        layers.add_row(str(s["depth"]), s["name"], s["kind"], s["axis"], str(s["stage"]), str(s["block"]),
                       str(s["channels"]), s["role"])
    console.print(layers)
    acts = sorted({s["kind"] for s in report["activations"]})
    console.print(f"activation sites: {len(report['activations'])} ({', '.join(acts) or 'none'})", highlight=False)


@app.command()
def archs(
    pattern: Annotated[Optional[str], typer.Argument(help="only families whose name or description contains this "
                                                         "(case-insensitive), e.g. resnet")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The architecture families rfprobe builds (for --arch, the trainer and fresh inits), with example names."""
    from rich.markup import escape

    from rfprobe.models import architectures

    found = [a for a in architectures()
             if pattern is None or pattern.lower() in f"{a.example} {a.description}".lower()]
    if not found:
        raise RfprobeError(f"no architecture family matches {pattern!r}; `rfprobe archs` lists them all")
    rows = [{"family": a.example, "description": a.description, "examples": list(a.names),
             "build_options": list(a.options) if a.options is not None else ["any (--arch-kwargs)"]} for a in found]
    if json_out:
        print_json(rows)
        return
    table = Table(title="architecture families (a name must match exactly one)")
    for column in ("family", "examples", "build options", "description"):
        table.add_column(column, overflow="fold", no_wrap=column == "family")
    for row in rows:
        table.add_row(*(escape(cell) for cell in (row["family"], ", ".join(row["examples"]),
                                                  ", ".join(row["build_options"]) or "-", row["description"])))
    console.print(table)
    console.print("torchvision:<name> and timm:<name> build any model of those libraries with their own init "
                  "(timm: pip install 'rfprobe[timm]'); package.module:factory or path/to/file.py:factory calls a "
                  "function of your own code; --arch-kwargs key=value,... passes keyword arguments and "
                  "--input-shape 3,32,32 the input shape (docs/models.md). --arch names the architecture of a bare "
                  "state dict, e.g. --arch cifar_resnet_20", highlight=False, markup=False)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint file (rfprobe .pt, or a bare state dict with --arch)")],
    out: Annotated[Path, typer.Argument(help="the .safetensors file to write")],
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    input_shape: InputShapeOpt = None,
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
    build = build_options(arch_kwargs, input_shape)
    check_files([checkpoint])
    ckpt = load_one(checkpoint, arch, num_classes, **build)
    path, left_out = export_safetensors(ckpt, out)
    if json_out:
        print_json({"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "written": str(path), "left_out": left_out})
        return
    console.print(f"safetensors: {path}", highlight=False)
    if left_out:
        console.print(f"left out (training state, not part of the model): {', '.join(left_out)}", highlight=False)


# ---------------------------------------------------------------- the passes: one command per registered pass


def _outputs(o: SimpleNamespace) -> dict:
    return {"out": o.out, "plot": o.plot, "overwrite": o.overwrite, "json_out": o.json_out}


MODELS = inspect.Parameter("models", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
    list[str], typer.Argument(help="checkpoint file(s) and/or architecture name(s) for a fresh init (an existing "
                                   "file is a checkpoint), e.g. nf_resnet_110")])


def measure_pass(p: Pass, o: SimpleNamespace) -> None:
    """A pass's command: validate its options and the data options (before anything is loaded), then the
    skeleton (`run_pass`) over each checkpoint in turn (`Pass.run`; the results `Pass.combine`d and stacked),
    or over the pass's own arguments (`Pass.prepare_models`: signal's checkpoints and fresh inits)."""
    from rfprobe.data import resolve_device
    from rfprobe.results import stack

    data_options = DataOptions.of(o) if p.data is not None else None
    build = build_options(o.arch_kwargs, o.input_shape)
    options = p.validate(own_options(p, o), n_points=getattr(o, "limit", None))
    dev = resolve_device(o.device) if p.data is not None else "cpu"
    if p.prepare_models is not None:
        defaults, measure = p.prepare_models(o.models, options, data_options)
        labels = labels_for(o.models, o.label, defaults=defaults, what="model")
        run_pass(p.name, labels, lambda: stack(measure(o.arch, o.num_classes, dev, sys.argv, **build), labels),
                 **_outputs(o))
        return
    labels = labels_for(o.checkpoints, o.label)
    reads = p.needs_data(options)
    run = {"command": sys.argv, "device": dev, "progress": not o.json_out,
           "load": lambda path: load_one(path, o.arch, o.num_classes, device=dev, **build),
           **({"batch_size": o.batch_size} if reads else {})}

    def measure():
        results = [p.run(c, data, options, **run) for c, data in each_checkpoint(
            o.checkpoints, o.arch, o.num_classes, dev, data_options if reads else None, p.name,
            progress=reads and not o.json_out, scores_labels=p.scores_labels, build=build,
            batch_size=getattr(o, "batch_size", None))]
        return stack(p.combine(results), labels)

    run_pass(p.name, labels, measure, files=o.checkpoints, **_outputs(o))


def register_pass(p: Pass) -> None:
    """The command `p.name`: its parameters are the argument (checkpoints, or for `prepare_models` passes
    models), the pass's own options, its data options, the load and output options, all declared once."""
    def command(**values):
        measure_pass(p, SimpleNamespace(**values))

    command.__signature__ = inspect.Signature(
        [MODELS if p.prepare_models is not None else CHECKPOINTS]
        + [parameter(o) for o in p.options + data_options_of(p) + LOAD_OPTIONS + OUTPUT_OPTIONS])
    command.__doc__ = p.summary
    app.command(p.name)(command)


for _pass in REGISTRY.values():
    register_pass(_pass)


# ---------------------------------------------------------------- studies: compare, report, plot

INPUTS = inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
    Optional[list[str]], typer.Argument(help="checkpoint files, run directories (final.pt, or with --epochs their "
                                             "trajectory) or globs (or --inputs FILE.toml)", show_default=False)])


def _compare_parameters() -> list[inspect.Parameter]:
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context), INPUTS]
    params += [parameter(o) for o in STUDY_OPTIONS]
    for name, p in REGISTRY.items():
        params += [parameter(o, prefix=name) for o in p.options + pass_data_options(p)]
    return params


def _compare_settings(ctx: typer.Context, values: dict) -> dict:
    """The command line's values over the `--config` file's; the `[[input]]` tables of `--inputs` and of the
    config as `input_tables` (with the folder their relative paths start from)."""
    merged = dict(values, input_tables=[])
    config = values.get("config")
    if config is not None:
        for key, value in flatten_study_config(read_toml(config, "--config"), f"--config {config}", inputs=True).items():
            if key == "input_tables":
                merged[key] += [(Path(config).parent, t) for t in value]
            elif ctx.get_parameter_source(key).name == "DEFAULT":
                merged[key] = value
    manifest = values.get("inputs_file")
    if manifest is not None:
        settings = read_toml(manifest, "--inputs")
        unknown = [k for k in settings if k != "input"]
        if unknown or not settings:
            raise RfprobeError(f"--inputs {manifest}: holds only [[input]] tables (found {', '.join(unknown) or 'none'})")
        tables = flatten_study_config(settings, f"--inputs {manifest}", inputs=True)["input_tables"]
        merged["input_tables"] += [(Path(manifest).parent, t) for t in tables]
    return merged


def compare(ctx: typer.Context, **values) -> None:
    """Run several passes over many checkpoints, one checkpoint at a time and resumably, into one study
    (DIR/study.zarr, an xarray DataTree) with side-by-side tables."""
    from rfprobe import study
    from rfprobe.progress import counter
    from rfprobe.report_tables import study_json, study_tables

    o = SimpleNamespace(**_compare_settings(ctx, values))
    inputs = list(o.inputs or [])
    if o.merge_only:
        if o.input_tables:
            raise RfprobeError("--merge-only merges what the study directory holds; it takes no --inputs tables")
        if len(inputs) != 1 and o.out is None:
            raise RfprobeError("--merge-only takes the study directory (one INPUT, or --out)")
        out = Path(o.out or inputs[0])
        entries, status = None, {}
    else:
        if o.out is None:
            raise RfprobeError("--out DIR is required: the study directory to write (or extend)")
        if not inputs and not o.input_tables:
            raise RfprobeError("no checkpoints to compare: give INPUTS, or --inputs FILE.toml with [[input]] tables")
        out = Path(o.out)
        request = study_request(o)
        study.validate(request)
        check_positive(jobs=o.jobs)
        _check_study_dir(out)
        epochs = study.parse_epochs(o.epochs)
        entries = study.expand_all(inputs, o.input_tables, epochs)
        check_files([e.path for e in entries])
        study.check_study_stores(entries, out, request)
        with counter(len(entries), "compare", enabled=not o.json_out) as advance:
            status = study.run_study(entries, out, request, jobs=o.jobs, on_done=lambda label, done: advance())
    tree = study.merge(out, [e.label for e in entries] if entries else None, keep=o.keep)
    written = {"study": str(out / "study.zarr")}
    if o.epochs is not None and not o.merge_only:
        from rfprobe.plots import save_figure
        from rfprobe.plots.study import trajectory_figure

        fig = trajectory_figure(tree)
        if fig is not None:
            written["trajectory"] = str(save_figure(fig, out / "trajectory.png", overwrite=True))
    counts = {kind: sum(v == kind for s in status.values() for v in s.values()) for kind in ("computed", "skipped")}
    if o.json_out:
        print_json({"study": str(out), "checkpoints": study_json(tree), **counts, "written": written})
        return
    for table in study_tables(tree):
        console.print(table)
    if status:
        console.print(f"stores: {counts['computed']} computed, {counts['skipped']} already there (skipped)", highlight=False)
    for kind, where in written.items():
        console.print(f"{kind}: {where}", highlight=False)


def _check_study_dir(out: Path) -> None:
    """Refuse a study directory that is a file, that cannot be written, or a directory holding things a study
    does not write."""
    from rfprobe.results import check_directory_writable

    if out.exists() and not out.is_dir():
        raise RfprobeError(f"--out {out} is a file; give a directory for the study")
    check_directory_writable(out, "--out")
    if out.is_dir():
        from rfprobe.study import STUDY_FILES

        foreign = [p.name for p in out.iterdir() if p.name not in STUDY_FILES and not p.name.startswith(".")]
        if foreign:
            raise RfprobeError(f"--out {out} holds files a study does not write ({', '.join(sorted(foreign)[:3])}); "
                               "choose an empty or study directory")


compare.__signature__ = inspect.Signature(_compare_parameters())
app.command("compare")(compare)


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="a study directory written by rfprobe compare")],
    out: Annotated[Optional[Path], typer.Option("--out", help="the HTML file to write (default DIR/report.html, replaced "
                                                            "when it exists)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out (only a plain file)")] = False,
) -> None:
    """One self-contained HTML report of a study: every pass's figure and headline table, and each checkpoint's provenance."""
    from rfprobe import report as study_report

    if out is not None and out.suffix.lower() not in (".html", ".htm"):
        raise RfprobeError(f"--out {out}: the report is an HTML file; give a path ending in .html")
    from rfprobe.study import open_study, summary

    path = study_report.write(study_dir, out, overwrite=overwrite or out is None)
    console.print(f"report: {path}", highlight=False)
    for line in summary(open_study(study_dir).load()):
        print(f"  {line}")


@app.command()
def plot(
    store: Annotated[Path, typer.Argument(help="a result store (<pass>.zarr) or a study (DIR or DIR/study.zarr)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="figure file (default: the store's path with .png); for a "
                                                            "study, a directory for one figure per pass (default DIR/figures)")] = None,
    pass_name: Annotated[Optional[str], typer.Option("--pass", help="for a study: only this pass's group, to --out as a file")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace existing figure files")] = False,
) -> None:
    """Draw a pass's figure again from a stored result (figures never need the model)."""
    from rfprobe.plots import check_plot_path, figure, save_figure
    from rfprobe.results import open_result
    from rfprobe.study import as_result, open_study

    study_store = store / "study.zarr" if (store / "study.zarr").exists() else store
    if study_store.name == "study.zarr":
        tree = open_study(study_store).load()
        names = list(tree.children) if pass_name is None else [pass_name]
        missing = [n for n in names if n not in tree.children]
        if missing:
            raise RfprobeError(f"{study_store}: no {missing[0]} group; it has {', '.join(tree.children)}")
        if pass_name is not None:
            targets = {pass_name: out or study_store.parent / "figures" / f"{pass_name}.png"}
        else:
            folder = out or study_store.parent / "figures"
            if folder.exists() and not folder.is_dir():
                raise RfprobeError(f"--out {folder} is a file; for a whole study give a directory (or --pass NAME)")
            targets = {n: folder / f"{n}.png" for n in names if n in REGISTRY}
        for path in targets.values():
            check_plot_path(path, overwrite)
        for name, path in targets.items():
            written = save_figure(figure(as_result(tree[name].to_dataset())), path, overwrite=overwrite)
            console.print(f"plot: {written}", highlight=False)
        return
    if pass_name is not None:
        raise RfprobeError("--pass picks a group of a study; a single result store has one pass")
    path = out or store.with_suffix(".png")
    check_plot_path(path, overwrite)
    written = save_figure(figure(open_result(store)), path, overwrite=overwrite)
    console.print(f"plot: {written}", highlight=False)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input -> one stderr line and exit code 2 (rfprobe.entrypoint)."""
    from rfprobe.entrypoint import run_app

    run_app(app, "rfprobe", argv)


if __name__ == "__main__":
    main()
