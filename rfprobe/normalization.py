"""Input normalisation, a property of a checkpoint: the per-channel `(x / 255 - mean) / std` its network was
trained on (for float inputs such as 2-D toy points, `(x - mean) / std`).

A network only gives its trained behaviour on inputs normalised as in training, and codebases disagree:
OpenLTH (the BN-only paper's own code) normalises CIFAR-10 with ImageNet's constants, many repositories use
0.5 / 0.5, pytorch-cifar (kuangliu) uses the CIFAR-10 mean with a (0.2023, 0.1994, 0.2010) std. So the
trainer records what it used in every checkpoint, and each data pass measures each checkpoint with its own
(`resolve`): an explicit override, else the recorded constants, else (a checkpoint that records none) the
constants of the dataset, with a warning for bare state dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from rfprobe.errors import RfprobeError


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std (in units of pixel / 255 for images); one value broadcasts over channels."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_meta(self) -> dict[str, Any]:
        """The JSON-able form stored in checkpoints (`normalization`)."""
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        """E.g. `imagenet (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225)`."""
        return f"{self.name} (mean {_join(self.mean)}; std {_join(self.std)})"

    def fits(self, channels: int) -> bool:
        return len(self.mean) in (1, channels)


def _join(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


PRESETS: dict[str, Normalization] = {n.name: n for n in (
    Normalization("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    Normalization("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    Normalization("kuangliu", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    Normalization("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    Normalization("synthetic", (0.5, 0.5, 0.5), (0.288, 0.288, 0.288)),
    Normalization("none", (0.0,), (1.0,)),
)}
"""`cifar10`/`cifar100`: each training set's per-channel pixel mean and std; `imagenet`: ImageNet's, which
OpenLTH uses for CIFAR; `kuangliu`: pytorch-cifar's; `half`: 0.5 / 0.5 (inputs in [-1, 1]); `synthetic`:
rfprobe's synthetic gratings; `none`: pixel / 255 (float inputs unchanged)."""

DATASET_DEFAULTS = {"cifar10": "cifar10", "cifar100": "cifar100", "synthetic": "synthetic", "toy2d": "none",
                    "imagefolder": "imagenet"}
"""What a dataset is normalised with when nothing else says (the trainer's default too)."""

OPENLTH_HINT = "OpenLTH checkpoints were trained with --normalization imagenet"


def for_dataset(dataset: str) -> Normalization:
    """The default normalisation of a dataset name (`toy2d:moons` counts as `toy2d`)."""
    base = dataset.partition(":")[0]
    if base not in DATASET_DEFAULTS:
        raise RfprobeError(f"no default normalisation for dataset {dataset!r}; pass --normalization or --mean/--std")
    return PRESETS[DATASET_DEFAULTS[base]]


def parse_values(text: str | Sequence[float], option: str) -> tuple[float, ...]:
    """Finite numbers from `0.5,0.5,0.5` (or a sequence), else a one-line error naming `option`."""
    try:
        values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text)
                       if not isinstance(v, str) or v.strip())
    except ValueError:
        raise RfprobeError(f"{option} takes comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise RfprobeError(f"{option} takes finite comma-separated numbers, got {text!r}")
    return values


def from_options(name: str | None = None, mean: str | Sequence[float] | None = None,
                 std: str | Sequence[float] | None = None) -> Normalization | None:
    """The override given by `--normalization NAME` or `--mean M,M,M --std S,S,S` (None when neither); the
    values may be comma-separated text or numbers.
    Raises RfprobeError (one line) for an unknown name, a half-given pair, lengths that differ, std <= 0."""
    if name is not None and (mean is not None or std is not None):
        raise RfprobeError("give either --normalization or --mean/--std, not both")
    if name is not None:
        if name not in PRESETS:
            raise RfprobeError(f"unknown --normalization {name!r}; choose one of {', '.join(PRESETS)}, "
                               "or give --mean and --std")
        return PRESETS[name]
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise RfprobeError("--mean and --std go together; give both (e.g. --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5)")
    return custom(parse_values(mean, "--mean"), parse_values(std, "--std"))


def custom(mean: Sequence[float], std: Sequence[float]) -> Normalization:
    """A normalisation from explicit constants; named after the preset it equals, else `custom`."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std):
        raise RfprobeError(f"--mean has {len(mean)} values but --std has {len(std)}; give one per input channel")
    if not all(s > 0 for s in std):
        raise RfprobeError(f"--std values must be positive, got {_join(std)}")
    name = next((p.name for p in PRESETS.values() if (p.mean, p.std) == (mean, std)), "custom")
    return Normalization(name, mean, std)


def from_meta(meta: Any) -> Normalization | None:
    """The normalisation a checkpoint records (`normalization` = {name, mean, std}), None when it records none."""
    if not isinstance(meta, dict) or "mean" not in meta or "std" not in meta:
        return None
    try:
        recorded = custom(meta["mean"], meta["std"])
    except (TypeError, ValueError, RfprobeError) as e:
        raise RfprobeError(f"the checkpoint's recorded normalisation is unusable ({e})") from None
    return Normalization(str(meta.get("name") or recorded.name), recorded.mean, recorded.std)


@dataclass(frozen=True)
class Resolved:
    """The normalisation one checkpoint is measured with, where it came from, and a warning to print (or '')."""

    normalization: Normalization
    source: str
    warning: str = ""


def resolve(checkpoint, dataset: str, override: Normalization | None = None) -> Resolved:
    """The normalisation a data pass uses for `checkpoint` (None: a fresh init) measured on `dataset`:
    `override`, else the checkpoint's recorded one, else (an rfprobe checkpoint from before normalisation was
    recorded) its training dataset's default, which is what the trainer then used, else `dataset`'s default;
    for a bare state dict the last case comes with a warning naming the constants and how to change them."""
    if override is not None:
        return Resolved(override, "option")
    if checkpoint is not None:
        recorded = checkpoint.normalization
        if recorded is not None:
            return Resolved(recorded, "checkpoint")
        if not checkpoint.bare and checkpoint.dataset.partition(":")[0] in DATASET_DEFAULTS:
            return Resolved(for_dataset(checkpoint.dataset), "training dataset default")
    default = for_dataset(dataset)
    if checkpoint is None:
        return Resolved(default, "dataset default")
    warning = (f"{checkpoint.path} records no input normalisation; measuring it with {default.describe()}, "
               f"the {dataset.partition(':')[0]} default; {OPENLTH_HINT}; others use half or kuangliu, "
               "or give --mean/--std")
    return Resolved(default, "dataset default", warning)


def attrs(normalization: Normalization, source: str) -> dict[str, str]:
    """The result attrs (per-checkpoint variables once stacked) that record a normalisation and its source."""
    return {"normalization": normalization.name, "normalization_mean": _join(normalization.mean),
            "normalization_std": _join(normalization.std), "normalization_source": source}
