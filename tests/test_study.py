"""rfprobe compare / report / plot: a study's slices equal the passes run alone, it resumes after a kill
recomputing only what is missing, --jobs 2 equals --jobs 1, the DataTree opens without warnings, the report
embeds every figure and names every checkpoint."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import REPO, kill_when
from rfprobe.cli import main
from rfprobe.results import open_result
from rfprobe.study import STUDY_COORDS, as_result, expand_inputs, open_study
from train import Config, train

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = dict(arch="cifar_resnet_8_4", dataset="synthetic", limit=256, test_limit=64, epochs=2, batch_size=64,
           eval_batch_size=64, save_every=1, progress=False, threads=1)
# every pass, tiny: the same options for the study and for the passes run alone
PASS_ARGS = {
    "dead": ["--threshold", "0.01", "--threshold", "0.1"],
    "sparsity": ["--limit", "48", "--batch-size", "16", "--bins", "5"],
    "ablate": ["--limit", "48", "--batch-size", "16", "--seeds", "2", "--fractions", "0,0.5"],
    "signal": ["--batch", "8"],
    "partition": ["--limit", "16", "--batch-size", "16", "--segments", "1", "--kinds", "radius", "--radius", "0.02",
                  "--exact-points", "0", "--probes", "4", "--lc-points", "2", "--jitter-batches", "0", "--no-slice"],
}
CONFIG = """
passes = "all"
dataset = "synthetic"
[dead]
threshold = [0.01, 0.1]
[sparsity]
limit = 48
batch_size = 16
bins = 5
[ablate]
limit = 48
batch_size = 16
seeds = 2
fractions = "0,0.5"
[signal]
batch = 8
[partition]
limit = 16
batch_size = 16
segments = 1
kinds = "radius"
radius = 0.02
exact_points = 0
probes = 4
lc_points = 2
jitter_batches = 0
slice_plane = false
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-runs")
    for mode in ("bn", "all"):
        train(Config(mode=mode, out=str(root / f"r8-{mode}"), lr=0.5 if mode == "bn" else 0.1, **RUN))
    (root / "study.toml").write_text(CONFIG)
    return root


def compare(args, capsys=None):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *map(str, args)])
    captured = capsys.readouterr() if capsys else None
    assert exit_.value.code in (0, None), captured.err if captured else ""
    return captured.out if captured else ""


@pytest.fixture(scope="module")
def study(runs, tmp_path_factory):
    """The study of both runs' trajectories (init, epoch 1, epoch 2 = final) with every pass."""
    out = tmp_path_factory.mktemp("study") / "s"
    torch.set_num_threads(1)  # as the tests (one_thread): float reductions then run in the same order
    with pytest.raises(SystemExit):
        main(["compare", str(runs / "r8-bn"), str(runs / "r8-all"), "--epochs", "all", "--config",
              str(runs / "study.toml"), "--out", str(out)])
    return out


def test_inputs_expand_to_trajectories_files_and_globs(runs):
    entries = expand_inputs([str(runs / "r8-bn"), str(runs / "r8-all" / "final.pt"), str(runs / "r8-*")])
    assert [e.label for e in entries] == ["r8-bn", "r8-all", "r8-all#2", "r8-bn#2"]
    assert [e.path.name for e in entries] == ["final.pt"] * 4 and {e.run for e in entries} == {"r8-bn", "r8-all"}
    trajectory = expand_inputs([str(runs / "r8-bn")], "all")
    assert [(e.label, e.path.name) for e in trajectory] == [("r8-bn@0", "init.pt"), ("r8-bn@1", "epoch_001.pt"),
                                                             ("r8-bn@2", "epoch_002.pt")]
    assert [e.label for e in expand_inputs([str(runs / "r8-bn")], (0, 2))] == ["r8-bn@0", "r8-bn@2"]


def test_study_slices_equal_the_passes_run_alone(study, runs, tmp_path):
    tree = open_study(study).load()
    label, path = "r8-bn@2", runs / "r8-bn" / "epoch_002.pt"
    for name, args in PASS_ARGS.items():
        alone_path = tmp_path / f"{name}.zarr"
        with pytest.raises(SystemExit) as exit_:
            main([name, str(path), "--dataset", "synthetic", *args, "--out", str(alone_path), "--label", label]
                 if name != "dead" else [name, str(path), *args, "--out", str(alone_path), "--label", label])
        assert exit_.value.code in (0, None)
        alone = open_result(alone_path)
        part = as_result(tree[name].to_dataset()).sel(checkpoint=[label])
        for var in alone.data_vars:
            if var == "checkpoint_path":
                continue
            a = alone[var].reset_coords(drop=True)
            b = part[var].reset_coords(drop=True)
            try:
                xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
            except AssertionError:
                print('DIFF', name, var, float(np.nanmax(np.abs(a.values - b.values))))
                raise
    # affine's histograms share edges over the whole study: equal to `rfprobe affine` on all its checkpoints
    files = [runs / r / f for r in ("r8-bn", "r8-all") for f in ("init.pt", "epoch_001.pt", "epoch_002.pt")]
    labels = [f"{r}@{e}" for r in ("r8-bn", "r8-all") for e in (0, 1, 2)]
    with pytest.raises(SystemExit):
        main(["affine", *map(str, files), *[x for lab in labels for x in ("--label", lab)],
              "--out", str(tmp_path / "affine.zarr")])
    alone = open_result(tmp_path / "affine.zarr")
    part = as_result(tree["affine"].to_dataset()).sel(checkpoint=labels)
    for var in ("gamma", "beta", "gamma_hist", "beta_hist", "pooled_gamma_mean", "pooled_abs_gamma_quantiles"):
        xr.testing.assert_identical(alone[var].reset_coords(drop=True).drop_attrs(),
                                    part[var].reset_coords(drop=True).drop_attrs())
    np.testing.assert_array_equal(alone["gamma_bin_edges"].values, part["gamma_bin_edges"].values)


def test_study_opens_with_plain_xarray_without_warnings_and_groups_by_mode(study):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(study / "study.zarr", engine="zarr")
        by_mode = tree["dead"].ds.frac_dead.sel(threshold=0.01).groupby("mode").mean()
    assert set(by_mode["mode"].values) == {"bn", "all"}
    ds = tree["sparsity"].ds
    for coord in STUDY_COORDS:
        assert ds[coord].dims == ("checkpoint",), coord
    assert ds["epoch"].values.tolist() == [0, 1, 2, 0, 1, 2] and ds["depth"].values.tolist() == [8] * 6
    assert ds["width"].values.tolist() == [4] * 6 and ds["seed"].values.tolist() == [0] * 6
    assert ds["run"].values.tolist() == ["r8-all"] * 3 + ["r8-bn"] * 3 or ds["run"].values.tolist() == ["r8-bn"] * 3 + ["r8-all"] * 3
    assert set(ds["dataset"].values) == {"synthetic"}


def _data_only(tree):
    return {name: node.to_dataset().drop_attrs() for name, node in tree.children.items()}


def test_killed_study_resumes_recomputing_only_the_missing_stores(runs, study, tmp_path, capsys):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "rfprobe.cli", "compare", str(runs / "r8-bn"), str(runs / "r8-all"), "--epochs", "all",
            "--config", str(runs / "study.toml"), "--out", str(out)]
    kill_when(args, lambda: bool(list(out.glob("runs/*/*.zarr"))))
    there = len(list(out.glob("runs/*/*.zarr")))
    assert 1 <= there < 36 and not (out / "study.zarr").exists()
    report = json.loads(compare([*args[4:], "--json"], capsys))
    assert report["computed"] == 36 - there and report["skipped"] == there
    a, b = _data_only(open_study(out).load()), _data_only(open_study(study).load())
    for name in b:
        xr.testing.assert_identical(a[name].drop_vars("checkpoint_path"), b[name].drop_vars("checkpoint_path"))
    again = json.loads(compare([*args[4:], "--json"], capsys))
    assert again["computed"] == 0 and again["skipped"] == 36


def test_two_jobs_equal_one(runs, study, tmp_path, capsys):
    out = tmp_path / "jobs"
    compare([runs / "r8-bn", runs / "r8-all", "--epochs", "all", "--config", runs / "study.toml", "--out", out,
             "--jobs", "2"], capsys)
    a, b = _data_only(open_study(out).load()), _data_only(open_study(study).load())
    assert set(a) == set(b) == {"affine", "dead", "sparsity", "ablate", "signal", "partition"}
    for name in b:
        xr.testing.assert_identical(a[name].drop_vars("checkpoint_path"), b[name].drop_vars("checkpoint_path"))


def test_merge_only_combines_stores_written_elsewhere(study, tmp_path, capsys):
    combined = tmp_path / "combined"
    (combined / "runs").mkdir(parents=True)
    for path in (study / "runs").iterdir():  # as if two machines had each measured some checkpoints
        shutil.copytree(path, combined / "runs" / path.name)
    compare(["--merge-only", combined], capsys)
    a, b = _data_only(open_study(combined).load()), _data_only(open_study(study).load())
    assert list(a["dead"]["checkpoint"].values) == sorted(b["dead"]["checkpoint"].values)  # a fresh merge: by run, epoch
    for name in b:
        xr.testing.assert_identical(a[name].sel(checkpoint=b[name]["checkpoint"].values).drop_vars("checkpoint_path"),
                                    b[name].drop_vars("checkpoint_path"))


def test_report_embeds_every_figure_and_names_every_checkpoint(study, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(study)])
    text = (study / "report.html").read_text()
    tree = open_study(study)
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    from rfprobe.plots.study import STUDY_FIGURES

    loaded = tree.load()
    drawn = [alt for _, draw, alt in STUDY_FIGURES if draw(loaded) is not None]
    assert "key numbers against epoch, mean and sd band" in drawn and "key numbers by group, mean and sd over seeds" in drawn
    assert sorted(images) == sorted([f"{name} figure" for name in tree.children] + drawn)
    for record in (study / "runs").glob("*/checkpoint.json"):
        sha = json.loads(record.read_text())["sha256"]
        assert sha in text
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no chromium binary (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    with pytest.raises(SystemExit):
        main(["report", str(study)])
    done = subprocess.run(["bash", str(REPO / "scripts" / "check_report.sh"), str(study / "report.html"),
                           str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "shot.png").stat().st_size > 0 and "not blank" in done.stdout


def test_plot_redraws_figures_from_stores(study, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plot", str(study / "runs" / "r8-bn@2" / "dead.zarr"), "--out", str(tmp_path / "d.png")])
    with pytest.raises(SystemExit):
        main(["plot", str(study), "--out", str(tmp_path / "figs")])
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        f"{n}.png" for n in ("affine", "dead", "sparsity", "ablate", "signal", "partition"))


@pytest.mark.parametrize("args,message", [
    (["--passes", "dead,mystery"], "unknown pass(es) mystery"),
    (["--epochs", "x"], "--epochs must be 'all' or comma-separated"),
    (["--epochs", "7"], "no checkpoint for epoch(s) 7"),
    (["--ablate-seeds", "0"], "--seeds must be at least 1"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--sparsity-batch-size", "0"], "--sparsity-batch-size must be at least 1"),
    (["--dataset", "imagenet"], "unknown dataset"),
])
def test_compare_refuses_bad_options_before_loading(runs, tmp_path, cli_error, args, message):
    err = cli_error(main, ["compare", runs / "r8-bn", "--out", tmp_path / "s", *args])
    assert message in err and not (tmp_path / "s").exists()


def test_compare_refuses_a_foreign_directory_and_needs_out(runs, tmp_path, cli_error):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert "holds files a study does not write" in cli_error(main, ["compare", runs / "r8-bn", "--out", tmp_path / "mine"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert "--out DIR is required" in cli_error(main, ["compare", runs / "r8-bn"])
    (tmp_path / "bad.toml").write_text("[ablate]\nmystery = 1\n")
    assert "[ablate] has no option 'mystery'" in cli_error(
        main, ["compare", runs / "r8-bn", "--out", tmp_path / "s", "--config", tmp_path / "bad.toml"])


def test_notebook_runs_clean_on_a_study(study):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(REPO / "docs" / "notebooks" / "bn_only_vs_full.ipynb", as_version=4)
    os.environ["RFPROBE_STUDY"] = str(study)
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        del os.environ["RFPROBE_STUDY"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], "warnings in the notebook"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # gamma histograms, dead by depth, zero fraction, ablation curve


def test_study_of_two_architectures_merges_reports_and_keeps_layer_depths(tmp_path, capsys):
    from rfprobe.checkpoint import save_checkpoint
    from rfprobe.models import build_model

    for name in ("cifar_resnet_8_4", "cifar_resnet_14"):
        save_checkpoint(tmp_path / f"{name}.pt", build_model(name, 10, seed=0), mode="bn", dataset="synthetic", epoch=1)
    out = tmp_path / "mixed"
    compare([tmp_path / "cifar_resnet_8_4.pt", tmp_path / "cifar_resnet_14.pt", "--passes", "affine,dead,signal",
             "--signal-batch", "8", "--out", out], capsys)
    with pytest.raises(SystemExit):
        main(["report", str(out)])
    dead = as_result(open_study(out).load()["dead"].to_dataset())
    assert dead["depth"].dims == ("checkpoint", "layer") and dead["net_depth"].values.tolist() == [8, 14]
    assert int(np.isfinite(dead["depth"].sel(checkpoint="cifar_resnet_8_4").values.astype(float)).sum()) == 9
    assert (out / "report.html").exists()
