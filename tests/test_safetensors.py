"""safetensors: bare state dicts load like bare .pt state dicts; `rfprobe export` round-trips a checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from rfprobe.checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from rfprobe.cli import main
from rfprobe.errors import CheckpointError
from rfprobe.models import build_model
from rfprobe.normalization import PRESETS
from rfprobe.trainable import select
from test_checkpoint import openlth_state_dict


@pytest.fixture
def random_mode_checkpoint(tmp_path):
    model = build_model("cifar_resnet_8_4", seed=3)
    masks = select(model, "random", k=2, generator=torch.Generator().manual_seed(0)).masks
    path = tmp_path / "run" / "final.pt"
    save_checkpoint(path, model, mode="random", dataset="cifar10", bn_init="uniform", seed=3, epoch=7,
                    metrics={"test_acc": 0.25, "train_loss": float("nan")}, hparams={"lr": 0.1, "also": []},
                    history=[{"epoch": 7, "test_acc": 0.25}], normalization=PRESETS["imagenet"].to_meta(),
                    masks={k: v.cpu() for k, v in masks.items()}, optimizer={"state": {}, "param_groups": []})
    return path


def test_export_round_trip_is_bitwise_with_metadata(random_mode_checkpoint, tmp_path):
    original = load_checkpoint(random_mode_checkpoint)
    path, left_out = export_safetensors(original, tmp_path / "c.safetensors")
    assert left_out == ["optimizer"]
    back = load_checkpoint(path)
    before, after = original.model.state_dict(), back.model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    assert (back.arch, back.num_classes, back.mode, back.dataset, back.epoch) == ("cifar_resnet_8_4", 10, "random", "cifar10", 7)
    assert back.hparams == {"lr": 0.1, "also": []} and back.meta["history"] == [{"epoch": 7, "test_acc": 0.25}]
    assert back.metrics["test_acc"] == 0.25 and back.metrics["train_loss"] != back.metrics["train_loss"]  # NaN kept
    assert back.normalization == PRESETS["imagenet"] and not back.bare
    assert back.masks.keys() == original.masks.keys()
    assert all(torch.equal(back.masks[k], original.masks[k]) for k in original.masks)


def test_bare_safetensors_state_dict_loads_with_arch(tmp_path):
    state = openlth_state_dict()
    save_file(state, str(tmp_path / "lth.safetensors"))
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_checkpoint(tmp_path / "lth.safetensors")
    ckpt = load_checkpoint(tmp_path / "lth.safetensors", arch="cifar_resnet_8_4")
    assert ckpt.bare and ckpt.normalization is None
    assert all(torch.equal(ckpt.model.state_dict()[k], v) for k, v in state.items())


def test_corrupt_safetensors_is_one_line(tmp_path):
    save_file(openlth_state_dict(), str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors file"):
        load_checkpoint(tmp_path / "cut.safetensors", arch="cifar_resnet_8_4")


def test_export_command(random_mode_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported.safetensors"
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(random_mode_checkpoint), str(out), "--json"])
    assert exit_.value.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == str(out) and report["left_out"] == ["optimizer"]
    with pytest.raises(SystemExit):
        main(["info", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["mode"] == "random" and info["normalization"]["name"] == "imagenet"
    masks = load_checkpoint(random_mode_checkpoint).masks
    assert info["trainable"]["total"] == sum(int(m.sum()) for m in masks.values())  # the masks came back
    for args, message in (([str(out)], "exists; pass --overwrite"),
                          ([str(tmp_path / "x.pt")], "ending in .safetensors")):
        with pytest.raises(SystemExit) as exit_:
            main(["export", str(random_mode_checkpoint), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err
