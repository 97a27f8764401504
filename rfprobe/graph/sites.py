"""Where the probes look: a model's BatchNorm layers and ReLU sites, in forward order, with stable names.

Everything is read off the model itself by tracing it with `torch.fx` (no name patterns), so OpenLTH
ResNets, VGG, MLPs and torchvision ResNets are handled alike:

- a BN's **role** is `relu` when its output goes straight into a ReLU, `shortcut` when it lies on the
  shorter branch of a residual addition (the branch with fewer conv/linear layers since the two inputs of
  the addition forked), `residual` when it goes into an addition otherwise, and `other` for anything else;
- its **stage** counts the spatial downsamplings before it (0 for the stem and the first stage of a CIFAR
  ResNet, 1 after the first stride-2 block, ...; always 0 for an MLP);
- its **block** is the index of the residual addition whose branches contain it (-1 outside any block);
- a **ReLU site** is keyed by what feeds the ReLU: the BN module's name, or `<block module>.add` for an
  addition (CIFAR ResNets call `F.relu` and torchvision reuses one ReLU module, so ReLU modules are no key);
- an **addition** (`AddSite`) is a residual addition with its two inputs told apart: the shortcut is the
  input with fewer conv/linear layers since the fork, the residual branch the other one.

Conv/linear layers count whether they are modules or functional calls (`F.conv2d` inside a weight-
standardised conv module, which fx traces through; such a call is named after its module).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from rfprobe.errors import RfprobeError

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_WEIGHT_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv1d, torch.conv2d, torch.conv3d}


@dataclass(frozen=True)
class BNSite:
    name: str
    depth: int
    stage: int
    block: int
    n_channels: int
    role: str
    producer: str | None
    """the conv/linear module whose output this BN normalises (None if it is not a module)"""


@dataclass(frozen=True)
class ReluSite:
    name: str
    depth: int
    stage: int
    block: int
    n_channels: int
    source: str
    """`bn` when a BN feeds the ReLU, `add` for a residual addition, `other` otherwise"""
    node: str
    """the name of the ReLU's node in `Sites.graph`"""


@dataclass(frozen=True)
class AddSite:
    name: str
    """`<block module>.add` (as the ReLU site it feeds), or the node name at the top level"""
    index: int
    """the addition's order in the forward pass (the `block` of BNSite/ReluSite)"""
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


@dataclass
class Sites:
    bn: list[BNSite]
    relu: list[ReluSite]
    output_layer: str | None
    """the last Linear layer in forward order (the classifier), or None"""
    graph: fx.GraphModule
    """the traced model; it shares parameters and buffers with the model it was traced from"""
    additions: list[AddSite] = field(default_factory=list)
    """the residual additions in forward order"""

    def bn_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = dict(model.named_modules())
        return {site.name: modules[site.name] for site in self.bn}


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        pass
    elif not (node.op == "call_method" and node.target in ("add", "add_")):
        return False
    return sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2


def _module_of(node: fx.Node, modules: dict[str, nn.Module], types) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), types)


def _is_weight(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A conv/linear layer: a module call, or a functional call (fx traces through custom conv modules)."""
    return _module_of(node, modules, WEIGHT_TYPES) or (node.op == "call_function" and node.target in _WEIGHT_FUNCTIONS)


def enclosing_module(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward produced `node` ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except (fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError, AttributeError) as e:
        # what fx raises for a model's code it cannot trace (data-dependent control flow, unsupported calls)
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        first_line = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise RfprobeError(f"cannot trace {arch} with torch.fx to find its BN layers: {first_line}") from None


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
        with torch.no_grad():
            ShapeProp(graph).propagate(torch.zeros((2, *shape), device=device, dtype=dtype))
    finally:
        for m, training in modes:
            m.training = training


def find_sites(model: nn.Module) -> Sites:
    """Trace `model` and list its BN layers and ReLU sites in forward order (see the module docstring)."""
    graph = trace(model)
    _shapes(graph, model)
    modules = dict(model.named_modules())
    nodes = list(graph.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}

    ancestors: dict[fx.Node, int] = {}  # bitset over node indices: every node the value depends on
    for node in nodes:
        bits = 0
        for parent in node.all_input_nodes:
            bits |= ancestors[parent] | (1 << index[parent])
        ancestors[node] = bits

    def branch(start: fx.Node, fork: int) -> list[fx.Node]:
        """The nodes after `fork` that `start` depends on, and `start` itself."""
        bits = ancestors[start] | (1 << index[start])
        return [n for n in nodes[fork + 1:index[start] + 1] if bits >> index[n] & 1]

    block_of: dict[fx.Node, int] = {}
    shortcut_nodes: set[fx.Node] = set()
    add_names: dict[fx.Node, str] = {}
    residual_input: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    fork_of: dict[fx.Node, fx.Node | None] = {}
    adds = [n for n in nodes if _is_add(n)]
    for b, add in enumerate(adds):
        left, right = [a for a in add.args[:2]]
        common = ancestors[left] & ancestors[right]
        if ancestors[left] >> index[right] & 1:
            common |= 1 << index[right]
        if ancestors[right] >> index[left] & 1:
            common |= 1 << index[left]
        fork = common.bit_length() - 1
        sides = [branch(side, fork) if index[side] > fork else [] for side in (left, right)]
        weights = [sum(_is_weight(n, modules) for n in side) for side in sides]
        for side in sides:
            for n in side:
                block_of.setdefault(n, b)
        if weights[0] != weights[1]:
            shortcut_nodes.update(sides[0] if weights[0] < weights[1] else sides[1])
            residual_input[add] = (left, right) if weights[0] > weights[1] else (right, left)
        fork_of[add] = nodes[fork] if fork >= 0 else None
        add_names[add] = f"{enclosing_module(add)}.add" if enclosing_module(add) else add.name

    stage_of: dict[fx.Node, int] = {}
    sizes: list[tuple[int, ...]] = []
    for node in nodes:
        meta = node.meta.get("tensor_meta")
        shape = tuple(getattr(meta, "shape", ()))
        if len(shape) >= 3 and (_module_of(node, modules, BN_TYPES) or _is_relu(node, modules) or node in add_names):
            if shape[2:] not in sizes:
                sizes.append(shape[2:])
            stage_of[node] = sizes.index(shape[2:])

    bn_sites: list[BNSite] = []
    seen: set[str] = set()
    for node in nodes:
        if not _module_of(node, modules, BN_TYPES) or node.target in seen:
            continue
        seen.add(node.target)
        users = list(node.users)
        if any(_is_relu(u, modules) for u in users):
            role = "relu"
        elif any(_is_add(u) for u in users):
            role = "shortcut" if node in shortcut_nodes else "residual"
        else:
            role = "other"
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        producer = source.target if source is not None and _module_of(source, modules, WEIGHT_TYPES) else None
        bn_sites.append(BNSite(
            name=node.target, depth=len(bn_sites), stage=stage_of.get(node, 0), block=block_of.get(node, -1),
            n_channels=modules[node.target].num_features, role=role, producer=producer))

    relu_sites: list[ReluSite] = []
    for node in nodes:
        if not _is_relu(node, modules):
            continue
        feeder = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if feeder is None:
            continue
        if _module_of(feeder, modules, BN_TYPES):
            key, source = feeder.target, "bn"
        elif feeder in add_names:
            key, source = add_names[feeder], "add"
        elif feeder.op == "call_function" and feeder.target in _WEIGHT_FUNCTIONS and \
                isinstance(modules.get(enclosing_module(feeder)), WEIGHT_TYPES):
            key, source = enclosing_module(feeder), "other"
        else:
            key, source = (feeder.target if feeder.op == "call_module" else feeder.name), "other"
        meta = node.meta.get("tensor_meta")
        channels = int(meta.shape[1]) if meta is not None and len(meta.shape) >= 2 else 0
        relu_sites.append(ReluSite(
            name=key, depth=len(relu_sites), stage=stage_of.get(node, 0),
            block=block_of.get(node, -1) if source != "add" else adds.index(feeder),
            n_channels=channels, source=source, node=node.name))

    add_sites = []
    for b, add in enumerate(adds):
        meta = add.meta.get("tensor_meta")
        residual, shortcut = residual_input.get(add, (None, None))
        add_sites.append(AddSite(
            name=add_names[add], index=b, stage=stage_of.get(add, 0),
            n_channels=int(meta.shape[1]) if meta is not None and len(meta.shape) >= 2 else 0, node=add.name,
            residual=residual.name if residual is not None else None,
            shortcut=shortcut.name if shortcut is not None else None,
            fork=fork_of[add].name if fork_of[add] is not None else None))

    linears = [n.target for n in nodes if _module_of(n, modules, nn.Linear)]
    return Sites(bn=bn_sites, relu=relu_sites, output_layer=linears[-1] if linears else None, graph=graph,
                 additions=add_sites)
