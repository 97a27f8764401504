"""The exact partition of a 2-D plane through input space: regions enumerated by flood fill across facets,
each region's polygon clipped from its units' affine pieces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rfprobe.geometry.tangent import Tangent


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
    keep = (np.abs(grad).sum(1) > 0) & np.isfinite(z)
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
                neighbour = tf.neighbour(signs, label)
                neighbour_key = np.packbits(neighbour).tobytes()
                q0, q1 = vertices[e], vertices[(e + 1) % len(vertices)]
                edge = q1 - q0
                if neighbour_key in patterns or neighbour_key in queued or np.hypot(*edge) <= 0:
                    continue
                queued.add(neighbour_key)
                outward = np.array([edge[1], -edge[0]]) / np.hypot(*edge)
                queue.append(((q0 + q1) / 2 + step * outward, neighbour_key))
    return Slice(polygons, patterns, not queue, tuple(map(float, box)))
