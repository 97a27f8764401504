"""Outputs never destroy what is not theirs, and every bad option is refused before anything is loaded."""

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import main
from rfprobe.models import build_model
from rfprobe.results import is_result_store, open_result, save_result, stack
from test_data import write_cifar10_both_formats


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "r8" / "final.pt"
    save_checkpoint(path, build_model("cifar_resnet_8_4", seed=0), mode="bn", dataset="synthetic")
    return path


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out, captured.err


def test_overwrite_refuses_a_users_directory(ckpt, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("a week of notes")
    code, _, err = run_cli(["dead", ckpt, "--out", notes, "--overwrite"], capsys)
    assert code == 2 and "is not an rfprobe result store" in err and err.count("\n") == 1, err
    assert (notes / "mine.txt").read_text() == "a week of notes" and os.listdir(notes) == ["mine.txt"]


def test_overwrite_refuses_another_tools_zarr_store_and_replaces_its_own(ckpt, tmp_path, capsys):
    foreign = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(foreign, zarr_format=2, consolidated=True)
    code, _, err = run_cli(["dead", ckpt, "--out", foreign, "--overwrite"], capsys)
    assert code == 2 and "not an rfprobe result store" in err
    assert xr.open_zarr(foreign)["a"].values.tolist() == [1, 2]
    ours = tmp_path / "dead.zarr"
    assert run_cli(["dead", ckpt, "--out", ours, "--threshold", "0.5"], capsys)[0] == 0
    assert is_result_store(ours) and not is_result_store(foreign)
    assert run_cli(["dead", ckpt, "--out", ours, "--threshold", "0.25", "--overwrite"], capsys)[0] == 0
    assert open_result(ours)["threshold"].values.tolist() == [0.25]
    assert sorted(os.listdir(tmp_path)) == ["dead.zarr", "other.zarr"]


def test_plot_overwrite_replaces_only_a_figure_file(ckpt, tmp_path, capsys):
    folder = tmp_path / "figure.png"
    folder.mkdir()
    (folder / "keep").write_text("x")
    code, _, err = run_cli(["dead", ckpt, "--out", tmp_path / "a.zarr", "--plot", folder, "--overwrite"], capsys)
    assert code == 2 and "is not a figure file" in err and (folder / "keep").exists()
    assert not (tmp_path / "a.zarr").exists()
    figure = tmp_path / "old.png"
    figure.write_bytes(b"old figure")
    assert run_cli(["dead", ckpt, "--out", tmp_path / "b.zarr", "--plot", figure, "--overwrite"], capsys)[0] == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_failed_second_rename_keeps_the_previous_store(tmp_path, monkeypatch):
    def one(value):
        return xr.Dataset({"v": ((), value)}, attrs={"rfprobe_pass": "test"})

    path = save_result(stack([one(1.0)], ["a"]), tmp_path / "x.zarr")
    real_rename = Path.rename

    def failing(self, target):
        if self.name == "new":
            raise OSError("device busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="device busy"):
        save_result(stack([one(2.0)], ["a"]), path, overwrite=True)
    monkeypatch.undo()
    assert float(open_result(path)["v"].item()) == 1.0
    assert sorted(os.listdir(tmp_path)) == ["x.zarr"]


MISSING = "does/not/exist.pt"
BAD_OPTIONS = [
    (["dead", MISSING, "--threshold", "nan"], "--threshold must be finite"),
    (["affine", MISSING, "--bins", "0"], "--bins must be between"),
    (["sparsity", MISSING, "--limit", "-1"], "--limit must be at least 1"),
    (["sparsity", MISSING, "--batch-size", "0"], "--batch-size must be at least 1"),
    (["sparsity", MISSING, "--bins", "0"], "--bins must be between"),
    (["sparsity", MISSING, "--threshold", "-1"], "--threshold values must be finite and > 0"),
    (["sparsity", MISSING, "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["sparsity", MISSING, "--split", "val"], "unknown split 'val'"),
    (["sparsity", MISSING, "--device", "tpu"], "unknown --device 'tpu'"),
    (["sparsity", MISSING, "--normalization", "openlth"], "unknown --normalization 'openlth'"),
    (["sparsity", MISSING, "--mean", "0.5,0.5,0.5"], "--mean and --std go together"),
    (["sparsity", MISSING, "--plot", "figure.xyz"], "cannot write a figure with suffix '.xyz'"),
    (["sparsity", MISSING, "--label", "a", "--label", "b"], "--label given 2 times for 1 checkpoint"),
    (["ablate", MISSING, "--prune-below", "-1"], "--prune-below must be finite and > 0"),
    (["ablate", MISSING, "--seeds", "0"], "--seeds must be at least 1"),
    (["ablate", MISSING, "--fractions", "0.5,2"], "--fractions must lie in [0, 1]"),
    (["ablate", MISSING, "--fractions", "half"], "--fractions must be comma-separated numbers"),
    (["ablate", MISSING, "--eligible", "some"], "unknown --eligible 'some'"),
    (["ablate", MISSING, "--reenable-value", "two"], "unknown --reenable-value 'two'"),
    (["ablate", MISSING, "--limit", "0"], "--limit must be at least 1"),
    (["partition", MISSING, "--kinds", "diagonal"], "unknown segment kind(s) diagonal"),
    (["partition", MISSING, "--radius", "0"], "--radius must be finite and > 0"),
    (["partition", MISSING, "--segments", "-1"], "--segments must be >= 0"),
    (["partition", MISSING, "--jitter-batches", "1"], "--jitter-batches must be 0 (skip) or at least 2"),
    (["partition", MISSING, "--limit", "8"], "--jitter-batch-size 16 is larger than the data (8 points)"),
    (["partition", MISSING, "--limit", "-3"], "--limit must be at least 1"),
    (["partition", MISSING, "--batch-size", "0", "--jitter-batches", "0"], "--batch-size must be at least 1"),
    (["partition", MISSING, "--dataset", "unknown"], "unknown dataset 'unknown'"),
    (["signal", MISSING, "--input", "noise"], "unknown --input 'noise'"),
    (["signal", MISSING, "--batch", "1"], "--batch must be at least 2"),
    (["signal", MISSING, "--bn-init", "zeros"], "unknown --bn-init 'zeros'"),
    (["signal", MISSING, "--normalization", "half"], "apply to --input data"),
    (["signal", "nf_resnet_8", "--bn-init", "fixed"], "--bn-init sets an option of fresh inits; no architecture"),
    (["signal", "cifar_resnet_8", "--skip-init-gain", "1"], "--skip-init-gain sets an option of fresh inits"),
    (["export", MISSING, "out.pt"], "ending in .safetensors"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD_OPTIONS])
def test_bad_options_are_refused_before_anything_is_loaded(args, message, tmp_path, capsys, monkeypatch):
    """The checkpoint does not exist: seeing the option's error (not 'no such file') shows nothing was opened."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1, err
    assert message in err and "no such file" not in err
    assert os.listdir(tmp_path) == [], "nothing may be written"


def test_out_whose_parent_cannot_be_created(ckpt, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(["dead", MISSING, "--out", tmp_path / "afile" / "sub" / "dead.zarr"], capsys)
    assert code == 2 and "cannot create its directory" in err and "afile is a file" in err


def test_a_missing_checkpoint_is_refused_before_any_other_is_loaded(ckpt, tmp_path, capsys):
    code, _, err = run_cli(["sparsity", ckpt, tmp_path / "gone.pt", "--dataset", "synthetic", "--limit", "4",
                            "--out", tmp_path / "s.zarr"], capsys)
    assert code == 2 and "gone.pt: no such file" in err and not (tmp_path / "s.zarr").exists()


def test_partition_falls_back_to_cifar10_for_a_bare_state_dict(tmp_path, capsys):
    write_cifar10_both_formats(tmp_path / "data", n_per_file=24)
    bare = tmp_path / "bare.pt"
    import torch

    torch.save(build_model("cifar_resnet_8_2", seed=0).state_dict(), bare)
    code, out, err = run_cli(["partition", bare, "--arch", "cifar_resnet_8_2", "--data-root", tmp_path / "data" / "bin",
                              "--limit", "16", "--segments", "0", "--exact-points", "0", "--probes", "0",
                              "--lc-points", "0", "--jitter-batches", "0", "--no-slice", "--device", "cpu", "--json",
                              "--out", tmp_path / "p.zarr"], capsys)
    assert code == 0, err
    ds = open_result(tmp_path / "p.zarr")
    assert ds.attrs["dataset"] == "cifar10" and ds.attrs["n_examples"] == 16
    assert ds.attrs["normalization"] == "cifar10" and "records no input normalisation" in err
    assert np.isfinite(ds["unit_distance_median"].values).any()
