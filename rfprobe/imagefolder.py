"""Image folders (torchvision's ImageFolder layout: one sub-folder per class), decoded lazily and streamed.

`load_imagefolder(root, split)` lists the files (torchvision's `find_classes` / `make_dataset`, its image
extensions) and checks each file's first bytes against the image formats PIL reads, so that a file that is not
an image at all (empty, text, HTML saved as .jpg) is refused in one line before any work. Nothing is decoded
then: `ImageFolderSource` is a torch `Dataset` whose items are decoded in DataLoader worker processes
(`rfprobe.data.batches`) by the evaluation transform `EvalTransform` (PIL: RGB, resize the shorter side,
centre crop, uint8 tensor; normalisation happens on the device, as for CIFAR). A file whose header passes but
whose body will not decode (a truncated JPEG) comes back flagged: the batch drops it and the pass names it in
one line and counts it in its result (`undecodable_files`).

The transform is the model's own where it has one (`resolve_transform`: timm's `resolve_data_config`,
torchvision's weights' `transforms()`), else resize to crop / 0.875 and centre-crop the model's input size
(256 / 224 for ImageNet models); `--image-size` and `--resize` override it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rfprobe.errors import DataError

CROP_FRACTION = 0.875
"""resize = crop / 0.875 when nothing else says (ImageNet's 256 / 224)"""
DEFAULT_CROP = 224
SPLIT_FOLDERS = {"test": ("val", "test", "validation"), "train": ("train",)}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"P1", b"P2",
          b"P3", b"P4", b"P5", b"P6")
"""leading bytes of JPEG, PNG, GIF, BMP, TIFF and PPM/PGM files (WEBP: RIFF....WEBP, checked apart)"""


@dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to `resize` (PIL, antialiased `interpolation`), centre-crop `crop` x `crop`."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    source: str = "default"
    """where the sizes came from: the model's config, the options, or rfprobe's default"""

    def describe(self) -> str:
        return f"resize {self.resize} ({self.interpolation}), centre crop {self.crop} ({self.source})"

    def build(self):
        """The torchvision transform: PIL image -> uint8 tensor (3, crop, crop)."""
        from torchvision import transforms

        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose([transforms.Resize(self.resize, interpolation=mode, antialias=True),
                                   transforms.CenterCrop(self.crop), transforms.PILToTensor()])


def default_transform(image_size: int | None = None, resize: int | None = None, source: str = "default") -> EvalTransform:
    crop = image_size or DEFAULT_CROP
    return EvalTransform(resize or round(crop / CROP_FRACTION), crop, source=source)


def resolve_transform(model, image_size: int | None = None, resize: int | None = None) -> EvalTransform:
    """The evaluation transform for `model`: `--image-size` / `--resize` where given, else the model's own
    (timm's data config, torchvision's weights' transforms; both scaled to the model's input size where it was
    built for another), else its input size with resize = size / 0.875."""
    crop, size, interpolation, source = None, None, "bilinear", "default"
    arch = str(getattr(model, "rfprobe_arch", ""))
    if getattr(model, "pretrained_cfg", None) is not None:
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=model)
        crop = int(config["input_size"][-1])
        size = int(crop / config.get("crop_pct", CROP_FRACTION))
        interpolation = config.get("interpolation", "bilinear") if config.get("interpolation") in (
            "bilinear", "bicubic", "nearest") else "bilinear"
        source = "timm data config"
    elif arch.startswith("torchvision:"):
        from torchvision.models import get_model_weights

        try:
            preset = get_model_weights(arch.partition(":")[2]).DEFAULT.transforms()
            crop, size = int(preset.crop_size[0]), int(preset.resize_size[0])
            interpolation, source = preset.interpolation.value, "torchvision weights"
        except (ValueError, AttributeError, TypeError):
            pass
    shape = tuple(getattr(model, "rfprobe_input_shape", ()) or ())
    if crop is not None and len(shape) == 3 and int(shape[-1]) != crop:  # built for another size (--input-shape)
        crop, size, source = int(shape[-1]), round(int(shape[-1]) * size / crop), f"{source}, scaled to the model's input"
    if crop is None:
        crop = int(shape[-1]) if len(shape) == 3 else DEFAULT_CROP
        size = round(crop / CROP_FRACTION)
        source = "model input size" if len(shape) == 3 else "default"
    if image_size is not None or resize is not None:
        source = "options"
        if image_size is not None:
            crop, size = image_size, resize or round(image_size / CROP_FRACTION)
        else:
            size = resize
    return EvalTransform(size, crop, interpolation, source)


@dataclass(eq=False)
class ImageFolderSource(torch.utils.data.Dataset):
    """The files of one image folder split, decoded on demand: item i is (uint8 (3, crop, crop), label, error),
    error "" when the file decoded. `skipped` collects, in the process that iterates, the files that did not."""

    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    transform: EvalTransform
    skipped: list = field(default_factory=list, compare=False)

    def __post_init__(self):
        self._built = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), 3, self.transform.crop, self.transform.crop)

    def __getitem__(self, i: int):
        if self._built is None:
            self._built = self.transform.build()
        return decode(self.files[i], int(self.labels[i]), self._built, self.transform.crop)

    def take(self, index) -> "ImageFolderSource":
        """The files at `index` (a slice, or integer positions), as a source of their own."""
        positions = np.arange(len(self.files))[index if isinstance(index, slice) else np.asarray(index)]
        return replace(self, files=tuple(self.files[i] for i in positions), labels=self.labels[positions], skipped=[])

    def with_transform(self, transform: EvalTransform) -> "ImageFolderSource":
        return replace(self, transform=transform, skipped=[])

    def decode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image decoded in this process, (uint8 (N, 3, crop, crop), labels), undecodable files dropped
        and recorded in `skipped`."""
        items = [self[i] for i in range(len(self))]
        self.skipped.extend(error for _, _, error in items if error)
        kept = [(x, y) for x, y, error in items if not error]
        crop = self.transform.crop
        if not kept:
            return torch.zeros((0, 3, crop, crop), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept], dtype=torch.int64)


def decode(path: str, label: int, transform, crop: int) -> tuple[torch.Tensor, int, str]:
    """(uint8 image, label, "") for a file PIL decodes (as RGB, then `transform`), else (zeros of the crop's
    shape, label, "PATH: why") for the batch to drop and the pass to name."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB")), label, ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return torch.zeros((3, crop, crop), dtype=torch.uint8), label, f"{path}: {error}"


def drop_undecodable(x: torch.Tensor, y: torch.Tensor, errors: Sequence[str],
                     skipped: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoded batch without the images that did not decode (`errors` non-empty, as `decode` reports them):
    each is named in one line on stderr and appended to `skipped` when given."""
    failed = [error for error in errors if error]
    if not failed:
        return x, y
    from rfprobe.loading import warn

    for error in failed:
        warn(f"{error}; skipped")
    if skipped is not None:
        skipped.extend(failed)
    keep = torch.tensor([not error for error in errors])
    return x[keep], y[keep]


def _split_folder(root: Path, split: str) -> Path:
    """`root/val` (or test, validation) for the test split and `root/train` for train where they exist and hold
    class folders, else `root` itself."""
    for name in SPLIT_FOLDERS[split]:
        candidate = root / name
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return root


def _imagenet_names(base: Path, classes: Sequence[str]) -> tuple[str, ...]:
    """ImageNet's class names for its wnid folders where torchvision's parsed devkit (`DIR/meta.bin`, written by
    `torchvision.datasets.ImageNet`) lies beside them: `n01440764` -> `tench`; else the folder names."""
    meta = base / "meta.bin"
    if not meta.is_file():
        return tuple(classes)
    try:
        wnid_to_names, _ = torch.load(meta, weights_only=True)
    except Exception:  # a foreign or damaged meta.bin: keep the folder names rather than fail the run
        return tuple(classes)
    return tuple(wnid_to_names[c][0] if c in wnid_to_names and wnid_to_names[c] else c for c in classes)


def _not_an_image(path: str) -> str | None:
    """Why the file is not an image by its first bytes (None if it looks like one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not head:
        return "is empty"
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return "has no image header (JPEG, PNG, GIF, BMP, TIFF, PPM, WEBP)"


def load_imagefolder(root: str | os.PathLike | None, split: str = "test", transform: EvalTransform | None = None,
                     threads: int = 16):
    """One split of an image folder as a `rfprobe.data.Data` whose `x` is an `ImageFolderSource` (module
    docstring). Refuses (one line) a missing folder, one without class folders or images, and files whose
    header is not an image's."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    from rfprobe.data import Data
    from rfprobe.normalization import PRESETS

    root = root if root is not None else os.environ.get("RFPROBE_DATA")
    if not root:
        raise DataError("--dataset imagefolder needs --data-root DIR (or $RFPROBE_DATA): a folder with one sub-folder "
                        "of images per class (or DIR/train and DIR/val holding those)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist or is not a directory")
    folder = _split_folder(base, split)
    if folder == base and (base / "ILSVRC2012_img_val.tar").is_file():
        raise DataError(f"{base} holds ImageNet's archives, not its images: unpack them once with "
                        f"torchvision.datasets.ImageNet('{base}', split='val') (it writes {base}/val/<wnid>/ and meta.bin); "
                        "rfprobe does not unpack archives")
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:
        raise DataError(f"image folder {folder} has no class sub-folders (torchvision's ImageFolder layout: "
                        "DIR/<class>/<image>)") from None
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"image folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    files = tuple(path for path, _ in samples)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        reasons = list(pool.map(_not_an_image, files))
    bad = [(path, why) for path, why in zip(files, reasons) if why]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]} {bad[0][1]}{more}: not an image; move it out of {folder} and rerun")
    source = ImageFolderSource(str(folder.resolve()), files, np.array([label for _, label in samples], dtype=np.int64),
                               transform or default_transform())
    return Data("imagefolder", split, source, torch.as_tensor(source.labels), _imagenet_names(base, classes),
                PRESETS["imagenet"], str(folder.resolve()))


def describe(classes: Sequence[str], source: ImageFolderSource) -> dict[str, str | int]:
    """What a result records of an image folder: the folder, its images and classes, the transform, the files
    that did not decode."""
    return {"image_folder": source.root, "image_folder_images": len(source), "image_folder_classes": len(classes),
            "image_transform": source.transform.describe(), "undecodable_files": len(source.skipped),
            "undecodable_file_names": "; ".join(source.skipped[:20])}


@dataclass(eq=False)
class TrainImages(torch.utils.data.Dataset):
    """Training items of an image folder for one epoch: RandomResizedCrop(crop) (scale 0.08-1, ratio 3/4-4/3)
    and a horizontal flip with probability 1/2 (torchvision's, on the PIL image), else the evaluation transform.
    The draws for item i of epoch e come from torch's generator seeded by (seed, e, i) in a forked RNG, so they
    are the same whichever worker decodes the item, and a resumed run replays them exactly."""

    source: ImageFolderSource
    crop: int
    seed: int
    epoch: int = 0
    augment: bool = True

    def __len__(self) -> int:
        return len(self.source)

    def _transform(self):
        from torchvision import transforms

        if not self.augment:
            return default_transform(self.crop).build()
        return transforms.Compose([transforms.RandomResizedCrop(self.crop, antialias=True),
                                   transforms.RandomHorizontalFlip(), transforms.PILToTensor()])

    def __getitem__(self, i: int):
        if getattr(self, "_built", None) is None:
            self._built = self._transform()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return decode(self.source.files[i], int(self.source.labels[i]), self._built, self.crop)
