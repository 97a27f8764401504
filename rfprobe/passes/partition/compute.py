"""`rfprobe partition`: exact linear-region (spline partition) statistics of a ReLU network.

A ReLU network with BN in eval mode is continuous piecewise affine: its input space is split into convex
regions, one per sign pattern of the ReLU inputs and argmax of every max-pool window (docs/science.md
section 2; a max-pool is a layer of pair units z_j = w_argmax - w_j, `rfprobe.geometry.dual`). Built on `rfprobe.geometry`
(float64, BN as a fixed affine map), `run` measures, each as variables of one Dataset:

- `breakpoints` `(segment_kind, segment)`: the exact number of region boundaries crossed along segments
  (`train-train`: pairs of data points; `point-noise`: a data point to a N(0, I) point of the normalised
  input space; `radius`: a data point to a point at distance `radius` in a uniformly random direction),
  `segment_length`, `segment_walked`, `breakpoint_density` (crossings per unit length walked, pooled), and
  `breakpoints_layer` (crossings by the layer of the crossing unit).
- `exact_distance` `(exact_point)`: min_k |z_k| / ||grad_x z_k|| (exact, forward mode over the input
  dimensions), per layer `exact_distance_layer` and the nearest unit's channel `exact_nearest_channel`;
  `hutchinson_distance` `(point)` (and `_layer`): the same with ||grad z_k|| estimated from `probes`
  Gaussian directions.
- `unit_distance_*` per layer: d_k(x) = |z_k| sigma_k / (|gamma_k| ||w_k||), the distance of the layer's
  input h (a patch, for a conv) to unit k's hyperplane <w_k, h> = mu_k - beta_k sigma_k / gamma_k
  (|z_k| / ||w_k|| without BN), over every point and position; `data_spread` = sqrt(E ||h - E h||^2),
  the RMS radius of those inputs; `unit_distance_ratio` = median d / spread; `unit_distance_hist` the
  distribution of log10(d / spread).
- `local_complexity` `(lc_point)`: the number of units whose sign is not constant over the 2n vertices
  x +- r u_i (u_i orthonormal, r = 0.005, n = 20 as published; n = input dim when smaller).
- `jitter_offset_std` `(layer, channel)`: with frozen weights, BN statistics recomputed on random
  mini-batches of size B (train mode; each batch drawn independently, without replacement within it, so
  the expected ratio to the prediction is sqrt((N - B) / (N - 1)) for a first layer); each unit's boundary offset (mu_b - beta sigma_b / gamma) / ||w||
  along its normal, its std over batches, against `jitter_offset_predicted` = sigma / (sqrt(B) ||w||); NaN
  for a channel with gamma = 0 (its BN output is the constant beta: no boundary). `jitter_ratio`: per layer,
  the median over its channels with a boundary of measured / predicted.
- `slice_*`: the exact partition of a 2-D plane (the input plane for 2-D inputs, else the plane through
  three data points), its region count and a raster of region ids for drawing.

`recalibrate_bn` replaces every BN's running statistics by the exact statistics of the data (BN as
unsupervised "smart initialisation").
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import time
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import xarray as xr
from rich.table import Table

from rfprobe.data import Data, batches, normalize
from rfprobe.errors import RfprobeError
from rfprobe.passes.base import SEGMENT_KINDS
from rfprobe.options import defaults
from rfprobe.progress import counter, track
from rfprobe.geometry import Tangent, hutchinson_norms, exact_distance, nearest, slice_partition, walk
from rfprobe.geometry.slices import pattern_digest
from rfprobe.report_tables import cell, checkpoint_table
from rfprobe.results import layer_coords, provenance
from rfprobe.graph import find_sites
from rfprobe.memory import release_free_memory
from rfprobe.passes.partition import DATA, OPTIONS




LC_RADIUS = 0.005
LC_VERTICES = 40
HIST_EDGES = np.linspace(-4.0, 1.0, 51)
AUTO_JOBS_UNITS = {"radius": 100_000, "long": 10_000}
"""the size (units) from which `--jobs 0` walks segments in worker processes: with only `radius` segments (seconds
each below 100,000 units, less than starting workers: a ResNet-8's 16 take 4 s) and with train-train or
point-noise ones (1e4 crossings and more each)"""
MAX_DISTANCES = 4_000_000
"""per layer, the median and histogram of unit distances use every k-th (point, unit) pair beyond this"""
DEFINITIONS = {
    "walk_definition": "exact breakpoints along x(t) = a + t (b - a), t in [0, 1]: the plain walk (evaluate at each "
                       "breakpoint + 1e-9, next crossing min_k -z_k/dz_k > 0), updated only where a crossing changes z; "
                       "segments: train-train (data pairs), point-noise "
                       "(data point to N(0, I) in normalised input space), radius (data point to a point at "
                       "distance `radius` in a uniform random direction); breakpoint_density = breakpoints / length "
                       "walked (a walk stopped at max_breakpoints: up to its last breakpoint)",
    "maxpool_definition": "a max-pool window (c, y, x) with entries w_1..w_K and argmax a has pair units "
                          "z_j = w_a - w_j >= 0; z_j = 0 (j != a) is an argmax change, a region boundary. Units of "
                          "a pool layer are its pair units, except local complexity, which counts windows",
    "distance_definition": "min_k |z_k| / ||grad_x z_k||, k over every ReLU input and max-pool pair unit; exact "
                           "by forward mode over input dims, or Hutchinson with `probes` N(0, I) directions (z and "
                           "the pattern in float64, J v in float32)",
    "unit_distance_definition": "|z_k| sigma_k / (|gamma_k| ||w_k||) in the layer's input space (|z_k|/||w_k|| "
                                "without BN); data_spread = sqrt(E||h - E h||^2) over layer inputs (patches)",
    "local_complexity_definition": "units whose sign is not constant over x +- r u_i, u_i orthonormal (2n "
                                   "vertices, n = min(20, input dim)), r = 0.005",
    "jitter_definition": "std over mini-batches of (mu_b - beta sigma_b / gamma) / ||w|| with BN batch "
                         "statistics (train mode, frozen weights); predicted sigma / (sqrt(B) ||w||)",
    "geometry_dtype": "float64 (inputs normalised in float64), BN in eval mode",
}


# ---------------------------------------------------------------- BN recalibration


def recalibrate_bn(model: nn.Module, data: Data, batch_size: int = 256, device="cpu") -> nn.Module:
    """A float64 copy of `model` whose every BN has running_mean / running_var = the exact mean and
    population variance of its input over `data` (layers in forward order, each with its predecessors
    already recalibrated, so the eval-mode network normalises the data exactly)."""
    net = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    modules = dict(net.named_modules())
    for site in find_sites(net).bn:
        bn = modules[site.name]
        sums = {"n": 0, "s": 0.0, "ss": 0.0}

        def accumulate(module, args, sums=sums):
            h = args[0].transpose(0, 1).flatten(1)
            sums["n"] += h.shape[1]
            sums["s"] = sums["s"] + h.sum(1)
            sums["ss"] = sums["ss"] + h.square().sum(1)

        handle = bn.register_forward_pre_hook(accumulate)
        try:
            with torch.no_grad():
                for x, _ in batches(data, batch_size, device, dtype=torch.float64):
                    net(x)
        finally:
            handle.remove()
        mean = sums["s"] / sums["n"]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_((sums["ss"] / sums["n"] - mean.square()).clamp_min(0))
    return net


# ---------------------------------------------------------------- statistics


@contextmanager
def _timed(seconds: dict, stage: str):
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start
    release_free_memory()


def _points(data: Data, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches(data, batch_size, device, dtype=torch.float64))
    return torch.cat(xs), torch.cat(ys)


def segments(x: torch.Tensor, n: int, radius: float, generator: torch.Generator) -> dict[str, tuple]:
    """The three kinds of segment (module docstring), `n` of each, from seeded random data points."""
    n = min(n, x.shape[0] // 2)
    if n < 1:
        raise RfprobeError("partition: the walk needs at least 2 data points; raise --limit or set --segments 0")
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    a, b = x[order[:n]], x[order[n:2 * n]]
    noise = torch.randn(a.shape, generator=generator, dtype=a.dtype).to(x.device)
    direction = torch.randn(a.shape, generator=generator, dtype=a.dtype).to(x.device)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, *([1] * (a.ndim - 1)))
    return {"train-train": (a, b), "point-noise": (a, noise), "radius": (a, a + radius * direction)}


def walk_jobs(jobs: int, tf: Tangent, kinds: Sequence[str] = ("radius",)) -> int:
    """Worker processes for the walks: `jobs` when given (> 0); else one per CPU core on a CPU device for a
    network of at least `AUTO_JOBS_UNITS` units (a smaller one walks its segments faster than workers start) and
    not inside a worker already (`rfprobe compare --jobs`), else 1. 1 also when the model does not pickle (a
    class a worker cannot import). The pass records the number used (`walk_jobs`)."""
    import multiprocessing

    from rfprobe.pool import cores

    enough = AUTO_JOBS_UNITS["radius" if set(kinds) <= {"radius"} else "long"]
    if jobs == 0 and (tf.device.type != "cpu" or tf.n_units < enough or multiprocessing.parent_process() is not None):
        return 1
    jobs = jobs or cores()
    if jobs > 1:
        try:
            pickle.dumps(tf.source)
        except Exception:  # a model defined where a worker cannot import it: walk here
            return 1
    return jobs


def _walk_stats(tf: Tangent, segs: dict, kinds: Sequence[str], max_breakpoints: int, jobs: int = 1,
                progress: bool = False) -> dict:
    """Every kind's segments walked in one pool (`walk`), so short segments fill the workers that long ones leave
    idle. A segment stopped at `max_breakpoints` counts only the part walked, up to its last breakpoint, in
    `breakpoint_density`."""
    n = len(next(iter(segs.values()))[0])
    a = torch.cat([segs[kind][0][:n] for kind in kinds])
    b = torch.cat([segs[kind][1][:n] for kind in kinds])
    with counter(len(a), f"walking {len(a)} segments ({', '.join(kinds)})", progress) as advance:
        result = walk(tf, a, b, max_breakpoints=max_breakpoints, jobs=jobs, on_segment=advance)
    counts = result.counts.reshape(len(kinds), n)
    lengths = result.length.reshape(len(kinds), n)
    complete = counts < max_breakpoints
    walked = np.array([1.0 if done else float(t[-1]) for t, done in zip(result.t, complete.flatten())])
    walked = walked.reshape(len(kinds), n)
    by_layer = np.zeros((len(kinds), len(tf.layers)), dtype=np.int64)
    for i, layers in enumerate(result.layer):
        by_layer[i // n] += np.bincount(layers, minlength=len(tf.layers))
    return {
        "breakpoints": (("segment_kind", "segment"), counts),
        "segment_length": (("segment_kind", "segment"), lengths),
        "segment_complete": (("segment_kind", "segment"), complete.astype(np.int64)),
        "segment_walked": (("segment_kind", "segment"), walked),
        "breakpoint_density": (("segment_kind",), counts.sum(1) / (lengths * walked).sum(1)),
        "breakpoints_layer": (("segment_kind", "layer"), by_layer),
    }


def _distance_stats(tf: Tangent, x: torch.Tensor, exact_points: int, probes: int, batch: int,
                    generator: torch.Generator, progress: bool = False) -> dict:
    out = {}
    if exact_points:
        n = min(exact_points, x.shape[0])
        found = list(track((exact_distance(tf, x[i]) for i in range(n)), n, "exact distances", progress))
        spatial = np.array([layer.spatial for layer in tf.layers])
        out["exact_distance"] = (("exact_point",), np.array([f.distance for f in found]))
        out["exact_distance_layer"] = (("exact_point", "layer"), np.stack([f.layer_distance for f in found]))
        out["exact_nearest_layer"] = (("exact_point",), np.array([f.layer for f in found], dtype=np.int64))
        out["exact_nearest_channel"] = (("exact_point", "layer"), np.stack([f.layer_unit // spatial for f in found]))
    if probes:
        rows = tf.rows(max(batch, probes))
        per = max(1, rows // probes)
        found = []
        with counter(x.shape[0], f"distances ({probes} probes)", progress) as advance:
            for start in range(0, x.shape[0], per):
                z, norms = hutchinson_norms(tf, x[start:start + per], probes, generator, batch=rows)
                for i in range(z.shape[0]):
                    found.append(nearest(tf, z[i], norms[i]))
                    advance()
        out["hutchinson_distance"] = (("point",), np.array([f.distance for f in found]))
        out["hutchinson_distance_layer"] = (("point", "layer"), np.stack([f.layer_distance for f in found]))
    return out


def _patches(h: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """The inputs each unit of `conv` sees: (B * positions, fan_in) patches (Linear: h itself)."""
    if isinstance(conv, nn.Linear):
        return h.flatten(1)
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str):
        raise RfprobeError(f"partition: unit distances support Linear and Conv2d with numeric padding, not {conv}")
    cols = F.unfold(h, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).flatten(0, 1)


def _unit_distance_stats(tf: Tangent, x: torch.Tensor, batch: int, progress: bool = False) -> dict:
    """Per layer: the median of |z| sigma / (|gamma| ||w||) over points and positions, the RMS radius of
    the layer's inputs, their ratio, and the histogram of log10(distance / spread). Beyond MAX_DISTANCES
    (point, unit) pairs in a layer, the median and histogram use a systematic subsample (every k-th)."""
    n_layers = len(tf.layers)
    scale = []
    for layer, wnorm in zip(tf.layers, tf.weight_norms()):
        if wnorm is None:
            scale.append(None)
        elif layer.bn is not None:
            bn = layer.bn
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            sigma = (bn.running_var + bn.eps).sqrt()
            scale.append(sigma / (gamma.abs() * wnorm))
        else:
            scale.append(1 / wnorm)
    distances = [[] for _ in range(n_layers)]
    steps = [max(1, math.ceil(x.shape[0] * layer.size / MAX_DISTANCES)) for layer in tf.layers]
    sums = [[0, 0.0, 0.0] for _ in range(n_layers)]
    batch = min(batch, tf.rows())
    for start in track(range(0, x.shape[0], batch), -(-x.shape[0] // batch), "unit distances", progress):
        _, zs, hs = tf.forward(x[start:start + batch], with_inputs=True)
        for i, layer in enumerate(tf.layers):
            if scale[i] is None:
                continue
            z = zs[i].reshape(-1, layer.shape[0], layer.spatial)
            distances[i].append((z.abs() * scale[i][None, :, None]).flatten()[::steps[i]].cpu())
            p = _patches(hs[i], layer.producer)
            sums[i][0] += p.shape[0]
            sums[i][1] = sums[i][1] + p.sum(0)
            sums[i][2] += float(p.square().sum())
    median = np.full(n_layers, np.nan)
    spread = np.full(n_layers, np.nan)
    hist = np.full((n_layers, len(HIST_EDGES) - 1), np.nan)
    for i in range(n_layers):
        if scale[i] is None:
            continue
        n, s, ss = sums[i]
        spread[i] = math.sqrt(max(ss / n - float((s / n).square().sum()), 0.0))
        d = torch.cat(distances[i]).numpy()
        median[i] = np.median(d)
        with np.errstate(divide="ignore"):
            counts, _ = np.histogram(np.clip(np.log10(d / spread[i]), HIST_EDGES[0], HIST_EDGES[-1]), HIST_EDGES)
        hist[i] = counts / len(d)
    return {
        "unit_distance_median": (("layer",), median),
        "data_spread": (("layer",), spread),
        "unit_distance_ratio": (("layer",), median / spread),
        "unit_distance_hist": (("layer", "bin"), hist),
    }


def local_complexity(tf: Tangent, x: torch.Tensor, generator: torch.Generator, radius: float = LC_RADIUS,
                     vertices: int = LC_VERTICES, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per point and layer: units whose sign is not constant over the vertices x +- radius u_i
    (u_i orthonormal, random; min(vertices / 2, input dim) of them), for a max-pool the windows whose argmax is
    not constant. Returns (total (N,), per layer (N, L))."""
    dim = int(np.prod(tf.input_shape))
    half = min(vertices // 2, dim)
    per_layer = np.zeros((x.shape[0], len(tf.layers)), dtype=np.int64)
    for i in track(range(x.shape[0]), x.shape[0], "local complexity", progress):
        u, _ = torch.linalg.qr(torch.randn((dim, half), generator=generator, dtype=torch.float64))
        u = u.T.to(tf.device)
        points = x[i].flatten() + radius * torch.cat([u, -u])
        s = tf.signs(points, batch=tf.rows())
        per_layer[i] = tf.count_by_layer(s.any(0) & ~s.all(0))
    return per_layer.sum(1), per_layer


def jitter(model: nn.Module, tf: Tangent, data: Data, n_batches: int, batch_size: int, device,
           generator: torch.Generator, progress: bool = False) -> dict:
    """Boundary-offset spread under BN mini-batch statistics (module docstring), per (layer, channel)."""
    net = copy.deepcopy(model).to(device=device, dtype=torch.float64).train()
    for p in net.parameters():
        p.requires_grad_(False)
    modules = dict(net.named_modules())
    tracked = [i for i, layer in enumerate(tf.layers) if layer.bn is not None and layer.weight is not None]
    stats: dict[int, list] = {i: [] for i in tracked}
    handles = []
    for i in tracked:

        def capture(module, args, i=i):
            h = args[0].transpose(0, 1).flatten(1)
            stats[i].append(torch.stack([h.mean(1), h.var(1, unbiased=False)]))

        handles.append(modules[tf.layers[i].site.name].register_forward_pre_hook(capture))
    if len(data) < batch_size:
        raise RfprobeError(f"partition: --jitter-batch-size {batch_size} is larger than the data ({len(data)} points)")
    try:
        with torch.no_grad():
            for _ in track(range(n_batches), n_batches, "BN jitter", progress):
                index = torch.randperm(len(data), generator=generator)[:batch_size]
                net(normalize(data.x[index].to(device), data.mean, data.std, torch.float64))
    finally:
        for handle in handles:
            handle.remove()
    width = max(layer.shape[0] for layer in tf.layers)
    measured = np.full((len(tf.layers), width), np.nan)
    predicted = np.full((len(tf.layers), width), np.nan)
    wnorms = tf.weight_norms()
    for i in tracked:
        if len(stats[i]) < 2:
            raise RfprobeError("partition: --jitter-batches must be at least 2")
        bn = tf.layers[i].bn
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        mu, var = torch.stack(stats[i]).unbind(1)
        has_boundary = gamma != 0  # gamma 0: the BN's output is the constant beta, no boundary to move
        offsets = (mu - beta * (var + bn.eps).sqrt() / gamma.where(has_boundary, 1)) / wnorms[i]
        c = offsets.shape[1]
        measured[i, :c] = offsets.std(0).where(has_boundary, torch.nan).cpu().numpy()
        predicted[i, :c] = ((bn.running_var + bn.eps).sqrt() / (math.sqrt(batch_size) * wnorms[i])).where(
            has_boundary, torch.nan).cpu().numpy()
    ratio = np.full(len(tf.layers), np.nan)
    for i in tracked:
        ratios = measured[i, :tf.layers[i].shape[0]] / predicted[i, :tf.layers[i].shape[0]]
        ratios = ratios[np.isfinite(ratios)]
        ratio[i] = np.median(ratios) if ratios.size else np.nan
    return {
        "jitter_offset_std": (("layer", "channel"), measured),
        "jitter_offset_predicted": (("layer", "channel"), predicted),
        "jitter_ratio": (("layer",), ratio),
    }


def plane_for(tf: Tangent, x: torch.Tensor, y: torch.Tensor):
    """(origin, plane (D, 2), box, point coordinates, point labels): the input plane itself for 2-D inputs
    (box = the data's bounding box + 10%), else the plane through x[0], x[1], x[2] (at (0,0), (1,0), (0,1))."""
    if tf.input_shape == (2,):
        lo, hi = x.min(0).values.cpu().numpy(), x.max(0).values.cpu().numpy()
        margin = 0.1 * (hi - lo)
        box = (lo[0] - margin[0], hi[0] + margin[0], lo[1] - margin[1], hi[1] + margin[1])
        return torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), box, x.cpu().numpy(), y.cpu().numpy()
    if x.shape[0] < 3:
        raise RfprobeError("partition: the 2-D slice needs 3 data points; raise --limit or pass --no-slice")
    origin = x[0].flatten()
    plane = torch.stack([x[1].flatten() - origin, x[2].flatten() - origin], 1)
    return origin, plane, (-0.25, 1.25, -0.25, 1.25), np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), y[:3].cpu().numpy()


def _slice_stats(tf: Tangent, x: torch.Tensor, y: torch.Tensor, max_regions: int, resolution: int, batch: int,
                 progress: bool = False) -> dict:
    origin, plane, box, points, labels = plane_for(tf, x, y)
    with counter(max_regions, f"2-D slice (up to {max_regions} regions)", progress) as advance:
        found = slice_partition(tf, origin, plane, box, max_regions=max_regions, batch=batch, on_region=advance)
    u = np.linspace(box[0], box[1], resolution)
    v = np.linspace(box[2], box[3], resolution)
    grid = torch.as_tensor(np.stack(np.meshgrid(u, v), -1).reshape(-1, 2), dtype=torch.float64, device=tf.device)
    pixels = origin.to(tf.device) + grid @ plane.to(tf.device).T
    rows = tf.rows()
    keys = [pattern_digest(np.packbits(row).tobytes())
            for start in track(range(0, len(pixels), rows), -(-len(pixels) // rows), "slice raster", progress)
            for row in tf.signs(pixels[start:start + rows], batch=rows).cpu().numpy()]
    ids = {pattern_digest(key): i for key, i in found.patterns.items()}
    raster = np.array([ids.get(k, -1) for k in keys], dtype=np.int64).reshape(resolution, resolution)
    edges = np.concatenate([np.stack([poly, np.roll(poly, -1, 0)], 1) for poly in found.polygons]) \
        if found.polygons else np.zeros((0, 2, 2))
    return {
        "slice_regions": ((), len(found.polygons)),
        "slice_complete": ((), int(found.complete)),
        "slice_raster_regions": ((), len(set(keys))),
        "slice_raster": (("slice_v", "slice_u"), raster),
        "slice_edges": (("slice_edge", "end", "axis"), edges),
        "slice_points": (("slice_point", "axis"), points),
        "slice_point_label": (("slice_point",), labels.astype(np.int64)),
        "slice_box": (("box_side",), np.array(box, dtype=np.float64)),
    }, {"slice_u": u, "slice_v": v}


# ---------------------------------------------------------------- the pass


_D = defaults(OPTIONS)
"""the defaults of `run` and `check_options`: the CLI's, declared once in OPTIONS, so a
notebook's `run(model, data)` and `rfprobe partition` compute the same numbers"""


def check_options(segments_per_kind: int = _D["segments"], segment_kinds: Sequence[str] | str = _D["kinds"],
                  radius: float = _D["radius"], max_breakpoints: int = _D["max_breakpoints"],
                  exact_points: int = _D["exact_points"], probes: int = _D["probes"], lc_points: int = _D["lc_points"],
                  jitter_batches: int = _D["jitter_batches"], jitter_batch_size: int = _D["jitter_batch_size"],
                  slice_resolution: int = _D["slice_resolution"], slice_max_regions: int = _D["slice_max_regions"],
                  n_points: int | None = None, jobs: int = _D["jobs"]) -> list[str]:
    """Refuse (one line) bad options before any work, also against the number of data points when known;
    returns the segment kinds (a list, or comma-separated text) in their canonical order."""
    if isinstance(segment_kinds, str):
        segment_kinds = [k.strip() for k in segment_kinds.split(",") if k.strip()]
    for name, value in (("--segments", segments_per_kind), ("--exact-points", exact_points), ("--probes", probes),
                        ("--lc-points", lc_points), ("--jitter-batches", jitter_batches), ("--jobs", jobs)):
        if value < 0:
            raise RfprobeError(f"{name} must be >= 0, got {value}")
    if jitter_batches == 1:
        raise RfprobeError("--jitter-batches must be 0 (skip) or at least 2 (a spread over batches)")
    if not (radius > 0 and math.isfinite(radius)) or max_breakpoints < 1 or jitter_batch_size < 2 \
            or slice_resolution < 2 or slice_max_regions < 1:
        raise RfprobeError("partition: --radius must be finite and > 0, --max-breakpoints >= 1, --jitter-batch-size >= 2, "
                           "--slice-resolution >= 2, --slice-max-regions >= 1")
    unknown = [k for k in segment_kinds if k not in SEGMENT_KINDS]
    if unknown or not segment_kinds:
        raise RfprobeError(f"--kinds: unknown segment kind(s) {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(SEGMENT_KINDS)}")
    if n_points is not None and jitter_batches and n_points < jitter_batch_size:
        raise RfprobeError(f"partition: --jitter-batch-size {jitter_batch_size} is larger than the data ({n_points} points)")
    return [k for k in SEGMENT_KINDS if k in segment_kinds]


def run(model: nn.Module, data: Data, *, checkpoint=None, segments_per_kind: int = _D["segments"],
        segment_kinds: Sequence[str] | str = _D["kinds"], radius: float = _D["radius"],
        max_breakpoints: int = _D["max_breakpoints"], exact_points: int = _D["exact_points"],
        probes: int = _D["probes"], lc_points: int = _D["lc_points"], jitter_batches: int = _D["jitter_batches"],
        jitter_batch_size: int = _D["jitter_batch_size"], slice_plane: bool = _D["slice_plane"],
        slice_max_regions: int = _D["slice_max_regions"], slice_resolution: int = _D["slice_resolution"],
        recalibrate: bool = _D["recalibrate_bn"], batch_size: int = DATA["batch_size"], device="cpu",
        seed: int = _D["seed"], jobs: int = _D["jobs"], command: Sequence[str] | None = None,
        progress: bool = False) -> xr.Dataset:
    """All partition statistics of one model on `data` (module docstring); a count of 0 skips a statistic.
    `jobs`: worker processes for the segment walks (`walk_jobs`); `progress`: a bar per stage on stderr."""
    segment_kinds = check_options(segments_per_kind, segment_kinds, radius, max_breakpoints, exact_points, probes,
                                  lc_points, jitter_batches, jitter_batch_size, slice_resolution, slice_max_regions,
                                  jobs=jobs)
    device = torch.device(device)
    data = data.materialized()
    if recalibrate:
        model = recalibrate_bn(model, data, batch_size, device)
    tf = Tangent.from_model(model, device=device)
    x, y = _points(data, batch_size, device)
    if x.shape[1:] != tf.input_shape:
        raise RfprobeError(f"partition: the data's points have shape {tuple(x.shape[1:])} but the model takes "
                           f"{tf.input_shape}; choose a matching --dataset")
    generator = torch.Generator().manual_seed(seed)
    variables: dict = {}
    used_jobs = 0
    coords = {**layer_coords([layer.site for layer in tf.layers]),
              "channel": ("channel", np.arange(max(layer.shape[0] for layer in tf.layers))),
              "n_units": ("layer", np.array([layer.size for layer in tf.layers], dtype=np.int64))}
    seconds: dict[str, float] = {}
    if segments_per_kind:
        with _timed(seconds, "walk"):
            segs = segments(x, segments_per_kind, radius, generator)
            used_jobs = walk_jobs(jobs, tf, segment_kinds)
            variables.update(_walk_stats(tf, segs, segment_kinds, max_breakpoints, used_jobs, progress))
        coords["segment_kind"] = ("segment_kind", np.array(segment_kinds, dtype=object))
    with _timed(seconds, "distances"):
        variables.update(_distance_stats(tf, x, exact_points, probes, batch_size, generator, progress))
    with _timed(seconds, "unit_distances"):
        variables.update(_unit_distance_stats(tf, x, batch_size, progress))
    variables["bin_edges"] = (("bin_edge",), HIST_EDGES)
    if lc_points:
        with _timed(seconds, "local_complexity"):
            total, per_layer = local_complexity(tf, x[:lc_points], generator, progress=progress)
        variables["local_complexity"] = (("lc_point",), total)
        variables["local_complexity_layer"] = (("lc_point", "layer"), per_layer)
    if jitter_batches:
        with _timed(seconds, "jitter"):
            variables.update(jitter(model, tf, data, jitter_batches, jitter_batch_size, device, generator, progress))
    if slice_plane:
        with _timed(seconds, "slice"):
            found, slice_coords = _slice_stats(tf, x, y, slice_max_regions, slice_resolution, batch_size, progress)
        variables.update(found)
        coords.update({k: (k, v) for k, v in slice_coords.items()})
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.set_coords("bin_edges")
    ds.attrs = provenance(
        "partition", checkpoint, dataset=data.name, split=data.split, n_examples=len(data), device=str(device),
        command=command, **data.normalization_attrs(), **DEFINITIONS, recalibrate_bn=int(recalibrate), segments=segments_per_kind,
        segment_kinds=", ".join(segment_kinds), radius=radius, max_breakpoints=max_breakpoints,
        exact_points=exact_points, probes=probes, lc_points=lc_points, lc_radius=LC_RADIUS,
        lc_vertices=2 * min(LC_VERTICES // 2, int(np.prod(tf.input_shape))), jitter_batches=jitter_batches,
        jitter_batch_size=jitter_batch_size, slice_max_regions=slice_max_regions, seed=seed, walk_jobs=used_jobs,
        stage_seconds=json.dumps({k: round(v, 2) for k, v in seconds.items()}))
    return ds


def headline(ds: xr.Dataset) -> dict[str, dict]:
    """The summary numbers per checkpoint (for the table and --json)."""
    out = {}
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        row: dict = {}
        if "breakpoint_density" in one:
            for kind in one["segment_kind"].values:
                row[f"breakpoints_per_length:{kind}"] = float(one["breakpoint_density"].sel(segment_kind=kind))
                row[f"regions_per_segment:{kind}"] = float(one["breakpoints"].sel(segment_kind=kind).mean()) + 1
        for name in ("exact_distance", "hutchinson_distance"):
            if name in one:
                row[f"median_{name}"] = float(np.median(one[name].values))
        if "local_complexity" in one:
            row["mean_local_complexity"] = float(one["local_complexity"].mean())
        for name in ("unit_distance_ratio", "jitter_ratio"):
            if name in one and np.isfinite(one[name].values).any():
                row[f"median_{name}"] = float(np.nanmedian(one[name].values))
        if "slice_regions" in one:
            row["slice_regions"] = int(one["slice_regions"])
            row["slice_complete"] = bool(int(one["slice_complete"]))
        out[str(label)] = row
    return out




def validate(options: dict, n_points: int | None = None) -> dict:
    o = options
    kinds = check_options(o["segments"], o["kinds"], o["radius"], o["max_breakpoints"], o["exact_points"], o["probes"],
                          o["lc_points"], o["jitter_batches"], o["jitter_batch_size"], o["slice_resolution"],
                          o["slice_max_regions"], n_points=n_points, jobs=o["jobs"])
    return {**options, "kinds": kinds}


def run_checkpoint(checkpoint, data: Data, options: dict | None = None, *, batch_size: int = 64, device="cpu",
            command=None, progress: bool = False, **_) -> xr.Dataset:
    o = validate({**defaults(OPTIONS), **(options or {})})
    return run(checkpoint.model, data, checkpoint=checkpoint, segments_per_kind=o["segments"], segment_kinds=o["kinds"],
               radius=o["radius"], max_breakpoints=o["max_breakpoints"], exact_points=o["exact_points"],
               probes=o["probes"], lc_points=o["lc_points"], jitter_batches=o["jitter_batches"],
               jitter_batch_size=o["jitter_batch_size"], slice_plane=o["slice_plane"],
               slice_max_regions=o["slice_max_regions"], slice_resolution=o["slice_resolution"],
               recalibrate=o["recalibrate_bn"], batch_size=batch_size, device=device, seed=o["seed"], jobs=o["jobs"],
               command=command, progress=progress)


# ---------------------------------------------------------------- presentation and the registry entry


def tables(ds: xr.Dataset) -> list[Table]:
    """The CLI table: every headline number per checkpoint."""
    summary = headline(ds)
    recalibrated = ", BN recalibrated on them" if int(ds.attrs["recalibrate_bn"]) else ""
    title = f"linear regions: {ds.attrs['dataset']} {ds.attrs['split']}, {ds.attrs['n_examples']} points{recalibrated}"
    keys = dict.fromkeys(k for row in summary.values() for k in row)
    return [checkpoint_table(title, summary, [(k.replace("_", " "), lambda s, k=k: cell(s.get(k))) for k in keys])]


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "num"): its numbers (not flags)."""
    return {k.replace("_", " "): (float(v), "num") for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.partition)."""
    from rfprobe.plots.partition import partition_figure

    return partition_figure(ds)
