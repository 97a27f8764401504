"""Trainable modes: which parameter tensors (and, for `random`, which elements) a mode trains.

Shared by the trainer (`train/`) and `rfprobe info`.

| mode       | trains                                                                                 |
| ---------- | -------------------------------------------------------------------------------------- |
| all        | every parameter                                                                        |
| bn         | gamma and beta of every BatchNorm (shortcut BNs included); refused on a net without BN  |
| norm       | gamma and beta of every normalisation layer, whatever its kind (BN, GroupNorm,          |
|            | LayerNorm, RMSNorm, InstanceNorm; rfprobe.graph.norm_kind)                             |
| norm+output| norm plus the output layer                                                             |
| gamma/beta | only gamma / only beta of every BN                                                     |
| bn+output  | bn plus the output layer (the last Linear in forward order)                            |
| output     | the output layer only                                                                  |
| none       | nothing                                                                                |
| random     | in every conv and linear weight, exactly k random elements per output channel (dim 0);  |
|            | biases and BN stay frozen. k=2 matches BN's two parameters per channel.                |

`also=("shortcut",)` adds the projection-shortcut convs (the convs feeding `shortcut`-role BNs) whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from rfprobe.errors import RfprobeError
from rfprobe.graph import WEIGHT_TYPES, Sites, find_sites, norm_kind

MODES = ("all", "bn", "bn+output", "norm", "norm+output", "output", "none", "gamma", "beta", "random")
ALSO = ("shortcut", "output")
GROUPS = ("bn", "norm", "output", "other")


@dataclass
class Trainable:
    mode: str
    tensors: tuple[str, ...]
    """parameter names that receive gradients"""
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """per-element bool masks for tensors trained only in part (the `random` mode)"""

    def count(self, model: nn.Module) -> int:
        params = dict(model.named_parameters())
        return sum(int(self.masks[n].sum()) if n in self.masks else params[n].numel() for n in self.tensors)

    def element_mask(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """Bool mask of the trainable elements of parameter `name` (all False if it is frozen)."""
        if name in self.masks:
            return self.masks[name].to(param.device)
        return torch.full_like(param, name in self.tensors, dtype=torch.bool)


def parameter_groups(model: nn.Module, sites: Sites | None = None) -> dict[str, str]:
    """Map every parameter name to `bn` (a BatchNorm's gamma/beta), `norm` (another normalisation layer's),
    `output` (the last Linear), or `other`."""
    sites = sites or find_sites(model)
    kinds = {name: norm_kind(m) for name, m in model.named_modules()}
    groups = {}
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0]
        if kinds.get(owner) in ("batchnorm", "frozen_batchnorm"):
            groups[name] = "bn"
        elif kinds.get(owner) is not None:
            groups[name] = "norm"
        elif sites.output_layer is not None and owner == sites.output_layer:
            groups[name] = "output"
        else:
            groups[name] = "other"
    return groups


def random_masks(model: nn.Module, k: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """For every conv/linear weight, a bool mask with exactly `min(k, fan_in)` True per output channel,
    chosen uniformly at random (the first k of a random permutation of each channel's fan-in)."""
    if k < 1:
        raise RfprobeError(f"--random-k must be at least 1, got {k}")
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_TYPES):
            weight = module.weight
            rows = weight.shape[0]
            fan_in = weight[0].numel()
            chosen = torch.rand((rows, fan_in), generator=generator).argsort(dim=1)[:, :min(k, fan_in)]
            mask = torch.zeros((rows, fan_in), dtype=torch.bool)
            mask.scatter_(1, chosen, True)
            masks[f"{name}.weight"] = mask.view_as(weight.detach().cpu())
    return masks


def select(model: nn.Module, mode: str, *, also: tuple[str, ...] = (), k: int = 2,
           generator: torch.Generator | None = None, masks: dict[str, torch.Tensor] | None = None,
           sites: Sites | None = None) -> Trainable:
    """The tensors (and masks) that `mode` trains in `model`; `masks` reuses a `random` mode's stored masks."""
    if mode not in MODES:
        raise RfprobeError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    unknown = [a for a in also if a not in ALSO]
    if unknown:
        raise RfprobeError(f"unknown --also {unknown[0]!r}; choose from {', '.join(ALSO)}")
    sites = sites or find_sites(model)
    groups = parameter_groups(model, sites)
    if mode in ("bn", "bn+output", "gamma", "beta") and "bn" not in groups.values():
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        raise RfprobeError(f"mode {mode} trains BatchNorm parameters, but {arch} has no BatchNorm layers "
                           "(mode norm trains every normalisation layer's)")
    if mode in ("norm", "norm+output") and not {"bn", "norm"} & set(groups.values()):
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        raise RfprobeError(f"mode {mode} trains normalisation parameters, but {arch} has no trainable normalisation "
                           "layers")
    names = [n for n, _ in model.named_parameters()]
    chosen: list[str]
    element_masks: dict[str, torch.Tensor] = {}
    if mode == "all":
        chosen = names
    elif mode == "none":
        chosen = []
    elif mode == "random":
        element_masks = dict(masks) if masks else random_masks(model, k, generator)
        chosen = [n for n in names if n in element_masks]
    else:
        wanted = {"bn": {"bn"}, "bn+output": {"bn", "output"}, "norm": {"bn", "norm"},
                  "norm+output": {"bn", "norm", "output"}, "output": {"output"}, "gamma": {"bn"}, "beta": {"bn"}}[mode]
        chosen = [n for n in names if groups[n] in wanted]
        if mode == "gamma":
            chosen = [n for n in chosen if n.endswith("weight")]
        elif mode == "beta":
            chosen = [n for n in chosen if n.endswith("bias")]
    extra: list[str] = []
    if "shortcut" in also:
        convs = {s.producer for s in sites.bn if s.role == "shortcut" and s.producer}
        extra += [n for n in names if n.rpartition(".")[0] in convs]
    if "output" in also:
        extra += [n for n in names if groups[n] == "output"]
    for name in extra:
        element_masks.pop(name, None)
        if name not in chosen:
            chosen.append(name)
    order = {n: i for i, n in enumerate(names)}
    return Trainable(mode=mode, tensors=tuple(sorted(chosen, key=order.get)), masks=element_masks)


def apply(model: nn.Module, trainable: Trainable) -> None:
    """Set `requires_grad` on exactly the tensors that `trainable` trains (in part or whole)."""
    wanted = set(trainable.tensors)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
