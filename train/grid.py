"""A sweep's specification (one TOML file) and its plan: the grid of trainer configs, their run directories,
and the state of each run on disk (docs/sweeps.md).

    # shared trainer fields (train.config.Config names) at the top level
    dataset = "cifar10"
    epochs = 160
    [grid]                       # every combination of these lists, one run each
    arch = ["cifar_resnet_14", "cifar_resnet_32"]
    mode = ["all", "bn"]
    seed = [0, 1]
    [[exclude]]                  # drop the combinations that match every key of a row
    arch = "cifar_resnet_32"
    mode = "all"
    [slurm]                      # submitit's SLURM settings (see SLURM_KEYS)
    partition = "gpu"
    [analysis]                   # rfprobe compare settings (its --config format) run over the finished runs
    passes = "all"
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from rfprobe.errors import RfprobeError
from train.config import Config, coerce, field_types, load_toml, to_toml

SECTIONS = ("grid", "exclude", "slurm", "analysis")
SLURM_KEYS = {"partition": str, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": int, "timeout_min": int,
              "array_parallelism": int, "nodes": int, "account": str, "qos": str, "constraint": str}
"""the [slurm] settings a spec may give (submitit's SlurmExecutor parameters, without the slurm_ prefix)"""

UNHASHED = ("out", "progress", "threads", "resume", "overwrite")
"""Config fields that do not change what is trained, left out of a run's hash"""


@dataclass
class Spec:
    """A parsed sweep file: the shared trainer settings, the grid, the exclusions, slurm and analysis tables."""

    path: Path
    base: dict
    grid: dict[str, list]
    exclude: list[dict] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)
    analysis: dict | None = None


@dataclass
class Run:
    """One planned run: its name, directory, the settings that vary, and its Config (None with the one-line
    reason why the trainer refuses its settings)."""

    name: str
    out: Path
    varying: dict
    config: Config | None
    error: str | None = None


def read_spec(path: str | Path) -> Spec:
    """Parse and type-check a sweep file (one-line errors naming the file and key)."""
    path = Path(path)
    table = load_toml(path, str(path))
    types = field_types()
    where = str(path)
    base = {k: v for k, v in table.items() if k not in SECTIONS}
    unknown = sorted(set(base) - set(types))
    if unknown:
        raise RfprobeError(f"{where}: unknown setting(s) {', '.join(unknown)}; top-level keys are trainer options "
                           f"(with _ for -) or the tables {', '.join(SECTIONS)}")
    for key in ("out", "resume", "overwrite"):
        if key in base:
            raise RfprobeError(f"{where}: {key} is set by the sweep, not the spec")
    base = {k: coerce(k, v, types[k], where) for k, v in base.items()}
    grid = table.get("grid", {})
    if not isinstance(grid, dict) or not grid:
        raise RfprobeError(f"{where}: no [grid] table (keys: trainer options, values: lists)")
    for key, values in grid.items():
        if key not in types or key in ("out", "resume", "overwrite"):
            raise RfprobeError(f"{where}: [grid] {key} is not a trainer option")
        if not isinstance(values, list) or not values:
            raise RfprobeError(f"{where}: [grid] {key} must be a non-empty list")
        if key in base:
            raise RfprobeError(f"{where}: {key} is both a shared setting and a [grid] key")
    excludes = table.get("exclude", [])
    for row in excludes:
        bad = sorted(set(row) - set(grid))
        if bad:
            raise RfprobeError(f"{where}: [[exclude]] key(s) {', '.join(bad)} are not [grid] keys")
    slurm = table.get("slurm", {})
    for key, value in slurm.items():
        if key not in SLURM_KEYS:
            raise RfprobeError(f"{where}: [slurm] {key} is not a setting; use {', '.join(SLURM_KEYS)}")
        if not isinstance(value, SLURM_KEYS[key]) or isinstance(value, bool):
            raise RfprobeError(f"{where}: [slurm] {key} must be {SLURM_KEYS[key].__name__}, got {value!r}")
    return Spec(path, base, grid, excludes, slurm, table.get("analysis"))


def _excluded(combo: dict, excludes: list[dict]) -> bool:
    return any(all(combo.get(k) == v for k, v in row.items()) for row in excludes)


def config_hash(config: Config) -> str:
    """Six hex digits of the sha256 of the config's TOML without UNHASHED fields: two runs share a directory
    only if they train the same thing."""
    text = to_toml(replace(config, out=None, progress=True, threads=None))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _name_part(key: str, value) -> str:
    if key in ("arch", "mode", "dataset"):
        return str(value).replace("+", "-").replace(":", "-")
    if isinstance(value, (list, tuple)):
        value = "-".join(map(str, value)) or "none"
    return f"{key}{value}"


def plan(spec: Spec, out: Path) -> list[Run]:
    """Every combination of the grid not excluded, in the grid's order, as a Run in out/train/<name> (the study of the sweep writes out/runs/, rfprobe compare's layout): the name
    is the varying values (e.g. `cifar_resnet_14_bn_seed0`) and a hash of the full config."""
    keys = list(spec.grid)
    types = field_types()
    runs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        if _excluded(combo, spec.exclude):
            continue
        readable = "_".join(_name_part(k, v) for k, v in combo.items())
        try:
            typed = {k: coerce(k, v, types[k], f"{spec.path} [grid]") for k, v in combo.items()}
            config = Config(**{**spec.base, **typed})
            config.validate()
        except RfprobeError as e:
            digest = hashlib.sha256(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:6]
            name = f"{readable}-{digest}"
            runs.append(Run(name, out / "train" / name, combo, None, str(e)))
            continue
        name = f"{readable}-{config_hash(config)}"
        runs.append(Run(name, out / "train" / name, combo, replace(config, out=str(out / "train" / name))))
    if not runs:
        raise RfprobeError(f"{spec.path}: the grid minus the excludes is empty")
    return runs


@dataclass
class State:
    """What is on disk for one run: done (final.pt), partial (started), missing, or failed (with the last
    error line), its last evaluated epoch and test accuracy."""

    state: str
    epoch: int | None = None
    test_acc: float | None = None
    error: str = ""


def error_file(out: Path, name: str) -> Path:
    return out / "logs" / f"{name}.error"


def state(run: Run, out: Path) -> State:
    """The run's state from its directory and out/logs/<name>.error (written by a failed job)."""
    epoch = acc = None
    metrics = run.out / "metrics.jsonl"
    if metrics.exists():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if lines:
            epoch = lines[-1].get("epoch")
            tested = [row for row in lines if "test_acc" in row]
            acc = tested[-1]["test_acc"] if tested else None
    error = error_file(out, run.name)
    if run.error is not None:
        return State("failed", error=run.error)
    if (run.out / "final.pt").exists():
        return State("done", epoch, acc)
    if error.exists():
        return State("failed", epoch, acc, error.read_text().strip().splitlines()[-1] if error.read_text().strip() else "")
    if (run.out / "init.pt").exists() or (run.out / "last.pt").exists():
        return State("partial", epoch, acc)
    return State("missing")


def config_dict(config: Config) -> dict:
    """The Config as plain values (picklable, JSON-able) for a worker process."""
    return {f.name: getattr(config, f.name) for f in fields(Config)}
