"""Where a sweep's runs (and its study's checkpoints) execute: `debug` (this process, one after another),
`local` (N worker processes, each with cores/N torch threads: rfprobe.pool), `submitit-local` (submitit's
LocalExecutor: real subprocesses, for tests) and `slurm` (submitit job arrays, requeued on preemption or
timeout).
submitit is the optional extra `cluster`, imported only for the submitit executors."""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from typing import Callable

from rfprobe.errors import RfprobeError

EXECUTORS = ("local", "submitit-local", "slurm", "debug")


def train_job(config: dict, log: str, error: str) -> str:
    """Train (or resume) one run, its output in `log`; on failure write the one-line reason to `error` and
    return "failed", else "done". Runs in a worker process (or a submitit job)."""
    from train import Config, train

    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(error).unlink(missing_ok=True)
    with open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        try:
            train(Config(**{**config, "resume": True, "progress": False}))
            return "done"
        except BaseException as e:  # any failure of one run is reported, the sweep goes on
            traceback.print_exc(file=stream)
            line = f"{type(e).__name__}: {e}" if not isinstance(e, RfprobeError) else str(e)
            Path(error).write_text(line.replace("\n", " ") + "\n")
            if isinstance(e, KeyboardInterrupt):
                raise
            return "failed"


class TrainingJob:
    """A submitit job that trains one run: on preemption or timeout submitit calls `checkpoint`, which
    resubmits the same call; the trainer then resumes from the run's last.pt (it always runs with --resume)."""

    def __call__(self, config: dict, log: str, error: str) -> str:
        return train_job(config, log, error)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise RfprobeError("the submitit executors need submitit: pip install 'rfprobe[cluster]'") from None
    return submitit


def submitit_executor(kind: str, folder: Path, slurm: dict, threads: int | None = None):
    """A submitit executor: LocalExecutor for `submitit-local`, SlurmExecutor with the spec's [slurm]
    settings (array parallelism included) for `slurm`."""
    submitit = require_submitit()
    if kind == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=slurm.get("timeout_min", 24 * 60))
        return executor
    executor = submitit.SlurmExecutor(folder=str(folder))
    params = {"time": slurm.get("timeout_min", 24 * 60), "signal_delay_s": 120}
    names = {"partition": "partition", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
             "mem_gb": None, "nodes": "nodes", "account": "account", "qos": "qos", "constraint": "constraint",
             "array_parallelism": "array_parallelism"}
    for key, value in slurm.items():
        if key == "mem_gb":
            params["mem"] = f"{value}GB"
        elif key != "timeout_min":
            params[names[key]] = value
    params.setdefault("ntasks_per_node", 1)
    executor.update_parameters(**params)
    return executor


def run_submitit(executor, tasks: list[tuple], fn: Callable, on_done: Callable[[int, object], None]) -> list:
    """`fn(*task)` for every task as one submitit job array; waits for all of them."""
    with executor.batch():
        submitted = [executor.submit(fn, *task) for task in tasks]
    results = []
    for i, job in enumerate(submitted):
        try:
            results.append(job.result())
        except Exception as e:  # a job that died without writing its own error file
            results.append(f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        on_done(i, results[-1])
    return results

