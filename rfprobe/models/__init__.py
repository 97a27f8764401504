"""Model registry: every architecture is built from one string by `build_model`.

Names: `cifar_resnet_N[_W]`, `cifar_preact_resnet_N[_W]`, `cifar_vgg_{11,13,16,19}`, `mlp_DxW[_nobn]`,
`nf_resnet_N[_W]`, `nf_he_resnet_N[_W]` (rfprobe's own), `torchvision:<name>`, `timm:<name>` and a user's own
factory `package.module:function` or `path/to/file.py:function` (`rfprobe.models.external`), plus whatever
other modules add with `register`; exactly one family's pattern may match a name, and each family says the
(depth, width) its names give (`architecture_shape`). Each built model carries `rfprobe_arch` (its name),
`rfprobe_arch_kwargs` (the keyword arguments it was built with) and `rfprobe_input_shape` (one example's
shape) so passes can trace it with a dummy input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from rfprobe.errors import RfprobeError

BN_INITS = ("uniform", "fixed", "oneone", "positivenegative")


def _no_shape(m: re.Match) -> tuple[int, int]:
    return -1, -1


@dataclass(frozen=True)
class Architecture:
    """A family of architectures: the names it builds (`pattern`, shown as `example`), concrete `names` for
    `rfprobe archs`, its build options and the input shape and (depth, width) a name gives."""

    pattern: str
    example: str
    description: str
    build: Callable[..., nn.Module]
    input_shape: Callable[[re.Match, dict], tuple[int, ...]]
    options: tuple[str, ...] | None
    """the build options it takes (`bn_init` for the OpenLTH-initialised models); anything else is refused.
    None: any keyword argument, passed to a constructor rfprobe does not own (torchvision, timm, user code)"""
    shape: Callable[[re.Match], tuple[int, int]] = _no_shape
    """(depth, width) the name gives: depth in layers as the family counts it, width of the first stage / layer"""
    names: tuple[str, ...] = ()
    """concrete names that build (listed by `rfprobe archs`, each checked by the tests)"""


_REGISTRY: list[Architecture] = []


def register(pattern: str, example: str, description: str, input_shape=lambda m, options: (3, 32, 32),
             options: tuple[str, ...] = ("bn_init",), shape=_no_shape, names: tuple[str, ...] = ()):
    """Decorator: `build(match, num_classes, **options)` makes the architecture whose name fully matches
    `pattern`; `options` names the build options it takes, `shape(match)` its (depth, width)."""

    def wrap(build):
        _REGISTRY.append(Architecture(pattern, example, description, build, input_shape,
                                      None if options is None else tuple(options), shape,
                                      tuple(names)))
        return build

    return wrap


def architectures() -> tuple[Architecture, ...]:
    """Every registered family, in registration order."""
    return tuple(_REGISTRY)


def architecture_patterns() -> list[str]:
    return [f"{a.example} ({a.description})" for a in _REGISTRY]


def _lookup(name: str) -> tuple[Architecture, re.Match]:
    """The one family whose pattern fully matches `name`. Two matching families would be a registry bug (one
    would silently shadow the other), so that is an internal error, not a choice."""
    found = [(arch, match) for arch in _REGISTRY if (match := re.fullmatch(arch.pattern, name))]
    if len(found) > 1:
        raise RuntimeError(f"architecture {name!r} matches several registered patterns: "
                           f"{', '.join(a.pattern for a, _ in found)}")
    if found:
        return found[0]
    valid = "; ".join(architecture_patterns())
    raise RfprobeError(f"unknown architecture {name!r}; valid patterns: {valid}")


def architecture_shape(name: str) -> tuple[int, int]:
    """(depth, width) of the architecture `name` as its family defines them; (-1, -1) where the family does
    not say (torchvision models). An unknown name is a one-line error."""
    arch, match = _lookup(name)
    return arch.shape(match)


def init_openlth_(model: nn.Module, bn_init: str = "uniform") -> None:
    """OpenLTH's initialisation: kaiming-normal (fan_in, ReLU gain) conv/linear weights; BN per `bn_init`:
    uniform gamma~U[0,1], beta=0; fixed (1,0); oneone (1,1); positivenegative gamma~U[-1,1], beta=0."""
    check_bn_init(bn_init)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            with torch.no_grad():
                if bn_init in ("uniform", "positivenegative"):
                    module.weight.uniform_(0.0, 1.0)
                    if bn_init == "positivenegative":
                        module.weight.mul_(2).sub_(1)
                else:
                    module.weight.fill_(1.0)
                module.bias.fill_(1.0 if bn_init == "oneone" else 0.0)


def architecture_options(name: str) -> tuple[str, ...] | None:
    """The build options architecture `name` takes (e.g. ("bn_init",), ("skip_init_gain", "dropout")); None for
    a constructor outside rfprobe, which takes whatever keyword arguments it declares."""
    return _lookup(name)[0].options


def check_build_options(name: str, options: dict) -> None:
    """Refuse (one line) an unknown architecture, an option it does not take, an unknown `bn_init`."""
    taken = architecture_options(name)
    if taken is None:
        return
    ignored = sorted(set(options) - set(taken))
    if ignored:
        takes = f"it takes {', '.join(taken)}" if taken else "it takes no build options"
        raise RfprobeError(f"{name} does not use {', '.join('--' + o.replace('_', '-') for o in ignored)} ({takes})")
    check_bn_init(options.get("bn_init"))


def check_bn_init(bn_init: str | None) -> None:
    """Refuse (one line) a `bn_init` that is not one of BN_INITS (None: not given)."""
    if bn_init is not None and bn_init not in BN_INITS:
        raise RfprobeError(f"unknown --bn-init {bn_init!r}; choose one of {', '.join(BN_INITS)}")


def build_model(name: str, num_classes: int = 10, *, seed: int | None = None,
                input_shape: tuple[int, ...] | None = None, **options) -> nn.Module:
    """Build the architecture `name` with `num_classes` outputs at its initialisation.

    `seed` makes the initialisation reproducible without touching the global RNG. `options` are the
    architecture's build options (`--arch-kwargs`): `bn_init` (uniform, OpenLTH's default; fixed; oneone;
    positivenegative) for the OpenLTH-initialised models, `skip_init_gain` / `dropout` for nf_* models (an
    option the architecture does not take is refused); for torchvision, timm and user factories, keyword
    arguments of their constructor. `input_shape` (one example's shape) overrides the family's own."""
    check_build_options(name, options)
    arch, match = _lookup(name)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = arch.build(match, num_classes, **options)
        except (ValueError, TypeError) as e:
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise RfprobeError(f"{name}: {first}") from None
    if not isinstance(model, nn.Module):
        raise RfprobeError(f"{name}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    model.rfprobe_arch = name
    model.rfprobe_arch_kwargs = dict(options)
    shape = input_shape or getattr(model, "rfprobe_input_shape", None) or arch.input_shape(match, options)
    if shape is None:
        raise RfprobeError(f"{name}: the model does not say what input it takes; pass --input-shape (e.g. 3,32,32)")
    model.rfprobe_input_shape = tuple(int(d) for d in shape)
    return model


@register(r"cifar_resnet_(\d+)(?:_(\d+))?", "cifar_resnet_N[_W]",
          "OpenLTH CIFAR ResNet, depth N=6n+2, first-stage width W (default 16)",
          shape=lambda m: (int(m.group(1)), int(m.group(2) or 16)),
          names=("cifar_resnet_20", "cifar_resnet_56", "cifar_resnet_110", "cifar_resnet_14_64"))
def _cifar_resnet(m, num_classes, bn_init="uniform"):
    from rfprobe.models.cifar_resnet import CifarResNet

    model = CifarResNet(int(m.group(1)), int(m.group(2) or 16), num_classes)
    init_openlth_(model, bn_init)
    return model


@register(r"imagenet_resnet_(\d+)(?:_(\d+))?", "imagenet_resnet_D[_W]",
          "OpenLTH ImageNet ResNet (torchvision's layout), depth D in 18, 34, 50, 101, 152, 200, width W (default 64)",
          input_shape=lambda m, options: (3, 224, 224), shape=lambda m: (int(m.group(1)), int(m.group(2) or 64)),
          names=("imagenet_resnet_18", "imagenet_resnet_50"))
def _imagenet_resnet(m, num_classes, bn_init="uniform"):
    from rfprobe.models.imagenet_resnet import ImageNetResNet

    model = ImageNetResNet(int(m.group(1)), int(m.group(2) or 64), num_classes)
    init_openlth_(model, bn_init)
    return model


@register(r"cifar_vgg_(\d+)", "cifar_vgg_{11,13,16,19}", "OpenLTH CIFAR VGG with BatchNorm",
          shape=lambda m: (int(m.group(1)), 64), names=("cifar_vgg_11", "cifar_vgg_16"))
def _cifar_vgg(m, num_classes, bn_init="uniform"):
    from rfprobe.models.cifar_vgg import CifarVGG

    model = CifarVGG(int(m.group(1)), num_classes)
    init_openlth_(model, bn_init)
    return model


@register(r"mlp_(\d+)x(\d+)", "mlp_DxW", "D hidden Linear-BN-ReLU layers of width W, 2-D input",
          input_shape=lambda m, options: (options.get("in_features", 2),), options=("bn_init", "in_features"),
          shape=lambda m: (int(m.group(1)), int(m.group(2))), names=("mlp_2x8", "mlp_3x64"))
def _mlp(m, num_classes, bn_init="uniform", in_features=2):
    from rfprobe.models.mlp import MLP

    model = MLP(int(m.group(1)), int(m.group(2)), num_classes, in_features)
    init_openlth_(model, bn_init)
    return model


def _nf_resnet(m, num_classes, *, standardize, skip_init_gain=0.0, dropout=0.0):
    from rfprobe.models.nf_resnet import NFResNet

    return NFResNet(int(m.group(1)), int(m.group(2) or 16), num_classes, skip_init_gain=float(skip_init_gain),
                    dropout=float(dropout), standardize=standardize)


@register(r"nf_resnet_(\d+)(?:_(\d+))?", "nf_resnet_N[_W]",
          "normalizer-free CIFAR ResNet: Scaled-WS convs, alpha 0.2, skip gain init 0 (options skip_init_gain, "
          "dropout)", options=("skip_init_gain", "dropout"),
          shape=lambda m: (int(m.group(1)), int(m.group(2) or 16)), names=("nf_resnet_20", "nf_resnet_110"))
def _nf_resnet_ws(m, num_classes, **options):
    return _nf_resnet(m, num_classes, standardize=True, **options)


@register(r"nf_he_resnet_(\d+)(?:_(\d+))?", "nf_he_resnet_N[_W]",
          "nf_resnet_N[_W] with plain He-init convs (no weight standardisation, ReLU gain 1)",
          options=("skip_init_gain", "dropout"), shape=lambda m: (int(m.group(1)), int(m.group(2) or 16)),
          names=("nf_he_resnet_110",))
def _nf_resnet_he(m, num_classes, **options):
    return _nf_resnet(m, num_classes, standardize=False, **options)


@register(r"cifar_preact_resnet_(\d+)(?:_(\d+))?", "cifar_preact_resnet_N[_W]",
          "pre-activation (BN-ReLU-conv) CIFAR ResNet, cifar_resnet_N[_W] layout, OpenLTH init",
          shape=lambda m: (int(m.group(1)), int(m.group(2) or 16)), names=("cifar_preact_resnet_110",))
def _cifar_preact_resnet(m, num_classes, bn_init="uniform"):
    from rfprobe.models.preact_resnet import PreActResNet

    model = PreActResNet(int(m.group(1)), int(m.group(2) or 16), num_classes)
    init_openlth_(model, bn_init)
    return model


class _PlainHiddenLayer(nn.Module):
    """Linear (with bias) then ReLU: an `mlp_DxW_nobn` layer."""

    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.linear = nn.Linear(f_in, f_out)

    def forward(self, x):
        return torch.relu(self.linear(x))


@register(r"mlp_(\d+)x(\d+)_nobn", "mlp_DxW_nobn",
          "mlp_DxW without BN: Linear(with bias)-ReLU layers; kaiming-normal weights, PyTorch's default "
          "U(+-1/sqrt(fan_in)) biases", input_shape=lambda m, options: (options.get("in_features", 2),),
          options=("in_features",), shape=lambda m: (int(m.group(1)), int(m.group(2))), names=("mlp_2x8_nobn",))
def _mlp_nobn(m, num_classes, in_features=2):
    from rfprobe.models.mlp import MLP

    depth, width = int(m.group(1)), int(m.group(2))
    model = MLP(depth, width, num_classes, in_features)
    sizes = [in_features] + [width] * depth
    model.layers = nn.Sequential(*[_PlainHiddenLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
    init_openlth_(model)
    return model


from rfprobe.models import external  # noqa: E402,F401  (registers torchvision:, timm: and user factories)
