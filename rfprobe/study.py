"""Studies: many checkpoints through several passes, one checkpoint at a time, resumable, merged into one
`xarray.DataTree` (docs/studies.md).

Layout of a study directory DIR:

- `DIR/runs/<label>/<pass>.zarr`: one pass on one checkpoint (a plain rfprobe result). Its attrs carry
  `study_fingerprint`, the JSON of everything that decides its numbers (pass options, data options,
  device kind); a store whose `checkpoint_sha256` and fingerprint match the current request is skipped, so a
  rerun after a kill computes only what is missing.
- `DIR/runs/<label>/checkpoint.json`: the checkpoint's provenance and the study coordinates (`STUDY_COORDS`).
- `DIR/study.zarr`: the merge (`merge`), one group per pass, each stacked on `checkpoint` with the
  coordinates a notebook groups by. Stores written on several machines merge the same way.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import xarray as xr

from rfprobe.errors import RfprobeError
from rfprobe.passes import PASS_DATA, PASS_OPTIONS, PASSES

STUDY_COORDS = ("run", "mode", "arch", "depth", "width", "seed", "epoch", "dataset")
"""coordinates on `checkpoint` in every group of study.zarr: the network's depth and width (from the
architecture name), the training seed, epoch and dataset; a pass's per-layer `depth` (a BN's position in
forward order) is `layer_depth` there (`as_result` gives a group back in its pass's own schema)"""

STUDY_FILES = ("runs", "study.zarr", "trajectory.png", "report.html", "figures")
"""what a study directory holds: rfprobe compare, report and plot write these, and nothing else"""

TRAJECTORY_FILE = re.compile(r"epoch_(\d+)\.pt$")
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Entry:
    """One checkpoint of a study: its file, its label (a directory name under DIR/runs) and its run."""

    path: Path
    label: str
    run: str


def parse_epochs(text: str | None) -> str | tuple[int, ...] | None:
    """`--epochs`: None (final.pt only), "all", or comma-separated epoch numbers."""
    if text is None or text == "":
        return None
    if text.strip() == "all":
        return "all"
    try:
        epochs = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise RfprobeError(f"--epochs must be 'all' or comma-separated epoch numbers, got {text!r}") from None
    if not epochs or min(epochs) < 0:
        raise RfprobeError(f"--epochs must be 'all' or epoch numbers >= 0, got {text!r}")
    return epochs


def is_run_directory(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("final.pt", "init.pt", "config.toml"))


def _final_epoch(run: Path) -> int | None:
    """The epoch final.pt holds: the run's configured epochs (config.toml), else None (unknown)."""
    config = run / "config.toml"
    if config.exists():
        try:
            return int(tomllib.loads(config.read_text())["epochs"])
        except (tomllib.TOMLDecodeError, KeyError, ValueError, OSError):
            return None
    return None


def trajectory(run: Path) -> dict[int, Path]:
    """epoch -> checkpoint file of a run directory: init.pt (0), every epoch_XXX.pt, and final.pt at its epoch
    when no epoch file holds that epoch."""
    files: dict[int, Path] = {}
    if (run / "init.pt").exists():
        files[0] = run / "init.pt"
    for path in run.iterdir():
        match = TRAJECTORY_FILE.match(path.name)
        if match:
            files[int(match.group(1))] = path
    final = run / "final.pt"
    if final.exists():
        epoch = _final_epoch(run)
        if epoch is None:
            from rfprobe.checkpoint import load_checkpoint

            epoch = load_checkpoint(final).epoch
        if epoch is not None and epoch not in files:
            files[int(epoch)] = final
    return dict(sorted(files.items()))


def expand_inputs(inputs: Iterable[str], epochs: str | tuple[int, ...] | None = None) -> list[Entry]:
    """The checkpoints of `inputs`: files as they are; a run directory as its final.pt, or with `epochs` its
    trajectory (`trajectory`; labels `<run>@<epoch>`); a glob as whatever it matches (sorted). Labels are made
    unique; an input that names nothing is a one-line error."""
    from rfprobe.checkpoint import label_of
    from rfprobe.results import unique_labels

    found: list[tuple[Path, str, str]] = []
    for text in inputs:
        matches = sorted(glob.glob(text)) if GLOB_CHARS.search(text) else [text]
        if not matches:
            raise RfprobeError(f"{text}: the pattern matches nothing")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                if not is_run_directory(path):
                    raise RfprobeError(f"{path}: a directory but not a run directory (no final.pt, init.pt or config.toml)")
                if epochs is None:
                    if not (path / "final.pt").exists():
                        raise RfprobeError(f"{path}: the run has no final.pt yet (give --epochs to use its epoch files)")
                    found.append((path / "final.pt", path.name, path.name))
                    continue
                files = trajectory(path)
                chosen = files if epochs == "all" else {e: files[e] for e in epochs if e in files}
                missing = [] if epochs == "all" else [e for e in epochs if e not in files]
                if missing:
                    raise RfprobeError(f"{path}: no checkpoint for epoch(s) {', '.join(map(str, missing))}; it has "
                                       f"{', '.join(map(str, files)) or 'none'}")
                found.extend((p, f"{path.name}@{e}", path.name) for e, p in chosen.items())
            elif path.exists():
                run = path.parent.name if is_run_directory(path.parent) else path.stem
                found.append((path, label_of(path), run))
            else:
                raise RfprobeError(f"{path}: no such checkpoint file or run directory")
    if not found:
        raise RfprobeError("no checkpoints to compare")
    labels = unique_labels([label.replace(os.sep, "_") for _, label, _ in found])
    return [Entry(path, label, run) for (path, _, run), label in zip(found, labels)]


def arch_shape(arch: str) -> tuple[int, int]:
    """(depth, width) named by an architecture: cifar_resnet_N[_W] / nf_resnet_N[_W] / cifar_preact_resnet_N[_W]
    (width default 16), cifar_vgg_N (64), mlp_DxW; (-1, -1) when the name does not say."""
    match = re.fullmatch(r"(?:cifar_|nf_|cifar_preact_)?resnet_(\d+)(?:_(\d+))?(?:_he)?", arch)
    if match:
        return int(match.group(1)), int(match.group(2) or 16)
    match = re.fullmatch(r"cifar_vgg_(\d+)", arch)
    if match:
        return int(match.group(1)), 64
    match = re.fullmatch(r"mlp_(\d+)x(\d+)(?:_nobn)?", arch)
    if match:
        return int(match.group(1)), int(match.group(2))
    return -1, -1


def checkpoint_record(entry: Entry, ckpt) -> dict:
    """What `checkpoint.json` holds: provenance and the study coordinates of one loaded checkpoint."""
    depth, width = arch_shape(ckpt.arch)
    seed = ckpt.meta.get("seed", ckpt.hparams.get("seed", -1))
    normalization = ckpt.normalization
    return {
        "label": entry.label, "path": str(entry.path), "sha256": ckpt.sha256, "run": entry.run, "mode": ckpt.mode,
        "arch": ckpt.arch, "depth": depth, "width": width, "seed": int(seed if seed is not None else -1),
        "epoch": int(ckpt.epoch if ckpt.epoch is not None else -1), "dataset": ckpt.dataset,
        "normalization": normalization.name if normalization is not None else "not recorded",
        "metrics": ckpt.metrics,
    }


@dataclass
class Request:
    """Everything that decides a study's stores: which passes, each pass's own options (PASS_OPTIONS names),
    the data options (dataset None = each checkpoint's own), and per data pass its limit and batch size."""

    passes: tuple[str, ...]
    options: dict[str, dict]
    dataset: str | None = None
    split: str = "test"
    data_root: str | None = None
    download: bool = False
    normalization: str | None = None
    mean: str | None = None
    std: str | None = None
    limits: dict[str, int | None] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    device: str = "auto"
    arch: str | None = None
    num_classes: int | None = None
    command: list[str] = field(default_factory=list)

    def reads_data(self, pass_name: str) -> bool:
        """Whether the pass measures data (signal only with `input_kind` data)."""
        return PASS_DATA[pass_name] is not None and (
            pass_name != "signal" or self.options["signal"].get("input_kind") == "data")

    def fingerprint(self, pass_name: str, device_kind: str) -> str:
        """The JSON of what decides one pass's numbers (not where data lives, not the command line)."""
        decided = {"pass": pass_name, "options": self.options[pass_name]}
        if self.reads_data(pass_name):
            decided.update(dataset=self.dataset, split=self.split, normalization=self.normalization, mean=self.mean,
                           std=self.std, limit=self.limits.get(pass_name), batch_size=self.batch_sizes.get(pass_name),
                           device=device_kind)
        return json.dumps(decided, sort_keys=True, default=str)


def validate(request: Request) -> None:
    """Every option of the request checked (one line on a bad value) before anything is loaded."""
    import importlib

    from rfprobe.loading import DataOptions, check_positive
    from rfprobe.data import resolve_device

    unknown = [p for p in request.passes if p not in PASSES]
    if unknown or not request.passes:
        raise RfprobeError(f"--passes: unknown pass(es) {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(PASSES)}")
    for name in request.passes:
        module = importlib.import_module(f"rfprobe.passes.{name}")
        extra = {"n_points": request.limits.get(name)} if name == "partition" else {}
        module.validate({o.name: request.options[name].get(o.name, o.default) for o in PASS_OPTIONS[name]}, **extra)
        check_positive(**{f"{name}_batch_size": request.batch_sizes.get(name), f"{name}_limit": request.limits.get(name)})
    DataOptions(request.dataset, request.split, request.data_root, request.download, None, request.normalization,
                request.mean, request.std)
    resolve_device(request.device)


def store_path(out: Path, label: str, pass_name: str) -> Path:
    return out / "runs" / label / f"{pass_name}.zarr"


def _store_matches(path: Path, sha256: str, fingerprint: str) -> bool:
    """True when `path` is a finished store of the same checkpoint and the same request (read from its
    consolidated metadata only)."""
    from rfprobe.results import is_result_store

    if not is_result_store(path):
        return False
    try:
        attrs = json.loads((path / ".zmetadata").read_text())["metadata"][".zattrs"]
    except (OSError, ValueError, KeyError):
        return False
    return attrs.get("checkpoint_sha256") == sha256 and attrs.get("study_fingerprint") == fingerprint


_DATA_CACHE: dict = {}


def _data_for(request: Request, pass_name: str, ckpt):
    """The data a pass measures `ckpt` on, normalised for it; loaded once per process and dataset."""
    from rfprobe.loading import DataOptions, default_dataset

    dataset = request.dataset or default_dataset(ckpt)
    options = DataOptions(dataset, request.split, request.data_root, request.download, request.limits.get(pass_name),
                          request.normalization, request.mean, request.std)
    if pass_name == "signal":
        from rfprobe.passes.signal import data_input

        o = request.options["signal"]
        key = ("signal", dataset, request.split, o.get("batch", 256), o.get("seed", 0))
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = data_input(dataset, o.get("batch", 256), o.get("seed", 0), split=request.split,
                                          root=request.data_root, download=request.download)
    else:
        key = (dataset, request.split, request.limits.get(pass_name))
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = options.load()
    return options.for_checkpoint(ckpt, _DATA_CACHE[key])


def run_entry(entry: Entry, out: Path, request: Request, threads: int | None = None) -> dict[str, str]:
    """Every pass of `request` on one checkpoint: a store per pass under `out/runs/<label>/`, skipped where a
    matching one exists; the model is loaded only if some pass must run. Returns pass -> computed/skipped."""
    import importlib

    import torch

    from rfprobe.atomic import atomic_file
    from rfprobe.checkpoint import sha256_file
    from rfprobe.loading import load_one
    from rfprobe.data import resolve_device
    from rfprobe.results import save_result, stack

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(request.device)
    sha = sha256_file(entry.path)
    todo = [p for p in request.passes if not _store_matches(store_path(out, entry.label, p), sha,
                                                            request.fingerprint(p, device.type))]
    status = {p: "skipped" for p in request.passes}
    record_path = out / "runs" / entry.label / "checkpoint.json"
    if not todo and record_path.exists():
        return status
    ckpt = load_one(entry.path, request.arch, request.num_classes, device=device)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(record_path) as tmp:
        tmp.write_text(json.dumps(checkpoint_record(entry, ckpt), indent=1, default=str) + "\n")
    for name in todo:
        module = importlib.import_module(f"rfprobe.passes.{name}")
        data = None
        if request.reads_data(name):
            data = _data_for(request, name, ckpt)
        ds = module.run_checkpoint(ckpt, data, request.options[name], batch_size=request.batch_sizes.get(name, 500),
                                   device=device, command=request.command, progress=False,
                                   **({"load": lambda p: load_one(p, request.arch, request.num_classes, device=device)}
                                      if name == "ablate" else {}))
        ds.attrs["study_fingerprint"] = request.fingerprint(name, device.type)
        save_result(stack([ds], [entry.label]), store_path(out, entry.label, name), overwrite=True)
        status[name] = "computed"
    return status


def run_study(entries: list[Entry], out: Path, request: Request, jobs: int = 1,
              on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, str]]:
    """`run_entry` for every checkpoint: in this process (`jobs` 1) or in `jobs` worker processes, each with
    its share of the CPU threads (rfprobe.pool). Returns label -> pass -> computed/skipped."""
    from rfprobe.pool import run_tasks, threads_per_job

    out.mkdir(parents=True, exist_ok=True)
    threads = threads_per_job(jobs) if jobs > 1 else None
    results = run_tasks(run_entry, [(e, out, request, threads) for e in entries], jobs,
                        None if on_done is None else lambda i, status: on_done(entries[i].label, status))
    return {e.label: status for e, status in zip(entries, results)}


def records(out: str | os.PathLike) -> dict[str, dict]:
    """The provenance records (checkpoint.json) of a study directory: label -> record, in (run, epoch,
    label) order."""
    out = Path(out)
    found = {}
    for path in sorted((out / "runs").glob("*/checkpoint.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RfprobeError(f"{path}: unreadable ({e}); rerun rfprobe compare for that checkpoint") from None
    return dict(sorted(found.items(), key=lambda kv: (kv[1].get("run", ""), kv[1].get("epoch", -1), kv[0])))


def merge(out: Path, labels: list[str] | None = None) -> xr.DataTree:
    """The study DataTree of every store under out/runs (or of `labels`, in their order): one group per pass,
    stacked on `checkpoint` (affine's histograms re-binned on edges shared by all checkpoints), with the
    STUDY_COORDS as coordinates; written atomically to out/study.zarr."""
    from rfprobe.atomic import atomic_directory
    from rfprobe.passes.affine import rebin
    from rfprobe.results import ZARR_FORMAT, check_writable, open_result, stack

    recs = records(out)
    if labels is None and (out / "study.zarr").exists():  # keep the order of the study being re-merged
        try:
            previous = xr.open_datatree(out / "study.zarr", engine="zarr").attrs.get("checkpoints", "").split(", ")
        except Exception:  # an unreadable old merge is replaced: the stores are the truth
            previous = []
        labels = [label for label in previous if label in recs] + [label for label in recs if label not in previous]
    if labels is not None:
        recs = {label: recs[label] for label in labels if label in recs}
    if not recs:
        raise RfprobeError(f"{out}: no study stores under {out / 'runs'} (run rfprobe compare first)")
    groups = {}
    for name in PASSES:
        have = [label for label in recs if store_path(out, label, name).exists()]
        if not have:
            continue
        results = [open_result(store_path(out, label, name)).isel(checkpoint=0, drop=True) for label in have]
        if name == "affine":
            results = rebin(results)
        ds = stack(results, have)
        coords = {c: ("checkpoint", np.array([recs[label][c] for label in have],
                                             dtype=object if isinstance(recs[have[0]][c], str) else np.int64))
                  for c in STUDY_COORDS}
        if "depth" in ds.variables:  # a BN's position (a coordinate, or per checkpoint for mixed architectures)
            ds = ds.rename({"depth": "layer_depth"})
        ds = ds.drop_vars([c for c in coords if c in ds.data_vars]).assign_coords(coords)
        ds.attrs.pop("study_fingerprint", None)
        groups[name] = ds.drop_encoding()  # the stores' on-disk dtypes no longer fit padded variables
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = {"rfprobe_study": 1, "passes": ", ".join(groups), "checkpoints": ", ".join(recs),
                  "rfprobe_pass": "study"}
    path = check_writable(out / "study.zarr", True)
    with atomic_directory(path) as tmp:
        tree.to_zarr(tmp, zarr_format=ZARR_FORMAT, consolidated=True)
    return tree


def as_result(group: xr.Dataset) -> xr.Dataset:
    """A study group in its pass's own schema (what rfprobe.plots and rfprobe.report_tables read): the
    network depth becomes `net_depth`, `layer_depth` the per-layer `depth` again."""
    ds = group.rename({"depth": "net_depth"}) if "depth" in group.variables else group
    return ds.rename({"layer_depth": "depth"}) if "layer_depth" in ds.variables else ds


def open_study(path: str | os.PathLike) -> xr.DataTree:
    """The study of a directory written by `rfprobe compare` (DIR or DIR/study.zarr), as an xarray DataTree."""
    path = Path(path)
    store = path if path.name == "study.zarr" else path / "study.zarr"
    if not store.exists():
        raise RfprobeError(f"{store}: no study here (run rfprobe compare ... --out {path})")
    return xr.open_datatree(store, engine="zarr")



def last_checkpoints(group: xr.Dataset) -> dict[str, str]:
    """run -> the label of its latest-epoch checkpoint in a study group."""
    out = {}
    for run in dict.fromkeys(str(r) for r in group["run"].values):
        members = np.flatnonzero(group["run"].values == run)
        out[run] = str(group["checkpoint"].values[members[np.argmax(group["epoch"].values[members])]])
    return out


def summary(tree: xr.DataTree) -> list[str]:
    """At most five lines: what the study holds, then per trainable mode (each run's latest checkpoint, mean
    over runs of the mode) accuracy, small-|gamma| fraction, dead ReLU channels, and pruning vs random."""
    any_group = next(iter(tree.children.values())).to_dataset()
    finals = last_checkpoints(any_group)
    modes = {run: str(any_group["mode"].sel(checkpoint=label).values) for run, label in finals.items()}
    lines = [f"{any_group.sizes['checkpoint']} checkpoints of {len(finals)} runs "
             f"({', '.join(f'{r}: {m}' for r, m in modes.items())}); passes {', '.join(n for n in PASSES if n in tree.children)}"]

    def by_mode(group: str, value) -> str | None:
        if group not in tree.children:
            return None
        ds = tree[group].to_dataset()
        per_mode: dict[str, list[float]] = {}
        for run, label in finals.items():
            per_mode.setdefault(modes[run], []).append(float(value(ds.sel(checkpoint=label))))
        return ", ".join(f"{m} {100 * np.mean(v):.1f}%" for m, v in per_mode.items())

    for text, group, value in (
            ("accuracy", "sparsity", lambda d: d["accuracy"]),
            ("BN channels with |gamma| < 0.01", "dead",
             lambda d: d["pooled_frac_dead"].sel(pool="all", threshold=0.01) if 0.01 in d["threshold"].values else np.nan),
            ("dead ReLU channels", "sparsity", lambda d: d["pooled_dead_fraction"]),
            ("accuracy with the small-|gamma| channels pruned", "ablate",
             lambda d: d["accuracy"].sel(variant="pruned").mean("draw"))):
        cells = by_mode(group, value)
        if cells is not None:
            lines.append(f"{text} (latest epoch): {cells}")
    if "ablate" in tree.children:
        cells = by_mode("ablate", lambda d: d["accuracy"].sel(variant="random").mean("draw"))
        lines[-1] += f"; as many random channels: {cells}"
    return lines[:5]
