"""Directional derivatives of a piecewise-affine ReLU network by plain forward passes, without autodiff.

Inside one linear region the network is affine, so its derivative along v is the same network run on v
with every bias and BN shift removed, every ReLU replaced by the 0/1 mask of the point's pre-activation
(z > 0, torch's ReLU derivative) and every max-pool window by a read of its argmax entry. `Program` runs a
`Tangent`'s graph that way:

- `Program.dual(x, v)`: one plain batched forward over the rows [x; v] (P points, then r directions per
  point, point-major) giving z(x) and J_z(x) v at every ReLU site. Each conv/linear runs once over all rows
  (`torch.func.jvp` runs each conv three times, one of them against an all-zero weight tangent).
- `Program.response(layer, unit, delta, masks)`: the change of every later pre-activation when the
  post-activation of one unit changes by `delta`, through the network linearised with the masks held fixed.
  The change is zero outside the unit's receptive-field cone, so spatial tensors are carried as boxes and
  each convolution runs only on the input window its output box needs (hand-written because no library
  propagates a sparse perturbation through an fx graph).

A max-pool layer is a layer of *pair units*: for window (c, y, x) with entries w_1..w_K and argmax a,
z_j = w_a - w_j >= 0 (0 at the argmax, +inf at padding). Its region boundaries are where the argmax changes,
z_j = 0 for some j != a: one pair unit per window entry, each with the sign pattern z_j > 0 that ReLU units
have, so the walk, distances and slices treat both alike (`max_pool_pairs`). Its 0/1 mask (z_j > 0) is 0
exactly at the entries that attain the maximum; the linearised pool reads the first of them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.errors import RfprobeError
from rfprobe.geometry.evalbn import EvalBN


@dataclass
class Box:
    """A (B, C, H, W) tensor that is zero outside rows y0:y0+h and columns x0:x0+w; `values` is (B, C, h, w)."""

    values: torch.Tensor
    y0: int
    x0: int
    shape: tuple[int, ...]

    @property
    def y1(self) -> int:
        return self.y0 + self.values.shape[2]

    @property
    def x1(self) -> int:
        return self.x0 + self.values.shape[3]

    def dense(self) -> torch.Tensor:
        out = self.values.new_zeros((self.values.shape[0], *self.shape))
        out[:, :, self.y0:self.y1, self.x0:self.x1] = self.values
        return out


@dataclass(frozen=True)
class PoolWindow:
    """A 2-D max-pool's windows: kernel, stride and padding (-inf, as torch pads), each a (height, width) pair."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def valid(self, height: int, width: int, device) -> torch.Tensor:
        """(H_out, W_out, K) bool: which window entries lie inside the image (not padding)."""
        ones = torch.ones((1, 1, height, width), device=device)
        return self.windows(ones, 0.0)[0, 0] > 0

    def windows(self, h: torch.Tensor, fill: float) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H_out, W_out, K): every window's entries, padding read as `fill`."""
        ph, pw = self.padding
        return self.unfold(F.pad(h, (pw, pw, ph, ph), value=fill) if ph or pw else h)

    def unfold(self, h: torch.Tensor) -> torch.Tensor:
        """The windows of an already padded (B, C, H, W) tensor, as (B, C, H_out, W_out, K)."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return h.unfold(2, kh, sh).unfold(3, kw, sw).flatten(-2)


_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def max_pool_window(node: fx.Node, module: nn.Module | None) -> PoolWindow | str:
    """The windows of a MaxPool2d module or `max_pool2d` call, or a one-line reason the exact geometry cannot
    follow it (dilation, ceil_mode, returned indices, sizes computed at run time, other dimensions)."""
    if module is not None:
        if not isinstance(module, nn.MaxPool2d):
            return f"{type(module).__name__} (only MaxPool2d windows are followed)"
        given = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                     dilation=module.dilation, ceil_mode=module.ceil_mode, return_indices=module.return_indices)
    else:
        given = {**dict(zip(_MAX_POOL_ARGS, node.args)), **node.kwargs}
        if getattr(node.target, "__name__", "") not in ("max_pool2d", "_max_pool2d"):
            return f"{getattr(node.target, '__name__', node.target)} (only max_pool2d windows are followed)"
        if any(isinstance(v, fx.Node) for k, v in given.items() if k != "input"):
            return "sizes computed at run time"
    stride = given.get("stride") or given["kernel_size"]
    if _pair(given.get("dilation", 1)) != (1, 1):
        return "dilation"
    if given.get("ceil_mode") or given.get("return_indices"):
        return "ceil_mode" if given.get("ceil_mode") else "return_indices"
    return PoolWindow(_pair(given["kernel_size"]), _pair(stride), _pair(given.get("padding", 0)))


def max_pool_pairs(h: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """The pair units of a max-pool layer (module docstring): z[b, c, y, x, j] = max_i w_i - w_j over the
    window (c, y, x) of h, +inf where w_j is padding. A plain function so that autodiff (the reference walk)
    differentiates it as the dual forward does: through the first argmax."""
    w = PoolWindow(tuple(kernel), tuple(stride), tuple(padding)).windows(h, -torch.inf)
    top = w.gather(-1, w.argmax(-1, keepdim=True))
    return torch.where(torch.isfinite(w), top - w, torch.inf)


def _crop_window(h: Box, kernel, stride, padding, out_shape) -> tuple[torch.Tensor, int, int] | None:
    """For a sliding window op (kernel, stride, padding; output (C, H_out, W_out)): the input window that the
    output positions whose windows meet h's box read, h's values zero-padded to it (zero outside the image is
    the padding of a conv and a null perturbation of a pool), and the first such output row and column; None
    if no window meets the box."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    _, out_h, out_w = out_shape
    oy0, oy1 = max(0, -(-(h.y0 + ph - kh + 1) // sh)), min(out_h, (h.y1 - 1 + ph) // sh + 1)
    ox0, ox1 = max(0, -(-(h.x0 + pw - kw + 1) // sw)), min(out_w, (h.x1 - 1 + pw) // sw + 1)
    if oy1 <= oy0 or ox1 <= ox0:
        return None
    iy0, iy1 = oy0 * sh - ph, (oy1 - 1) * sh - ph + kh
    ix0, ix1 = ox0 * sw - pw, (ox1 - 1) * sw - pw + kw
    return F.pad(h.values, (h.x0 - ix0, ix1 - h.x1, h.y0 - iy0, iy1 - h.y1)), oy0, ox0


def _dense(value):
    return value.dense() if isinstance(value, Box) else value


def _union(a: Box, b: Box) -> Box:
    y0, x0 = min(a.y0, b.y0), min(a.x0, b.x0)
    y1, x1 = max(a.y1, b.y1), max(a.x1, b.x1)
    out = a.values.new_zeros((a.values.shape[0], a.shape[0], y1 - y0, x1 - x0))
    out[:, :, a.y0 - y0:a.y1 - y0, a.x0 - x0:a.x1 - x0] += a.values
    out[:, :, b.y0 - y0:b.y1 - y0, b.x0 - x0:b.x1 - x0] += b.values
    return Box(out, y0, x0, a.shape)


def _channel_view(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    return vector.view((1, -1) + (1,) * (ndim - 2))


class Step:
    """One node of the graph: `dual` evaluates it on [points; directions], `tangent` on a perturbation."""

    def __init__(self, node: fx.Node, module: nn.Module | None = None):
        self.name = node.name
        self.node = node
        self.module = module
        self.inputs = [n.name for n in node.all_input_nodes]

    def dual(self, args, kwargs, points: int, tensors):
        raise NotImplementedError

    def tangent(self, args, kwargs):
        raise NotImplementedError


class Weighted(Step):
    """conv/linear: W h on every row, + b on the point rows only."""

    def __init__(self, node, module):
        super().__init__(node, module)
        self.croppable = (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
                          and not isinstance(module.padding, str) and tuple(module.dilation) == (1, 1))

    def _apply(self, h):
        if isinstance(self.module, nn.Linear):
            return F.linear(h, self.module.weight)
        return self.module._conv_forward(h, self.module.weight, None)

    def dual(self, args, kwargs, points, tensors):
        out = self._apply(args[0])
        if self.module.bias is not None:
            out[:points] += _channel_view(self.module.bias, out.ndim)
        return out

    def tangent(self, args, kwargs):
        h = args[0]
        if not isinstance(h, Box):
            return self._apply(h)
        if not self.croppable:
            return self._apply(h.dense())
        return self._crop(h)

    def _crop(self, h: Box):
        """The output box of every output position whose window meets h's box, from just the input window
        those outputs read (zero padding outside the image is the conv's own padding)."""
        cropped = _crop_window(h, self.module.kernel_size, self.module.stride, self.module.padding, self.out_shape)
        if cropped is None:
            return None
        window, oy0, ox0 = cropped
        out = F.conv2d(window, self.module.weight, None, self.module.stride, 0, 1, self.module.groups)
        return Box(out, oy0, ox0, self.out_shape)


class Scale(Step):
    """BN in eval mode (an `EvalBN`): h * scale on every row, + shift on the point rows only."""

    def dual(self, args, kwargs, points, tensors):
        h = args[0]
        out = h * _channel_view(self.module.scale, h.ndim)
        out[:points] += _channel_view(self.module.shift, h.ndim)
        return out

    def tangent(self, args, kwargs):
        h = args[0]
        if isinstance(h, Box):
            return Box(h.values * _channel_view(self.module.scale, 4), h.y0, h.x0, h.shape)
        return h * _channel_view(self.module.scale, h.ndim)


class Relu(Step):
    """ReLU site `layer`: relu(z) on the point rows, dz * (z > 0) on each point's direction rows."""

    def __init__(self, node, layer: int):
        super().__init__(node)
        self.layer = layer

    def dual(self, args, kwargs, points, tensors):
        h = args[0]
        z = h[:points]
        tensors[self.layer] = h
        out = torch.empty_like(h)
        out[:points] = torch.relu(z)
        directions = h[points:]
        mask = (z > 0).to(h.dtype).unsqueeze(1)
        per_point = directions.shape[0] // points
        out[points:] = (directions.view(points, per_point, *h.shape[1:]) * mask).view(directions.shape)
        return out

    def tangent(self, args, kwargs, masks, changes):
        h = args[0]
        changes.append((self.layer, h))
        mask = masks[self.layer]
        if isinstance(h, Box):
            return Box(h.values * mask[:, h.y0:h.y1, h.x0:h.x1], h.y0, h.x0, h.shape)
        return h * mask


class MaxPool(Step):
    """Max-pool layer `layer`: the window maxima on the point rows, each direction row read at its point's
    argmax; `tensors[layer]` gets the pair units z (points) and dz (directions), dz 0 at padding."""

    def __init__(self, node, module, layer: int, window: PoolWindow):
        super().__init__(node, module)
        self.layer, self.window = layer, window

    def dual(self, args, kwargs, points, tensors):
        h = args[0]
        w = self.window.windows(h[:points], -torch.inf)
        top = w.argmax(-1, keepdim=True)
        value = w.gather(-1, top)
        dw = self.window.windows(h[points:], 0.0)
        per_point = dw.shape[0] // points
        dw = dw.view(points, per_point, *dw.shape[1:])
        slope = dw.gather(-1, top.unsqueeze(1).expand(*dw.shape[:-1], 1))
        valid = torch.isfinite(w)
        tensors[self.layer] = torch.cat([torch.where(valid, value - w, torch.inf),
                                         torch.where(valid.unsqueeze(1), slope - dw, 0.0).flatten(0, 1)])
        return torch.cat([value.squeeze(-1), slope.squeeze(-1).flatten(0, 1)])

    def tangent(self, args, kwargs, masks, changes):
        """The pool linearised at `masks` (each window reads its first entry with mask 0, the argmax); the
        pair units change by d(w_a) - d(w_j) (0 at padding)."""
        h = args[0]
        mask = masks[self.layer]
        if isinstance(h, Box):
            cropped = _crop_window(h, self.window.kernel, self.window.stride, self.window.padding, self.out_shape)
            if cropped is None:
                return None
            window, oy0, ox0 = cropped
            w = self.window.unfold(window)
            mask = mask[:, oy0:oy0 + w.shape[2], ox0:ox0 + w.shape[3]]
        else:
            w = self.window.windows(h, 0.0)
        top = (1 - mask).argmax(-1, keepdim=True).expand(w.shape[0], *mask.shape[:-1], 1)
        out = w.gather(-1, top)
        valid = self.valid[oy0:oy0 + w.shape[2], ox0:ox0 + w.shape[3]] if isinstance(h, Box) else self.valid
        pairs = torch.where(valid, out - w, 0.0)
        out = out.squeeze(-1)
        if isinstance(h, Box):
            changes.append((self.layer, Box(pairs, oy0, ox0, tuple(masks[self.layer].shape))))
            return Box(out, oy0, ox0, self.out_shape)
        changes.append((self.layer, pairs))
        return out


class Add(Step):
    """a + b; a constant operand (number or buffer) is added to the point rows only (`carrier`: the index
    of the operand that carries the rows when the other is a constant, None when both or neither do)."""

    def dual(self, args, kwargs, points, tensors):
        a, b = args[0], args[1]
        if self.carrier is None:
            return a + b
        dual, constant = (a, b) if self.carrier == 0 else (b, a)
        out = dual.clone()
        out[:points] += constant
        return out

    def tangent(self, args, kwargs):
        a, b = args[0], args[1]
        if self.carrier is not None:
            return a if self.carrier == 0 else b
        if a is None or b is None:
            return a if b is None else b
        if isinstance(a, Box) and isinstance(b, Box):
            return _union(a, b)
        return _dense(a) + _dense(b)


class Constant(Step):
    """A buffer or parameter read from the graph module (`get_attr`)."""

    def __init__(self, node, value):
        super().__init__(node)
        self.value = value

    def dual(self, args, kwargs, points, tensors):
        return self.value

    def tangent(self, args, kwargs):
        return self.value


class Call(Step):
    """Any other linear, row-wise op (pooling, flatten, view, dropout in eval, ...), applied as it is."""

    def _call(self, args, kwargs):
        node = self.node
        if node.op == "call_module":
            return self.module(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        return getattr(args[0], node.target)(*args[1:], **kwargs)

    def dual(self, args, kwargs, points, tensors):
        return self._call(args, kwargs)

    def tangent(self, args, kwargs):
        return self._call(args, kwargs)


_ADDS = {operator.add, torch.add}
_MAX_POOL_FUNCTIONS = {"max_pool2d", "_max_pool2d", "max_pool1d", "max_pool3d", "adaptive_max_pool1d",
                       "adaptive_max_pool2d", "adaptive_max_pool3d", "_max_pool1d", "_max_pool3d",
                       "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
                       "adaptive_max_pool2d_with_indices"}


def is_max_pool(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether `node` is a max-pool of any kind (module or function), supported or not."""
    if node.op == "call_module":
        return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                                   nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))
    return node.op == "call_function" and getattr(node.target, "__name__", "") in _MAX_POOL_FUNCTIONS


class Program:
    """A `Tangent`'s graph as a list of steps (see the module docstring)."""

    def __init__(self, graph: fx.GraphModule, layer_nodes: list[str], input_shape, dtype, device):
        """`layer_nodes`: the node of each layer in `Tangent.layers` order (a ReLU site, or a max-pool)."""
        modules = dict(graph.named_modules())
        layer_of = {name: i for i, name in enumerate(layer_nodes)}
        self.dtype, self.device = dtype, device
        self.steps: list[Step] = []
        self.input: str | None = None
        for node in graph.graph.nodes:
            module = modules.get(node.target) if node.op == "call_module" else None
            if node.op == "placeholder":
                self.input = node.name
                continue
            if node.op == "output" or (node.op == "call_function" and node.target is max_pool_pairs):
                continue
            if node.op == "get_attr":
                value = graph
                for part in node.target.split("."):
                    value = getattr(value, part)
                step = Constant(node, value)
            elif node.name in layer_of:
                window = max_pool_window(node, module) if is_max_pool(node, module) else None
                step = Relu(node, layer_of[node.name]) if window is None else MaxPool(node, module, layer_of[node.name],
                                                                                     window)
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                step = Weighted(node, module)
            elif isinstance(module, EvalBN):
                step = Scale(node, module)
            elif (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method"
                                                                          and node.target == "add"):
                if node.kwargs or len(node.args) != 2:
                    raise RfprobeError(f"partition: addition {node.name} with extra arguments is not supported")
                step = Add(node)
            elif node.op == "call_module" and isinstance(module, nn.ReLU) or (
                    node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target)
                    in ("relu", "relu_")):
                raise RfprobeError(f"partition: ReLU {node.name} is not a ReLU site")
            else:
                step = Call(node, module)
            self.steps.append(step)
        self._classify(graph, dtype, device, input_shape)
        self.last_use = self._last_uses()
        self.layer_steps = {step.layer: step for step in self.steps if isinstance(step, (Relu, MaxPool))}
        self.downstream = {step.name: self._after(step.name) for step in self.layer_steps.values()}

    def _classify(self, graph, dtype, device, input_shape):
        """Run once on a zero point and direction to learn, per node, whether it carries the rows (a tensor
        computed from the input), a constant, or a plain value (sizes), and each tensor's per-row shape."""
        dual_nodes = {self.input}
        for step in self.steps:
            if isinstance(step, Add):
                a, b = step.node.args
                a_dual = isinstance(a, fx.Node) and a.name in dual_nodes
                b_dual = isinstance(b, fx.Node) and b.name in dual_nodes
                step.carrier = None if a_dual == b_dual else (0 if a_dual else 1)
            if any(name in dual_nodes for name in step.inputs):
                dual_nodes.add(step.name)
        env = self._run(torch.zeros((2, *input_shape), dtype=dtype, device=device), 1, [None] * len(self.steps))
        self.shapes = {name: tuple(value.shape[1:]) for name, value in env.items()
                       if name in dual_nodes and isinstance(value, torch.Tensor)}
        for step in self.steps:
            if isinstance(step, (Weighted, MaxPool)):
                step.out_shape = self.shapes[step.name]
            if isinstance(step, MaxPool):
                step.valid = step.window.valid(*self.shapes[step.inputs[0]][1:], device)
        one = self._run(torch.zeros((1, *input_shape), dtype=dtype, device=device), 1, [None] * len(self.steps))
        self.single = {name: value for name, value in one.items() if name not in self.shapes}

    def _after(self, start: str) -> list[Step]:
        reached = {start}
        out = []
        for step in self.steps:
            if any(name in reached for name in step.inputs):
                reached.add(step.name)
                out.append(step)
        return out

    def _run(self, rows: torch.Tensor, points: int, tensors: list, keep: bool = True):
        """Every step on `rows`; returns every node's value (`keep`), else drops each value after its last use
        (the peak memory of a forward, not the sum of all its activations)."""
        env = {self.input: rows}
        for step in self.steps:
            args = fx.node.map_arg(step.node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(step.node.kwargs, lambda n: env[n.name])
            env[step.name] = step.dual(args, kwargs, points, tensors)
            if not keep:
                for name in self.last_use.get(step.name, ()):
                    env.pop(name, None)
        return env

    def _last_uses(self) -> dict[str, list[str]]:
        """step -> the values no later step reads (the output node reads none that matter: its values are the
        layers' tensors, kept in `tensors`)."""
        last = {}
        for step in self.steps:
            for name in step.inputs:
                last[name] = step.name
        out: dict[str, list[str]] = {}
        for name, step in last.items():
            out.setdefault(step, []).append(name)
        return out

    def dual(self, x: torch.Tensor, v: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """For points x (P, ...) and directions v (P r, ...), rows i r .. i r + r - 1 belonging to point i:
        ([z per layer, (P, units)], [J_z v per layer, (P r, units)])."""
        points = x.shape[0]
        if v.shape[0] % max(points, 1):
            raise ValueError(f"{v.shape[0]} directions for {points} points")
        tensors: list = [None] * len(self.layer_steps)
        self._run(torch.cat([x, v]), points, tensors, keep=False)
        return ([h[:points].flatten(1) for h in tensors], [h[points:].flatten(1) for h in tensors])

    def response(self, layer: int, unit: int, delta: float, masks: list[torch.Tensor]):
        """[(layer j, change of z_j)]: the change of every later layer's units when unit `unit` (flat index)
        of layer `layer` changes its post-activation by `delta` (a max-pool's pair unit: the window's output),
        all masks fixed. A change is a `Box` (spatial layers) or a (1, units) tensor."""
        step = self.layer_steps[layer]
        shape = masks[layer].shape
        if isinstance(step, MaxPool):
            c, y, x, _ = (int(i) for i in torch.unravel_index(torch.tensor(unit), shape))
            values = masks[layer].new_zeros((1, shape[0], 1, 1))
            values[0, c] = delta
            start = Box(values, y, x, step.out_shape)
        elif len(shape) == 3:
            c, rest = divmod(unit, shape[1] * shape[2])
            y, x = divmod(rest, shape[2])
            values = masks[layer].new_zeros((1, shape[0], 1, 1))
            values[0, c] = delta
            start = Box(values, y, x, shape)
        else:
            start = masks[layer].new_zeros((1, *shape))
            start.view(-1)[unit] = delta
        return self.propagate(step.name, start, masks)

    def propagate(self, node: str, start, masks: list[torch.Tensor]):
        """[(layer j, change of z_j)] for a batch of changes `start` (a `Box` or a (B, ...) tensor) of node
        `node`'s output (a layer's node name, or the input's), through the network linearised at `masks`."""
        if node not in self.downstream:
            self.downstream[node] = self._after(node)
        env = {node: start}
        batch = start.values.shape[0] if isinstance(start, Box) else start.shape[0]
        changes: list = []

        def look(n):
            name = n.name
            if name in env:
                return env[name]
            if name in self.shapes:
                return None
            return self.single[name]

        def zero_or(n):
            value = env.get(n.name)
            if value is not None:
                return _dense(value)
            if n.name in self.shapes:
                return torch.zeros((batch, *self.shapes[n.name]), dtype=self.dtype, device=self.device)
            return self.single[n.name]

        for step in self.downstream[node]:
            if isinstance(step, Call):
                env[step.name] = step.tangent(fx.node.map_arg(step.node.args, zero_or),
                                              fx.node.map_arg(step.node.kwargs, zero_or))
                continue
            args = fx.node.map_arg(step.node.args, look)
            if isinstance(step, Add):
                env[step.name] = step.tangent(args, None)
            elif args[0] is None:
                env[step.name] = None
            elif isinstance(step, (Relu, MaxPool)):
                env[step.name] = step.tangent(args, None, masks, changes)
            else:
                env[step.name] = step.tangent(args, None)
        return changes
