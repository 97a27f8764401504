"""Where the probes look: a model's normalisation layers, activations and residual additions, in forward
order, with stable names.

Everything is read off the model itself by tracing it with `torch.fx` (no name patterns), so OpenLTH
ResNets, VGG, MLPs, torchvision and timm models (ResNets, ConvNeXts, ViTs, ...) are handled alike:

- a **norm site** is every affine normalisation layer (`norm_kind`): BatchNorm1d/2d/3d and SyncBatchNorm
  (`batchnorm`), FrozenBatchNorm2d (`frozen_batchnorm`: gamma/beta are buffers), GroupNorm (`groupnorm`),
  LayerNorm over the last dimension (`layernorm`), channels-first LayerNorm2d (`layernorm2d`, normalised
  over C at each position), RMSNorm (`rmsnorm` / `rmsnorm2d`, gamma only), InstanceNorm (`instancenorm`).
  timm's fused norm+activation modules (BatchNormAct2d, GroupNormAct, LayerNormAct, ...) are traced into,
  so the activation inside is an activation site too. Its `axis` is `channel` (dimension 1) or `feature`
  (the last dimension: tokens, channels-last tensors); `running_stats` says whether it keeps running
  statistics. Layer-scale parameters (ConvNeXt's `gamma`, timm's LayerScale) are not normalisation layers
  and are not sites;
- a norm site's **role** is read off what consumes its output (through Identity / Dropout): `relu` when a
  ReLU, `activation` when another activation, `shortcut` when it lies on the shorter branch of a residual
  addition (the branch with fewer conv/linear layers since the two inputs forked), `residual` when it goes
  into an addition otherwise, `weight` when a conv/linear layer reads it directly (pre-norm blocks), and
  `other` for anything else;
- its **stage** counts the spatial sizes seen before it (0 for the stem and the first stage of a CIFAR
  ResNet, 1 after the first stride-2 block, ...; always 0 for an MLP or a ViT's tokens);
- its **block** is the index of the residual addition whose branches contain it (-1 outside any block);
- an **activation site** (`ActivationSite`, kind `relu`, `relu6`, `leaky_relu`, `gelu`, `silu`,
  `hardswish`, `mish`; a module or a functional call whose input depends on the model's input, so not the
  MLP that computes a Swin-v2 position bias from a table) is keyed by what feeds it: the norm module's name,
  `<block module>.add` for an addition, else the feeding layer (ReLU modules are no key: CIFAR ResNets
  call `F.relu` and torchvision reuses one ReLU module). Its `axis` is the dimension its channels or
  features lie on (dimension 1 after a conv or a channel norm, the last after a Linear or a LayerNorm);
- an **addition** (`AddSite`) is a residual addition with its two inputs told apart: the shortcut is the
  input with fewer conv/linear layers since the fork, the residual branch the other one.

Conv/linear layers count whether they are modules or functional calls (`F.conv2d` inside a weight-
standardised conv module, which fx traces through; such a call is named after its module).
"""

from __future__ import annotations

import contextlib
import io
import operator
import sys
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from rfprobe.errors import RfprobeError

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_KINDS = ("batchnorm", "frozen_batchnorm", "groupnorm", "layernorm", "layernorm2d", "rmsnorm", "rmsnorm2d",
              "instancenorm")
BATCHNORM_KINDS = ("batchnorm", "frozen_batchnorm")
FEATURE_AXIS_KINDS = ("layernorm", "rmsnorm")
"""norm kinds whose affine parameters index the last dimension; the others index dimension 1"""

_ACTIVATION_MODULES = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.LeakyReLU, "leaky_relu"), (nn.GELU, "gelu"),
                       (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"), (nn.Mish, "mish"))
_ACTIVATION_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
                         F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish",
                         F.mish: "mish"}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}
ACTIVATION_KINDS = ("relu", "relu6", "leaky_relu", "gelu", "silu", "hardswish", "mish")
ZERO_OUTPUT_KINDS = ("relu", "relu6")
"""activations whose output is >= 0 and exactly 0 where the pre-activation is <= 0"""
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_WEIGHT_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv1d, torch.conv2d, torch.conv3d}
_CHANNEL_WEIGHT_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_NORM_FUNCTIONS = {F.batch_norm, F.group_norm, F.layer_norm, F.instance_norm, torch.batch_norm, torch.layer_norm,
                   torch.group_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else [])}
_TRANSPARENT_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def norm_kind(module: nn.Module) -> str | None:
    """The kind of normalisation layer `module` is (NORM_KINDS), None if it is not one. Classes are matched
    by type where torch has them, by name for torchvision's FrozenBatchNorm2d and timm's norms."""
    name = type(module).__name__
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if "FrozenBatchNorm" in name:
        return "frozen_batchnorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    if isinstance(module, nn.LayerNorm):
        return "layernorm2d" if "2d" in name else "layernorm"
    if (hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)) or name.startswith(("RmsNorm", "SimpleNorm")):
        return "rmsnorm2d" if "2d" in name else "rmsnorm"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "instancenorm"
    return None


def is_fused_norm_act(module: nn.Module) -> bool:
    """A normalisation layer with its activation inside (timm's BatchNormAct2d, GroupNormAct, ...)."""
    return norm_kind(module) is not None and isinstance(getattr(module, "act", None), nn.Module)


def affine_parameters(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(gamma, beta) of a normalisation layer as flat tensors (parameters, or buffers for frozen BN); None for
    one it does not have (RMSNorm has no beta; a layer without affine parameters has neither)."""
    gamma, beta = getattr(module, "weight", None), getattr(module, "bias", None)
    gamma = gamma.reshape(-1) if isinstance(gamma, torch.Tensor) else None
    beta = beta.reshape(-1) if isinstance(beta, torch.Tensor) else None
    return gamma, beta


def norm_width(module: nn.Module) -> int:
    """The number of channels (or features) a normalisation layer's affine parameters index."""
    gamma, beta = affine_parameters(module)
    if gamma is not None or beta is not None:
        return int((gamma if gamma is not None else beta).numel())
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(torch.Size(shape).numel())
    raise RfprobeError(f"cannot tell how many channels the {type(module).__name__} normalises")


def keeps_running_stats(module: nn.Module) -> bool:
    kind = norm_kind(module)
    if kind == "frozen_batchnorm":
        return True
    return kind == "batchnorm" and module.track_running_stats and getattr(module, "running_mean", None) is not None


@dataclass(frozen=True)
class NormSite:
    name: str
    depth: int
    stage: int
    block: int
    n_channels: int
    role: str
    producer: str | None
    """the conv/linear module whose output this layer normalises (None if it is not a module)"""
    kind: str = "batchnorm"
    """one of NORM_KINDS"""
    axis: str = "channel"
    """what its affine parameters index: `channel` (dimension 1) or `feature` (the last dimension)"""
    running_stats: bool = True
    """whether it keeps running statistics (BatchNorm with track_running_stats, frozen BN)"""
    node: str = ""
    """the node of its normalised output in `Sites.graph`"""


@dataclass(frozen=True)
class ActivationSite:
    name: str
    depth: int
    stage: int
    block: int
    n_channels: int
    source: str
    """`bn` when a BatchNorm feeds it, `norm` another normalisation layer, `add` a residual addition, `other`"""
    node: str
    """the name of the activation's node in `Sites.graph`"""
    kind: str = "relu"
    """one of ACTIVATION_KINDS"""
    dim: int = 1
    """the dimension its channels (or features) lie on"""
    norm: str | None = None
    """the normalisation layer feeding it (source bn or norm), whose gamma/beta index the same channels"""

    @property
    def axis(self) -> str:
        return "channel" if self.dim == 1 else "feature"


@dataclass(frozen=True)
class AddSite:
    name: str
    """`<block module>.add` (as the ReLU site it feeds), or the node name at the top level"""
    index: int
    """the addition's order in the forward pass (the `block` of NormSite/ActivationSite)"""
    stage: int
    n_channels: int
    node: str
    """the addition's node in `Sites.graph`"""
    residual: str | None
    """the node of the input with more conv/linear layers since the fork (None on a tie)"""
    shortcut: str | None
    """the node of the other input (None on a tie)"""
    fork: str | None
    """the last node both inputs depend on (the block's input for an identity shortcut)"""
    dim: int = 1
    """the dimension its channels (or features) lie on"""


@dataclass
class Sites:
    norm: list[NormSite]
    activations: list[ActivationSite]
    output_layer: str | None
    """the last Linear layer in forward order (the classifier), or None"""
    graph: fx.GraphModule
    """the traced model; it shares parameters and buffers with the model it was traced from"""
    additions: list[AddSite] = field(default_factory=list)
    """the residual additions in forward order"""

    @property
    def bn(self) -> list[NormSite]:
        """The BatchNorm sites (kind batchnorm; frozen BN too), the only ones before other kinds were sites."""
        return [s for s in self.norm if s.kind in BATCHNORM_KINDS]

    @property
    def relu(self) -> list[ActivationSite]:
        """The ReLU sites, numbered among themselves (the piecewise-linear passes' units)."""
        relu = [s for s in self.activations if s.kind == "relu"]
        return [s if s.depth == i else replace(s, depth=i) for i, s in enumerate(relu)]

    def norm_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = dict(model.named_modules())
        return {site.name: modules[site.name] for site in self.norm}


def activation_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind of activation `node` applies (ACTIVATION_KINDS), None if it is none."""
    if node.op == "call_function":
        return _ACTIVATION_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    if node.op == "call_module":
        module = modules.get(node.target)
        return next((kind for cls, kind in _ACTIVATION_MODULES if type(module) is cls), None) or \
            next((kind for cls, kind in _ACTIVATION_MODULES if isinstance(module, cls)), None)
    return None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return activation_kind(node, modules) == "relu"


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        pass
    elif not (node.op == "call_method" and node.target in ("add", "add_")):
        return False
    return sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2


def _module_of(node: fx.Node, modules: dict[str, nn.Module], types) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), types)


def _is_weight(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A conv/linear layer: a module call (torch's attention module counts: its projections are linear layers),
    or a functional call (fx traces through custom conv modules)."""
    return _module_of(node, modules, (*WEIGHT_TYPES, nn.MultiheadAttention)) or (
        node.op == "call_function" and node.target in _WEIGHT_FUNCTIONS)


def _is_transparent(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Identity and dropout (eval mode): the value passes through unchanged."""
    return _module_of(node, modules, _TRANSPARENT_MODULES) or (
        node.op == "call_function" and node.target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)) or (
        node.op == "call_method" and node.target == "contiguous")


def enclosing_module(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward produced `node` ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def _in_module(node: fx.Node, name: str) -> bool:
    return name in (node.meta.get("nn_module_stack") or {})


class _Tracer(fx.Tracer):
    """fx's tracer with every normalisation layer a leaf (one node, whatever its forward does) except the
    fused norm+activation ones, timm's traced-through helper functions kept whole where timm is loaded, and
    optionally timm's own leaf modules (`timm_leaves`: blocks timm marks untraceable)."""

    def __init__(self, timm_leaves: bool = False):
        leaves, functions = (), ()
        if "timm" in sys.modules:
            try:
                from timm.layers import _fx

                leaves, functions = tuple(_fx.get_notrace_modules()), tuple(_fx.get_notrace_functions())
            except ImportError:
                pass
        super().__init__(autowrap_functions=tuple(f for f in functions if callable(f)))
        self.leaves = leaves if timm_leaves else ()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if norm_kind(m) is not None:
            return not is_fused_norm_act(m)
        if isinstance(m, self.leaves):
            return True
        return super().is_leaf_module(m, qualname)


_TRACE_ERRORS = (fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError, AttributeError, ValueError,
                 AssertionError, IndexError, KeyError)
"""what fx raises for code it cannot trace"""


def trace(model: nn.Module) -> fx.GraphModule:
    """The fx trace of `model`, looking inside every block it can: first with only normalisation layers as
    leaves, then (where that fails) with the blocks timm marks untraceable as leaves too."""
    first = None
    for timm_leaves in (False, True):
        tracer = _Tracer(timm_leaves)
        try:
            graph = tracer.trace(model)
            return fx.GraphModule(tracer.root, graph, type(model).__name__)
        except _TRACE_ERRORS as e:
            first = first or e
            if not tracer.leaves and "timm" not in sys.modules:
                break
    arch = getattr(model, "rfprobe_arch", type(model).__name__)
    first_line = next((line.strip() for line in str(first).splitlines() if line.strip()), type(first).__name__)
    raise RfprobeError(f"cannot trace {arch} with torch.fx to find its normalisation layers and activations "
                       f"({type(first).__name__}: {first_line[:200]})") from None


def _shapes(graph: fx.GraphModule, model: nn.Module) -> None:
    shape = getattr(model, "rfprobe_input_shape", None)
    if shape is None:
        raise RfprobeError("the model has no rfprobe_input_shape; build it with rfprobe.models.build_model")
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback on failure
            ShapeProp(graph).propagate(torch.zeros((2, *shape), device=device, dtype=dtype))
    except RfprobeError:
        raise
    except Exception as e:  # the model's own forward failing on a dummy input of the stated shape
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        first_line = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise RfprobeError(f"{arch} does not run on an input of shape {tuple(shape)} ({type(e).__name__}: "
                           f"{first_line[:200]}); pass --input-shape") from None
    finally:
        for m, training in modes:
            m.training = training


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(getattr(meta, "shape", ()))


def _norm_output(name: str, nodes: list[fx.Node], modules: dict[str, nn.Module]) -> fx.Node | None:
    """The node holding a fused norm+activation module's normalised output: the input of its `drop` or `act`
    submodule call, else its normalisation function call."""
    for node in nodes:
        if node.op == "call_module" and node.target in (f"{name}.drop", f"{name}.act") and node.args \
                and isinstance(node.args[0], fx.Node):
            return node.args[0]
    return next((n for n in nodes if n.op == "call_function" and n.target in _NORM_FUNCTIONS and _in_module(n, name)),
                None)


def find_sites(model: nn.Module) -> Sites:
    """Trace `model` and list its normalisation layers, activations and additions in forward order (see the
    module docstring)."""
    graph = trace(model)
    _shapes(graph, model)
    modules = dict(model.named_modules())
    nodes = list(graph.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}

    ancestors: dict[fx.Node, int] = {}  # bitset over node indices: every node the value depends on
    for node in nodes:
        bits = 0
        for parent in node.all_input_nodes:
            if parent.op == "placeholder" or "tensor_meta" in parent.meta:  # not through shapes (x.shape, x.size())
                bits |= ancestors[parent] | (1 << index[parent])
        ancestors[node] = bits

    def branch(start: fx.Node, fork: int) -> list[fx.Node]:
        """The nodes after `fork` that `start` depends on, and `start` itself."""
        bits = ancestors[start] | (1 << index[start])
        return [n for n in nodes[fork + 1:index[start] + 1] if bits >> index[n] & 1]

    matrices = {name for name, p in model.named_parameters() if p.ndim >= 2}

    def _applies_weight_matrix(node: fx.Node) -> bool:
        """A function call given a weight matrix (torchvision's fx-wrapped window attention, say)."""
        return node.op == "call_function" and any(
            isinstance(a, fx.Node) and a.op == "get_attr" and a.target in matrices for a in node.args)

    norm_nodes: dict[fx.Node, str] = {}  # the node of each norm site's output -> its module name
    for node in nodes:
        if node.op == "call_module" and norm_kind(modules.get(node.target)) is not None \
                and not is_fused_norm_act(modules[node.target]):
            norm_nodes.setdefault(node, node.target)
    for name, module in modules.items():
        if is_fused_norm_act(module) and name:
            out = _norm_output(name, nodes, modules)
            if out is not None:
                norm_nodes.setdefault(out, name)

    def feeder(node: fx.Node) -> fx.Node | None:
        """What feeds `node`, looking through Identity and dropout."""
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        while source is not None and _is_transparent(source, modules) and source not in norm_nodes:
            source = source.args[0] if source.args and isinstance(source.args[0], fx.Node) else None
        return source

    def consumers(node: fx.Node) -> list[fx.Node]:
        """The nodes that use `node`'s value, looking through Identity and dropout."""
        out = []
        for user in node.users:
            out += consumers(user) if _is_transparent(user, modules) else [user]
        return out

    def norm_dim(node: fx.Node) -> int:
        kind = norm_kind(modules[norm_nodes[node]])
        shape = _shape(node)
        return len(shape) - 1 if kind in FEATURE_AXIS_KINDS and len(shape) > 1 else 1

    def value_dim(node: fx.Node | None, steps: int = 0) -> int:
        """The dimension holding the channels or features of `node`'s value: read off the nearest layer that
        made it (a conv or channel norm: 1; a Linear or LayerNorm: the last), followed through permutes and
        transposes; where a reshape or the input intervenes, 1 for an image-shaped value, the last for tokens."""
        ndim = len(_shape(node)) if node is not None else 0
        fallback = 1 if ndim >= 4 or ndim <= 2 else ndim - 1
        if node is None or ndim <= 2 or steps > 24:
            return 1 if ndim <= 2 else fallback
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node in norm_nodes:
            return norm_dim(node)
        if _module_of(node, modules, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or (
                node.op == "call_function" and node.target in _CHANNEL_WEIGHT_FUNCTIONS):
            return 1
        if _module_of(node, modules, nn.Linear) or (node.op == "call_function" and node.target is F.linear):
            return ndim - 1
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name in ("permute", "transpose", "swapaxes", "movedim") and source is not None \
                and len(_shape(source)) == ndim:
            inner = value_dim(source, steps + 1)
            rest = [a for a in node.args[1:]] or list(node.kwargs.values())
            if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
                rest = list(rest[0])
            if not all(isinstance(a, int) for a in rest):
                return fallback
            rest = [a % ndim for a in rest]
            if name == "permute":
                return rest.index(inner) if inner in rest else fallback
            if name == "movedim" and len(rest) == 2:
                order = [d for d in range(ndim) if d != rest[0]]
                order.insert(rest[1], rest[0])
                return order.index(inner)
            if len(rest) == 2:
                a, b = rest
                return b if inner == a else a if inner == b else inner
            return fallback
        if name in ("reshape", "view", "flatten") and source is not None and len(_shape(source)) >= 2:
            before, after = _shape(source), _shape(node)
            kept = next((i for i, (x, y) in enumerate(zip(before, after)) if x != y), min(len(before), len(after)))
            tail = next((i for i, (x, y) in enumerate(zip(before[::-1], after[::-1])) if x != y),
                        min(len(before), len(after)))
            inner = value_dim(source, steps + 1)
            if 0 < inner < kept:  # the leading dimensions it keeps keep their meaning, and so do the trailing ones
                return inner
            return len(after) - (len(before) - inner) if len(before) - inner <= tail else fallback
        if node.op in ("placeholder", "get_attr") or name in (
                "unflatten", "getitem", "expand", "repeat", "cat", "chunk", "split"):
            return fallback
        if source is not None and len(_shape(source)) == ndim:
            return value_dim(source, steps + 1)
        return fallback

    block_of: dict[fx.Node, int] = {}
    shortcut_nodes: set[fx.Node] = set()
    add_names: dict[fx.Node, str] = {}
    residual_input: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    fork_of: dict[fx.Node, fx.Node | None] = {}
    def shares_input(add: fx.Node) -> bool:
        left, right = add.args[:2]
        return bool(ancestors[left] & ancestors[right]) or bool(ancestors[left] >> index[right] & 1) \
            or bool(ancestors[right] >> index[left] & 1)

    # a residual addition: two tensors computed from a common input (not a bias or an embedding added)
    adds = [n for n in nodes if _is_add(n) and len(_shape(n)) >= 2 and shares_input(n)]
    for b, add in enumerate(adds):
        left, right = [a for a in add.args[:2]]
        common = ancestors[left] & ancestors[right]
        if ancestors[left] >> index[right] & 1:
            common |= 1 << index[right]
        if ancestors[right] >> index[left] & 1:
            common |= 1 << index[left]
        fork = common.bit_length() - 1
        sides = [branch(side, fork) if index[side] > fork else [] for side in (left, right)]
        weights = [sum(_is_weight(n, modules) or _applies_weight_matrix(n) for n in side) for side in sides]
        for side in sides:
            for n in side:
                block_of.setdefault(n, b)
        if weights[0] != weights[1]:
            shortcut_nodes.update(sides[0] if weights[0] < weights[1] else sides[1])
            residual_input[add] = (left, right) if weights[0] > weights[1] else (right, left)
        fork_of[add] = nodes[fork] if fork >= 0 else None
        name = f"{enclosing_module(add)}.add" if enclosing_module(add) else add.name
        add_names[add] = name if name not in add_names.values() else f"{name}.{add.name}"

    dims: dict[fx.Node, int] = {}
    for node in nodes:
        if node in norm_nodes:
            dims[node] = norm_dim(node)
        elif node in add_names or activation_kind(node, modules) is not None:
            dims[node] = value_dim(node if node in add_names else (node.args[0] if node.args and isinstance(
                node.args[0], fx.Node) else node))

    stage_of: dict[fx.Node, int] = {}
    sizes: list[tuple[int, ...]] = []
    for node in nodes:
        shape = _shape(node)
        if node in dims and len(shape) >= 3:
            dim = dims[node]
            spatial = tuple(d for i, d in enumerate(shape[1:], start=1) if i != dim)
            if spatial not in sizes:
                sizes.append(spatial)
            stage_of[node] = sizes.index(spatial)

    norm_sites: list[NormSite] = []
    site_of_node: dict[fx.Node, NormSite] = {}
    seen: set[str] = set()
    for node in nodes:
        if node not in norm_nodes or norm_nodes[node] in seen:
            continue
        name = norm_nodes[node]
        seen.add(name)
        module = modules[name]
        users = consumers(node)
        kinds = [activation_kind(u, modules) for u in users]
        if "relu" in kinds:
            role = "relu"
        elif any(kinds):
            role = "activation"
        elif any(_is_add(u) for u in users):
            role = "shortcut" if node in shortcut_nodes else "residual"
        elif any(_is_weight(u, modules) for u in users):
            role = "weight"
        else:
            role = "other"
        source = feeder(node) if node.op == "call_module" else None
        producer = source.target if source is not None and _module_of(source, modules, WEIGHT_TYPES) else None
        kind = norm_kind(module)
        site = NormSite(
            name=name, depth=len(norm_sites), stage=stage_of.get(node, 0), block=block_of.get(node, -1),
            n_channels=norm_width(module), role=role, producer=producer, kind=kind,
            axis="feature" if kind in FEATURE_AXIS_KINDS else "channel", running_stats=keeps_running_stats(module),
            node=node.name)
        norm_sites.append(site)
        site_of_node[node] = site

    inputs = [index[n] for n in nodes if n.op == "placeholder"]

    def reads_input(node: fx.Node) -> bool:
        """Whether `node`'s value depends on the model's input (not only on parameters: a position-bias MLP)."""
        return any(ancestors[node] >> i & 1 for i in inputs)

    activation_sites: list[ActivationSite] = []
    names: set[str] = set()
    for node in nodes:
        kind = activation_kind(node, modules)
        if kind is None or not reads_input(node):
            continue
        source_node = feeder(node)
        if source_node is None:
            continue
        norm = None
        if source_node in norm_nodes:
            norm = norm_nodes[source_node]
            key, source = norm, "bn" if norm_kind(modules[norm]) in BATCHNORM_KINDS else "norm"
        elif source_node in add_names:
            key, source = add_names[source_node], "add"
        elif source_node.op == "call_function" and source_node.target in _WEIGHT_FUNCTIONS and \
                isinstance(modules.get(enclosing_module(source_node)), WEIGHT_TYPES):
            key, source = enclosing_module(source_node), "other"
        else:
            key, source = (source_node.target if source_node.op == "call_module" else source_node.name), "other"
        if key in names:
            key = f"{key}.{node.name}"
        names.add(key)
        shape = _shape(node)
        dim = dims.get(node, 1)
        channels = int(shape[dim]) if len(shape) > dim else 0
        activation_sites.append(ActivationSite(
            name=key, depth=len(activation_sites), stage=stage_of.get(node, 0),
            block=block_of.get(node, -1) if source != "add" else adds.index(source_node),
            n_channels=channels, source=source, node=node.name, kind=kind, dim=dim, norm=norm))

    add_sites = []
    for b, add in enumerate(adds):
        shape = _shape(add)
        residual, shortcut = residual_input.get(add, (None, None))
        dim = dims.get(add, 1)
        add_sites.append(AddSite(
            name=add_names[add], index=b, stage=stage_of.get(add, 0),
            n_channels=int(shape[dim]) if len(shape) > dim else 0, node=add.name,
            residual=residual.name if residual is not None else None,
            shortcut=shortcut.name if shortcut is not None else None,
            fork=fork_of[add].name if fork_of[add] is not None else None, dim=dim))

    linears = [n.target for n in nodes if _module_of(n, modules, nn.Linear)]
    linears += [enclosing_module(n) for n in nodes if n.op == "call_function" and n.target is F.linear
                and isinstance(modules.get(enclosing_module(n)), nn.Linear)]
    order = {n.target if n.op == "call_module" else enclosing_module(n): index[n] for n in nodes}
    linears.sort(key=lambda name: order.get(name, -1))
    return Sites(norm=norm_sites, activations=activation_sites, output_layer=linears[-1] if linears else None,
                 graph=graph, additions=add_sites)
