"""Running a study: every pass on one checkpoint at a time (`run_entry`), stores reused only when proven
current (`store_problem`), in this process or in worker processes (`run_study`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from rfprobe.passes import REGISTRY
from rfprobe.study.inputs import Entry, apply_given, checkpoint_record
from rfprobe.study.layout import record_file, store_path
from rfprobe.study.request import Request


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


WHOLE_SPLIT_DATASETS = ("cifar10", "cifar100", "imagefolder")
"""datasets whose first N examples are the first N of the whole split (CIFAR reads every file anyway; an image
folder is listed, not decoded, when loaded), so passes with different `--limit`s share one load; a generated
dataset (synthetic, toy2d) draws its examples for its size, so it is loaded per limit"""


def _data_for(request: Request, pass_name: str, ckpt, entry: Entry | None = None):
    """The data a pass measures `ckpt` on, normalised for it (the entry's own dataset and normalisation
    where its `[[input]]` table gives them); decoded once per process and dataset (`_DataCache`, whatever
    each pass's `--limit`), and normalised batch by batch as a pass reads it (never stored normalised: 4x the
    uint8 images' memory)."""
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
    elif dataset in WHOLE_SPLIT_DATASETS:  # read whole and cut: one read serves every pass's --limit
        data = _DATA_CACHE.get((dataset, options.split, root, None), options.with_(limit=None).load)
        data = data.subset(options.limit)
    else:
        key = (dataset, options.split, root, options.limit)
        data = _DATA_CACHE.get(key, options.load)
    if p.scores_labels:
        from rfprobe.loading import check_head

        check_head(ckpt, data, explicit=bool(entry is not None and entry.num_classes or request.num_classes))
    return options.for_checkpoint(ckpt, data, request.batch_sizes.get(pass_name))


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
    passes = request.passes_for(entry)
    fingerprints = {name: request.fingerprint(name, device.type, entry) for name in passes}
    todo = []
    for name in passes:
        path = store_path(out, entry.label, name)
        why = store_problem(path, sha, fingerprints[name])
        if why is not None:
            todo.append(name)
            if why != "missing":
                note(f"recomputing {path}: {why}")
    status = {p: "skipped" for p in passes}
    record_path = record_file(out, entry.label)
    if not todo and _record_current(record_path, sha, entry):
        return status
    arch, num_classes = entry.arch or request.arch, entry.num_classes or request.num_classes
    build = request.build(entry)
    ckpt = load_one(entry.path, arch, num_classes, device=device, **build)
    apply_given(entry, ckpt)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(record_path) as tmp:
        tmp.write_text(json.dumps(checkpoint_record(entry, ckpt), indent=1, default=str) + "\n")
    for name in todo:
        data = _data_for(request, name, ckpt, entry) if request.reads_data(name) else None
        ds = REGISTRY[name].run(ckpt, data, request.options[name], batch_size=request.batch_sizes.get(name, 500),
                                device=device, command=request.command, progress=False,
                                load=lambda path: load_one(path, arch, num_classes, device=device, **build))
        ds.attrs["study_fingerprint"] = fingerprints[name]
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
