"""The study DataTree: the merge of whole, current stores with the study coordinates (`merge`), and reading
it back (`open_study`, `as_result`, `records`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import xarray as xr

from rfprobe.errors import RfprobeError
from rfprobe.passes import REGISTRY
from rfprobe.study.layout import STUDY_COORDS, store_path
from rfprobe.study.runner import store_problem


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
                  "rfprobe_pass": "study", "study_coordinates": ", ".join((*STUDY_COORDS, *extra_keys))}
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
