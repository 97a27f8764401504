"""`python -m train.sweep SPEC.toml`: a grid of training runs (train.grid) on a local process pool or a
SLURM cluster through submitit (train.executors), resumable, then the study of the finished runs
(rfprobe compare's machinery) and its report. docs/sweeps.md.

Rerunning skips finished runs, resumes partial ones and retrains nothing else; a run whose settings the
trainer refuses, or that fails, is reported (`--status`) without stopping the others."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from rfprobe.entrypoint import run_app
from rfprobe.errors import RfprobeError
from rfprobe.pool import run_tasks, threads_per_job
from rfprobe.results import check_directory_writable
from train import executors
from train.config import TRAINING_FIELDS
from train.grid import Run, config_dict, error_file, plan, read_spec, state

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
console = Console()


def status_table(runs: list[Run], out: Path) -> Table:
    table = Table(title=f"sweep {out}: {len(runs)} runs")
    for column in ("run", "state", "epoch", "test acc", "last error"):
        table.add_column(column, justify="right" if column in ("epoch", "test acc") else "left",
                         overflow="fold")
    for run in runs:
        s = state(run, out)
        table.add_row(run.name, s.state, "-" if s.epoch is None else str(s.epoch),
                      "-" if s.test_acc is None else f"{100 * s.test_acc:.2f}%", s.error)
    return table


def _record_refused(runs: list[Run], out: Path) -> None:
    """A run the trainer refuses gets its reason in out/logs/<name>.error (what --status shows)."""
    for run in runs:
        if run.error is not None:
            path = error_file(out, run.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(run.error + "\n")


def train_runs(runs: list[Run], out: Path, executor: str, jobs: int, slurm: dict) -> dict[str, str]:
    """Train every run that is not done (resuming partial ones) through `executor`; name -> done/failed."""
    from rfprobe.progress import counter

    todo = [r for r in runs if r.config is not None and state(r, out).state != "done"]
    threads = threads_per_job(jobs) if executor == "local" else None
    tasks = []
    for run in todo:
        config = config_dict(run.config)
        if threads and config.get("threads") is None:
            config["threads"] = threads
        tasks.append((config, str(out / "logs" / f"{run.name}.log"), str(error_file(out, run.name))))
    outcome: dict[str, str] = {}
    if not tasks:
        return outcome
    with counter(len(tasks), f"training ({executor})") as advance:
        def done(i: int, result) -> None:
            outcome[todo[i].name] = str(result)
            advance()
            if str(result) != "done":
                console.print(f"{todo[i].name}: {result}; see {out / 'logs' / (todo[i].name + '.log')}", highlight=False)

        if executor in ("local", "debug"):
            run_tasks(executors.train_job, tasks, jobs if executor == "local" else 1, done)
        else:
            ex = executors.submitit_executor(executor, out / "submitit", slurm)
            executors.run_submitit(ex, tasks, executors.TrainingJob(), done)
    return outcome


def study_coordinates(run: Run) -> dict:
    """The grid values of a run that decide what is trained and are not already study coordinates (e.g.
    weight_decay, epochs; not arch, mode, seed, nor save_every): extra coordinates of the sweep's study, so
    its figures and tables can group runs that differ only in seed."""
    from rfprobe.study.layout import STUDY_COORDS

    return {k: v for k, v in run.varying.items() if k in TRAINING_FIELDS and k not in STUDY_COORDS}


def analyse(spec, runs: list[Run], out: Path, executor: str, jobs: int) -> list[Path]:
    """The [analysis] study over the finished runs (one task per checkpoint through the same executor), then
    out/study.zarr and out/report.html."""
    from rfprobe import report, study
    from rfprobe.studyconfig import study_request_from_config

    request, o = study_request_from_config(spec.analysis, f"{spec.path} [analysis]")
    study.validate(request)
    done = [r for r in runs if r.config is not None and state(r, out).state == "done"]
    finished = [str(r.out) for r in done]
    grid_coordinates = {r.out.name: study_coordinates(r) for r in done}
    if not finished:
        return []
    entries = [replace(e, extra=grid_coordinates[e.run]) for e in study.expand_inputs(finished, study.parse_epochs(o.epochs))]
    tasks = [(entry, out, request) for entry in entries]
    if executor in ("local", "debug"):
        study.run_study(entries, out, request, jobs=jobs if executor == "local" else 1)
    else:
        ex = executors.submitit_executor(executor, out / "submitit", spec.slurm)
        executors.run_submitit(ex, tasks, study.run_entry, lambda i, r: None)
    study.merge(out, [e.label for e in entries])
    return [out / "study.zarr", report.write(out)]


@app.command()
def sweep(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.toml", help="the sweep file (docs/sweeps.md)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="sweep directory (default sweeps/<spec name>)")] = None,
    executor: Annotated[str, typer.Option("--executor", help=", ".join(executors.EXECUTORS))] = "local",
    jobs: Annotated[int, typer.Option("--jobs", help="local: worker processes (each gets cores/N torch threads)")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and their states; train nothing")] = False,
    status: Annotated[bool, typer.Option("--status", help="print each run's state, epoch, test accuracy, last error")] = False,
) -> None:
    """Train every run of a sweep's grid (resuming partial ones, skipping finished ones), then its study."""
    if executor not in executors.EXECUTORS:
        raise RfprobeError(f"unknown --executor {executor!r}; choose one of {', '.join(executors.EXECUTORS)}")
    if jobs < 1:
        raise RfprobeError(f"--jobs must be at least 1, got {jobs}")
    spec = read_spec(spec_path)
    out = out or Path("sweeps") / spec_path.stem
    if out.exists() and not out.is_dir():
        raise RfprobeError(f"--out {out} is a file; give a directory for the sweep")
    if not (dry_run or status):
        check_directory_writable(out, "--out")
    runs = plan(spec, out)
    if spec.analysis is not None:
        from rfprobe import study
        from rfprobe.studyconfig import study_request_from_config

        study.validate(study_request_from_config(spec.analysis, f"{spec.path} [analysis]")[0])
    if executor in ("submitit-local", "slurm") and not (dry_run or status):
        executors.require_submitit()
    if dry_run or status:
        console.print(status_table(runs, out))
        return
    _record_refused(runs, out)
    outcome = train_runs(runs, out, executor, jobs, spec.slurm)
    written = analyse(spec, runs, out, executor, jobs) if spec.analysis is not None else []
    console.print(status_table(runs, out))
    states = [state(r, out).state for r in runs]
    console.print(f"trained {sum(v == 'done' for v in outcome.values())} runs now; of {len(runs)}: "
                  f"{states.count('done')} done, {states.count('failed')} failed, "
                  f"{len(runs) - states.count('done') - states.count('failed')} unfinished", highlight=False)
    for path in written:
        console.print(f"written: {path}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    run_app(app, "python -m train.sweep", argv, interrupted="interrupted (rerun the same command to continue)")


if __name__ == "__main__":
    main()
