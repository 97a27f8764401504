"""All hyperparameters of a run in one dataclass; defaults are the BN-only paper's recipes (docs/science.md).

`cifar` (the default for CIFAR, synthetic and toy data): SGD momentum 0.9, lr 0.1 multiplied by 0.1 at epochs 80
and 120, 160 epochs, batch 128, weight decay 1e-4 on the trainable tensors only, random crop 32 with 4-pixel
padding + horizontal flip. `imagenet` (the default for `--dataset imagefolder`; OpenLTH's ImageNet recipe): batch
1024, lr 0.4 after 5 epochs of linear warm-up, multiplied by 0.1 at epochs 30, 60 and 80, 90 epochs, weight decay
1e-4, RandomResizedCrop + horizontal flip.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from rfprobe.data import DATASETS
from rfprobe.errors import RfprobeError
from rfprobe.models import architecture_options, check_build_options
from rfprobe.normalization import Normalization, for_dataset, from_options
from rfprobe.trainable import ALSO, MODES

RECIPES = {
    "cifar": {"epochs": 160, "batch_size": 128, "lr": 0.1, "warmup_epochs": 0, "milestones": (80, 120)},
    "imagenet": {"epochs": 90, "batch_size": 1024, "lr": 0.4, "warmup_epochs": 5, "milestones": (30, 60, 80)},
}
"""each recipe's schedule: the BN-only paper's CIFAR recipe and OpenLTH's ImageNet one (module docstring)"""
RECIPE_EPOCHS = RECIPES["cifar"]["epochs"]
RECIPE_MILESTONES = RECIPES["cifar"]["milestones"]


def scaled_milestones(epochs: int, recipe: str = "cifar") -> tuple[int, ...]:
    """The recipe's milestones (80, 120 of 160 epochs for cifar) scaled to `epochs`: round(m * epochs / E), at
    least 1, so the first epoch always runs at the base rate (rounding alone put a 1-epoch run at a tenth of it);
    a milestone at or past the last epoch never applies (a 1-epoch run keeps the base rate throughout)."""
    schedule = RECIPES[recipe]
    return tuple(max(1, round(m * epochs / schedule["epochs"])) for m in schedule["milestones"])


def option(default, help: str, *, training: bool = False, cli: str | None = None, **extra):
    """A Config field: its default, the `--help` text, whether it defines what is trained (a resumed run
    must agree on it), and how the command line spells it (`cli`: `comma` for comma-separated numbers,
    `repeat` for a repeatable option, `flag` for a --x/--no-x switch; default from the type)."""
    return field(default=default, metadata={"help": help, "training": training, "cli": cli, **extra})


@dataclass
class Config:
    """Every setting of a training run. `train.__main__` derives the command line from these fields (name,
    type, default, help), `--config FILE.toml` reads the same names, and the run directory keeps the resolved
    values as config.toml."""

    arch: str = option(None, "architecture, e.g. cifar_resnet_20, cifar_resnet_14_64, cifar_vgg_16, mlp_3x64, "
                             "torchvision:resnet18, timm:vit_tiny_patch16_224, or your own package.module:factory",
                       training=True)
    arch_kwargs: dict | None = option(None, "keyword arguments of the model's constructor, e.g. img_size=32,patch_size=4 "
                                            "(a table in --config)", training=True, cli="kwargs")
    input_shape: tuple[int, ...] | None = option(None, "one example's shape for a model from outside rfprobe, e.g. "
                                                       "3,32,32 (default: the dataset's)", training=True, cli="comma",
                                                 parse=int)
    mode: str = option("all", "all, bn, bn+output, norm (every normalisation layer's gamma/beta), norm+output, output, "
                              "none, gamma, beta, random", training=True)
    dataset: str = option("cifar10", "cifar10, cifar100, synthetic, toy2d[:kind], imagefolder (with --data-root DIR: "
                                     "DIR/train and DIR/val of class folders)", training=True)
    recipe: str | None = option(None, "cifar or imagenet: the defaults of epochs, batch size, lr, warm-up and "
                                      "milestones (default: imagenet for imagefolder, else cifar)", training=True)
    image_size: int | None = option(None, "imagefolder: the training crop (RandomResizedCrop) and evaluation crop "
                                          "(default: the model's input size, else 224)", training=True)
    workers: int | None = option(None, "imagefolder: DataLoader processes decoding images in each training process "
                                       "(default min(8, CPUs - 1))")
    data_root: str | None = option(None, "data directory (default $RFPROBE_DATA, else ~/.cache/rfprobe)")
    download: bool = option(False, "download CIFAR through torchvision if missing", cli="flag")
    out: str | None = option(None, "run directory (default runs/<arch>_<mode>_<dataset>_s<seed>)")
    limit: int | None = option(None, "train on the first N training examples", training=True)
    test_limit: int | None = option(None, "evaluate on the first N test examples")
    strict: bool = option(False, "refuse a CIFAR split with fewer examples than published (default: a warning line)",
                          cli="flag")
    epochs: int | None = option(None, "epochs (default: the recipe's, 160 or 90)", training=True)
    batch_size: int | None = option(None, "global batch size, split over processes (default: the recipe's, 128 or "
                                          "1024)", training=True)
    eval_batch_size: int = option(500, "batch size of evaluation")
    lr: float | None = option(None, "initial learning rate (default: the recipe's, 0.1 or 0.4)", training=True)
    warmup_epochs: int | None = option(None, "epochs of linear learning-rate warm-up: epoch e < W runs at lr (e + 1) / W "
                                             "(default: the recipe's, 0 or 5)", training=True)
    momentum: float = option(0.9, "SGD momentum", training=True)
    weight_decay: float = option(1e-4, "weight decay on the trainable elements only", training=True)
    milestones: tuple[int, ...] | None = option(
        None, f"epochs at which lr *= lr-factor (default the recipe's, {','.join(map(str, RECIPE_MILESTONES))} of "
              f"{RECIPE_EPOCHS} or 30,60,80 of 90, scaled by epochs)", training=True, cli="comma", parse=int)
    lr_factor: float = option(0.1, "lr multiplier at each milestone", training=True)
    augment: bool = option(True, "random crop (4-pixel padding) + horizontal flip; image folders: RandomResizedCrop "
                                 "+ horizontal flip", training=True, cli="flag")
    seed: int = option(0, "seed of the initialisation, masks, shuffling and augmentation", training=True)
    bn_init: str | None = option(None, "BN init of OpenLTH-style models: uniform (their default), fixed, oneone, "
                                       "positivenegative (refused for models without it, e.g. nf_*)", training=True)
    random_k: int = option(2, "random mode: trainable weights per output channel", training=True)
    also: tuple[str, ...] = option((), "also train: shortcut (the 1x1 shortcut convs), output", training=True,
                                   cli="repeat")
    skip_init_gain: float | None = option(None, "nf_* nets: initial skip gain (default 0, SkipInit)", training=True)
    dropout: float | None = option(None, "nf_* nets: dropout rate before the classifier (default none)", training=True)
    normalization: str | None = option(
        None, "input normalisation preset: cifar10, cifar100, imagenet (OpenLTH's for CIFAR), kuangliu, half, "
              "synthetic, none (default: the dataset's own)", training=True)
    mean: tuple[float, ...] | None = option(None, "per-channel input mean, e.g. 0.485,0.456,0.406 (with --std; "
                                                  "instead of --normalization)", training=True, cli="comma", parse=float)
    std: tuple[float, ...] | None = option(None, "per-channel input std, e.g. 0.229,0.224,0.225 (with --mean)",
                                           training=True, cli="comma", parse=float)
    eval_every: int = option(1, "evaluate every N epochs (and at the end); 0: never")
    save_every: int = option(10, "write epoch_XXX.pt every N epochs; 0: never")
    device: str = option("auto", "auto, cpu or cuda")
    amp: bool = option(True, "bf16 autocast on CUDA", cli="flag")
    channels_last: bool = option(True, "channels_last memory format (faster on CUDA and on CPU)", cli="flag")
    compile: bool = option(False, "torch.compile the model", cli="flag")
    sync_bn: bool = option(False, "with several processes: BN statistics over the global batch", cli="flag")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (slower on CUDA)", cli="flag")
    threads: int | None = option(None, "torch CPU threads per process")
    resume: bool = option(False, "continue the run in --out from its last checkpoint", cli="flag", stored=False)
    overwrite: bool = option(False, "delete the run in --out and start again", cli="flag", stored=False)
    progress: bool = option(True, "progress bar per epoch (on a terminal)", cli="flag")

    def __post_init__(self) -> None:
        self.also = tuple(self.also)
        if self.recipe is None:
            self.recipe = "imagenet" if self.dataset == "imagefolder" else "cifar"
        if self.recipe not in RECIPES:
            raise RfprobeError(f"unknown --recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size", "lr", "warmup_epochs"):
            if getattr(self, name) is None:
                setattr(self, name, RECIPES[self.recipe][name])
        if self.milestones is None:
            self.milestones = scaled_milestones(self.epochs, self.recipe)
        self.milestones = tuple(sorted(int(m) for m in self.milestones))
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if self.arch is None:
            raise RfprobeError("no architecture given: pass ARCH (e.g. cifar_resnet_20) or set arch in --config")
        if self.bn_init is None and "bn_init" in _options_of(self.arch):
            self.bn_init = "uniform"

    def validate(self) -> None:
        """Raise RfprobeError (one line) for any value that cannot work, before anything heavy happens."""
        if self.mode not in MODES:
            raise RfprobeError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.dataset not in DATASETS:
            raise RfprobeError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        bad_also = [a for a in self.also if a not in ALSO]
        if bad_also:
            raise RfprobeError(f"unknown --also {bad_also[0]!r}; choose from {', '.join(ALSO)}")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "eval-batch-size": self.eval_batch_size,
                    "random-k": self.random_k}
        for name, value in positive.items():
            if value < 1:
                raise RfprobeError(f"--{name} must be at least 1, got {value}")
        for name, value in {"eval-every": self.eval_every, "save-every": self.save_every,
                            "warmup-epochs": self.warmup_epochs, "workers": self.workers or 0}.items():
            if value < 0:
                raise RfprobeError(f"--{name} must be 0 (never) or positive, got {value}")
        for name, value in {"lr": self.lr, "momentum": self.momentum, "weight-decay": self.weight_decay,
                            "lr-factor": self.lr_factor}.items():
            if not value >= 0:
                raise RfprobeError(f"--{name} must be non-negative, got {value}")
        check_build_options(self.arch, self.model_options())
        if self.image_size is not None and (self.dataset != "imagefolder" or self.image_size < 1):
            raise RfprobeError(f"--image-size applies to --dataset imagefolder and must be at least 1, got "
                               f"{self.image_size} on {self.dataset}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise RfprobeError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.resume and self.overwrite:
            raise RfprobeError("--resume and --overwrite contradict each other; give one")
        self.input_normalization()

    def input_normalization(self) -> Normalization:
        """`--normalization` or `--mean/--std`, else the dataset's default; recorded in every checkpoint."""
        return from_options(self.normalization, self.mean, self.std) or for_dataset(self.dataset)

    def model_options(self) -> dict:
        """Build options passed to `build_model` (only those set): `--arch-kwargs` and the named ones."""
        return {**(self.arch_kwargs or {}), **{k: v for k, v in (
            ("bn_init", self.bn_init), ("skip_init_gain", self.skip_init_gain), ("dropout", self.dropout)) if v is not None}}

    def output_dir(self) -> Path:
        """`--out`, else runs/<arch>_<mode>_<dataset>_s<seed> (the run is named by what it trains)."""
        if self.out:
            return Path(self.out)
        mode = self.mode.replace("+", "-") + (f"-k{self.random_k}" if self.mode == "random" else "")
        also = "".join(f"+{a}" for a in self.also)
        arch = self.arch.replace(":", "-").replace("/", "-")
        return Path("runs") / f"{arch}_{mode}{also}_{self.dataset.replace(':', '-')}_s{self.seed}"

    def schedule(self) -> str:
        """The learning-rate schedule in words, e.g. `lr 0.1 for epochs 1-2, 0.001 for epoch 3` (epochs counted
        from 1 as the trainer prints them)."""
        spans, start = [], 0
        for epoch in range(1, self.epochs + 1):
            if epoch == self.epochs or self.lr_at(epoch) != self.lr_at(start):
                first, last = start + 1, epoch
                spans.append(f"{self.lr_at(start):g} for epoch{'s' if last > first else ''} "
                             f"{first}{f'-{last}' if last > first else ''}")
                start = epoch
        return "lr " + ", ".join(spans) + f" (milestones {', '.join(map(str, self.milestones)) or 'none'})"

    def lr_at(self, epoch: int) -> float:
        """lr * lr_factor ** (number of milestones <= epoch), epoch counted from 0 (MultiStepLR's rule), times
        (epoch + 1) / warmup_epochs during the warm-up."""
        warm = (epoch + 1) / self.warmup_epochs if epoch < self.warmup_epochs else 1.0
        return self.lr * warm * self.lr_factor ** sum(1 for m in self.milestones if m <= epoch)

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


TRAINING_FIELDS = tuple(f.name for f in fields(Config) if f.metadata["training"])
"""Fields that define what is trained; a resumed run must agree on every one of them."""


def field_types() -> dict[str, type]:
    """Each Config field's type, with `X | None` reduced to X (tuples stay `tuple[X, ...]`)."""
    hints = typing.get_type_hints(Config)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    return out


def coerce(name: str, value, kind, where: str):
    """A TOML value as the field's type (lists become tuples), or a one-line error."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        element = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise RfprobeError(f"{where}: {name} must be a list, got {value!r}")
        return tuple(coerce(name, v, element, where) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RfprobeError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    return value


def load_toml(path: Path, where: str) -> dict:
    """A TOML file's table (tomllib), or a one-line error starting with `where`."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RfprobeError(f"{where}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise RfprobeError(f"{where}: not valid TOML ({e})") from None


def read_toml(path: str | Path) -> dict:
    """The Config fields set in a TOML file (top-level keys, the Config field names), type-checked."""
    path = Path(path)
    table = load_toml(path, f"--config {path}")
    types = field_types()
    unknown = sorted(set(table) - set(types))
    if unknown:
        raise RfprobeError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; the settings are the trainer's "
                           "options with _ for - (e.g. batch_size)")
    return {name: coerce(name, value, types[name], f"--config {path}") for name, value in table.items()}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k) if not k.isidentifier() else k} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def to_toml(config: Config) -> str:
    """The resolved config as TOML (what `read_toml` reads back): every stored field that is not None.
    Written by hand: the standard library reads TOML but does not write it, and flat scalars and lists
    need no more than this."""
    lines = ["# python -m train --config this-file reproduces the run (rfprobe trainer settings)",
             f"# schedule: {config.schedule()}"]
    for f in fields(Config):
        value = getattr(config, f.name)
        if value is not None and f.metadata.get("stored", True):
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _options_of(arch: str) -> tuple[str, ...]:
    """The build options of `arch`, () for a name the registry does not know (validate() reports it)."""
    try:
        return architecture_options(arch) or ()
    except RfprobeError:
        return ()
