"""Input normalisation is a property of a checkpoint: recorded by the trainer, used by every data pass."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.cli import main
from rfprobe.data import load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.normalization import PRESETS, custom, for_dataset, from_options
from rfprobe.results import open_result

LIMIT = 24


def stem_probe_model() -> torch.nn.Module:
    """A cifar_resnet_8_4 whose stem ReLU output is relu((x_norm[c % 3] - 1)) at each pixel: the stem conv
    copies input channel c % 3 from the centre tap, the stem BN is the identity but for beta = -1. So the
    stem's zero fraction of channel c is the fraction of pixels with x_norm = (x/255 - m) / s <= 1, which
    depends on both the mean and the std of the normalisation."""
    model = build_model("cifar_resnet_8_4", seed=0)
    with torch.no_grad():
        model.conv.weight.zero_()
        for c in range(model.conv.weight.shape[0]):
            model.conv.weight[c, c % 3, 1, 1] = 1.0
        model.bn.running_mean.zero_()
        model.bn.running_var.fill_(1.0 - model.bn.eps)
        model.bn.weight.fill_(1.0)
        model.bn.bias.fill_(-1.0)
    return model.eval()


def expected_stem_zero_fraction(x: torch.Tensor, norm) -> np.ndarray:
    """numpy, float64, from the definition: per stem channel c, mean over (n, h, w) of [x_norm[c % 3] <= 1]."""
    pixels = x.numpy().astype(np.float64) / 255
    mean, std = np.broadcast_to(norm.mean, 3), np.broadcast_to(norm.std, 3)
    per_input = [((pixels[:, i] - mean[i]) / std[i] <= 1).mean() for i in range(3)]
    return np.array([per_input[c % 3] for c in range(4)])


def sparsity_cli(*args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sparsity", *map(str, args), "--dataset", "synthetic", "--limit", str(LIMIT), "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def images():
    return load_dataset("synthetic", "test", limit=LIMIT).x


def test_the_constants_change_the_answer(images):
    """The test below can only pass with the right constants: they give different zero fractions."""
    a = expected_stem_zero_fraction(images, PRESETS["imagenet"])
    assert not np.allclose(a, expected_stem_zero_fraction(images, PRESETS["synthetic"]))
    assert not np.allclose(a, expected_stem_zero_fraction(images, PRESETS["cifar10"]))
    assert not np.allclose(expected_stem_zero_fraction(images, PRESETS["cifar10"]),
                           expected_stem_zero_fraction(images, PRESETS["kuangliu"]))  # same mean, other std


def test_recorded_normalisation_is_used_by_default(tmp_path, images, capsys):
    path = tmp_path / "lth" / "final.pt"
    save_checkpoint(path, stem_probe_model(), mode="bn", dataset="synthetic",
                    normalization=PRESETS["imagenet"].to_meta())
    assert load_checkpoint(path).normalization == PRESETS["imagenet"]
    code, out, err = sparsity_cli(path, "--out", tmp_path / "s.zarr", capsys=capsys)
    assert code in (0, None) and err == "", err
    assert json.loads(out)["normalization"] == "imagenet"
    ds = open_result(tmp_path / "s.zarr")
    measured = ds["zero_fraction"].sel(checkpoint="lth", layer="bn").values[:4]
    np.testing.assert_allclose(measured, expected_stem_zero_fraction(images, PRESETS["imagenet"]), rtol=0, atol=1e-12)
    assert ds.attrs["normalization"] == "imagenet" and ds.attrs["normalization_mean"] == "0.485, 0.456, 0.406"
    assert str(ds["normalization_source"].sel(checkpoint="lth").values) == "checkpoint"


def test_override_by_name_and_by_constants_agree(tmp_path, images, capsys):
    path = tmp_path / "c.pt"
    save_checkpoint(path, stem_probe_model(), dataset="synthetic", normalization=PRESETS["imagenet"].to_meta())
    sparsity_cli(path, "--normalization", "kuangliu", "--out", tmp_path / "a.zarr", capsys=capsys)
    sparsity_cli(path, "--mean", "0.4914,0.4822,0.4465", "--std", "0.2023,0.1994,0.2010", "--out", tmp_path / "b.zarr",
                 capsys=capsys)
    a, b = open_result(tmp_path / "a.zarr"), open_result(tmp_path / "b.zarr")
    np.testing.assert_allclose(a["zero_fraction"].sel(layer="bn").values[0, :4],
                               expected_stem_zero_fraction(images, PRESETS["kuangliu"]), rtol=0, atol=1e-12)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a.attrs["normalization"] == b.attrs["normalization"] == "kuangliu"


def test_stacked_checkpoints_each_use_their_own(tmp_path, images, capsys):
    paths = []
    for name in ("imagenet", "half"):
        paths.append(tmp_path / f"{name}.pt")
        save_checkpoint(paths[-1], stem_probe_model(), dataset="synthetic", normalization=PRESETS[name].to_meta())
    sparsity_cli(*paths, "--out", tmp_path / "s.zarr", capsys=capsys)
    ds = open_result(tmp_path / "s.zarr")
    for name in ("imagenet", "half"):
        np.testing.assert_allclose(ds["zero_fraction"].sel(checkpoint=name, layer="bn").values[:4],
                                   expected_stem_zero_fraction(images, PRESETS[name]), rtol=0, atol=1e-12)
        assert str(ds["normalization"].sel(checkpoint=name).values) == name
    assert ds.attrs["normalization"] == "imagenet; half"


def test_bare_state_dict_gets_the_dataset_constants_with_one_warning(tmp_path, images, capsys):
    path = tmp_path / "openlth.pth"
    torch.save(stem_probe_model().state_dict(), path)
    code, out, err = sparsity_cli(path, "--arch", "cifar_resnet_8_4", "--out", tmp_path / "s.zarr", capsys=capsys)
    assert code in (0, None)
    assert err.count("\n") == 1 and "records no input normalisation" in err and "--normalization imagenet" in err
    assert "mean 0.5, 0.5, 0.5; std 0.288, 0.288, 0.288" in err
    ds = open_result(tmp_path / "s.zarr")
    np.testing.assert_allclose(ds["zero_fraction"].sel(layer="bn").values[0, :4],
                               expected_stem_zero_fraction(images, PRESETS["synthetic"]), rtol=0, atol=1e-12)
    _, _, err = sparsity_cli(path, "--arch", "cifar_resnet_8_4", "--normalization", "imagenet", "--out",
                             tmp_path / "t.zarr", capsys=capsys)
    assert err == ""


def test_old_rfprobe_checkpoint_uses_its_training_dataset_default(tmp_path, capsys):
    path = tmp_path / "old.pt"
    save_checkpoint(path, stem_probe_model(), dataset="cifar10")  # trained before normalisation was recorded
    code, out, err = sparsity_cli(path, "--out", tmp_path / "s.zarr", capsys=capsys)
    assert json.loads(out)["normalization"] == "cifar10"
    assert "records no input normalisation" not in err


def test_trainer_records_its_normalisation_and_passes_use_it(tmp_path, capsys):
    from train.config import Config
    from train.run import train

    out = tmp_path / "run"
    train(Config(arch="cifar_resnet_8_4", mode="all", dataset="synthetic", limit=256, test_limit=200, epochs=1,
                 batch_size=64, normalization="half", out=str(out), device="cpu", channels_last=False, progress=False,
                 save_every=0))
    capsys.readouterr()
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt.normalization == PRESETS["half"] and ckpt.meta["normalization"]["name"] == "half"
    assert load_checkpoint(out / "init.pt").normalization == PRESETS["half"]
    with pytest.raises(SystemExit):
        main(["ablate", str(out / "final.pt"), "--dataset", "synthetic", "--limit", "200", "--device", "cpu",
              "--fractions", "", "--seeds", "1", "--json", "--out", str(tmp_path / "a.zarr")])
    report = json.loads(capsys.readouterr().out)
    assert report["normalization"] == "half"
    baseline = report["checkpoints"]["run"]["variants"]["baseline"]["accuracy"]
    assert baseline == pytest.approx(ckpt.metrics["test_acc"], abs=1e-9)  # the trainer evaluated it the same way


def test_trainer_refuses_bad_normalisation_options(tmp_path):
    from train.config import Config

    with pytest.raises(RfprobeError, match="unknown --normalization 'openlth'"):
        Config(arch="cifar_resnet_8", normalization="openlth").validate()
    with pytest.raises(RfprobeError, match="--mean and --std go together"):
        Config(arch="cifar_resnet_8", mean=(0.5, 0.5, 0.5)).validate()
    assert Config(arch="cifar_resnet_8", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).input_normalization() \
        == PRESETS["imagenet"]
    assert Config(arch="mlp_2x8", dataset="toy2d").input_normalization() == PRESETS["none"]


@pytest.mark.parametrize("name, mean, std, message", [
    ("bogus", None, None, "unknown --normalization 'bogus'"),
    ("half", "0.5", "0.5", "either --normalization or --mean/--std"),
    (None, "0.5,0.5", None, "--mean and --std go together"),
    (None, "0.5,0.5,0.5", "0.5,0.5", "--mean has 3 values but --std has 2"),
    (None, "0.5,x,0.5", "1,1,1", "comma-separated numbers"),
    (None, "0.5,0.5,0.5", "1,0,1", "must be positive"),
    (None, "nan", "1", "finite"),
])
def test_option_errors(name, mean, std, message):
    with pytest.raises(RfprobeError, match=message):
        from_options(name, mean, std)


def test_constants_name_the_preset_they_equal_and_broadcast():
    assert custom((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).name == "half"
    assert custom((0.1, 0.2, 0.3), (1, 1, 1)).name == "custom"
    assert for_dataset("toy2d:moons") == PRESETS["none"]
    data = load_dataset("toy2d:moons", "test", n=10)
    with pytest.raises(RfprobeError, match="has 3 values but toy2d:moons has 2 input channels"):
        data.with_normalization(PRESETS["cifar10"])
    assert data.with_normalization(PRESETS["none"]).normalization == PRESETS["none"]


def test_info_shows_the_normalisation(tmp_path, capsys):
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model("cifar_resnet_8_4", seed=0), dataset="cifar10",
                    normalization=PRESETS["imagenet"].to_meta())
    with pytest.raises(SystemExit):
        main(["info", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)["normalization"]
    assert report["name"] == "imagenet" and report["mean"] == [0.485, 0.456, 0.406]
    assert report["source"] == "recorded in the checkpoint"
    bare = tmp_path / "bare.pt"
    torch.save(build_model("cifar_resnet_8_4", seed=0).state_dict(), bare)
    with pytest.raises(SystemExit):
        main(["info", str(bare), "--arch", "cifar_resnet_8_4"])
    out = capsys.readouterr().out
    assert "normalization" in out and "not recorded" in out
