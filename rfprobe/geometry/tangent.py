"""The tangent forward of a piecewise-affine ReLU network: `Tangent(model)` is a float64, eval-mode copy (BN a
fixed affine map, `EvalBN`) whose forward returns the pre-activation z of every ReLU site; `Tangent.jvp(x, v)`
gives z(x) and J_z(x) v in one dual forward (`rfprobe.geometry.dual`)."""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.errors import RfprobeError
from rfprobe.graph import BATCHNORM_KINDS, BN_TYPES, WEIGHT_TYPES, ActivationSite, activation_kind, find_sites, norm_kind

from rfprobe.geometry.dual import Program
from rfprobe.geometry.evalbn import EvalBN

_LINEAR_MODULES = (*WEIGHT_TYPES, *BN_TYPES, nn.ReLU, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Identity,
                   nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Sequential)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_LINEAR_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, operator.add, operator.iadd, torch.add,
                     torch.flatten, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d,
                     torch.cat, operator.getitem, getattr, torch.mean, F.dropout}
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d, torch.max_pool2d}
_LINEAR_METHODS = {"flatten", "view", "reshape", "size", "relu", "relu_", "add", "add_", "mean", "contiguous"}
_INPLACE = {F.relu_: torch.relu, torch.relu_: torch.relu, operator.iadd: operator.add}


_SMOOTH_FUNCTIONS = {F.softmax: "softmax (attention)", torch.softmax: "softmax (attention)",
                     F.scaled_dot_product_attention: "softmax attention", F.layer_norm: "LayerNorm",
                     F.group_norm: "GroupNorm", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
                     F.tanh: "tanh"}


def _not_piecewise_linear(graph: fx.GraphModule, modules: dict) -> str | None:
    """The first operation that makes a network not piecewise linear (a smooth activation, a normalisation
    with per-example statistics, softmax attention), named for the user; None if there is none."""
    for node in graph.graph.nodes:
        kind = activation_kind(node, modules)
        if kind is not None and kind not in ("relu",):
            where = f"{node.target}: {type(modules[node.target]).__name__}" if node.op == "call_module" else node.name
            return f"a {kind} activation ({where})"
        if node.op == "call_module" and norm_kind(modules.get(node.target)) not in (None, *BATCHNORM_KINDS):
            return f"{norm_kind(modules[node.target])} {node.target} (statistics of each example)"
        if node.op == "call_function" and node.target in _SMOOTH_FUNCTIONS:
            return f"{_SMOOTH_FUNCTIONS[node.target]} ({node.name})"
    return None


def _check_piecewise_affine(graph: fx.GraphModule, arch: str) -> None:
    """Refuse (one line) any op that is not affine or ReLU: MaxPool adds boundaries this module does not track;
    a smooth activation, LayerNorm-like normalisation or attention leaves no linear regions at all."""
    modules = dict(graph.named_modules())
    smooth = _not_piecewise_linear(graph, modules)
    if smooth is not None:
        raise RfprobeError(f"partition: {arch} is not piecewise linear: {smooth} makes its linear regions undefined "
                           "(the exact region geometry needs Linear/Conv/BN/ReLU/addition/avg-pool networks)")
    for node in graph.graph.nodes:
        what = None
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, _MAXPOOL_MODULES):
                what = "max"
            elif not isinstance(module, _LINEAR_MODULES):
                what = f"{node.target} ({type(module).__name__})"
        elif node.op == "call_function":
            if node.target in _MAXPOOL_FUNCTIONS:
                what = "max"
            elif node.target not in _LINEAR_FUNCTIONS:
                what = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method" and node.target not in _LINEAR_METHODS:
            what = f".{node.target}()"
        if what == "max":
            raise RfprobeError(
                f"partition: {arch} uses max pooling ({node.target}), whose window ties add region boundaries "
                "this pass does not track, so its counts would be wrong; use a model without MaxPool "
                "(cifar_resnet_*, mlp_*)")
        if what is not None:
            raise RfprobeError(
                f"partition: {arch} contains {what}, which is not known to be affine or ReLU; the exact "
                "region geometry needs a piecewise-affine network (Linear/Conv/BN/ReLU/addition/avg-pool)")


def _functional_copy(graph: fx.GraphModule) -> None:
    """Make every op out-of-place (in-place ReLU / += would overwrite a pre-activation that is returned)."""
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            modules[node.target].inplace = False
        elif node.op == "call_function":
            if node.target in _INPLACE:
                node.target = _INPLACE[node.target]
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target in ("relu_", "add_"):
            node.target = node.target[:-1]


@dataclass
class Layer:
    """One ReLU site of a `Tangent`: its key, its units' shape (C, *spatial) and where they sit in `concat`."""

    site: ActivationSite
    shape: tuple[int, ...]
    offset: int
    weight: torch.Tensor | None = None
    """the feeding conv/linear weight (out, ...)"""
    bn: nn.Module | None = None
    """the BN between that weight and the ReLU, if any"""
    producer: nn.Module | None = None

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def spatial(self) -> int:
        return int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1


@dataclass
class Tangent:
    """A float64 eval-mode copy of `model` exposing its ReLU pre-activations (see the module docstring)."""

    net: fx.GraphModule
    layers: list[Layer]
    input_shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype = torch.float64
    n_units: int = 0
    has_input: list = field(default_factory=list)
    """per layer: whether the graph returns the feeding conv/linear layer's input"""
    _weight_norms: list = field(default_factory=list)
    program: Program | None = None

    @classmethod
    def from_model(cls, model: nn.Module, device=None, dtype=torch.float64) -> "Tangent":
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        net_model = copy.deepcopy(model).to(device=device, dtype=dtype).eval().requires_grad_(False)
        sites = find_sites(net_model)
        graph = sites.graph
        _check_piecewise_affine(graph, arch)
        _functional_copy(graph)
        if not sites.relu:
            raise RfprobeError(f"partition: {arch} has no ReLU, so it has no linear-region boundaries to measure")
        nodes = {node.name: node for node in graph.graph.nodes}
        modules = dict(graph.named_modules())
        pre, inputs, layers = [], [], []
        for site in sites.relu:
            z = nodes[site.node].args[0]
            pre.append(z)
            layer = Layer(site, (), 0)
            weight_node = z
            if z.op == "call_module" and isinstance(modules[z.target], BN_TYPES):
                layer.bn = modules[z.target]
                weight_node = z.args[0]
            if weight_node.op == "call_module" and isinstance(modules[weight_node.target], WEIGHT_TYPES):
                layer.producer = modules[weight_node.target]
                inputs.append(weight_node.args[0])
            else:
                layer.bn = None
                inputs.append(None)
            layers.append(layer)
        output = next(n for n in graph.graph.nodes if n.op == "output")
        output.args = ((output.args[0], tuple(pre), tuple(n for n in inputs if n is not None)),)
        for node in graph.graph.nodes:
            if node.op == "call_module" and isinstance(modules[node.target], BN_TYPES):
                if not modules[node.target].track_running_stats or modules[node.target].running_var is None:
                    raise RfprobeError(f"partition: {arch}: BN {node.target} keeps no running statistics, so "
                                       "it is not an affine map in eval mode")
                graph.delete_submodule(node.target)
                graph.add_submodule(node.target, EvalBN(modules[node.target]))
        graph.recompile()
        tf = cls(graph, layers, tuple(model.rfprobe_input_shape), device, dtype)
        tf.has_input = [i is not None for i in inputs]
        with torch.no_grad():
            _, zs, _ = graph(torch.zeros((1, *tf.input_shape), device=device, dtype=dtype))
        offset = 0
        for layer, z in zip(layers, zs):
            layer.shape = tuple(z.shape[1:])
            layer.offset = offset
            offset += layer.size
            if layer.producer is not None:
                layer.weight = layer.producer.weight.detach()
        tf.n_units = offset
        tf.program = Program(graph, [layer.site.node for layer in layers], tf.input_shape, dtype, device)
        return tf

    # ------------------------------------------------------------ forward passes

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype).reshape(-1, *self.input_shape)

    def forward(self, x: torch.Tensor, with_inputs: bool = False):
        """(logits, [z per layer, flattened to (B, units)]) and, if asked, [layer input or None]."""
        with torch.no_grad():
            logits, zs, hs = self.net(self._cast(x))
        zs = [z.flatten(1) for z in zs]
        return (logits, zs, self._spread_inputs(hs)) if with_inputs else (logits, zs)

    def _spread_inputs(self, hs):
        it = iter(hs)
        return [next(it) if has else None for has in self.has_input]

    def jvp(self, x: torch.Tensor, v: torch.Tensor):
        """(z, dz): every layer's pre-activations z(x) (P, units) and J_z(x) v (P r, units) for points x (P, ...)
        and r directions v per point (point-major), by one dual forward (`rfprobe.geometry.dual`)."""
        with torch.no_grad():
            return self.program.dual(self._cast(x), self._cast(v))

    def signs(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """The activation pattern (z > 0) of every unit at each point, (N, units) bool."""
        out = []
        for start in range(0, x.shape[0], batch):
            _, zs = self.forward(x[start:start + batch])
            out.append(torch.cat(zs, 1) > 0)
        return torch.cat(out)

    def rows(self, minimum: int = 1) -> int:
        """Points per JVP that keep each (points, units) float64 tensor near 64 MB (at least `minimum`)."""
        return max(minimum, min(1 << 14, (1 << 23) // max(self.n_units, 1)))

    def layer_of_unit(self) -> np.ndarray:
        return np.concatenate([np.full(layer.size, i) for i, layer in enumerate(self.layers)])

    def weight_norms(self) -> list[torch.Tensor | None]:
        """||w_k|| per channel of each layer's feeding conv/linear (over its fan-in), None where there is none."""
        if not self._weight_norms:
            self._weight_norms = [None if l.weight is None else l.weight.flatten(1).norm(dim=1) for l in self.layers]
        return self._weight_norms
