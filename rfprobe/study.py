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
from rfprobe.loading import DataOptions
from rfprobe.passes import REGISTRY

STUDY_COORDS = ("run", "mode", "arch", "depth", "width", "seed", "epoch", "dataset")
"""coordinates on `checkpoint` in every group of study.zarr: the network's depth and width (from the
architecture name), the training seed, epoch and dataset; a pass's per-layer `depth` (a BN's position in
forward order) is `layer_depth` there (`as_result` gives a group back in its pass's own schema)"""

STUDY_FILES = ("runs", "study.zarr", "trajectory.png", "report.html", "figures")
"""what a study directory holds: rfprobe compare, report and plot write these, and nothing else"""

TRAJECTORY_FILE = re.compile(r"epoch_(\d+)\.pt$")
GLOB_CHARS = re.compile(r"[*?\[]")


INPUT_KEYS = ("path", "label", "arch", "num_classes", "mode", "epoch", "seed", "run", "normalization", "dataset")
"""the keys of an `[[input]]` table (`--inputs`) that rfprobe reads; any other key is a user coordinate"""


@dataclass(frozen=True)
class Entry:
    """One checkpoint of a study: its file, its label (a directory name under DIR/runs) and its run; what an
    `[[input]]` table says of it: `arch` / `num_classes` to load a bare state dict, `given` facts (mode, epoch,
    seed, normalization, dataset) that override the checkpoint's records, and `extra` user coordinates."""

    path: Path
    label: str
    run: str
    arch: str | None = None
    num_classes: int | None = None
    given: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def describes(self) -> dict:
        """What the study was told about this checkpoint beside its file (recorded in checkpoint.json)."""
        return {"arch": self.arch, "num_classes": self.num_classes, "given": self.given, "extra": self.extra}


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


def _input_entries(base: Path, table: dict, where: str, epochs) -> list[tuple[Path, str, str, dict]]:
    """The checkpoints of one `[[input]]` table (its path expanded as `expand_inputs` does), each with the
    table's facts: (path, label, run, table)."""
    from rfprobe.data import check_dataset_name
    from rfprobe.models import architecture_options
    from rfprobe.normalization import from_options

    types = {"path": str, "label": str, "arch": str, "num_classes": int, "mode": str, "epoch": int, "seed": int,
             "run": str, "normalization": str, "dataset": str}
    if "path" not in table:
        raise RfprobeError(f"{where}: an [[input]] table without path")
    for key, value in table.items():
        wanted = types.get(key)
        if wanted is not None and not (isinstance(value, wanted) and not isinstance(value, bool)):
            raise RfprobeError(f"{where}: {key} must be {'an integer' if wanted is int else 'a string'}, got {value!r}")
        if wanted is None and not isinstance(value, (str, int, float, bool)):
            raise RfprobeError(f"{where}: {key} (a coordinate of your own) must be a string, number or boolean, "
                               f"got {value!r}")
    if "arch" in table:
        architecture_options(table["arch"])
    if "dataset" in table:
        check_dataset_name(table["dataset"])
    if "normalization" in table:
        from_options(table["normalization"], None, None)
    for key in ("num_classes", "epoch"):
        if key in table and table[key] < (1 if key == "num_classes" else 0):
            raise RfprobeError(f"{where}: {key} must be at least {1 if key == 'num_classes' else 0}, got {table[key]}")
    path = Path(table["path"]).expanduser()
    path = path if path.is_absolute() else base / path
    found = expand_inputs([str(path)], epochs)
    if "epoch" in table and len(found) > 1:
        raise RfprobeError(f"{where}: epoch = {table['epoch']} names one checkpoint, but {path} expands to {len(found)}")
    if "label" in table and len(found) > 1:
        raise RfprobeError(f"{where}: label = {table['label']!r} names one checkpoint, but {path} expands to {len(found)}")
    return [(e.path, table.get("label", e.label), table.get("run", e.run), table) for e in found]


def expand_all(inputs: Iterable[str], tables: list[tuple[Path, dict]] = (),
               epochs: str | tuple[int, ...] | None = None) -> list[Entry]:
    """The study's checkpoints: `inputs` (`expand_inputs`), then each `[[input]]` table's (with its folder for
    relative paths), each carrying what its table says (arch and num_classes to load it, facts that override
    its records, and the user's own keys as coordinates). Labels are made unique over all of them."""
    from rfprobe.results import unique_labels

    found = [(e.path, e.label, e.run, {}) for e in expand_inputs(inputs, epochs)] if list(inputs) else []
    for i, (base, table) in enumerate(tables):
        found += _input_entries(base, table, f"[[input]] {i + 1} ({table.get('path', 'no path')})", epochs)
    if not found:
        raise RfprobeError("no checkpoints to compare")
    labels = unique_labels([label.replace(os.sep, "_") for _, label, _, _ in found])
    return [Entry(path, label, run, arch=table.get("arch"), num_classes=table.get("num_classes"),
                  given={k: table[k] for k in ("mode", "epoch", "seed", "normalization", "dataset") if k in table},
                  extra={k: v for k, v in table.items() if k not in INPUT_KEYS})
            for (path, _, run, table), label in zip(found, labels)]


def arch_shape(arch: str) -> tuple[int, int]:
    """(depth, width) named by an architecture, as its family in the model registry defines them
    (rfprobe.models.architecture_shape); (-1, -1) when the family or the name does not say."""
    from rfprobe.models import architecture_shape

    try:
        return architecture_shape(arch)
    except RfprobeError:
        return -1, -1


def apply_given(entry: Entry, ckpt) -> None:
    """Set on the loaded checkpoint what the entry's `[[input]]` table says of it (mode, epoch, dataset), so
    every pass and its provenance see the same facts as the study coordinates; a bare state dict with no
    mode given gets `unknown`, with one warning line."""
    from rfprobe.loading import warn

    for key in ("mode", "epoch", "dataset"):
        if key in entry.given:
            setattr(ckpt, key, entry.given[key])
    if ckpt.bare and "mode" not in entry.given:
        warn(f"{entry.path}: a bare state dict records no trainable mode; its study coordinate mode is 'unknown' "
             "(give mode = \"...\" in its [[input]] table of --inputs)")


def checkpoint_record(entry: Entry, ckpt) -> dict:
    """What `checkpoint.json` holds: provenance and the study coordinates of one loaded checkpoint (after
    `apply_given`), and what the entry told the study about it."""
    depth, width = arch_shape(ckpt.arch)
    seed = entry.given.get("seed", ckpt.meta.get("seed", ckpt.hparams.get("seed", -1)))
    normalization = entry.given.get("normalization") or (ckpt.normalization.name if ckpt.normalization is not None
                                                          else "not recorded")
    return {
        "label": entry.label, "path": str(entry.path), "sha256": ckpt.sha256, "run": entry.run, "mode": ckpt.mode,
        "arch": ckpt.arch, "num_classes": ckpt.num_classes, "depth": depth, "width": width,
        "seed": int(seed if seed is not None else -1), "epoch": int(ckpt.epoch if ckpt.epoch is not None else -1),
        "dataset": ckpt.dataset, "normalization": normalization, "metrics": ckpt.metrics,
        "entry": entry.describes(), "extra": dict(entry.extra),
    }


@dataclass
class Request:
    """Everything that decides a study's stores: which passes, each pass's own options (`Pass.options` names),
    the data options (rfprobe.loading.DataOptions; dataset None = each checkpoint's own, limit per pass in
    `limits`), and per data pass its limit and batch size."""

    passes: tuple[str, ...]
    options: dict[str, dict]
    data: DataOptions = field(default_factory=DataOptions)
    limits: dict[str, int | None] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    device: str = "auto"
    arch: str | None = None
    num_classes: int | None = None
    command: list[str] = field(default_factory=list)

    def reads_data(self, pass_name: str) -> bool:
        """Whether the pass with this request's options measures data (`Pass.needs_data`)."""
        return REGISTRY[pass_name].needs_data(self.options[pass_name])

    def fingerprint(self, pass_name: str, device_kind: str, entry: Entry | None = None) -> str:
        """The JSON of what decides one pass's numbers on one checkpoint (its file is checked by sha256 beside
        it): the pass, its version and options, the rfprobe version, how a bare file is loaded (arch, classes), what an
        `[[input]]` table says of it (an epoch 0 changes signal's BN statistics, a mode every provenance);
        for a data pass the data's identity (dataset, split, the data folder, limit), its normalisation, batch
        size and device kind. Not the command line."""
        from rfprobe import __version__

        entry = entry or Entry(Path(""), "", "")
        decided = {"pass": pass_name, "pass_version": REGISTRY[pass_name].version,
                   "options": self.options[pass_name], "rfprobe_version": __version__,
                   "arch": entry.arch or self.arch, "num_classes": entry.num_classes or self.num_classes,
                   "given": entry.given}
        if self.reads_data(pass_name):
            normalization = entry.given.get("normalization")
            data = self.data
            decided.update(dataset=entry.given.get("dataset") or data.dataset, split=data.split,
                           data_root=data.resolved_root(), normalization=normalization or data.normalization,
                           mean=None if normalization else data.mean, std=None if normalization else data.std,
                           limit=self.limits.get(pass_name), batch_size=self.batch_sizes.get(pass_name),
                           device=device_kind)
        return json.dumps(decided, sort_keys=True, default=str)


def validate(request: Request) -> None:
    """Every option of the request checked (one line on a bad value) before anything is loaded."""
    from rfprobe.loading import check_positive
    from rfprobe.data import resolve_device

    unknown = [p for p in request.passes if p not in REGISTRY]
    if unknown or not request.passes:
        raise RfprobeError(f"--passes: unknown pass(es) {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(REGISTRY)}")
    for name in request.passes:
        p = REGISTRY[name]
        p.validate({**p.defaults(), **request.options[name]}, n_points=request.limits.get(name))
        check_positive(**{f"{name}_batch_size": request.batch_sizes.get(name), f"{name}_limit": request.limits.get(name)})
    resolve_device(request.device)


def store_path(out: Path, label: str, pass_name: str) -> Path:
    return out / "runs" / label / f"{pass_name}.zarr"


def _store_attrs(path: Path) -> dict | None:
    """The root attrs of a result store, from its consolidated metadata (None when unreadable)."""
    try:
        attrs = json.loads((path / ".zmetadata").read_text())["metadata"][".zattrs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def store_problem(path: Path, sha256: str, fingerprint: str | None = None) -> str | None:
    """None when `path` is a whole store of the checkpoint whose file has `sha256` (and, when given, of the
    request with `fingerprint`); else why it cannot be reused, in a few words. Whole: every file has the
    checksum recorded when it was written (rfprobe.storecheck)."""
    from rfprobe.results import is_result_store
    from rfprobe.storecheck import problem

    if not path.exists():
        return "missing"
    attrs = _store_attrs(path) if is_result_store(path) else None
    if attrs is None:
        return "not a readable rfprobe result"
    if attrs.get("checkpoint_sha256") != sha256:
        return (f"it was computed from another file (sha256 {str(attrs.get('checkpoint_sha256'))[:12]}, the checkpoint "
                f"is now {sha256[:12]})")
    if fingerprint is not None and attrs.get("study_fingerprint") != fingerprint:
        return "its options, data, loading or rfprobe version differ from this request"
    return problem(path)


class _DataCache:
    """The datasets a study process has loaded, keyed by everything that decides them (dataset, split, data
    folder, limit; signal's batch and seed), the `SIZE` most recent kept."""

    SIZE = 2

    def __init__(self):
        self.items: dict = {}

    def get(self, key, load):
        if key in self.items:
            self.items[key] = self.items.pop(key)
        else:
            self.items[key] = load()
            while len(self.items) > self.SIZE:
                self.items.pop(next(iter(self.items)))
        return self.items[key]


_DATA_CACHE = _DataCache()


def _data_for(request: Request, pass_name: str, ckpt, entry: Entry | None = None):
    """The data a pass measures `ckpt` on, normalised for it (the entry's own dataset and normalisation
    where its `[[input]]` table gives them); loaded once per process and dataset (`_DataCache`)."""
    from rfprobe.loading import default_dataset

    given = entry.given if entry is not None else {}
    options = request.data.with_(dataset=given.get("dataset") or request.data.dataset or default_dataset(ckpt),
                                 limit=request.limits.get(pass_name))
    if given.get("normalization"):
        options = options.with_(normalization=given["normalization"], mean=None, std=None)
    dataset, root = options.dataset, options.resolved_root()
    p = REGISTRY[pass_name]
    if p.data_input is not None:  # the pass draws its own sample (signal's one random batch)
        o = {**p.defaults(), **request.options[pass_name]}
        key = (pass_name, dataset, options.split, root, json.dumps(o, sort_keys=True, default=str))
        data = _DATA_CACHE.get(key, lambda: p.data_input(dataset, o, split=options.split, root=options.root,
                                                         download=options.download))
    else:
        key = (dataset, options.split, root, options.limit)
        data = _DATA_CACHE.get(key, options.load)
    if p.scores_labels:
        from rfprobe.loading import check_head

        check_head(ckpt, data, explicit=bool(entry is not None and entry.num_classes or request.num_classes))
    return options.for_checkpoint(ckpt, data)


def _record_current(path: Path, sha256: str, entry: Entry) -> bool:
    """Whether checkpoint.json at `path` describes this file (sha256) as this entry describes it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == sha256 and record.get("label") == entry.label
            and record.get("run") == entry.run and record.get("entry") == json.loads(json.dumps(entry.describes())))


def run_entry(entry: Entry, out: Path, request: Request, threads: int | None = None) -> dict[str, str]:
    """Every pass of `request` on one checkpoint: a store per pass under `out/runs/<label>/`, reused only where
    `store_problem` finds none (else recomputed, with one line saying why); the model is loaded only if some
    pass must run or the record is out of date. Returns pass -> computed/skipped."""

    import torch

    from rfprobe.atomic import atomic_file
    from rfprobe.checkpoint import sha256_file
    from rfprobe.loading import load_one, note
    from rfprobe.data import resolve_device
    from rfprobe.results import save_result, stack

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(request.device)
    sha = sha256_file(entry.path)
    todo = []
    for name in request.passes:
        path = store_path(out, entry.label, name)
        why = store_problem(path, sha, request.fingerprint(name, device.type, entry))
        if why is not None:
            todo.append(name)
            if why != "missing":
                note(f"recomputing {path}: {why}")
    status = {p: "skipped" for p in request.passes}
    record_path = out / "runs" / entry.label / "checkpoint.json"
    if not todo and _record_current(record_path, sha, entry):
        return status
    arch, num_classes = entry.arch or request.arch, entry.num_classes or request.num_classes
    ckpt = load_one(entry.path, arch, num_classes, device=device)
    apply_given(entry, ckpt)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(record_path) as tmp:
        tmp.write_text(json.dumps(checkpoint_record(entry, ckpt), indent=1, default=str) + "\n")
    for name in todo:
        data = _data_for(request, name, ckpt, entry) if request.reads_data(name) else None
        ds = REGISTRY[name].run(ckpt, data, request.options[name], batch_size=request.batch_sizes.get(name, 500),
                                device=device, command=request.command, progress=False,
                                load=lambda path: load_one(path, arch, num_classes, device=device))
        ds.attrs["study_fingerprint"] = request.fingerprint(name, device.type, entry)
        save_result(stack([ds], [entry.label]), store_path(out, entry.label, name), overwrite=True)
        status[name] = "computed"
    return status


def check_study_stores(entries: list[Entry], out: Path, request: Request) -> None:
    """Before any work: refuse (one line) when a store this request may replace holds files rfprobe did not
    write (rfprobe.results.check_own_store), so a recompute never deletes a user's file."""
    from rfprobe.results import check_own_store

    for entry in entries:
        for name in request.passes:
            check_own_store(store_path(out, entry.label, name), option="--out")
    check_own_store(out / "study.zarr", option="--out")


def remove_stale_temporaries(out: Path) -> None:
    """The temporaries that killed runs left in a study directory (rfprobe.atomic's own names only)."""
    from rfprobe.atomic import remove_stale_temporaries as remove

    remove(out)
    for folder in (out / "runs").glob("*"):
        if folder.is_dir() and not folder.is_symlink():
            remove(folder)


def run_study(entries: list[Entry], out: Path, request: Request, jobs: int = 1,
              on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, str]]:
    """`run_entry` for every checkpoint: in this process (`jobs` 1) or in `jobs` worker processes, each with
    its share of the CPU threads (rfprobe.pool). Returns label -> pass -> computed/skipped."""
    from rfprobe.pool import run_tasks, threads_per_job

    check_study_stores(entries, out, request)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    threads = threads_per_job(jobs) if jobs > 1 else None
    results = run_tasks(run_entry, [(e, out, request, threads) for e in entries], jobs,
                        None if on_done is None else lambda i, status: on_done(entries[i].label, status))
    return {e.label: status for e, status in zip(entries, results)}


def records(out: str | os.PathLike, labels: Iterable[str] | None = None) -> dict[str, dict]:
    """The provenance records (checkpoint.json) of a study directory: label -> record, in (run, epoch,
    label) order; with `labels` (e.g. a study's `checkpoints` attr), only those."""
    out = Path(out)
    found = {}
    wanted = None if labels is None else set(labels)
    for path in sorted((out / "runs").glob("*/checkpoint.json")):
        if wanted is not None and path.parent.name not in wanted:
            continue
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RfprobeError(f"{path}: unreadable ({e}); rerun rfprobe compare for that checkpoint") from None
    return dict(sorted(found.items(), key=lambda kv: (kv[1].get("run", ""), kv[1].get("epoch", -1), kv[0])))


def _current_sha(record: dict, cache: dict) -> str:
    """The sha256 of the file a record names as it is now; the recorded one when the file is not here (a
    study merged on another machine than the one that measured)."""
    from rfprobe.checkpoint import sha256_file

    path = Path(record.get("path", ""))
    if str(path) not in cache:
        cache[str(path)] = sha256_file(path) if path.is_file() else record.get("sha256", "")
    return cache[str(path)]


def _coordinate(values: list) -> np.ndarray:
    """A study coordinate of per-checkpoint values: int64 when every value is an integer (missing: -1), else
    text (missing: "")."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) or v is None for v in values) and any(
            v is not None for v in values):
        return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def relative_depth(ds: xr.Dataset) -> xr.DataArray | None:
    """Each layer's position along its own network's forward order, 0 (first) .. 1 (last): depth / (layers
    - 1) per checkpoint, NaN where a checkpoint lacks the layer. Compares nets of different depths."""
    if "layer" not in ds.dims or "layer_depth" not in ds.variables:
        return None
    depth = ds["layer_depth"].astype(float)
    if "checkpoint" not in depth.dims:
        depth = depth.expand_dims(checkpoint=ds["checkpoint"].values)
    depth = depth.where(depth >= 0)
    last = depth.max("layer")
    return (depth / last.where(last > 0)).fillna(0).where(depth.notnull()).transpose("checkpoint", "layer")


def merge(out: Path, labels: list[str] | None = None, keep: bool = False) -> xr.DataTree:
    """The study DataTree of the checkpoints `labels` (in their order; with `keep`, or when `labels` is None,
    also every other one under out/runs): one group per pass, stacked on `checkpoint` (affine's histograms
    re-binned on edges shared by all checkpoints), with the STUDY_COORDS and the inputs' own keys as
    coordinates and, per layer, `relative_depth`; written atomically to out/study.zarr.

    A store is merged only when it is whole and was computed from the file its checkpoint.json names as that
    file is now (`store_problem`); any other is left out with one line saying why."""
    from rfprobe.atomic import atomic_directory
    from rfprobe.loading import note
    from rfprobe.results import ZARR_FORMAT, check_writable, open_result, stack
    from rfprobe.storecheck import write_manifest

    recs = records(out)
    if labels is None or keep:
        previous = list(labels or [])
        if not previous and (out / "study.zarr").exists():  # keep the order of the study being re-merged
            try:
                previous = xr.open_datatree(out / "study.zarr", engine="zarr").attrs.get("checkpoints", "").split(", ")
            except (OSError, ValueError, KeyError):  # an unreadable old merge is replaced: the stores are the truth
                previous = []
        labels = [label for label in previous if label in recs] + [label for label in recs if label not in previous]
    missing = [label for label in labels if label not in recs]
    if missing:
        raise RfprobeError(f"{out}: no checkpoint.json for {', '.join(missing[:3])}; rerun rfprobe compare for them")
    recs = {label: recs[label] for label in labels}
    if not recs:
        raise RfprobeError(f"{out}: no study stores under {out / 'runs'} (run rfprobe compare first)")
    shas: dict = {}
    extra_keys = list(dict.fromkeys(k for r in recs.values() for k in r.get("extra", {}) if k not in STUDY_COORDS))
    groups = {}
    for name, p in REGISTRY.items():
        have = []
        for label in recs:
            path = store_path(out, label, name)
            if not path.exists():
                continue
            current = _current_sha(recs[label], shas)
            why = ("its checkpoint.json was written for another file" if recs[label].get("sha256") != current
                   else store_problem(path, current))
            if why is None:
                have.append(label)
            else:
                note(f"the study leaves out {path}: {why}; rerun rfprobe compare with --passes {name} to recompute it")
        if not have:
            continue
        results = [open_result(store_path(out, label, name)).isel(checkpoint=0, drop=True) for label in have]
        ds = stack(p.combine(results), have)
        coords = {c: ("checkpoint", _coordinate([recs[label].get(c) for label in have])) for c in STUDY_COORDS}
        coords.update({k: ("checkpoint", _coordinate([recs[label].get("extra", {}).get(k) for label in have]))
                       for k in extra_keys})
        if "depth" in ds.variables:  # a BN's position (a coordinate, or per checkpoint for mixed architectures)
            ds = ds.rename({"depth": "layer_depth"})
        ds = ds.drop_vars([c for c in coords if c in ds.data_vars]).assign_coords(coords)
        position = relative_depth(ds)
        if position is not None:
            ds = ds.assign_coords(relative_depth=position)
        ds.attrs.pop("study_fingerprint", None)
        groups[name] = ds.drop_encoding()  # the stores' on-disk dtypes no longer fit padded variables
    if not groups:
        raise RfprobeError(f"{out}: no current, whole store for any of its checkpoints (rerun rfprobe compare)")
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = {"rfprobe_study": 1, "passes": ", ".join(groups), "checkpoints": ", ".join(recs),
                  "rfprobe_pass": "study", "coordinates": ", ".join((*STUDY_COORDS, *extra_keys))}
    path = check_writable(out / "study.zarr", True)
    with atomic_directory(path) as tmp:
        tree.to_zarr(tmp, zarr_format=ZARR_FORMAT, consolidated=True)
        write_manifest(tmp)
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
    """At most five lines: what the study holds, then per trainable mode (each run's latest checkpoint)
    accuracy (mean over the mode's runs), small-|gamma| and dead ReLU fractions (channels pooled over the
    mode's runs, each channel weighing one, so nets of different widths are not averaged as equals), and
    pruning vs random."""
    any_group = next(iter(tree.children.values())).to_dataset()
    finals = last_checkpoints(any_group)
    modes = {run: str(any_group["mode"].sel(checkpoint=label).values) for run, label in finals.items()}
    lines = [f"{any_group.sizes['checkpoint']} checkpoints of {len(finals)} runs "
             f"({', '.join(f'{r}: {m}' for r, m in modes.items())}); passes {', '.join(n for n in REGISTRY if n in tree.children)}"]

    def by_mode(group: str, value) -> str | None:
        """Per mode: sum of numerators / sum of denominators over the mode's runs, from each run's headline
        row (`value(row)` gives both: a fraction of channels pools the channels of all the runs, each
        channel weighing one; an accuracy is (accuracy, 1), a plain mean over runs)."""
        if group not in tree.children:
            return None
        rows = REGISTRY[group].headline(tree[group].to_dataset().sel(checkpoint=list(finals.values())))
        per_mode: dict[str, list[tuple[float, float]]] = {}
        for run, label in finals.items():
            per_mode.setdefault(modes[run], []).append(tuple(float(v) for v in value(rows[label])))
        return ", ".join(f"{m} {100 * sum(n for n, _ in v) / sum(d for _, d in v):.1f}%" for m, v in per_mode.items())

    for text, group, value in (
            ("accuracy", "sparsity", lambda row: (row["accuracy"], 1)),
            ("BN channels with |gamma| < 0.01, pooled over each mode's channels", "dead",
             lambda row: (row["all"]["dead_n"].get("0.01", np.nan), row["all"]["n_channels"])),
            ("dead ReLU channels, pooled", "sparsity", lambda row: (row["dead"], row["channels"])),
            ("accuracy with the small-|gamma| channels pruned", "ablate",
             lambda row: (row["variants"]["pruned"]["accuracy"], 1))):
        cells = by_mode(group, value)
        if cells is not None:
            lines.append(f"{text} (latest epoch): {cells}")
    if "ablate" in tree.children:
        cells = by_mode("ablate", lambda row: (row["variants"]["random"]["accuracy"], 1))
        lines[-1] += f"; as many random channels: {cells}"
    return lines[:5]
