"""Datasets held in memory as tensors, and device-side batching with the usual normalisation.

- `cifar10`, `cifar100`: from a data root (argument, else $RFPROBE_DATA, else ~/.cache/rfprobe) in either
  official format, the python version (`cifar-10-batches-py`, what torchvision downloads) or the binary
  version (`cifar-10-batches-bin`); `download=True` uses torchvision's downloader.
- `synthetic`: the embedded default, generated from a seed with no files (see `make_synthetic`).
- `toy2d[:moons|circles|spirals|blobs]`: 2-D points for MLP partition studies (see `make_toy2d`).
- `imagefolder`: a folder of images, one sub-folder per class, *not* held in memory: `x` is an
  `rfprobe.imagefolder.ImageFolderSource` decoded in DataLoader workers as `batches` streams it.

Images are uint8 `(N, 3, 32, 32)`; toy points float32 `(N, 2)`; labels int64. `batches` yields float
batches on the device, normalised per channel with the Data's `normalization` (the dataset's default until
`with_normalization` sets a checkpoint's own: rfprobe.normalization).
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from rfprobe.errors import DataError, RfprobeError
from rfprobe.normalization import Normalization, attrs, for_dataset

if TYPE_CHECKING:
    from rfprobe.imagefolder import ImageFolderSource

SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TOY2D_KINDS = ("moons", "circles", "spirals", "blobs")
DATASETS = ("cifar10", "cifar100", "synthetic", "toy2d", *(f"toy2d:{k}" for k in TOY2D_KINDS), "imagefolder")
SYNTHETIC_SIZES = {"train": 50_000, "test": 10_000}


@dataclass(frozen=True)
class Data:
    """One split of a dataset, in memory (`x` a tensor) or streamed from files (`x` an ImageFolderSource)."""

    name: str
    split: str
    x: "torch.Tensor | ImageFolderSource"
    y: torch.Tensor
    classes: tuple[str, ...]
    normalization: Normalization
    source: str
    normalization_source: str = "dataset default"
    """where `normalization` came from: the dataset's default, a checkpoint's record, an option"""
    measurement: tuple = ()
    """(name, value) pairs a result records of how the model was measured on it (rfprobe.normstats)"""
    workers: int = 0
    """DataLoader worker processes decoding a streamed dataset (0: in the main process)"""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def streamed(self) -> bool:
        return not isinstance(self.x, torch.Tensor)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalization.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalization.std

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    def with_normalization(self, normalization: Normalization, source: str = "option") -> "Data":
        """The same examples, normalised with `normalization` (one value, or one per input channel)."""
        if not normalization.fits(self.channels):
            raise RfprobeError(f"normalisation {normalization.describe()} has {len(normalization.mean)} values but "
                               f"{self.name} has {self.channels} input channels")
        return replace(self, normalization=normalization, normalization_source=source)

    def normalization_attrs(self) -> dict[str, str]:
        """What a result records of the input normalisation (`normalization`, `_mean`, `_std`, `_source`), of
        how the model was measured, and for an image folder the folder, its size, the transform and the files
        that did not decode (rfprobe.imagefolder.describe)."""
        from rfprobe.imagefolder import describe

        folder = describe(self.classes, self.x) if self.streamed else {}
        return {**attrs(self.normalization, self.normalization_source), **dict(self.measurement), **folder}

    def to(self, device: str | torch.device) -> "Data":
        return replace(self, x=self.x if self.streamed else self.x.to(device), y=self.y.to(device))

    def select(self, index) -> "Data":
        """The examples at `index` (a slice or positions), streamed or not."""
        x = self.x.take(index) if self.streamed else self.x[index]
        return replace(self, x=x, y=self.y[index] if isinstance(index, slice) else self.y[torch.as_tensor(index)])

    def materialized(self) -> "Data":
        """The same examples held in memory (an image folder decoded here, undecodable files dropped): for
        passes that keep every point at once (partition, signal), on a `--limit` of the data."""
        if not self.streamed:
            return self
        from rfprobe.imagefolder import describe

        x, y = self.x.decode_all()
        return replace(self, x=x, y=y, measurement=self.measurement + tuple(describe(self.classes, self.x).items()))

    def subset(self, limit: int | None) -> "Data":
        """The first `limit` examples (the order is fixed, so a subset is reproducible)."""
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise RfprobeError(f"--limit must be at least 1, got {limit}")
        return self.select(slice(0, limit))


def default_root() -> Path:
    return Path(os.environ.get("RFPROBE_DATA") or Path.home() / ".cache" / "rfprobe")


DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU; a named device (cpu, cuda[:N], mps, xpu) that this torch cannot
    use is a clear error, raised before anything is loaded."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = device.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise RfprobeError(f"unknown --device {device!r}; use auto, cpu or cuda")
    if not _available(kind):
        raise RfprobeError(f"--device {device} asked for, but torch sees no {kind} device here; use --device cpu or auto")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise RfprobeError(f"--device {device!r} is not a device name torch understands (e.g. cuda:0)") from None
    if kind == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise RfprobeError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return resolved


# ---------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR python version is pickled numpy arrays; admit only what those need, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable CIFAR python batch ({e})") from None


_LAYOUT = {
    # name: (python dir, python files per split, binary dir, binary files per split, bytes of labels per record, label index)
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "cifar-10-batches-bin", {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
                1, 0),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]},
                 "cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, 2, 1),
}


def _find_dir(root: Path, name: str, dirname: str) -> Path | None:
    for candidate in (root / dirname, root, root / name / dirname):
        if candidate.name == dirname and candidate.is_dir():
            return candidate
    return None


def _load_python(directory: Path, files: list[str], name: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for file in files:
        path = directory / file
        if not path.exists():
            raise DataError(f"{path}: missing file of the {name} python version")
        batch = _unpickle(path)
        labels = batch.get(b"labels", batch.get(b"fine_labels"))
        if b"data" not in batch or labels is None:
            raise DataError(f"{path}: not a CIFAR python batch (no data/labels)")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_binary(directory: Path, files: list[str], name: str, label_bytes: int, label_index: int):
    record = label_bytes + 3072
    xs, ys = [], []
    for file in files:
        path = directory / file
        if not path.exists():
            raise DataError(f"{path}: missing file of the {name} binary version")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records (truncated?)")
        raw = raw.reshape(-1, record)
        ys.append(raw[:, label_index].astype(np.int64))
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar100_classes(directory: Path, python: bool) -> tuple[str, ...]:
    if python and (directory / "meta").exists():
        return tuple(n.decode() for n in _unpickle(directory / "meta")[b"fine_label_names"])
    names = directory / "fine_label_names.txt"
    if names.exists():
        return tuple(line.strip() for line in names.read_text().splitlines() if line.strip())
    return tuple(str(i) for i in range(100))


def _download(name: str, root: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as e:  # urllib/HTTP/OS/checksum errors all mean the same thing to the user
        raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); "
                        "without internet, copy the data there by hand") from None


PUBLISHED_SIZES = {"train": 50_000, "test": 10_000}
"""examples per split of CIFAR-10 and CIFAR-100 as published"""


def check_cifar(name: str, split: str, y: np.ndarray, classes, source: Path, strict: bool = False) -> None:
    """Refuse labels outside [0, classes) (a damaged file: no pass can score them); a split with fewer examples
    than published (a file cut on a record boundary) is one warning line, an error with `strict`."""
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: {int(bad.sum())} label(s) outside 0..{len(classes) - 1} in the {split} split (the "
                        f"first: example {first}, label {int(y[first])}); the data files are damaged")
    if len(y) < PUBLISHED_SIZES[split]:
        message = (f"{source}: the {name} {split} split holds {len(y):,} examples, fewer than the published "
                   f"{PUBLISHED_SIZES[split]:,} (a truncated file?)")
        if strict:
            raise DataError(message + "; refused with --strict")
        from rfprobe.loading import warn

        warn(message + "; measuring what is there (--strict refuses it)")


def load_cifar(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False,
               strict: bool = False) -> Data:
    root = Path(root).expanduser() if root else default_root()
    py_dir, py_files, bin_dir, bin_files, label_bytes, label_index = _LAYOUT[name]
    found_py, found_bin = _find_dir(root, name, py_dir), _find_dir(root, name, bin_dir)
    if found_py is None and found_bin is None and download:
        _download(name, root)
        found_py = _find_dir(root, name, py_dir)
    if found_py is not None:
        x, y = _load_python(found_py, py_files[split], name)
        classes = CIFAR10_CLASSES if name == "cifar10" else _cifar100_classes(found_py, True)
        source = found_py
    elif found_bin is not None:
        x, y = _load_binary(found_bin, bin_files[split], name, label_bytes, label_index)
        classes = CIFAR10_CLASSES if name == "cifar10" else _cifar100_classes(found_bin, False)
        source = found_bin
    else:
        raise DataError(
            f"{name} not found: looked for {py_dir}/ or {bin_dir}/ in {root}"
            f"{'' if root.exists() else ' (which does not exist)'}; pass --data-root DIR, set RFPROBE_DATA, "
            f"or add --download (needs internet)")
    check_cifar(name, split, y, classes, source, strict)
    return Data(name, split, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), classes, for_dataset(name),
                str(source))


# ---------------------------------------------------------------- synthetic


def make_synthetic(n: int, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """`n` 32x32 RGB uint8 images of 10 classes that only spatial structure tells apart.

    Class c is a sinusoidal grating: orientation (c mod 5) * 36 deg (+-6 deg jitter), spatial frequency
    2.5-3.5 cycles per image for c < 5 and 6-7.5 for c >= 5, random phase. Each image blends two random
    colours with the grating (background b ~ U[0.15, 0.85]^3, foreground b +- U[0.25, 0.6] per channel,
    clipped) and adds N(0, 0.08^2) pixel noise. Colours, phase and contrast are drawn independently of
    the class, so the mean colour carries no information: a classifier must see orientation and
    frequency. Labels are balanced (n/10 per class up to rounding) in a seeded random order. Train and
    test use different streams of the same seed."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + SPLITS.index(split) + 1)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=generator)]
    coords = torch.arange(32, dtype=torch.float32) - 15.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty((n, 3, 32, 32), dtype=torch.uint8)
    for start in range(0, n, 8192):
        labels = y[start:start + 8192]
        m = labels.shape[0]
        u = torch.rand((m, 13), generator=generator)
        theta = (labels % 5).float() * (math.pi / 5) + (u[:, 0] - 0.5) * (math.pi / 15)
        cycles = torch.where(labels < 5, 2.5 + u[:, 1], 6.0 + 1.5 * u[:, 1])
        phase = u[:, 2] * 2 * math.pi
        along = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
        pattern = 0.5 + 0.5 * torch.sin(2 * math.pi * cycles[:, None, None] * along / 32 + phase[:, None, None])
        background = 0.15 + 0.7 * u[:, 3:6]
        sign = torch.where(u[:, 6:9] < 0.5, -1.0, 1.0)
        foreground = (background + sign * (0.25 + 0.35 * u[:, 9:12])).clamp(0, 1)
        image = background[:, :, None, None] + (foreground - background)[:, :, None, None] * pattern[:, None]
        image += 0.08 * torch.randn(image.shape, generator=generator)
        images[start:start + m] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, y


def load_synthetic(split: str, seed: int = 0, n: int | None = None) -> Data:
    x, y = make_synthetic(n or SYNTHETIC_SIZES[split], seed=seed, split=split)
    classes = tuple(f"{('0', '36', '72', '108', '144')[c % 5]}deg-{'low' if c < 5 else 'high'}" for c in range(10))
    return Data("synthetic", split, x, y, classes, for_dataset("synthetic"), f"generated (seed={seed})")


# ---------------------------------------------------------------- toy 2-D


def make_toy2d(kind: str, n: int, noise: float = 0.1, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """`n` labelled 2-D points: `moons` (two interleaved half circles, as scikit-learn draws them),
    `circles` (radius 1 vs 0.5), `spirals` (two arms r = t / 3pi, t in [0.5, 3pi], the second rotated by pi),
    `blobs` (4 Gaussians at (+-1, +-1)); isotropic Gaussian noise of std `noise` added to every point."""
    if kind not in TOY2D_KINDS:
        raise RfprobeError(f"unknown toy2d kind {kind!r}; choose one of {', '.join(TOY2D_KINDS)}")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + SPLITS.index(split) + 101)
    classes = 4 if kind == "blobs" else 2
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    t = torch.rand(n, generator=g, dtype=torch.float64)
    if kind == "moons":
        angle = t * math.pi
        x = torch.where(y[:, None] == 0,
                        torch.stack([torch.cos(angle), torch.sin(angle)], 1),
                        torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], 1))
    elif kind == "circles":
        angle = t * 2 * math.pi
        radius = torch.where(y == 0, 1.0, 0.5)
        x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    elif kind == "spirals":
        s = 0.5 + t * (3 * math.pi - 0.5)
        angle = s + math.pi * y
        x = (s / (3 * math.pi))[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    else:
        centres = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
        x = centres[y]
    x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.float(), y


def load_toy2d(kind: str, split: str, n: int = 1000, noise: float = 0.1, seed: int = 0) -> Data:
    x, y = make_toy2d(kind, n, noise, seed, split)
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    return Data(f"toy2d:{kind}", split, x, y, classes, for_dataset("toy2d"), f"generated (n={n}, noise={noise}, seed={seed})")


# ---------------------------------------------------------------- entry points


def check_dataset_name(name: str) -> None:
    """Refuse (one line) a dataset name that is not one of DATASETS."""
    if name not in DATASETS:
        raise RfprobeError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise RfprobeError(f"unknown split {split!r}; use train or test")


def load_dataset(name: str, split: str = "test", *, root: str | os.PathLike | None = None, download: bool = False,
                 limit: int | None = None, seed: int = 0, n: int | None = None, noise: float = 0.1,
                 strict: bool = False, workers: int | None = None) -> Data:
    """Load one split of a dataset by name (see the module docstring); `limit` keeps the first N examples.
    `seed`, `n` and `noise` apply to the generated datasets only; `strict` refuses a CIFAR split smaller than
    published (`check_cifar`); `workers`: decoding processes of an image folder (default min(8, CPUs - 1))."""
    check_split(split)
    check_dataset_name(name)
    if limit is not None and limit < 1:
        raise RfprobeError(f"--limit must be at least 1, got {limit}")
    if name in ("cifar10", "cifar100"):
        data = load_cifar(name, split, root, download, strict)
    elif name == "imagefolder":
        from rfprobe.imagefolder import load_imagefolder

        data = load_imagefolder(root, split)
        data = replace(data, workers=default_workers() if workers is None else workers)
    elif name == "synthetic":
        data = load_synthetic(split, seed, n if n else (None if limit is None else min(limit, SYNTHETIC_SIZES[split])))
    else:
        data = load_toy2d(name.partition(":")[2] or "moons", split, n or 1000, noise, seed)
    return data.subset(limit)


def default_workers() -> int:
    """DataLoader workers for an image folder when `--workers` is not given: min(8, usable CPUs - 1), at least 1,
    leaving a core to the model (on 2 cores, 2 workers made a pass 1.33x a bare evaluation, 1 worker 1.05x:
    bench/bench_imagefolder.py, docs/perf.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def normalize(x: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> (x/255 - mean) / std per channel; float points -> (x - mean) / std; computed in `dtype`."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean_t = torch.as_tensor(mean, dtype=dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=dtype, device=x.device).view(shape)
    x = x.to(dtype).div_(255) if x.dtype == torch.uint8 else x.to(dtype)
    return (x - mean_t) / std_t


def batches(data: Data, batch_size: int, device: str | torch.device = "cpu", *, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False,
            dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised float batches `(x, y)` on `device`, in order (or a `generator`-seeded permutation).
    The dataset is moved to the device once; each batch is indexed and normalised there."""
    if batch_size < 1:
        raise RfprobeError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    if data.streamed:
        yield from _streamed_batches(data, batch_size, device, shuffle, generator, drop_last, dtype)
        return
    x, y = data.x.to(device), data.y.to(device)
    n = len(data)
    order = torch.randperm(n, generator=generator).to(device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = slice(start, min(start + batch_size, n)) if order is None else order[start:start + batch_size]
        yield normalize(x[index], data.mean, data.std, dtype), y[index]


def _streamed_batches(data: Data, batch_size: int, device: torch.device, shuffle: bool, generator, drop_last: bool,
                      dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` of an image folder: decoded by `data.workers` DataLoader processes (pinned memory on CUDA), a
    few batches ahead, so memory holds a few batches, not the dataset. Files that do not decode are dropped from
    their batch, named in one line each and recorded (`ImageFolderSource.skipped`)."""
    from rfprobe.imagefolder import drop_undecodable

    source = data.x
    loader = torch.utils.data.DataLoader(
        source, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
        num_workers=data.workers, pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=2 if data.workers else None)
    for x, y, errors in loader:
        x, y = drop_undecodable(x, y, errors, source.skipped)
        if len(y):
                yield normalize(x.to(device, non_blocking=True), data.mean, data.std, dtype), y.to(device)
