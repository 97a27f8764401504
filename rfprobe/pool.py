"""Running independent tasks in this process or in spawned worker processes: the one pool that studies
(`rfprobe compare --jobs`) and sweeps (`train.sweep --executor local`) share. Workers die with their parent,
however it ends (SIGKILL included): see `die_with_parent`."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_job(jobs: int) -> int:
    """The torch threads each of `jobs` workers gets: an equal share of the cores, at least one."""
    return max(1, cores() // max(1, jobs))


PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


def _watch(parent: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL_S)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when `parent` ends. On Linux the kernel sends SIGKILL at once
    (prctl PR_SET_PDEATHSIG); everywhere a daemon thread polls the parent pid (a dead parent's orphans are
    re-parented) and exits within `WATCH_INTERVAL_S`. A parent that died before this ran is caught at once."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="rfprobe-parent-watch").start()


def run_tasks(fn: Callable, tasks: list[tuple], jobs: int, on_done: Callable[[int, object], None] | None = None) -> list:
    """`fn(*task)` for every task, in this process (`jobs` 1, in order) or in `jobs` spawned worker processes
    (spawn, not fork: torch's threads do not survive a fork; each dies with this process, `die_with_parent`);
    `on_done(index, result)` as each finishes.
    Returns the results in task order."""
    results: list = [None] * len(tasks)
    if jobs <= 1:
        for i, task in enumerate(tasks):
            results[i] = fn(*task)
            if on_done:
                on_done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(i, results[i])
    return results
