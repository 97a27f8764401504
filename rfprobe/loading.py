"""Loading what a pass measures, shared by the CLI and studies: checkpoints (one at a time, warnings as one
stderr line each) and data options (validated before anything is loaded, normalised per checkpoint)."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from rfprobe.errors import RfprobeError


def warn(message: str) -> None:
    """One unwrapped line on stderr (rich would wrap it at the console width)."""
    print(f"rfprobe: warning: {message}", file=sys.stderr)


def build_options(arch_kwargs=None, input_shape=None) -> dict:
    """`--arch-kwargs` / `--input-shape` (text, or a TOML table / list) parsed and checked before anything is
    loaded: the keyword arguments `load_one` passes on to build the model (rfprobe.models.external)."""
    from rfprobe.models.external import parse_arch_kwargs, parse_input_shape

    return {"arch_kwargs": parse_arch_kwargs(arch_kwargs) or None, "input_shape": parse_input_shape(input_shape)}


def load_one(path: Path, arch: str | None = None, num_classes: int | None = None, device="cpu", *,
             arch_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None):
    """Load one checkpoint, turning NaN/inf warnings into one stderr line each (they are recorded too)."""
    from rfprobe.checkpoint import load_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = load_checkpoint(path, arch=arch, num_classes=num_classes, device=device, arch_kwargs=arch_kwargs,
                               input_shape=input_shape)
    for w in caught:
        warn(str(w.message))
    return ckpt


def note(message: str) -> None:
    """One unwrapped line on stderr that is not a warning (e.g. why a stored result is recomputed)."""
    print(f"rfprobe: {message}", file=sys.stderr)


def check_positive(**options: int | None) -> None:
    """`--limit`, `--batch-size`, ...: each given value must be at least 1 (option names from the keywords)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise RfprobeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def warn_dataset_mismatch(checkpoint, data) -> None:
    """One stderr line for a checkpoint trained on another dataset than the one it is measured on (when the
    shapes match: mismatched shapes are the pass's one-line error, not a warning)."""
    shape_fits = tuple(data.x.shape[1:]) == tuple(getattr(checkpoint.model, "rfprobe_input_shape", ()))
    if checkpoint.dataset not in ("unknown", data.name) and shape_fits:
        warn(f"{checkpoint.path} was trained on {checkpoint.dataset}; measuring it on {data.name}")


def check_head(checkpoint, data, explicit: bool) -> None:
    """Refuse (one line) to score a model whose head has another number of outputs than the dataset has
    classes (a 1000-class ImageNet head on CIFAR-10's 10 labels would report a meaningless accuracy), unless
    the user said how many classes the head has (`explicit`: --num-classes or num_classes in --inputs)."""
    if explicit or checkpoint.num_classes == len(data.classes):
        return
    raise RfprobeError(f"{checkpoint.path}: the model's head has {checkpoint.num_classes} outputs but {data.name} has "
                       f"{len(data.classes)} classes, so its accuracy would mean nothing; measure it on its own dataset, "
                       f"or pass --num-classes {checkpoint.num_classes} to score it anyway")


@dataclass(frozen=True)
class DataOptions:
    """The data options, one typed value shared by the passes' commands, `rfprobe compare` (a study's
    `Request.data`) and the passes: which dataset and split, where it lives, how many examples, the input
    normalisation override (`normalization`, or `mean`/`std`; None: each checkpoint's own), `strict`, and
    which statistics BatchNorms normalise with (`norm_stats`, rfprobe.normstats).
    Validated when made, so a bad value is one line before anything is loaded; `load` reads the data,
    `for_checkpoint` normalises it for one checkpoint. `DataOptions.of(o)` takes them from a command's values."""

    dataset: str | None = None
    split: str = "test"
    root: str | None = None
    download: bool = False
    limit: int | None = None
    normalization: str | None = None
    mean: str | None = None
    std: str | None = None
    strict: bool = False
    norm_stats: str = "running"
    workers: int | None = None
    image_size: int | None = None
    resize: int | None = None

    @classmethod
    def of(cls, o: SimpleNamespace, **given) -> "DataOptions":
        """The data options of a command's parsed values, with any field `given` instead (a study's `limit`
        is per pass, so its Request takes `limit=None`)."""
        check_positive(batch_size=getattr(o, "batch_size", None))
        values = dict(dataset=o.dataset, split=o.split, root=o.data_root, download=o.download,
                      limit=getattr(o, "limit", None), normalization=o.normalization, mean=o.mean, std=o.std,
                      strict=getattr(o, "strict", False), norm_stats=getattr(o, "norm_stats", None) or "running",
                      workers=getattr(o, "workers", None), image_size=getattr(o, "image_size", None),
                      resize=getattr(o, "resize", None))
        return cls(**{**values, **given})

    def __post_init__(self):
        from rfprobe.data import check_dataset_name, check_split
        from rfprobe.normalization import from_options
        from rfprobe.normstats import parse

        if self.root is not None:
            object.__setattr__(self, "root", str(self.root))
        if self.dataset is not None:
            check_dataset_name(self.dataset)
        check_split(self.split)
        check_positive(limit=self.limit, image_size=self.image_size, resize=self.resize)
        if self.workers is not None and self.workers < 0:
            raise RfprobeError(f"--workers must be 0 or more, got {self.workers}")
        if self.dataset not in (None, "imagefolder") and (self.image_size or self.resize):
            raise RfprobeError(f"--image-size and --resize apply to --dataset imagefolder, not {self.dataset}")
        if self.dataset == "imagefolder" and self.root is None and not os.environ.get("RFPROBE_DATA"):
            raise RfprobeError("--dataset imagefolder needs --data-root DIR: a folder with one sub-folder of images "
                               "per class (or DIR/train and DIR/val holding those)")
        from_options(self.normalization, self.mean, self.std)
        parse(self.norm_stats)

    @property
    def override(self):
        """The normalisation every checkpoint is measured with (rfprobe.normalization.Normalization), None:
        each checkpoint's own."""
        from rfprobe.normalization import from_options

        return from_options(self.normalization, self.mean, self.std)

    def resolved_root(self) -> str | None:
        """The data folder as an absolute path (what identifies the data in a study's fingerprint)."""
        return str(Path(self.root).expanduser().resolve()) if self.root else None

    def with_(self, **changes) -> "DataOptions":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def load(self, dataset: str | None = None):
        from rfprobe.data import load_dataset

        return load_dataset(self.dataset or dataset, self.split, root=self.root, download=self.download, limit=self.limit,
                            strict=self.strict, workers=self.workers)

    def for_checkpoint(self, checkpoint, data, batch_size: int | None = None, model=None):
        """`data` normalised as `checkpoint` needs (rfprobe.normalization.resolve), warning where it is a guess,
        with the checkpoint's model (or `model`) put in the `norm_stats` mode for batches of `batch_size`
        (rfprobe.normstats.apply; what it did is recorded with the data's normalisation attrs)."""
        from rfprobe.normalization import resolve
        from rfprobe.normstats import apply

        model = model if model is not None else getattr(checkpoint, "model", None)
        if data.streamed:
            from rfprobe.imagefolder import resolve_transform

            data = replace(data, x=data.x.with_transform(resolve_transform(model, self.image_size, self.resize)))
        if checkpoint is not None:
            warn_dataset_mismatch(checkpoint, data)
        resolved = resolve(checkpoint, data.name, self.override)
        if resolved.warning:
            warn(resolved.warning)
        data = data.with_normalization(resolved.normalization, resolved.source)
        if model is None:
            return data
        measured = apply(model, self.norm_stats, data, batch_size,
                         stats_missing=bool(getattr(checkpoint, "batch_stats_only", None)), note=note)
        return replace(data, measurement=tuple(measured.items()))


def each_checkpoint(paths: list[Path], arch, num_classes, device, data_options: DataOptions | None = None,
                    description: str = "", progress: bool = False, scores_labels: bool = False,
                    build: dict | None = None, batch_size: int | None = None):
    """Yield `(checkpoint, data)` one checkpoint at a time (memory bounded by one model), with `data` loaded
    once (`default_dataset(first checkpoint)` when `--dataset` is not given) and normalised for
    each checkpoint (`DataOptions.for_checkpoint`); `data` is None without `data_options`. With
    `scores_labels` each model's head is checked against the dataset's classes (`check_head`). `build`:
    `build_options` for the models; `batch_size`: the pass's (for `--norm-stats`)."""
    from rfprobe.progress import track

    data = None
    if data_options is not None and data_options.dataset is not None:
        data = data_options.load()
    for path in track(paths, len(paths), description, enabled=progress and len(paths) > 1):
        ckpt = load_one(path, arch, num_classes, device, **(build or {}))
        if data_options is None:
            yield ckpt, None
            continue
        if data is None:
            data = data_options.load(default_dataset(ckpt))
        if scores_labels:
            check_head(ckpt, data, explicit=num_classes is not None)
        yield ckpt, data_options.for_checkpoint(ckpt, data, batch_size)


def default_dataset(checkpoint) -> str:
    """The dataset a checkpoint is measured on when none is given: its training dataset if rfprobe knows it,
    else cifar10 (a bare state dict records none)."""
    from rfprobe.data import DATASETS

    return checkpoint.dataset if checkpoint.dataset in DATASETS else "cifar10"
