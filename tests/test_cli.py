import json
import subprocess
import sys

import pytest
import torch

from rfprobe.checkpoint import save_checkpoint
from rfprobe.models import build_model


def rfprobe(*args):
    return subprocess.run([sys.executable, "-m", "rfprobe.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "run" / "final.pt"
    save_checkpoint(path, build_model("cifar_resnet_8", seed=0), mode="bn", dataset="synthetic", epoch=2,
                    metrics={"test_acc": 0.42})
    return path


def test_version():
    result = rfprobe("--version")
    assert result.returncode == 0 and result.stdout.startswith("rfprobe ")


def test_info_json(ckpt):
    result = rfprobe("info", ckpt, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["arch"] == "cifar_resnet_8" and report["mode"] == "bn" and report["epoch"] == 2
    assert report["metrics"] == {"test_acc": 0.42}
    bn = sum(2 * layer["channels"] for layer in report["norm_layers"])
    assert report["parameters"]["bn"] == bn and report["trainable"] == {"total": bn, "bn": bn, "norm": 0, "output": 0, "other": 0}
    assert [layer["role"] for layer in report["norm_layers"]][:3] == ["relu", "relu", "residual"]


def test_info_table(ckpt):
    result = rfprobe("info", ckpt)
    assert result.returncode == 0 and "normalisation layers" in result.stdout and "shortcut" in result.stdout


def test_bad_inputs_one_line_exit_2(tmp_path, ckpt, cli_error):
    from rfprobe.cli import main

    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save(build_model("cifar_resnet_8").state_dict(), tmp_path / "bare.pt")
    cases = [("info", tmp_path / "junk.pt"), ("info", tmp_path / "missing.pt"), ("info", tmp_path / "bare.pt"),
             ("info", tmp_path / "bare.pt", "--arch", "nonsense_net"), ("info", tmp_path / "bare.pt", "--arch", "cifar_resnet_14")]
    for args in cases:
        assert cli_error(main, args).startswith("rfprobe: error: ")


def test_debug_shows_traceback(tmp_path):
    (tmp_path / "junk.pt").write_text("x")
    result = rfprobe("info", tmp_path / "junk.pt", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_reference_lists_every_command_and_option():
    """docs/cli.md (regenerate with `make docs`) documents every command and every option of the app."""
    from pathlib import Path

    import typer.main

    from rfprobe.cli import app

    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        assert f"## `rfprobe {name}`" in reference, f"docs/cli.md lacks {name}: run make docs"
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert f"`{opt}" in reference, f"docs/cli.md lacks {name} {opt}: run make docs"


def test_measuring_on_another_dataset_warns(tmp_path, capsys):
    from rfprobe.cli import main

    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model("cifar_resnet_8_4", seed=0), mode="bn", dataset="cifar10")
    with pytest.raises(SystemExit) as exit_:
        main(["sparsity", str(path), "--dataset", "synthetic", "--limit", "8", "--json", "--out", str(tmp_path / "s.zarr")])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None)
    assert f"warning: {path} was trained on cifar10; measuring it on synthetic" in captured.err
    assert json.loads(captured.out)["pass"] == "sparsity"


def test_info_random_mode_counts_the_masked_elements(tmp_path):
    from rfprobe.trainable import select

    model = build_model("cifar_resnet_8_4", seed=0)
    plan = select(model, "random", k=2, generator=torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "r.pt", model, mode="random", dataset="synthetic", epoch=1, masks=plan.masks,
                    hparams={"also": []})
    result = rfprobe("info", tmp_path / "r.pt", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    expected = 2 * sum(p.shape[0] for p in weights)  # k=2 elements per output channel of every conv/linear
    assert report["mode"] == "random" and report["trainable"]["total"] == expected
    assert report["trainable"]["bn"] == 0 and report["trainable"]["total"] < report["parameters"]["total"]


def test_info_bare_state_dict(tmp_path):
    model = build_model("cifar_resnet_8", seed=0)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    result = rfprobe("info", tmp_path / "bare.pt", "--arch", "cifar_resnet_8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "bare state dict" and report["mode"] == "unknown" and report["trainable"] is None
    assert report["num_classes"] == 10 and report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["normalization"]["name"] == "cifar10" and "not recorded" in report["normalization"]["source"]
    without = rfprobe("info", tmp_path / "bare.pt")
    assert without.returncode == 2 and "--arch" in without.stderr and without.stderr.count("\n") == 1
