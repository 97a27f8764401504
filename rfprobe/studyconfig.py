"""The option sets of the commands and studies, declared once as plain data (rfprobe.options), and the study
settings built from them: a `--config` / sweep `[analysis]` table flattened to compare's parameter names and
turned into a `rfprobe.study.Request`. No typer here: `rfprobe.cli` makes typer parameters of these, and
`train.sweep` builds a study from a settings table without the command-line layer."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from rfprobe.errors import RfprobeError
from rfprobe.options import Option, changed
from rfprobe.passes import REGISTRY
from rfprobe.passes.base import Pass

DATA_OPTIONS = (
    Option("dataset", None, "cifar10, cifar100, synthetic, toy2d[:moons|circles|spirals|blobs], imagefolder (with "
                            "--data-root DIR: DIR/<class>/<image>, or DIR/train and DIR/val holding those)",
           type=Optional[str]),
    Option("data_root", None, "data directory (default $RFPROBE_DATA, else ~/.cache/rfprobe)", type=Optional[Path]),
    Option("download", False, "download CIFAR through torchvision if missing (needs internet)"),
    Option("split", "test", "train or test"),
    Option("workers", None, "imagefolder: DataLoader processes decoding images (default min(8, CPUs - 1); 0 decodes "
                            "in this process)", type=Optional[int]),
    Option("image_size", None, "imagefolder: centre-crop size (default: the model's own evaluation transform, "
                               "else its input size)", type=Optional[int]),
    Option("resize", None, "imagefolder: resize the shorter side to this before cropping (default image size / "
                           "0.875)", type=Optional[int]),
    Option("limit", None, "use the first N examples", type=Optional[int]),
    Option("batch_size", 500, "examples per forward pass"),
    Option("normalization", None, "input normalisation preset for every checkpoint: cifar10, cifar100, imagenet "
                                  "(OpenLTH's for CIFAR), kuangliu, half, synthetic, none (default: each checkpoint's "
                                  "recorded one, else the dataset's)", type=Optional[str]),
    Option("mean", None, "per-channel input mean instead of a preset, e.g. 0.485,0.456,0.406 (with --std)", type=Optional[str]),
    Option("std", None, "per-channel input std, e.g. 0.229,0.224,0.225 (with --mean)", type=Optional[str]),
    Option("device", "auto", "auto, cpu or cuda"),
    Option("strict", False, "refuse a CIFAR split with fewer examples than published (default: a warning line)"),
    Option("norm_stats", "running", "BatchNorm statistics while measuring: running (eval mode), batch (each batch's "
                                    "own, as Tent), recalibrate[:N] (recompute running statistics on the first N "
                                    "batches first, as AdaBN; N default 10)"),
)
LOAD_OPTIONS = (
    Option("arch", None, "architecture of a bare state dict: an rfprobe name (cifar_resnet_20), torchvision:NAME, "
                         "timm:NAME, or your own package.module:factory (`rfprobe archs`)", type=Optional[str]),
    Option("num_classes", None, "classes of a bare state dict (default: rows of its last 2-D weight)", type=Optional[int]),
    Option("arch_kwargs", None, "keyword arguments of the model's constructor, e.g. img_size=32,patch_size=4 "
                                "(default: those the checkpoint records)", type=Optional[str]),
    Option("input_shape", None, "one example's shape, e.g. 3,32,32 (default: the model's own config)", type=Optional[str]),
    Option("label", None, "label per checkpoint (default: run name or file stem)", type=Optional[list[str]]),
)
OUTPUT_OPTIONS = (
    Option("out", None, "zarr store to write (default results/<label>/<pass>.zarr)", type=Optional[Path]),
    Option("plot", None, "also write a figure (.png, .pdf, .svg)", type=Optional[Path]),
    Option("overwrite", False, "replace an existing --out / --plot (only an rfprobe result store / a figure file)"),
    Option("json_out", False, "print one JSON object on stdout and nothing else", flags=("--json",)),
)
SHARED = {o.name: o for o in DATA_OPTIONS + LOAD_OPTIONS + OUTPUT_OPTIONS}

STUDY_OPTIONS = (
    Option("out", None, "study directory: runs/<label>/<pass>.zarr per checkpoint and pass, study.zarr", type=Optional[Path]),
    Option("passes", "all", f"comma-separated passes to run ({', '.join(REGISTRY)}), or all"),
    Option("epochs", None, "for run directories: all, or comma-separated epochs (init.pt is 0, then epoch_XXX.pt "
                           "and final.pt) instead of final.pt alone", type=Optional[str]),
    Option("latest_only", None, "comma-separated passes run only on each run's latest checkpoint where --epochs "
                                "selects several (a costly pass beside a trajectory, e.g. ablate)", type=Optional[str]),
    Option("jobs", 1, "checkpoints measured in parallel worker processes (CPU threads split between them)"),
    Option("merge_only", False, "only merge the stores already in the study directory (INPUT: the directory)"),
    Option("keep", False, "also keep in the study the checkpoints already under DIR/runs that this command does not "
                          "name (default: the study holds exactly this command's inputs)"),
    Option("inputs_file", None, "TOML file of [[input]] tables, one per checkpoint or run directory: path, and any "
                                "of label, arch, num_classes, mode, epoch, seed, run, normalization, dataset, plus "
                                "keys of your own (study coordinates); relative paths from the file's folder",
           type=Optional[Path], flags=("--inputs",)),
    Option("config", None, "TOML file of settings: top-level keys are these options' names (with _), a [pass] "
                           "table holds a pass's options, limit and batch_size; the command line wins", type=Optional[Path]),
    *changed(tuple(o for o in DATA_OPTIONS if o.name != "batch_size"),
             dataset={"help": SHARED["dataset"].help + " (default: each checkpoint's own, else cifar10)"},
             limit={"help": "use the first N examples in every data pass (default: each pass's own; sparsity and "
                            "ablate all, partition 256)"}),
    *LOAD_OPTIONS[:4],
    SHARED["json_out"],
)
"""`rfprobe compare`'s own and shared options; each pass's options follow, prefixed with its name"""


def pass_data_options(p: Pass) -> tuple[Option, ...]:
    """`limit` / `batch_size` of a data pass in compare (prefixed with the pass; default: the pass's own)."""
    own = p.data or {}
    return tuple(Option(key, None, f"{p.name}: {SHARED[key].help} (default {own[key]})", type=Optional[int])
                 for key in ("limit", "batch_size") if key in own)


def own_options(p: Pass, o: SimpleNamespace, prefix: str = "") -> dict:
    """The values of a pass's own options (`Pass.options`) from a command's parsed values."""
    key = f"{prefix}_" if prefix else ""
    return {opt.name: getattr(o, key + opt.name) for opt in p.options}


def compare_defaults() -> dict:
    """compare's values by parameter name when nothing is given: STUDY_OPTIONS' defaults, each pass's own
    options (prefixed with the pass) and its limit / batch size (None: the pass's own default)."""
    values = {o.name: o.default for o in STUDY_OPTIONS}
    for p in REGISTRY.values():
        values.update({f"{p.name}_{o.name}": o.default for o in p.options + pass_data_options(p)})
    return values


def flatten_study_config(settings: dict, where: str, inputs: bool = False) -> dict:
    """A compare settings table (the `--config` format: top-level keys are compare's option names, a table
    per pass its options, with `inputs` also `[[input]]` tables) as compare's parameter names (`ablate_seeds`;
    the input tables as `input_tables`). Unknown keys and values of the wrong type (rfprobe.options.check_type,
    every pass's table whether or not the pass runs) are one-line errors."""
    from rfprobe.options import check_type

    flat = {}
    study = {o.name: o for o in STUDY_OPTIONS if o.name not in ("config", "inputs_file")}
    for key, value in settings.items():
        if isinstance(value, dict) and key in REGISTRY:
            known = {o.name: o for o in REGISTRY[key].options + pass_data_options(REGISTRY[key])}
            for sub, v in value.items():
                if sub not in known:
                    raise RfprobeError(f"{where}: [{key}] has no option {sub!r}; it takes {', '.join(sorted(known))}")
                check_type(known[sub], v, f"{where}: [{key}]")
                flat[f"{key}_{sub}"] = v
        elif key == "input" and inputs:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise RfprobeError(f"{where}: input must be [[input]] tables")
            flat["input_tables"] = value
        elif key in study:
            value = ",".join(map(str, value)) if isinstance(value, list) and key in ("passes", "epochs", "input_shape",
                                                                                       "latest_only") \
                else value
            if not (key == "arch_kwargs" and isinstance(value, dict)):  # a TOML table of keyword arguments
                check_type(study[key], value, where)
            flat[key] = value
        else:
            raise RfprobeError(f"{where}: unknown setting {key!r}")
    for key in ("out", "data_root"):
        if flat.get(key) is not None:
            flat[key] = Path(flat[key])
    return flat


def read_toml(path: Path, option: str) -> dict:
    """A TOML file's tables (tomllib), its problems as one line naming the option."""
    import tomllib

    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RfprobeError(f"{option} {path}: {e}") from None


def study_request_from_config(settings: dict, where: str):
    """(Request, settings by compare's parameter names) of a compare settings table, for a sweep's [analysis]."""
    values = compare_defaults()
    values.update(flatten_study_config(settings, where))
    o = SimpleNamespace(**values)
    return study_request(o), o


def study_request(o: SimpleNamespace):
    """The study Request of compare's values by parameter name (`ablate_seeds`, `limit`, ...)."""
    from rfprobe.loading import DataOptions
    from rfprobe.study import Request

    passes = tuple(REGISTRY if o.passes.strip() == "all" else [p.strip() for p in o.passes.split(",") if p.strip()])
    options = {name: own_options(p, o, prefix=name) for name, p in REGISTRY.items()}
    limits, batch_sizes = {}, {}
    for name, p in REGISTRY.items():
        own = p.data or {}
        if "limit" in own:
            given = getattr(o, f"{name}_limit")
            limits[name] = given if given is not None else (o.limit if o.limit is not None else own["limit"])
        if "batch_size" in own:
            given = getattr(o, f"{name}_batch_size")
            batch_sizes[name] = given if given is not None else own["batch_size"]
    from rfprobe.loading import build_options

    build = build_options(getattr(o, "arch_kwargs", None), getattr(o, "input_shape", None))
    return Request(passes=passes, options=options, data=DataOptions.of(o, limit=None),
                   limits=limits, batch_sizes=batch_sizes, device=o.device, arch=o.arch, num_classes=o.num_classes,
                   arch_kwargs=build["arch_kwargs"], input_shape=build["input_shape"], command=list(sys.argv),
                   latest_only=tuple(p.strip() for p in (getattr(o, "latest_only", None) or "").split(",") if p.strip()))
