"""The tangent forward of a piecewise-affine ReLU network: `Tangent(model)` is a float64, eval-mode copy (BN a
fixed affine map, `EvalBN`) whose forward returns the pre-activation z of every ReLU site and the pair units of
every max-pool (`rfprobe.geometry.dual.max_pool_pairs`); `Tangent.jvp(x, v)` gives z(x) and J_z(x) v in one
dual forward (`rfprobe.geometry.dual`)."""

from __future__ import annotations

import copy
import operator
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.errors import RfprobeError
from rfprobe.graph import BATCHNORM_KINDS, BN_TYPES, WEIGHT_TYPES, ActivationSite, activation_kind, find_sites, norm_kind

from rfprobe.geometry.dual import Program, is_max_pool, max_pool_pairs, max_pool_window
from rfprobe.geometry.evalbn import EvalBN

_LINEAR_MODULES = (*WEIGHT_TYPES, *BN_TYPES, nn.ReLU, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Identity,
                   nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Sequential)
_LINEAR_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, operator.add, operator.iadd, torch.add,
                     torch.flatten, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d,
                     torch.cat, operator.getitem, getattr, torch.mean, F.dropout}
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
    """Refuse (one line) any op that is not affine, ReLU or a followed max-pool (`max_pool_window`): a smooth
    activation, LayerNorm-like normalisation or attention leaves no linear regions at all."""
    modules = dict(graph.named_modules())
    smooth = _not_piecewise_linear(graph, modules)
    if smooth is not None:
        raise RfprobeError(f"partition: {arch} is not piecewise linear: {smooth} makes its linear regions undefined "
                           "(the exact region geometry needs Linear/Conv/BN/ReLU/addition/pooling networks)")
    for node in graph.graph.nodes:
        what = None
        module = modules.get(node.target) if node.op == "call_module" else None
        if is_max_pool(node, module):
            window = max_pool_window(node, module)
            if isinstance(window, str):
                raise RfprobeError(
                    f"partition: {arch} uses max pooling ({node.name}) with {window}, whose region boundaries the "
                    "exact geometry does not follow; it follows MaxPool2d / max_pool2d with numeric sizes, "
                    "dilation 1 and ceil_mode off")
        elif node.op == "call_module":
            if not isinstance(module, _LINEAR_MODULES):
                what = f"{node.target} ({type(module).__name__})"
        elif node.op == "call_function":
            if node.target not in _LINEAR_FUNCTIONS:
                what = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method" and node.target not in _LINEAR_METHODS:
            what = f".{node.target}()"
        if what is not None:
            raise RfprobeError(
                f"partition: {arch} contains {what}, which is not known to be affine or ReLU; the exact "
                "region geometry needs a piecewise-affine network (Linear/Conv/BN/ReLU/addition/avg- or max-pool)")


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
    """One layer of a `Tangent`: a ReLU site (units: its pre-activations, shape (C, *spatial)) or a max-pool
    (`window` > 0; units: its pair units, shape (C, H_out, W_out, window)), and where its units sit in `concat`."""

    site: ActivationSite
    shape: tuple[int, ...]
    offset: int
    window: int = 0
    """entries per max-pool window (0 for a ReLU site)"""
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

    @property
    def is_pool(self) -> bool:
        return self.window > 0


def _pool_site(node: fx.Node, depth: int, before: list[Layer]) -> ActivationSite:
    """A max-pool as a layer of the `layer` coordinate (kind `maxpool`; channels set once its shape is known)."""
    name = node.target if node.op == "call_module" else node.name
    stage = before[-1].site.stage if before else 0
    return ActivationSite(name=name, depth=depth, stage=stage, block=-1, n_channels=0, source="other",
                          node=node.name, kind="maxpool")


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
    source: nn.Module | None = None
    """the float64 eval-mode model it was built from: what a pickled Tangent carries (`__reduce__`)"""
    _other_dtypes: dict = field(default_factory=dict)
    token: str = ""
    """identifies this Tangent across processes: a worker rebuilds it once per token (`_rebuild`)"""

    def __reduce__(self):
        """Pickled as its source model, rebuilt (once per process and token) where it is unpickled: the fx graph
        and its `Program` hold code generated at run time, which does not pickle."""
        return _rebuild, (self.token, self.source, str(self.device), self.dtype)

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
        position = {name: i for i, name in enumerate(nodes)}
        pools = [node for node in graph.graph.nodes
                 if is_max_pool(node, modules.get(node.target) if node.op == "call_module" else None)]
        order = sorted([*sites.relu, *pools], key=lambda item: position[item.node if isinstance(item, ActivationSite)
                                                                          else item.name])
        pre, inputs, layers = [], [], []
        for depth, item in enumerate(order):
            if not isinstance(item, ActivationSite):
                window = max_pool_window(item, modules.get(item.target) if item.op == "call_module" else None)
                layers.append(Layer(_pool_site(item, depth, layers), (), 0, window=int(np.prod(window.kernel))))
                with graph.graph.inserting_after(item):
                    pre.append(graph.graph.call_function(max_pool_pairs, (item.all_input_nodes[0], window.kernel,
                                                                          window.stride, window.padding)))
                inputs.append(None)
                continue
            site = replace(item, depth=depth)
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
        tf = cls(graph, layers, tuple(model.rfprobe_input_shape), device, dtype, source=net_model,
                 token=uuid.uuid4().hex)
        tf.has_input = [i is not None for i in inputs]
        with torch.no_grad():
            _, zs, _ = graph(torch.zeros((1, *tf.input_shape), device=device, dtype=dtype))
        offset = 0
        for layer, z in zip(layers, zs):
            layer.shape = tuple(z.shape[1:])
            if layer.is_pool:
                layer.site = replace(layer.site, n_channels=layer.shape[0])
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

    def count_by_layer(self, flags: torch.Tensor) -> np.ndarray:
        """Per layer, the units flagged in `flags` (units,) bool; for a max-pool, the windows with a flagged
        pair unit (one argmax change is one boundary, though it flips two pair units)."""
        out = np.zeros(len(self.layers), dtype=np.int64)
        for i, layer in enumerate(self.layers):
            piece = flags[layer.offset:layer.offset + layer.size]
            out[i] = int((piece.view(-1, layer.window).any(1) if layer.is_pool else piece).sum())
        return out

    def neighbour(self, signs: np.ndarray, unit: int) -> np.ndarray:
        """The sign pattern across the facet of `unit` from the pattern `signs`: a ReLU unit flips; a max-pool
        pair unit j becomes its window's argmax (z_j = 0, every other entry z > 0)."""
        out = signs.copy()
        layer = self.layers[int(np.searchsorted([l.offset for l in self.layers], unit, side="right")) - 1]
        if not layer.is_pool:
            out[unit] = not out[unit]
            return out
        start = layer.offset + (unit - layer.offset) // layer.window * layer.window
        out[start:start + layer.window] = True
        out[unit] = False
        return out

    def in_dtype(self, dtype: torch.dtype) -> "Tangent":
        """This network in another floating-point type (built once, kept)."""
        if dtype == self.dtype:
            return self
        if dtype not in self._other_dtypes:
            self._other_dtypes[dtype] = Tangent.from_model(self.source, device=self.device, dtype=dtype)
        return self._other_dtypes[dtype]

    def weight_norms(self) -> list[torch.Tensor | None]:
        """||w_k|| per channel of each layer's feeding conv/linear (over its fan-in), None where there is none."""
        if not self._weight_norms:
            self._weight_norms = [None if l.weight is None else l.weight.flatten(1).norm(dim=1) for l in self.layers]
        return self._weight_norms


_REBUILT: dict[str, Tangent] = {}


def _rebuild(token: str, source: nn.Module, device: str, dtype: torch.dtype) -> Tangent:
    """A pickled Tangent, rebuilt from its source model; the same token twice in one process reuses the first."""
    if token not in _REBUILT:
        _REBUILT.clear()
        _REBUILT[token] = replace(Tangent.from_model(source, device=device, dtype=dtype), token=token)
    return _REBUILT[token]
