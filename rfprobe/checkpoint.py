"""The checkpoint format: one `.pt` file holding a plain dict of tensors and JSON-able values.

    format       "rfprobe.checkpoint/1"
    arch         registry name, e.g. "cifar_resnet_20", "timm:resnet18", "mypackage.nets:make_net"
    arch_kwargs  (optional) the keyword arguments the model was built with (JSON values)
    input_shape  (optional) one example's shape, e.g. [3, 32, 32]
    num_classes  int
    dataset, mode, bn_init, seed, epoch, metrics (dict), hparams (dict)
    state_dict   the model's state dict
    masks        (random mode) {param name: bool tensor of trainable elements}
    normalization {"name", "mean", "std"}: the input normalisation of training (rfprobe.normalization)
    ...          anything else JSON-able or a tensor (the trainer adds optimiser and RNG state)

Saved atomically (temp file + rename); loaded with `torch.load(weights_only=True)` only, so a file whose
pickle references code is refused, never executed. A bare state dict (OpenLTH, torchvision, or a
`{"state_dict": ...}` / `{"model_state_dict": ...}` wrapper) loads when `arch` names its architecture.

safetensors files (no pickle at all) load too: a bare one like a bare state dict, and one written by
`export_safetensors` as the rfprobe checkpoint it came from (its JSON metadata under the `rfprobe` key,
random-mode masks as tensors named `rfprobe.masks.<param>`).

An architecture that names the user's own code (`package.module:factory`) is imported only when the user
names it (`--arch`): a checkpoint that records one is refused otherwise, since importing it would run code
the file chose. A state dict whose BatchNorms lack their running statistics (Tent keeps only gamma/beta)
loads with those BNs set to normalise with each batch's own statistics (`Checkpoint.batch_stats_only`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rfprobe.atomic import atomic_file
from rfprobe.errors import CheckpointError, RfprobeError
from rfprobe.models import architecture_options, build_model

FORMAT = "rfprobe.checkpoint/1"
SAFETENSORS_MASK_PREFIX = "rfprobe.masks."
TRAINING_STATE = ("optimizer", "rng")
"""Checkpoint entries that only resume training; an export leaves them out."""
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on `device`) and everything recorded beside it."""

    path: Path
    sha256: str
    arch: str
    num_classes: int
    model: nn.Module
    mode: str = "unknown"
    dataset: str = "unknown"
    epoch: int | None = None
    metrics: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    """names of tensors holding NaN or inf (loaded anyway, with a warning)"""
    bare: bool = False
    """True when the file was a bare state dict, not an rfprobe checkpoint"""
    arch_kwargs: dict = field(default_factory=dict)
    """the keyword arguments the model was built with (--arch-kwargs, or recorded in the file)"""
    batch_stats_only: list[str] = field(default_factory=list)
    """BatchNorm layers the file gave no running statistics for: they normalise with each batch's own"""

    @property
    def label(self) -> str:
        return label_of(self.path)

    @property
    def normalization(self):
        """The recorded input normalisation (rfprobe.normalization.Normalization), None when none is recorded."""
        from rfprobe.normalization import from_meta

        return from_meta(self.meta.get("normalization"))


def label_of(path: str | os.PathLike) -> str:
    """A checkpoint's short name from its path alone: the run directory for `final.pt`, `run/init`,
    `run/epoch_XXX` for the others of a run directory, else the file stem."""
    path = Path(path)
    if path.stem in ("final", "init", "best") or path.stem.startswith("epoch_"):
        return f"{path.parent.name}/{path.stem}" if path.stem != "final" else path.parent.name
    return path.stem


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a fresh temporary file beside `path`, fsync, then rename over it (rfprobe.atomic)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, arch: str | None = None, num_classes: int | None = None,
                    **meta: Any) -> Path:
    """Write `model` and `meta` (JSON-able values or tensors) as an rfprobe checkpoint, atomically."""
    arch = arch or getattr(model, "rfprobe_arch", None)
    if arch is None:
        raise RfprobeError("save_checkpoint needs arch= for a model not built by rfprobe.models.build_model")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if num_classes is None:
        num_classes = _infer_num_classes(state)
    recorded = {}
    if getattr(model, "rfprobe_arch", None) == arch and architecture_options(arch) is None:  # a constructor outside rfprobe
        if getattr(model, "rfprobe_arch_kwargs", None):
            recorded["arch_kwargs"] = dict(model.rfprobe_arch_kwargs)
        if getattr(model, "rfprobe_input_shape", None) is not None:
            recorded["input_shape"] = list(model.rfprobe_input_shape)
    payload = {"format": FORMAT, "arch": arch, "num_classes": int(num_classes), **recorded, **meta, "state_dict": state}
    atomic_torch_save(payload, path)
    return Path(path)


def _is_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def _read_safetensors(path: Path) -> Any:
    """The tensors of a safetensors file: a bare state dict, or (when its metadata says it was exported by
    rfprobe) the checkpoint dict it came from."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        return tensors
    try:
        meta = json.loads(metadata.get("rfprobe", ""))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: safetensors file with unreadable rfprobe metadata ({e})") from None
    masks = {k[len(SAFETENSORS_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(SAFETENSORS_MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(SAFETENSORS_MASK_PREFIX)}
    return {**meta, "format": FORMAT, "state_dict": state, **({"masks": masks} if masks else {})}


def check_file(path: Path) -> None:
    """Refuse (one line) a checkpoint path that is missing or a directory, without reading it."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file (did you mean {path}/final.pt?)")


def _read(path: Path) -> Any:
    check_file(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if _is_safetensors(head) or path.suffix == ".safetensors":
        return _read_safetensors(path)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive, a pickle, "
                              "nor a safetensors file)")
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (the zip archive has no central directory)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise CheckpointError(
            f"{path}: refused: the file's pickle references code or objects outside plain tensors and "
            f"containers, which rfprobe never unpickles ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({message})") from None


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    """Rows of the last 2-D weight (the classifier), the convention of every model in the registry."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if not weights:
        raise CheckpointError("cannot infer the number of classes (no 2-D weight); pass --num-classes")
    return int(weights[-1].shape[0])


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _list(keys, most: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:most])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > most else shown


RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _without_running_stats(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The BatchNorm layers of `model` for which `state` has neither running mean nor variance while it has
    their other tensors (a Tent-style state dict): loaded, they normalise with batch statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and f"{name}.running_mean" not in state and f"{name}.running_var" not in state]


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path,
                    allow_missing_stats: bool = False) -> list[str]:
    """Load `state` strictly, with a one-line error naming missing / unexpected / mis-shaped keys. With
    `allow_missing_stats`, BatchNorms whose running statistics are all missing load with batch statistics;
    returns their names."""
    expected = model.state_dict()
    stats_missing = _without_running_stats(model, state) if allow_missing_stats else []
    skipped = {f"{name}.{key}" for name in stats_missing for key in RUNNING_STATS}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked") and k not in skipped]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        raise CheckpointError(f"{path}: state dict does not match {arch}: " + "; ".join(parts))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        raise CheckpointError(f"{path}: state dict does not match {arch}: shape mismatch (file vs model): {_list(shapes, 3)}")
    model.load_state_dict(state, strict=False)
    if stats_missing:
        from rfprobe.normstats import use_batch_statistics

        use_batch_statistics(model, stats_missing)
    return stats_missing


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_checkpoint(path: str | os.PathLike, *, arch: str | None = None, num_classes: int | None = None,
                    device: str | torch.device = "cpu", arch_kwargs: dict | None = None,
                    input_shape: tuple[int, ...] | None = None) -> Checkpoint:
    """Load an rfprobe checkpoint, or a bare state dict when `arch` names its architecture.

    `arch_kwargs` / `input_shape` (`--arch-kwargs`, `--input-shape`) build the model; by default those the
    checkpoint records. Raises CheckpointError (one line) for a missing, foreign, truncated or code-carrying
    file, for a recorded architecture in the user's own code that `arch` does not name, and for keys or shapes
    that do not match the architecture; warns (and records in `.nonfinite`) on NaN/inf."""
    from rfprobe.models.external import is_user_code

    path = Path(path)
    obj = _read(path)
    bare = not (isinstance(obj, dict) and obj.get("format") == FORMAT)
    if bare:
        if isinstance(obj, dict) and isinstance(obj.get("format"), str):
            raise CheckpointError(f"{path}: unsupported checkpoint format {obj['format']!r} (this rfprobe reads {FORMAT})")
        state = obj
        if isinstance(obj, dict) and not _is_state_dict(obj):
            state = next((obj[k] for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k))), None)
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: not an rfprobe checkpoint and holds no state dict of tensors")
        if arch is None:
            raise CheckpointError(f"{path}: a bare state dict with no architecture recorded; pass --arch (e.g. --arch cifar_resnet_20)")
        state = _strip_prefixes(state)
        meta: dict[str, Any] = {}
    else:
        state = obj.get("state_dict")
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: rfprobe checkpoint without a state_dict of tensors")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        recorded = meta.get("arch")
        if isinstance(recorded, str) and is_user_code(recorded) and arch != recorded:
            raise CheckpointError(f"{path}: records the architecture {recorded}, a function in code outside rfprobe, "
                                  f"which is imported only when you name it; pass --arch {recorded} to run it")
        if arch is not None and arch != meta.get("arch"):
            warnings.warn(f"{path}: --arch {arch} overrides the recorded architecture {meta.get('arch')}", stacklevel=2)
        arch = arch or meta.get("arch")
        if not isinstance(arch, str):
            raise CheckpointError(f"{path}: checkpoint records no architecture; pass --arch")
    num_classes = int(num_classes or meta.get("num_classes") or _infer_num_classes(state))
    kwargs = arch_kwargs if arch_kwargs is not None else (meta.get("arch_kwargs") if arch == meta.get("arch") else None)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: arch_kwargs must be a table of keyword arguments, got {type(kwargs).__name__}")
    shape = input_shape or (meta.get("input_shape") if arch == meta.get("arch") else None)
    model = build_model(arch, num_classes=num_classes, input_shape=tuple(shape) if shape else None, **(kwargs or {}))
    stats_missing = load_state_into(model, state, arch, path, allow_missing_stats=True)
    bad = nonfinite_tensors(state)
    if bad:
        warnings.warn(f"{path}: {len(bad)} tensor(s) hold NaN or inf values: {_list(bad, 4)}", stacklevel=2)
    model.to(device).eval()
    masks = meta.get("masks") or {}
    return Checkpoint(
        path=path, sha256=sha256_file(path), arch=arch, num_classes=num_classes, model=model,
        mode=str(meta.get("mode", "unknown")), dataset=str(meta.get("dataset", "unknown")),
        epoch=meta.get("epoch"), metrics=dict(meta.get("metrics") or {}), hparams=dict(meta.get("hparams") or {}),
        masks=dict(masks), meta=meta, nonfinite=bad, bare=bare, arch_kwargs=dict(kwargs or {}),
        batch_stats_only=stats_missing)


def export_safetensors(checkpoint: Checkpoint, path: str | os.PathLike) -> tuple[Path, list[str]]:
    """Write `checkpoint` as a safetensors file (atomically): its state dict and masks as tensors, every
    JSON-able metadata entry (arch, num_classes, mode, dataset, epoch, metrics, hparams, normalization, ...)
    as JSON under the metadata key `rfprobe`. Returns the path and the entries left out (training state such
    as the optimizer and RNG, and anything not JSON-able)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: v for k, v in checkpoint.meta.items() if k not in ("format", "state_dict", "masks")}
    meta.update(arch=checkpoint.arch, num_classes=checkpoint.num_classes)
    if checkpoint.bare:
        meta.update(mode=checkpoint.mode, dataset=checkpoint.dataset)
    kept, left_out = {}, []
    for key, value in meta.items():
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            left_out.append(key)
            continue
        if key in TRAINING_STATE:
            left_out.append(key)
            continue
        kept[key] = value
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in checkpoint.model.state_dict().items()}
    tensors.update({SAFETENSORS_MASK_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in checkpoint.masks.items()})
    metadata = {"format": FORMAT, "rfprobe": json.dumps(kept)}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path, sorted(left_out)
