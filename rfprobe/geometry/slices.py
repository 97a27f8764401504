"""The exact partition of a 2-D plane through input space: regions enumerated by flood fill across facets,
each region's polygon clipped from its units' affine pieces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from rfprobe.geometry.tangent import Tangent
from rfprobe.memory import release_free_memory


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


def _corners(box) -> np.ndarray:
    u0, u1, v0, v1 = box
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)


NEAREST_FIRST = 32
"""the hyperplanes nearest the seed point that clip the box before the rest are scanned"""


def _clip_region(box, a: np.ndarray, c: np.ndarray, scale: np.ndarray, index: np.ndarray, p: np.ndarray):
    """Clip the box by the constraints a_k.q + c_k >= 0 (each with its `scale` and unit `index`; all hold at the
    seed point p) until none is violated by more than 1e-12 (relative) at a vertex. First the `NEAREST_FIRST`
    hyperplanes nearest p, nearest first, each if it is violated; then, most violated first, the others. A
    constraint met at every vertex of the current polygon is met on all of it, and clipping only shrinks the
    polygon, so before each round only the units whose hyperplane still cuts it are kept: after the nearest
    clips the polygon is close to the region and few remain. The polygon is the intersection of the half-planes
    (any order gives it; tested against the most-violated-first scan of every unit)."""
    vertices = _corners(box)
    labels = [-1, -1, -1, -1]
    if len(c) > NEAREST_FIRST:
        distance = (a @ p + c) / np.hypot(a[:, 0], a[:, 1])
        near = np.argpartition(distance, NEAREST_FIRST)[:NEAREST_FIRST]
        for k in near[np.argsort(distance[near], kind="stable")]:
            if (-(vertices @ a[k] + c[k]) / scale[k]).max() > 1e-12:
                vertices, labels = _clip(vertices, labels, a[k], c[k], int(index[k]))
    while len(vertices) >= 3:
        worst = (-(vertices @ a.T + c) / scale).max(0)
        crossing = worst > 1e-12
        if not crossing.any():
            break
        a, c, scale, index, worst = a[crossing], c[crossing], scale[crossing], index[crossing], worst[crossing]
        k = int(worst.argmax())
        vertices, labels = _clip(vertices, labels, a[k], c[k], int(index[k]))
    return vertices, labels


def _constraints(box, z: torch.Tensor, grad: torch.Tensor, p: torch.Tensor):
    """For points p (P, 2) with units' z (P, N) and in-plane gradients grad (P, N, 2): per point, the constraints
    s_k (z_k + grad_k.(q - p)) >= 0 (s_k = sign z_k), as numpy (a, c, scale, unit index, p). Units with zero
    gradient or a non-finite z (padding pair units) are left out: their sign is the same across the plane."""
    u0, u1, v0, v1 = box
    s = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
    a = s[..., None] * grad
    c = s * (z - (grad @ p[:, :, None])[..., 0])
    scale = a.abs().sum(-1) * max(abs(u0), abs(u1), abs(v0), abs(v1), 1.0) + c.abs()
    keep = (grad.abs().sum(-1) > 0) & torch.isfinite(z)
    out = []
    for i in range(z.shape[0]):
        index = keep[i].nonzero()[:, 0]
        out.append((a[i, index].cpu().numpy(), c[i, index].cpu().numpy(), scale[i, index].cpu().numpy(),
                    index.cpu().numpy(), p[i].cpu().numpy()))
    return out


def region_polygon(box, z: np.ndarray, grad: np.ndarray, p: np.ndarray):
    """The polygon {q in box : sign(z_k + grad_k.(q - p)) = sign(z_k(p)) for all k}, with each edge's unit
    (-1 for the box). Constraints are applied most violated first until none is violated (`_clip_region`)."""
    [found] = _constraints(box, torch.as_tensor(z)[None], torch.as_tensor(grad)[None], torch.as_tensor(p)[None])
    return _clip_region(box, *found)


def pattern_digest(key: bytes) -> bytes:
    """A pattern's 16-byte BLAKE2 digest: the queue holds the neighbours' patterns as these (a ResNet-20's pattern is
    23 KB, and each region queues up to a dozen); a collision has probability ~2^-128 per pair."""
    return hashlib.blake2b(key, digest_size=16).digest()


def slice_partition(tf: Tangent, origin: torch.Tensor, plane: torch.Tensor, box, *, max_regions: int = 5000,
                    batch: int = 64, eps: float = 1e-7, on_region: Callable[[], None] | None = None) -> Slice:
    """Enumerate the regions of the plane x(p) = origin + plane @ p inside `box` by flood fill: from the
    box centre, each region's polygon is clipped from its units' affine pieces (one dual forward per region
    for the two in-plane gradients, up to `batch` regions at a time, fewer for a large network: `Tangent.rows`),
    and every facet not on the box is crossed at its midpoint by `eps` (relative to the box) to find the
    neighbour. Regions are identified by their activation pattern. `on_region()` is called as each is found."""
    batch = max(1, min(batch, tf.rows() // 8))
    origin = tf._cast(origin).flatten()
    plane = plane.to(device=tf.device, dtype=tf.dtype).reshape(origin.numel(), 2)
    u0, u1, v0, v1 = box
    step = eps * max(u1 - u0, v1 - v0)
    queue = [(np.array([(u0 + u1) / 2, (v0 + v1) / 2]), b"")]
    queued: set[bytes] = set()
    found: set[bytes] = set()
    patterns: dict[bytes, int] = {}
    polygons: list[np.ndarray] = []
    directions = plane.T.contiguous()
    while queue and len(polygons) < max_regions:
        todo, queue = queue[:batch], queue[batch:]
        points = np.array([point for point, _ in todo])
        p = torch.as_tensor(points, dtype=tf.dtype, device=tf.device)
        x = origin + p @ plane.T
        zs, dzs = tf.jvp(x, directions.repeat(len(points), 1))
        z = torch.cat(zs, 1)
        dz = torch.cat(dzs, 1)
        constraints = _constraints(box, z, torch.stack([dz[0::2], dz[1::2]], -1), p)
        signs_all = (z > 0).cpu().numpy()
        del z, dz, zs, dzs
        release_free_memory()
        for i in range(len(points)):
            signs = signs_all[i]
            key = np.packbits(signs).tobytes()
            digest = pattern_digest(key)
            if digest != todo[i][1]:
                queued.discard(todo[i][1])
            if digest in found or len(polygons) >= max_regions:
                continue
            vertices, labels = _clip_region(box, *constraints[i])
            if len(vertices) < 3:
                continue
            patterns[key] = len(polygons)
            found.add(digest)
            polygons.append(vertices)
            if on_region is not None:
                on_region()
            for e, label in enumerate(labels):
                if label < 0:
                    continue
                neighbour = tf.neighbour(signs, label)
                neighbour_key = pattern_digest(np.packbits(neighbour).tobytes())
                q0, q1 = vertices[e], vertices[(e + 1) % len(vertices)]
                edge = q1 - q0
                if neighbour_key in found or neighbour_key in queued or np.hypot(*edge) <= 0:
                    continue
                queued.add(neighbour_key)
                outward = np.array([edge[1], -edge[0]]) / np.hypot(*edge)
                queue.append(((q0 + q1) / 2 + step * outward, neighbour_key))
    return Slice(polygons, patterns, not queue, tuple(map(float, box)))
