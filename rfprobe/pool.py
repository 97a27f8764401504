"""Running independent tasks in this process or in spawned worker processes: the one pool that studies
(`rfprobe compare --jobs`) and sweeps (`train.sweep --executor local`) share."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_job(jobs: int) -> int:
    """The torch threads each of `jobs` workers gets: an equal share of the cores, at least one."""
    return max(1, cores() // max(1, jobs))


def run_tasks(fn: Callable, tasks: list[tuple], jobs: int, on_done: Callable[[int, object], None] | None = None) -> list:
    """`fn(*task)` for every task, in this process (`jobs` 1, in order) or in `jobs` spawned worker processes
    (spawn, not fork: torch's threads do not survive a fork); `on_done(index, result)` as each finishes.
    Returns the results in task order."""
    results: list = [None] * len(tasks)
    if jobs <= 1:
        for i, task in enumerate(tasks):
            results[i] = fn(*task)
            if on_done:
                on_done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(i, results[i])
    return results
