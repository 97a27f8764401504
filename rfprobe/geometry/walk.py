"""The exact region walk along segments: every breakpoint where a ReLU unit changes sign."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def _walk_one(tf: Tangent, a: torch.Tensor, d: torch.Tensor, delta: float, max_breakpoints: int, refresh: int,
              threads: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    if threads:
        torch.set_num_threads(threads)
    t, layer, n = walk_segment(tf, a, d, delta=delta, max_breakpoints=max_breakpoints, refresh=refresh)
    return np.array(t, dtype=np.float64), np.array(layer, dtype=np.int64), n


def walk(tf: Tangent, a: torch.Tensor, b: torch.Tensor, *, delta: float = 1e-9, max_breakpoints: int = 1_000_000,
         refresh: int = 256, jobs: int = 1, on_segment: Callable[[], None] | None = None) -> Walk:
    """Exact breakpoints of the segments x_i(t) = a_i + t (b_i - a_i), t in [0, 1].

    The plain walk: at an evaluation point t_e (0, then each breakpoint + `delta`) the pre-activations z and
    dz/dt give the next breakpoint t_e + min_k {-z_k / dz_k : > 0}; crossings closer than `delta` (in t) to
    the previous one merge into it. `rfprobe.geometry.regionwalk` computes exactly that, updating after each
    crossing only the units it changes (full evaluations when crossings merge and every `refresh` crossings).

    Segments are independent: with `jobs` > 1 they are walked in that many worker processes (rfprobe.pool), one
    segment per task, each worker with its share of the CPU threads (on a CPU device only); `on_segment()` is
    called as each one ends."""
    from rfprobe.pool import run_tasks, threads_per_job

    a, b = tf._cast(a).flatten(1), tf._cast(b).flatten(1)
    d = b - a
    jobs = max(1, min(jobs, a.shape[0])) if tf.device.type == "cpu" else 1
    threads = threads_per_job(jobs) if jobs > 1 else None
    tasks = [(tf, a[i].clone(), d[i].clone(), delta, max_breakpoints, refresh, threads) for i in range(a.shape[0])]
    found = run_tasks(_walk_one, tasks, jobs, None if on_segment is None else lambda i, _: on_segment())
    return Walk([f[0] for f in found], [f[1] for f in found], d.norm(dim=1).cpu().numpy(), sum(f[2] for f in found))
