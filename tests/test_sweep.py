"""python -m train.sweep: the smoke preset end to end on local and submitit-local executors (bitwise equal),
resuming after SIGKILL without retraining finished runs, failures reported without stopping the others,
--dry-run, and the slurm job array built from the spec (no cluster needed)."""

import sys
from pathlib import Path

import pytest
import torch
import xarray as xr

from conftest import REPO, kill_when
from rfprobe.checkpoint import load_checkpoint
from rfprobe.study import open_study
from train.grid import plan, read_spec, state
from train.sweep import main

SMOKE = REPO / "analyses" / "sweeps" / "smoke.toml"


def sweep(args, capsys=None):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out = capsys.readouterr() if capsys else None
    assert exit_.value.code in (0, None), out.err if out else ""
    return out.out if out else ""


def finals(out: Path) -> dict[str, dict]:
    return {d.name: load_checkpoint(d / "final.pt").model.state_dict() for d in sorted((out / "train").iterdir())}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    with pytest.raises(SystemExit):
        main([str(SMOKE), "--out", str(out), "--jobs", "2"])
    return out


def test_dry_run_lists_the_grid_minus_the_excludes(tmp_path, capsys):
    text = sweep([SMOKE, "--out", tmp_path / "s", "--dry-run"], capsys)
    runs = plan(read_spec(SMOKE), tmp_path / "s")
    assert [r.varying for r in runs] == [{"mode": "bn", "seed": 0}, {"mode": "bn", "seed": 1}, {"mode": "all", "seed": 0}]
    assert all(r.name in text for r in runs) and "3 runs" in text and not (tmp_path / "s").exists()
    assert len({r.name for r in runs}) == 3 and all(r.name.startswith(("bn_seed", "all_seed")) for r in runs)


def test_smoke_sweep_local_then_study_and_report(local_sweep):
    runs = plan(read_spec(SMOKE), local_sweep)
    assert [state(r, local_sweep).state for r in runs] == ["done"] * 3
    tree = open_study(local_sweep)
    assert set(tree.children) == {"affine", "dead", "sparsity", "ablate"}
    assert tree["dead"].ds.sizes["checkpoint"] == 9  # 3 runs x (init, epoch 1, epoch 2)
    assert (local_sweep / "report.html").stat().st_size > 10_000
    config = (runs[0].out / "config.toml").read_text()
    assert 'mode = "bn"' in config and "seed = 0" in config


def test_submitit_local_equals_local_bitwise(local_sweep, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "submitit"
    sweep([SMOKE, "--out", out, "--executor", "submitit-local"])
    assert_same_weights(finals(out), finals(local_sweep))
    a, b = open_study(out).load(), open_study(local_sweep).load()
    for name in b.children:
        xr.testing.assert_identical(a[name].to_dataset().drop_attrs().drop_vars(["checkpoint_path", "checkpoint_sha256"]),
                                    b[name].to_dataset().drop_attrs().drop_vars(["checkpoint_path", "checkpoint_sha256"]))


def test_killed_sweep_resumes_without_retraining_finished_runs(local_sweep, tmp_path, capsys):
    out = tmp_path / "killed"
    kill_when([sys.executable, "-m", "train.sweep", SMOKE, "--out", out, "--jobs", "1"],
              lambda: bool(list(out.glob("train/*/final.pt"))))
    finished = [p.parent for p in out.glob("train/*/final.pt")]
    assert len(finished) >= 1 and len(finished) < 3
    mtimes = {p: p.stat().st_mtime_ns for d in finished for p in d.iterdir()}
    text = sweep([SMOKE, "--out", out, "--status"], capsys)
    assert "done" in text and ("missing" in text or "partial" in text)
    sweep([SMOKE, "--out", out, "--jobs", "1"], capsys)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished runs were not touched
    assert_same_weights(finals(out), finals(local_sweep))


def test_refused_and_failing_runs_are_reported_while_the_others_finish(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text(SMOKE.read_text().split("[analysis]")[0].replace(
        'arch = "cifar_resnet_8_4"\n', "").replace("[grid]\n", '[grid]\narch = ["cifar_resnet_8_4", "cifar_resnet_7", "nf_resnet_8_4"]\n')
        .replace('mode = ["bn", "all"]', 'mode = ["bn"]').replace("seed = [0, 1]", "seed = [0]")
        .replace('[[exclude]]\nmode = "all"\nseed = 1\n', ""))
    sweep([spec, "--out", tmp_path / "s", "--executor", "debug"], capsys)
    runs = plan(read_spec(spec), tmp_path / "s")
    states = {r.varying["arch"]: state(r, tmp_path / "s") for r in runs}
    assert states["cifar_resnet_8_4"].state == "done"
    assert states["cifar_resnet_7"].state == "failed" and "depth" in states["cifar_resnet_7"].error.lower()
    assert states["nf_resnet_8_4"].state == "failed" and "BatchNorm" in states["nf_resnet_8_4"].error
    text = sweep([spec, "--out", tmp_path / "s", "--status"], capsys)
    assert text.count("failed") >= 2 and "done" in text


def test_slurm_executor_takes_the_spec_settings(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    from train.executors import TrainingJob, submitit_executor

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    spec = read_spec(REPO / "analyses" / "sweeps" / "bn_only_paper.toml")
    executor = submitit_executor("slurm", tmp_path / "submitit", spec.slurm)
    params = executor.parameters
    assert params["partition"] == spec.slurm["partition"] and params["gpus_per_node"] == 1
    assert params["time"] == spec.slurm["timeout_min"] and params["array_parallelism"] == spec.slurm["array_parallelism"]
    script = _make_sbatch_string(command="python -c pass", folder=str(tmp_path), map_count=200, **params)
    assert f"#SBATCH --array=0-199%{spec.slurm['array_parallelism']}" in script
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --signal=USR2@" in script
    resubmission = TrainingJob().checkpoint({"arch": "x"}, "log", "err")
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission) and resubmission.args[0] == {"arch": "x"}


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch, cli_error):
    monkeypatch.setitem(sys.modules, "submitit", None)
    err = cli_error(main, [SMOKE, "--out", tmp_path / "s", "--executor", "slurm"])
    assert "pip install 'rfprobe[cluster]'" in err


@pytest.mark.parametrize("text,message", [
    ("[grid]\nmode = 'bn'\n", "must be a non-empty list"),
    ("lr = 0.1\n", "no [grid] table"),
    ("[grid]\nmode = ['bn']\n[[exclude]]\nseed = 1\n", "[[exclude]] key(s) seed are not [grid] keys"),
    ("[grid]\nmode = ['bn']\n[slurm]\nmagic = 1\n", "[slurm] magic is not a setting"),
    ("color = 1\n[grid]\nmode = ['bn']\n", "unknown setting(s) color"),
])
def test_bad_spec_one_line(tmp_path, cli_error, text, message):
    spec = tmp_path / "s.toml"
    spec.write_text('arch = "cifar_resnet_8_4"\n' + text if "arch" not in text else text)
    assert message in cli_error(main, [spec, "--out", tmp_path / "o", "--dry-run"])


def test_every_preset_plans(tmp_path):
    for preset in sorted((REPO / "analyses" / "sweeps").glob("*.toml")):
        runs = plan(read_spec(preset), tmp_path / preset.stem)
        assert runs and all(r.error is None for r in runs), (preset.name, [r.error for r in runs if r.error])
