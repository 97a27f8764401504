"""All hyperparameters of a run in one dataclass; defaults are the BN-only paper's CIFAR-10 recipe (docs/science.md).

SGD momentum 0.9, lr 0.1 multiplied by 0.1 at epochs 80 and 120, 160 epochs, batch 128, weight decay
1e-4 on the trainable tensors only, random crop 32 with 4-pixel padding + horizontal flip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rfprobe.data import DATASETS
from rfprobe.errors import RfprobeError
from rfprobe.models import BN_INITS
from rfprobe.normalization import Normalization, for_dataset, from_options
from rfprobe.trainable import ALSO, MODES

RECIPE_EPOCHS = 160
RECIPE_MILESTONES = (80, 120)

# Fields that define what is trained; a resumed run must agree on every one of them.
TRAINING_FIELDS = ("arch", "mode", "dataset", "limit", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                   "milestones", "lr_factor", "augment", "seed", "bn_init", "random_k", "also", "skip_init_gain",
                   "dropout", "normalization", "mean", "std")


@dataclass
class Config:
    arch: str
    mode: str = "all"
    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = False
    out: str | None = None
    limit: int | None = None
    test_limit: int | None = None
    epochs: int = RECIPE_EPOCHS
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] | None = None
    """epochs at which the lr is multiplied by `lr_factor`; None: (80, 120) scaled by epochs / 160"""
    lr_factor: float = 0.1
    augment: bool = True
    seed: int = 0
    bn_init: str = "uniform"
    random_k: int = 2
    also: tuple[str, ...] = ()
    skip_init_gain: float | None = None
    """nf_* architectures: initial value of the learnable skip gain (None: the model's default, 0)"""
    dropout: float | None = None
    """nf_* architectures: dropout before `fc` (None: the model's default, none)"""
    normalization: str | None = None
    """input normalisation preset (rfprobe.normalization.PRESETS); None: the dataset's default"""
    mean: tuple[float, ...] | None = None
    """per-channel input mean (pixel / 255), with `std`, instead of a preset"""
    std: tuple[float, ...] | None = None
    eval_every: int = 1
    save_every: int = 10
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.also = tuple(self.also)
        if self.milestones is None:
            self.milestones = tuple(round(m * self.epochs / RECIPE_EPOCHS) for m in RECIPE_MILESTONES)
        self.milestones = tuple(sorted(int(m) for m in self.milestones))
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    def validate(self) -> None:
        """Raise RfprobeError (one line) for any value that cannot work, before anything heavy happens."""
        if self.mode not in MODES:
            raise RfprobeError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.dataset not in DATASETS:
            raise RfprobeError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.bn_init not in BN_INITS:
            raise RfprobeError(f"unknown --bn-init {self.bn_init!r}; choose one of {', '.join(BN_INITS)}")
        bad_also = [a for a in self.also if a not in ALSO]
        if bad_also:
            raise RfprobeError(f"unknown --also {bad_also[0]!r}; choose from {', '.join(ALSO)}")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "eval-batch-size": self.eval_batch_size,
                    "random-k": self.random_k}
        for name, value in positive.items():
            if value < 1:
                raise RfprobeError(f"--{name} must be at least 1, got {value}")
        for name, value in {"eval-every": self.eval_every, "save-every": self.save_every}.items():
            if value < 0:
                raise RfprobeError(f"--{name} must be 0 (never) or positive, got {value}")
        for name, value in {"lr": self.lr, "momentum": self.momentum, "weight-decay": self.weight_decay,
                            "lr-factor": self.lr_factor}.items():
            if not value >= 0:
                raise RfprobeError(f"--{name} must be non-negative, got {value}")
        options = [f"--{k.replace('_', '-')}" for k in self.model_options()]
        if options and not self.arch.startswith("nf_"):
            raise RfprobeError(f"{' and '.join(options)} apply to nf_* architectures only, not {self.arch}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise RfprobeError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.resume and self.overwrite:
            raise RfprobeError("--resume and --overwrite contradict each other; give one")
        self.input_normalization()

    def input_normalization(self) -> Normalization:
        """`--normalization` or `--mean/--std`, else the dataset's default; recorded in every checkpoint."""
        return from_options(self.normalization, self.mean, self.std) or for_dataset(self.dataset)

    def model_options(self) -> dict[str, float]:
        """Build options passed to `build_model` (only those given)."""
        return {k: v for k, v in (("skip_init_gain", self.skip_init_gain), ("dropout", self.dropout)) if v is not None}

    def output_dir(self) -> Path:
        """`--out`, else runs/<arch>_<mode>_<dataset>_s<seed> (the run is named by what it trains)."""
        if self.out:
            return Path(self.out)
        mode = self.mode.replace("+", "-") + (f"-k{self.random_k}" if self.mode == "random" else "")
        also = "".join(f"+{a}" for a in self.also)
        return Path("runs") / f"{self.arch}_{mode}{also}_{self.dataset.replace(':', '-')}_s{self.seed}"

    def lr_at(self, epoch: int) -> float:
        """lr * lr_factor ** (number of milestones <= epoch), epoch counted from 0 (MultiStepLR's rule)."""
        return self.lr * self.lr_factor ** sum(1 for m in self.milestones if m <= epoch)

    def hparams(self) -> dict:
        """Every field as a JSON-able value (tuples become lists), for the checkpoint's `hparams`."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def differences(self, recorded: dict) -> list[str]:
        """The training fields on which `recorded` hparams disagree with this config, as `--name A vs B`."""
        mine = self.hparams()
        out = []
        for name in TRAINING_FIELDS:
            if name in recorded and recorded[name] != mine[name]:
                out.append(f"--{name.replace('_', '-')} {recorded[name]} (recorded) vs {mine[name]} (now)")
        return out
