"""A study's checkpoints: files, run directories and their trajectories, globs, `[[input]]` tables; what is
recorded of each (checkpoint.json)."""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rfprobe.errors import RfprobeError


TRAJECTORY_FILE = re.compile(r"epoch_(\d+)\.pt$")
GLOB_CHARS = re.compile(r"[*?\[]")


INPUT_KEYS = ("path", "label", "arch", "num_classes", "mode", "epoch", "seed", "run", "normalization", "dataset",
              "arch_kwargs", "input_shape")
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
    build: dict = field(default_factory=dict)
    """`arch_kwargs` / `input_shape` to build its model (rfprobe.loading.build_options)"""
    latest: bool = True
    """whether it is its run's latest checkpoint in the study (a file given alone always is); the passes of
    `Request.latest_only` run on these only"""

    def describes(self) -> dict:
        """What the study was told about this checkpoint beside its file (recorded in checkpoint.json)."""
        return {"arch": self.arch, "num_classes": self.num_classes, "given": self.given, "extra": self.extra,
                **({"build": self.build} if self.build else {})}


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

    found: list[tuple[Path, str, str, bool]] = []
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
                    found.append((path / "final.pt", path.name, path.name, True))
                    continue
                files = trajectory(path)
                chosen = files if epochs == "all" else {e: files[e] for e in epochs if e in files}
                missing = [] if epochs == "all" else [e for e in epochs if e not in files]
                if missing:
                    raise RfprobeError(f"{path}: no checkpoint for epoch(s) {', '.join(map(str, missing))}; it has "
                                       f"{', '.join(map(str, files)) or 'none'}")
                last = max(chosen, default=None)
                found.extend((p, f"{path.name}@{e}", path.name, e == last) for e, p in chosen.items())
            elif path.exists():
                run = path.parent.name if is_run_directory(path.parent) else path.stem
                found.append((path, label_of(path), run, True))
            else:
                raise RfprobeError(f"{path}: no such checkpoint file or run directory")
    if not found:
        raise RfprobeError("no checkpoints to compare")
    labels = unique_labels([label.replace(os.sep, "_") for _, label, _, _ in found])
    return [Entry(path, label, run, latest=latest) for (path, _, run, latest), label in zip(found, labels)]


def _input_entries(base: Path, table: dict, where: str, epochs) -> list[tuple[Path, str, str, dict, bool]]:
    """The checkpoints of one `[[input]]` table (its path expanded as `expand_inputs` does), each with the
    table's facts: (path, label, run, table, latest)."""
    from rfprobe.data import check_dataset_name
    from rfprobe.models import architecture_options
    from rfprobe.normalization import from_options

    from rfprobe.loading import build_options

    types = {"path": str, "label": str, "arch": str, "num_classes": int, "mode": str, "epoch": int, "seed": int,
             "run": str, "normalization": str, "dataset": str}
    build = build_options(table.get("arch_kwargs"), table.get("input_shape"))
    table = {k: v for k, v in table.items() if k not in ("arch_kwargs", "input_shape")}
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
    table = {**table, **{k: v for k, v in build.items() if v is not None}}
    return [(e.path, table.get("label", e.label), table.get("run", e.run), table, e.latest) for e in found]


def expand_all(inputs: Iterable[str], tables: list[tuple[Path, dict]] = (),
               epochs: str | tuple[int, ...] | None = None) -> list[Entry]:
    """The study's checkpoints: `inputs` (`expand_inputs`), then each `[[input]]` table's (with its folder for
    relative paths), each carrying what its table says (arch and num_classes to load it, facts that override
    its records, and the user's own keys as coordinates). Labels are made unique over all of them."""
    from rfprobe.results import unique_labels

    found = [(e.path, e.label, e.run, {}, e.latest) for e in expand_inputs(inputs, epochs)] if list(inputs) else []
    for i, (base, table) in enumerate(tables):
        found += _input_entries(base, table, f"[[input]] {i + 1} ({table.get('path', 'no path')})", epochs)
    if not found:
        raise RfprobeError("no checkpoints to compare")
    labels = unique_labels([label.replace(os.sep, "_") for _, label, _, _, _ in found])
    return [Entry(path, label, run, arch=table.get("arch"), num_classes=table.get("num_classes"), latest=latest,
                  build={k: table[k] for k in ("arch_kwargs", "input_shape") if k in table},
                  given={k: table[k] for k in ("mode", "epoch", "seed", "normalization", "dataset") if k in table},
                  extra={k: v for k, v in table.items() if k not in INPUT_KEYS})
            for (path, _, run, table, latest), label in zip(found, labels)]


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
