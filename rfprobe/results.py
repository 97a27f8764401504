"""Result conventions: provenance attrs, stacking checkpoints, atomic zarr save, `open_result`.

Every pass returns one Dataset per checkpoint carrying `provenance(...)` in its attrs; `stack` turns a
list of them into one Dataset with a `checkpoint` dimension (always, also for one checkpoint, so the
schema does not depend on how many were given). Per-checkpoint facts (path, sha256, arch, mode, epoch)
become variables along `checkpoint`; run-level facts stay in attrs, where `checkpoint`/`checkpoint_sha256`
list every checkpoint joined by "; ".

Stores are zarr format 2 with consolidated metadata: the one setting with which both writing and a plain
`xr.open_zarr(path)` in a notebook are silent (format 3 warns on one side or the other with zarr 3.1).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from rfprobe import __version__
from rfprobe.atomic import atomic_directory
from rfprobe.errors import ResultExistsError, RfprobeError
from rfprobe.storecheck import write_manifest

ZARR_FORMAT = 2
PER_CHECKPOINT = {"checkpoint": "checkpoint_path", "checkpoint_sha256": "checkpoint_sha256", "arch": "arch",
                  "mode": "mode", "epoch": "epoch", "nonfinite_tensors": "nonfinite_tensors",
                  "normalization": "normalization", "normalization_mean": "normalization_mean",
                  "normalization_std": "normalization_std", "normalization_source": "normalization_source",
                  "norm_stats": "norm_stats", "arch_kwargs": "arch_kwargs"}
JOINED_ATTRS = ("checkpoint", "checkpoint_sha256", "arch", "mode", "normalization", "normalization_mean",
                "normalization_std", "normalization_source", "norm_stats")
"""Per-checkpoint attrs that a stacked result keeps in its attrs too, one value per checkpoint joined by "; "."""
LAYER_COORDS = {"depth": "depth", "stage": "stage", "block": "block", "n_channels": "n_channels", "role": "role",
                "source": "source", "kind": "kind", "channel_axis": "axis", "running_stats": "running_stats"}
"""per-layer coordinate -> the site attribute it holds (rfprobe.graph sites)"""


def _attr_value(value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def provenance(pass_name: str, checkpoint=None, *, dataset: str | None = None, split: str | None = None,
               n_examples: int | None = None, device: str | None = None, command: Sequence[str] | None = None,
               **definitions: Any) -> dict[str, str | int | float]:
    """The attrs every result carries (docs/results.md), plus the pass's own definitions (`*_definition`,
    thresholds; a pass that reads data adds `Data.normalization_attrs()`)."""
    attrs = {
        "rfprobe_pass": pass_name,
        "rfprobe_version": __version__,
        "checkpoint": str(checkpoint.path) if checkpoint is not None else "",
        "checkpoint_sha256": checkpoint.sha256 if checkpoint is not None else "",
        "arch": checkpoint.arch if checkpoint is not None else "",
        "mode": checkpoint.mode if checkpoint is not None else "",
        "epoch": checkpoint.epoch if checkpoint is not None and checkpoint.epoch is not None else -1,
        "nonfinite_tensors": ", ".join(checkpoint.nonfinite) if checkpoint is not None else "",
        "dataset": dataset or "none",
        "split": split or "none",
        "n_examples": int(n_examples or 0),
        "device": str(device or "cpu"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(command if command is not None else sys.argv),
    }
    if checkpoint is not None and getattr(checkpoint, "arch_kwargs", None):
        attrs["arch_kwargs"] = json.dumps(checkpoint.arch_kwargs, sort_keys=True, default=str)
    attrs.update(definitions)
    return {k: _attr_value(v) for k, v in attrs.items()}


def layer_coords(sites, names: Sequence[str] | None = None) -> dict[str, tuple[str, np.ndarray]]:
    """Coordinates on `layer` (docs/results.md) for a list of sites (NormSite or ActivationSite), optionally reordered."""
    by_name = {s.name: s for s in sites}
    chosen = [by_name[n] for n in names] if names is not None else list(sites)
    coords = {"layer": ("layer", np.array([s.name for s in chosen], dtype=object))}
    for name, field in LAYER_COORDS.items():
        if chosen and hasattr(chosen[0], field):
            values = [getattr(s, field) for s in chosen]
            dtype = object if isinstance(values[0], str) else np.int64
            coords[name] = ("layer", np.array(values, dtype=dtype))
    return coords


def nan_padded(values: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Stack per-layer 1-D arrays into a `(layer, channel)` array, NaN-padded to `width` (default: the widest)."""
    width = max((len(v) for v in values), default=0) if width is None else width
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        out[i, :len(v)] = v
    return out


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Make labels unique by suffixing `#2`, `#3`, ... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _as_object_strings(ds: xr.Dataset) -> xr.Dataset:
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U" or var.dtype.kind == "T":
            ds[name] = var.astype(object) if name not in ds.dims else ds[name]
    for name in ds.dims:
        if name in ds.coords and ds[name].dtype.kind in "UT":
            ds = ds.assign_coords({name: ds[name].values.astype(object)})
    return ds


def _fill_value(dtype: np.dtype):
    """Padding of a variable: NaN for floats, -1 for integers, '' for text."""
    return np.nan if dtype.kind in "fc" else -1 if dtype.kind in "iu" else ""


def pad_ragged(datasets: Sequence[xr.Dataset]) -> list[xr.Dataset]:
    """Pad every dimension but `layer` whose length differs between the Datasets to the longest: an indexed
    dimension (e.g. signal's `block` = 0, 1, ...) is reindexed on the longest index, an unindexed one (e.g.
    partition's `slice_edge`) padded at the end; new cells get `_fill_value` of their variable's dtype."""
    sizes: dict[str, set[int]] = {}
    for ds in datasets:
        for dim, size in ds.sizes.items():
            sizes.setdefault(dim, set()).add(size)
    ragged = [d for d, s in sizes.items() if len(s) > 1 and d != "layer" and all(d in ds.dims for ds in datasets)]
    out = list(datasets)
    for dim in ragged:
        longest = max(sizes[dim])
        padded = []
        for ds in out:
            if ds.sizes[dim] == longest:
                padded.append(ds)
                continue
            fill = {name: _fill_value(var.dtype) for name, var in ds.variables.items() if dim in var.dims}
            if dim in ds.indexes:
                index = next(o.indexes[dim] for o in out if o.sizes[dim] == longest)
                padded.append(ds.reindex({dim: index}, fill_value=fill))
            else:
                padded.append(ds.pad({dim: (0, longest - ds.sizes[dim])}, constant_values=fill))
        out = padded
    return out


def _combined_attrs(datasets: Sequence[xr.Dataset]) -> dict:
    """The attrs of a stack: an attr every Dataset has with one value keeps it; one whose values differ (the
    dataset, n_examples, created, ... of checkpoints measured apart) lists each checkpoint's, joined by "; ",
    so no checkpoint's value stands for the others'."""
    names = list(dict.fromkeys(k for ds in datasets for k in ds.attrs))
    out = {}
    for name in names:
        values = [ds.attrs.get(name, "") for ds in datasets]
        same = all(isinstance(v, type(values[0])) and np.array_equal(v, values[0]) for v in values[1:])
        out[name] = values[0] if same else "; ".join(str(v) for v in values)
    return out


def stack(datasets: Sequence[xr.Dataset], labels: Sequence[str]) -> xr.Dataset:
    """Concatenate per-checkpoint Datasets along a new `checkpoint` dimension (coordinate: `labels`).

    Datasets over the same layers concatenate exactly (`join="exact"`: anything misaligned raises).
    Different architectures are aligned on the union of layer names, NaN-padded, and their per-layer
    coordinates (depth, stage, role, ...) become `(checkpoint, layer)` variables, since they differ.
    Other dimensions of different lengths (networks of different depths, slices with more edges) are
    padded to the longest first (`pad_ragged`)."""
    if len(datasets) != len(labels) or not datasets:
        raise RfprobeError("stack needs one label per dataset and at least one dataset")
    labels = unique_labels(list(labels))
    datasets = pad_ragged(datasets)
    prepared = []
    present = {attr for ds in datasets for attr in PER_CHECKPOINT if attr in ds.attrs}
    for ds in datasets:
        ds = ds.copy()
        for attr, var in PER_CHECKPOINT.items():
            if attr in ds.attrs or attr in present:  # a checkpoint without it (e.g. no arch_kwargs) gets ""
                value = ds.attrs.pop(attr, "")
                ds[var] = ((), np.array(value, dtype=object if isinstance(value, str) else None))
        prepared.append(ds)
    same_layers = all("layer" not in ds.dims for ds in prepared) or all(
        "layer" in ds.dims and ds.indexes["layer"].equals(prepared[0].indexes["layer"])
        and all(ds[c].equals(prepared[0][c]) for c in ds["layer"].coords if c != "layer")
        for ds in prepared)
    index = pd.Index(labels, name="checkpoint", dtype=object)
    if same_layers:
        out = xr.concat(prepared, dim=index, join="exact", coords="minimal", compat="equals",
                        combine_attrs="drop_conflicts")
    else:
        demoted = [ds.reset_coords([c for c in ds["layer"].coords if c != "layer"]) for ds in prepared]
        order = {}
        for ds in demoted:
            for name, depth in zip(ds["layer"].values, ds["depth"].values if "depth" in ds else range(ds.sizes["layer"])):
                order[name] = min(order.get(name, depth), depth)
        layers = np.array(sorted(order, key=lambda n: (order[n], n)), dtype=object)
        aligned = [ds.reindex(layer=layers, fill_value={  # text (e.g. a stored `role`) is padded with ""
            name: "" for name, var in ds.variables.items() if "layer" in var.dims and var.dtype.kind in "UTO"})
            for ds in demoted]
        out = xr.concat(aligned, dim=index, join="outer", coords="minimal", compat="equals",
                        combine_attrs="drop_conflicts")
    out.attrs = _combined_attrs(datasets)
    for attr in JOINED_ATTRS:
        if any(attr in ds.attrs for ds in datasets):
            out.attrs[attr] = "; ".join(str(ds.attrs.get(attr, "")) for ds in datasets)
    for attr in ("epoch", "nonfinite_tensors"):
        out.attrs.pop(attr, None)
    return _as_object_strings(out)


def default_output(pass_name: str, labels: Sequence[str], root: str | os.PathLike = "results") -> Path:
    """`results/<label>/<pass>.zarr`, labels joined with `+` when several checkpoints are stacked."""
    name = "+".join(label.replace("/", "_").replace(os.sep, "_") for label in labels)
    if len(name) > 100:
        name = f"{labels[0].replace('/', '_')}+{len(labels) - 1}-more"
    return Path(root) / name / f"{pass_name}.zarr"


def is_result_store(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding an rfprobe result (a zarr store whose root attrs have
    `rfprobe_pass`), read from its metadata files without opening it as a store."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    for name, pick in ((".zattrs", lambda m: m), (".zmetadata", lambda m: m.get("metadata", {}).get(".zattrs", {})),
                       ("zarr.json", lambda m: m.get("attributes", {}))):
        try:
            attrs = pick(json.loads((path / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(attrs, dict) and "rfprobe_pass" in attrs:
            return True
    return False


def check_writable(path: str | os.PathLike, overwrite: bool, *, replaceable: Callable[[Path], bool] = is_result_store,
                   what: str = "an rfprobe result store", option: str = "--out") -> Path:
    """Refuse (one line) an output path that cannot be written: it exists and `overwrite` is off, or it exists
    and is not `replaceable` (rfprobe replaces only its own kind of output, never a user's file or directory),
    or its parent cannot be created (an ancestor is a file, or not writable)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ResultExistsError(f"{path} exists; pass --overwrite to replace it, or choose another {option}")
        if not replaceable(path):
            raise ResultExistsError(f"{path} exists and is not {what}; rfprobe replaces only its own outputs, so it "
                                    f"is left untouched: choose another {option} or remove it yourself")
        check_own_store(path, option)
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RfprobeError(f"{option} {path}: cannot create its directory, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RfprobeError(f"{option} {path}: cannot create it, {ancestor} is not writable")
    return path


def check_directory_writable(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse (one line) an output directory that cannot be created or written: a probe file is created and
    removed in it, or in its nearest existing ancestor (this finds a read-only file system and missing
    permissions alike, also for root)."""
    import tempfile

    path = Path(path)
    target = path
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise RfprobeError(f"{option} {path}: cannot create it, {target} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rfprobe-write-check-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RfprobeError(f"{option} {path}: cannot write there ({target}: {e.strerror or e})") from None
    return path


def check_own_store(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse (one line) to replace a result store that holds files rfprobe did not write (rfprobe.storecheck):
    replacing it would delete them."""
    from rfprobe.storecheck import foreign_files

    path = Path(path)
    if not is_result_store(path):
        return
    foreign = foreign_files(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ResultExistsError(f"{path} holds files rfprobe did not write ({shown}); replacing the store would delete "
                                f"them, so it is left untouched: move them out, or choose another {option}")


def save_result(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `ds` as a zarr store at `path` through `rfprobe.atomic.atomic_directory`: written completely
    beside `path` first, then renamed into place, so an interrupted or failed save never damages what was
    there. An existing `path` is refused unless `overwrite`, and even then unless it is an rfprobe result holding
    nothing rfprobe did not write. The store gets its checksum manifest (rfprobe.storecheck)."""
    path = check_writable(path, overwrite)
    ds = _as_object_strings(ds.copy().drop_encoding())
    ds.attrs = {k: _attr_value(v) for k, v in ds.attrs.items()}
    with atomic_directory(path) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=ZARR_FORMAT, consolidated=True)
        write_manifest(tmp)
    return path


def open_result(path: str | os.PathLike, load: bool = True) -> xr.Dataset:
    """`xr.open_zarr(path)` plus checks: the store exists, is an rfprobe result (it has `rfprobe_pass`) and,
    where it has a checksum manifest (rfprobe.storecheck), every file is whole; a store that does not open or
    decode is one line naming it."""
    from rfprobe.storecheck import MANIFEST, problem

    path = Path(path)
    if not path.exists():
        raise RfprobeError(f"{path}: no such result")
    if (path / MANIFEST).exists():
        damage = problem(path)
        if damage:
            raise RfprobeError(f"{path}: damaged store: {damage}; recompute it")
    try:
        ds = xr.open_zarr(path, zarr_format=ZARR_FORMAT, consolidated=True)
    except (OSError, ValueError, KeyError, TypeError) as e:  # zarr's errors are ValueError/OSError subclasses
        raise RfprobeError(f"{path}: not a readable zarr store ({type(e).__name__}: {e})") from None
    if "rfprobe_pass" not in ds.attrs:
        raise RfprobeError(f"{path}: a zarr store, but not an rfprobe result (no rfprobe_pass attribute)")
    if not load:
        return ds
    try:
        return ds.load()
    except (OSError, ValueError, RuntimeError) as e:  # a chunk that does not decode (numcodecs raises RuntimeError)
        raise RfprobeError(f"{path}: a chunk of the store does not decode ({type(e).__name__}: {e}); recompute it") from None
