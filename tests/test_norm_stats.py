"""`--norm-stats running|batch|recalibrate[:N]` and Tent-style state dicts (BN gamma/beta without running
statistics); a user's factory trained in `norm` mode and studied by `compare`."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.cli import main
from rfprobe.data import batches, load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.normstats import parse, recalibrate
from rfprobe.results import open_result

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None), captured.err
    return captured


def test_parse_norm_stats():
    assert parse("running") == ("running", None) and parse("batch") == ("batch", None)
    assert parse("recalibrate") == ("recalibrate", 10) and parse("recalibrate:3") == ("recalibrate", 3)
    with pytest.raises(RfprobeError, match="choose running, batch or recalibrate"):
        parse("batch:3")
    with pytest.raises(RfprobeError, match="must be at least 1"):
        parse("recalibrate:0")


def test_recalibrate_equals_the_batch_moments_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU()).eval()
    model[1].running_mean.fill_(7.0)
    x = torch.randn(40, 3, 8, 8)
    used = recalibrate(model, [(x[:20], None), (x[20:], None), (x, None)], n_batches=2)
    assert used == 2 and not model.training and not model[1].training  # modes restored
    with torch.no_grad():
        z = [model[0](x[:20]), model[0](x[20:])]
    mean = torch.stack([zi.mean(dim=(0, 2, 3)) for zi in z]).mean(0)  # cumulative average (momentum=None)
    var = torch.stack([zi.var(dim=(0, 2, 3), unbiased=True) for zi in z]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.1  # restored


@pytest.fixture(scope="module")
def tent(tmp_path_factory):
    """A CIFAR ResNet-8 checkpoint with trained-looking BN (random gamma, beta and running statistics), and the
    same model's Tent-style bare state dict: every running statistic dropped."""
    root = tmp_path_factory.mktemp("tent")
    model = build_model("cifar_resnet_8_4", 10, seed=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.3)
    full = save_checkpoint(root / "full.pt", model, dataset="synthetic")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked"))}
    torch.save(state, root / "tent.pt")
    return full, root / "tent.pt"


def test_tent_state_dict_loads_and_is_measured_with_batch_statistics(tent, tmp_path, capsys):
    full, bare = tent
    ckpt = load_checkpoint(bare, arch="cifar_resnet_8_4")
    assert len(ckpt.batch_stats_only) == 9
    common = ["--dataset", "synthetic", "--limit", "60", "--batch-size", "20", "--json"]
    out = run_cli(["sparsity", bare, "--arch", "cifar_resnet_8_4", "--out", tmp_path / "tent.zarr", *common], capsys)
    assert "measured with each batch's own statistics" in out.err
    run_cli(["sparsity", full, "--norm-stats", "batch", "--out", tmp_path / "batch.zarr", *common], capsys)
    run_cli(["sparsity", full, "--out", tmp_path / "running.zarr", *common], capsys)
    t, b, r = (open_result(tmp_path / f"{n}.zarr") for n in ("tent", "batch", "running"))
    assert str(t["norm_stats"].values[0]) == "batch" and str(b["norm_stats"].values[0]) == "batch"
    assert str(r["norm_stats"].values[0]) == "running" and int(b.attrs["norm_stats_batch_size"]) == 20
    np.testing.assert_allclose(t["zero_fraction"].values, b["zero_fraction"].values, rtol=0, atol=1e-12)
    assert float(t["accuracy"].values[0]) == float(b["accuracy"].values[0])
    assert not np.allclose(np.nan_to_num(r["zero_fraction"].values), np.nan_to_num(b["zero_fraction"].values))


def test_batch_mode_equals_train_mode_bn_by_hand(tent):
    """--norm-stats batch: each BN normalises with the batch's own (biased) moments; the accuracy equals a
    forward of the model with its BNs in train mode and running statistics left out."""
    from rfprobe.passes import sparsity
    from rfprobe.loading import DataOptions

    full, _ = tent
    ckpt = load_checkpoint(full)
    reference = load_checkpoint(full).model
    data = load_dataset("synthetic", "test", limit=40)
    measured = DataOptions(dataset="synthetic", norm_stats="batch").for_checkpoint(ckpt, data, 20)
    ds = sparsity.run(ckpt.model, measured, batch_size=20)
    correct = 0
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    with torch.no_grad():
        for x, y in batches(measured, 20):
            correct += int((reference(x).argmax(1) == y).sum())
    assert float(ds["accuracy"]) == correct / 40 and ds.attrs["norm_stats"] == "batch"


def test_bad_norm_stats_refused_before_loading(tent, cli_error, tmp_path):
    full, _ = tent
    err = cli_error(main, ["sparsity", full, "--norm-stats", "adabn", "--out", tmp_path / "x.zarr"])
    assert "unknown --norm-stats 'adabn'" in err


def test_user_factory_trains_in_norm_mode_and_is_studied(tmp_path, capsys):
    from train.config import Config
    from train.run import train

    out = tmp_path / "mine"
    train(Config(arch="tests.factories:make_net", arch_kwargs={"width": 4}, mode="norm", dataset="synthetic",
                 limit=128, test_limit=32, epochs=1, batch_size=32, eval_batch_size=32, progress=False, out=str(out)))
    ckpt = load_checkpoint(out / "final.pt", arch="tests.factories:make_net")
    init = load_checkpoint(out / "init.pt", arch="tests.factories:make_net")
    changed = {k for k, v in ckpt.model.state_dict().items() if not torch.equal(v, init.model.state_dict()[k])}
    assert changed == {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias", "ln.weight", "ln.bias"}
    assert ckpt.meta["arch_kwargs"] == {"width": 4} and ckpt.mode == "norm"
    study = tmp_path / "study"
    capsys.readouterr()
    captured = run_cli(["compare", out, "--out", study, "--passes", "affine,dead,sparsity", "--arch",
                        "tests.factories:make_net", "--sparsity-limit", "32", "--json"], capsys)
    report = json.loads(captured.out)
    assert report["computed"] == 3
    import xarray as xr

    tree = xr.open_datatree(study / "study.zarr", engine="zarr")
    kinds = set(np.asarray(tree["affine"].to_dataset()["kind"].values).ravel())
    assert kinds == {"groupnorm", "layernorm"}
    acts = set(np.asarray(tree["sparsity"].to_dataset()["kind"].values).ravel())
    assert acts == {"relu", "gelu"}


def test_timm_bare_state_dict_on_the_command_line(tmp_path, capsys):
    pytest.importorskip("timm")
    model = build_model("timm:vit_tiny_patch16_224", 10, seed=0, img_size=32, patch_size=4, depth=1)
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    captured = run_cli(["dead", tmp_path / "vit.pt", "--arch", "timm:vit_tiny_patch16_224", "--arch-kwargs",
                        "img_size=32,patch_size=4,depth=1", "--out", tmp_path / "d.zarr", "--json"], capsys)
    report = json.loads(captured.out)
    assert report["checkpoints"]["vit"]["all"]["n_channels"] == 3 * 192
    ds = open_result(tmp_path / "d.zarr")
    assert json.loads(str(ds["arch_kwargs"].values[0])) == {"depth": 1, "img_size": 32, "patch_size": 4}
