"""The tangent forward of a piecewise-affine ReLU network, and the exact geometry built on it.

`Tangent(model)` is a float64, eval-mode copy of a model (BN is then a fixed affine map) whose forward
returns, besides the logits, the pre-activation z of every ReLU site (keyed like `rfprobe.sites`) and the
input of the conv/linear layer that feeds it. `Tangent.jvp(x, v)` gives z(x) and its directional
derivatives J_z(x) v for all units, several directions per point, in one dual forward (`rfprobe.dual`).

On top of it, all exact (no sampling):
- `walk(tf, a, b)`: the breakpoints of x(t) = a + t (b - a), t in [0, 1]. Inside a region every z_k is
  affine in t, so from an evaluation point t_e the next crossing is t_e + min_k {-z_k / dz_k > 0}; the walk
  is that of evaluating at each crossing + `delta` (in t), computed by updating only what each crossing
  changes (`rfprobe.regionwalk`).
- `gradient_norms` / `exact_distance`: ||grad_x z_k|| by forward mode over the input dimensions (chunked:
  memory O(units x chunk)), and the distance from x to its region's boundary min_k |z_k| / ||grad z_k||
  (the region is the convex polytope where every sign is fixed and every z_k affine).
- `hutchinson_norms`: ||grad z_k||^2 ~ mean_j (J v_j)_k^2 with v_j ~ N(0, I) (relative error of the norm
  ~ 1/sqrt(2K)).
- `slice_partition`: the regions of a 2-D plane origin + P p inside a box, enumerated by flood fill
  across region facets, each region's polygon clipped exactly from its units' affine pieces.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.dual import Box, Program
from rfprobe.errors import RfprobeError
from rfprobe.regionwalk import walk_segment
from rfprobe.sites import BN_TYPES, WEIGHT_TYPES, ReluSite, find_sites

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


def _check_piecewise_affine(graph: fx.GraphModule, arch: str) -> None:
    """Refuse (one line) any op that is not affine or ReLU: MaxPool adds boundaries this module does not track."""
    modules = dict(graph.named_modules())
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


class EvalBN(nn.Module):
    """BN in eval mode as the fixed affine map it is: y = x * gamma / sqrt(var + eps) + (beta - mean * that)
    per channel (a plain multiply-add, cheaper under forward-mode AD than batch_norm's decomposition)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        scale = (bn.running_var + bn.eps).rsqrt()
        if bn.affine:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale + (bn.bias.detach() if bn.affine else 0)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


@dataclass
class Layer:
    """One ReLU site of a `Tangent`: its key, its units' shape (C, *spatial) and where they sit in `concat`."""

    site: ReluSite
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
        and r directions v per point (point-major), by one dual forward (`rfprobe.dual`)."""
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


# ---------------------------------------------------------------- exact walk along segments


@dataclass
class Walk:
    """Breakpoints of segments a_i -> b_i: `t[i]` (sorted, in (0, 1)) and the layer of the unit crossing there."""

    t: list[np.ndarray]
    layer: list[np.ndarray]
    length: np.ndarray
    evaluations: int
    """full dual forwards (the first of each segment, merged crossings and periodic refreshes)"""

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(t) for t in self.t])


def walk(tf: Tangent, a: torch.Tensor, b: torch.Tensor, *, delta: float = 1e-9, max_breakpoints: int = 1_000_000,
         refresh: int = 256) -> Walk:
    """Exact breakpoints of the segments x_i(t) = a_i + t (b_i - a_i), t in [0, 1], one segment at a time.

    The plain walk: at an evaluation point t_e (0, then each breakpoint + `delta`) the pre-activations z and
    dz/dt give the next breakpoint t_e + min_k {-z_k / dz_k : > 0}; crossings closer than `delta` (in t) to
    the previous one merge into it. `rfprobe.regionwalk` computes exactly that, updating after each
    crossing only the units it changes (full evaluations when crossings merge and every `refresh` crossings)."""
    a, b = tf._cast(a).flatten(1), tf._cast(b).flatten(1)
    d = b - a
    found_t, found_layer, evaluations = [], [], 0
    for i in range(a.shape[0]):
        t, layer, n = walk_segment(tf, a[i], d[i], delta=delta, max_breakpoints=max_breakpoints, refresh=refresh)
        found_t.append(np.array(t, dtype=np.float64))
        found_layer.append(np.array(layer, dtype=np.int64))
        evaluations += n
    return Walk(found_t, found_layer, d.norm(dim=1).cpu().numpy(), evaluations)


# ---------------------------------------------------------------- distances


def gradient_norms(tf: Tangent, x: torch.Tensor, chunk: int = 64, tile: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """z and ||grad_x z_k|| exactly for every unit, by forward mode along the input basis: ||grad z_k||^2 =
    sum_i (J e_i)_k^2. Image inputs (C, H, W): the basis vectors of each `tile` x `tile` patch together, each
    carried only through its receptive-field cone (`Program.propagate`); other inputs: each point followed by
    `chunk` basis vectors in one dual forward (rows bounded by `tf.rows`). x is one point (returns (units,)
    each) or a batch (N, ...) (returns (N, units) each)."""
    single = x.shape == torch.Size(tf.input_shape)
    x = tf._cast(x)
    if len(tf.input_shape) == 3:
        pairs = [_image_gradient_norms(tf, point, tile) for point in x]
        z, g = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return (z[0], g[0]) if single else (z, g)
    dim = int(np.prod(tf.input_shape))
    chunk = min(chunk, dim)
    per = max(1, tf.rows(chunk) // chunk)
    zs_all, norms = [], []
    for p0 in range(0, x.shape[0], per):
        xs = x[p0:p0 + per]
        m = xs.shape[0]
        sumsq = torch.zeros((m, tf.n_units), dtype=tf.dtype, device=tf.device)
        for start in range(0, dim, chunk):
            c = min(chunk, dim - start)
            basis = torch.zeros((c, dim), dtype=tf.dtype, device=tf.device)
            basis[torch.arange(c), torch.arange(start, start + c)] = 1
            zs, dzs = tf.jvp(xs, basis.repeat(m, 1))
            sumsq += torch.cat(dzs, 1).square().reshape(m, c, -1).sum(1)
            if start == 0:
                zs_all.append(torch.cat(zs, 1))
        norms.append(sumsq.sqrt())
    z, g = torch.cat(zs_all), torch.cat(norms)
    return (z[0], g[0]) if single else (z, g)


def tile_basis(tf: Tangent, y0: int, x0: int, tile: int) -> Box:
    """The input basis vectors e_(c, y, x) of one tile, c-major, as one `Box` batch."""
    channels, height, width = tf.input_shape
    h, w = min(tile, height - y0), min(tile, width - x0)
    n = channels * h * w
    values = torch.zeros((n, channels, h, w), dtype=tf.dtype, device=tf.device)
    values.view(n, n)[torch.arange(n), torch.arange(n)] = 1
    return Box(values, y0, x0, tf.input_shape)


def _image_gradient_norms(tf: Tangent, x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, zs = tf.forward(x[None])
    masks = [(z[0] > 0).to(tf.dtype).view(layer.shape) for z, layer in zip(zs, tf.layers)]
    sumsq = [torch.zeros(layer.shape, dtype=tf.dtype, device=tf.device) for layer in tf.layers]
    _, height, width = tf.input_shape
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            with torch.no_grad():
                changes = tf.program.propagate(tf.program.input, tile_basis(tf, y0, x0, tile), masks)
            for j, change in changes:
                if isinstance(change, Box):
                    sumsq[j][:, change.y0:change.y1, change.x0:change.x1] += change.values.square().sum(0)
                else:
                    sumsq[j] += change.square().sum(0).view(sumsq[j].shape)
    return torch.cat([z[0] for z in zs]), torch.cat([s.flatten() for s in sumsq]).sqrt()


def hutchinson_norms(tf: Tangent, x: torch.Tensor, probes: int, generator: torch.Generator | None = None,
                     batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """For points x (N, ...): z (N, units) and the estimate sqrt(mean_j (J v_j)_k^2), v_j ~ N(0, I), of
    ||grad z_k|| per point with `probes` directions each."""
    x = tf._cast(x)
    dim = int(np.prod(tf.input_shape))
    per = max(1, batch // probes)
    zs_all, norms = [], []
    for start in range(0, x.shape[0], per):
        xs = x[start:start + per]
        m = xs.shape[0]
        v = torch.randn((m * probes, dim), generator=generator, dtype=tf.dtype).to(tf.device)
        zs, dzs = tf.jvp(xs, v)
        zs_all.append(torch.cat(zs, 1))
        norms.append(torch.cat(dzs, 1).square().reshape(m, probes, -1).mean(1).sqrt())
    return torch.cat(zs_all), torch.cat(norms)


@dataclass
class Nearest:
    """Distance from x to the nearest boundary: overall, per layer, and the unit attaining it."""

    distance: float
    layer: int
    layer_distance: np.ndarray
    layer_unit: np.ndarray
    """flat unit index within each layer (channel = unit // spatial)"""


def nearest(tf: Tangent, z: torch.Tensor, gnorm: torch.Tensor) -> Nearest:
    """min_k |z_k| / ||grad z_k|| overall and per layer (units with zero gradient never cross: skipped)."""
    dist = torch.where(gnorm > 0, z.abs() / gnorm, torch.inf)
    per_layer, units = [], []
    for layer in tf.layers:
        piece = dist[layer.offset:layer.offset + layer.size]
        k = int(piece.argmin())
        per_layer.append(float(piece[k]))
        units.append(k)
    per_layer = np.array(per_layer)
    best = int(per_layer.argmin())
    return Nearest(float(per_layer[best]), best, per_layer, np.array(units))


def exact_distance(tf: Tangent, x: torch.Tensor, chunk: int = 64) -> Nearest:
    z, g = gradient_norms(tf, x, chunk)
    return nearest(tf, z, g)


# ---------------------------------------------------------------- 2-D slices


@dataclass
class Slice:
    """The regions of the plane origin + P p, p in `box` = (u0, u1, v0, v1)."""

    polygons: list[np.ndarray]
    """vertices (m, 2) of each region, in plane coordinates"""
    patterns: dict[bytes, int]
    complete: bool
    box: tuple[float, float, float, float]


def _clip(vertices: np.ndarray, labels: list[int], a: np.ndarray, c: float, label: int):
    """Sutherland-Hodgman: keep the part of a convex polygon where a.q + c >= 0; edge i runs v_i -> v_i+1."""
    f = vertices @ a + c
    out_v, out_l = [], []
    n = len(vertices)
    for i in range(n):
        j = (i + 1) % n
        p, q, fp, fq = vertices[i], vertices[j], f[i], f[j]
        if fp >= 0:
            out_v.append(p)
            out_l.append(labels[i])
            if fq < 0:
                out_v.append(p + (q - p) * (fp / (fp - fq)))
                out_l.append(label)
        elif fq >= 0:
            out_v.append(p + (q - p) * (fp / (fp - fq)))
            out_l.append(labels[i])
    return np.array(out_v).reshape(-1, 2), out_l


def region_polygon(box, z: np.ndarray, grad: np.ndarray, p: np.ndarray):
    """The polygon {q in box : sign(z_k + grad_k.(q - p)) = sign(z_k(p)) for all k}, with each edge's unit
    (-1 for the box). Constraints are applied most violated first until none is violated."""
    u0, u1, v0, v1 = box
    vertices = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)
    labels = [-1, -1, -1, -1]
    s = np.where(z > 0, 1.0, -1.0)
    keep = np.abs(grad).sum(1) > 0
    a = (s[:, None] * grad)[keep]
    c = (s * (z - grad @ p))[keep]
    index = np.nonzero(keep)[0]
    scale = np.abs(a).sum(1) * max(abs(u0), abs(u1), abs(v0), abs(v1), 1.0) + np.abs(c)
    while len(vertices) >= 3:
        violation = -(vertices @ a.T + c) / scale
        worst = violation.max(0)
        k = int(worst.argmax())
        if worst[k] <= 1e-12:
            break
        vertices, labels = _clip(vertices, labels, a[k], c[k], int(index[k]))
    return vertices, labels


def slice_partition(tf: Tangent, origin: torch.Tensor, plane: torch.Tensor, box, *, max_regions: int = 5000,
                    batch: int = 64, eps: float = 1e-7) -> Slice:
    """Enumerate the regions of the plane x(p) = origin + plane @ p inside `box` by flood fill: from the
    box centre, each region's polygon is clipped from its units' affine pieces (one dual forward per region
    for the two in-plane gradients), and every facet not on the box is crossed at its midpoint by `eps` (relative
    to the box) to find the neighbour. Regions are identified by their activation pattern."""
    origin = tf._cast(origin).flatten()
    plane = plane.to(device=tf.device, dtype=tf.dtype).reshape(origin.numel(), 2)
    u0, u1, v0, v1 = box
    step = eps * max(u1 - u0, v1 - v0)
    queue = [(np.array([(u0 + u1) / 2, (v0 + v1) / 2]), b"")]
    queued: set[bytes] = set()
    patterns: dict[bytes, int] = {}
    polygons: list[np.ndarray] = []
    directions = plane.T.contiguous()
    while queue and len(polygons) < max_regions:
        todo, queue = queue[:batch], queue[batch:]
        points = np.array([point for point, _ in todo])
        p = torch.as_tensor(points, dtype=tf.dtype, device=tf.device)
        x = origin + p @ plane.T
        zs, dzs = tf.jvp(x, directions.repeat(len(points), 1))
        z = torch.cat(zs, 1).cpu().numpy()
        dz = torch.cat(dzs, 1).cpu().numpy()
        grad = np.stack([dz[0::2], dz[1::2]], -1)
        for i in range(len(points)):
            signs = z[i] > 0
            key = np.packbits(signs).tobytes()
            if key != todo[i][1]:
                queued.discard(todo[i][1])
            if key in patterns or len(polygons) >= max_regions:
                continue
            vertices, labels = region_polygon(box, z[i], grad[i], points[i])
            if len(vertices) < 3:
                continue
            patterns[key] = len(polygons)
            polygons.append(vertices)
            for e, label in enumerate(labels):
                if label < 0:
                    continue
                neighbour = signs.copy()
                neighbour[label] = not neighbour[label]
                neighbour_key = np.packbits(neighbour).tobytes()
                q0, q1 = vertices[e], vertices[(e + 1) % len(vertices)]
                edge = q1 - q0
                if neighbour_key in patterns or neighbour_key in queued or np.hypot(*edge) <= 0:
                    continue
                queued.add(neighbour_key)
                outward = np.array([edge[1], -edge[0]]) / np.hypot(*edge)
                queue.append(((q0 + q1) / 2 + step * outward, neighbour_key))
    return Slice(polygons, patterns, not queue, tuple(map(float, box)))
