"""The exact region walk along segments: every breakpoint where a ReLU unit changes sign."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rfprobe.geometry.regionwalk import walk_segment
from rfprobe.geometry.tangent import Tangent


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
    the previous one merge into it. `rfprobe.geometry.regionwalk` computes exactly that, updating after each
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
