"""The ablate pass: pruning, controls, the curve and re-enabling, checked against hand-made models."""

import copy

import numpy as np
import pytest
import torch

from rfprobe.checkpoint import save_checkpoint, sha256_file
from rfprobe.cli import main
from rfprobe.data import batches, load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.passes import ablate
from rfprobe.results import open_result
from rfprobe.graph import find_sites

pytestmark = pytest.mark.usefixtures("one_thread")


ZEROED = {"blocks.0.bn1": [0, 3], "blocks.1.bn2": [1], "blocks.2.shortcut.1": [2, 5, 7]}


def logits(model, data):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in batches(data, 64)])



@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "test", n=64)


@pytest.fixture(scope="module")
def model():
    """Every |gamma| >= 0.1 except the ZEROED channels, which have gamma = 0 and beta = 0."""
    net = build_model("cifar_resnet_8_4", seed=0)
    modules = dict(net.named_modules())
    with torch.no_grad():
        for site in find_sites(net).bn:
            bn = modules[site.name]
            bn.weight.copy_(torch.where(bn.weight.abs() < 0.1, torch.full_like(bn.weight, 0.3), bn.weight))
            bn.bias.uniform_(-0.2, 0.2)
        for name, channels in ZEROED.items():
            modules[name].weight[channels] = 0.0
            modules[name].bias[channels] = 0.0
    return net.eval()


def test_pruning_zero_gamma_channels_leaves_logits_and_reenabling_changes_them(model, data):
    sites = find_sites(model)
    channels = ablate._channels(model, sites.bn)
    small = channels.gamma.abs() < 0.01
    assert int(small.sum()) == sum(len(c) for c in ZEROED.values())
    before = logits(model, data)
    work = copy.deepcopy(model)
    ablate.set_channels(work, channels, small, 0.0, 0.0)
    assert torch.equal(logits(work, data), before)
    ablate.set_channels(work, channels, small, 1.0, None)  # re-enable with gamma = 1, beta kept (0)
    assert not torch.allclose(logits(work, data), before)

    ds = ablate.run(model, data, prune_below=0.01, seeds=2, fractions=[], reenable=True, reenable_value="one",
                    batch_size=20)
    acc, loss = ds["accuracy"], ds["loss"]
    assert float(loss.sel(variant="pruned", draw=0)) == float(loss.sel(variant="baseline", draw=0))
    assert float(loss.sel(variant="reenabled", draw=0)) != float(loss.sel(variant="baseline", draw=0))
    assert float(acc.sel(variant="baseline", draw=0)) == pytest.approx(
        (before.argmax(1) == data.y).float().mean().item())
    # the caller's model is untouched
    assert torch.equal(logits(model, data), before)


def test_keep_beta_leaves_logits_when_gamma_is_zero(data):
    net = build_model("cifar_resnet_8_4", seed=2).eval()
    with torch.no_grad():
        net.blocks[1].bn1.weight.clamp_(min=0.1)
        net.blocks[1].bn1.weight[:3], net.blocks[1].bn1.bias[:3] = 0.0, 0.7
        net.bn.weight.clamp_(min=0.1)
    kept = ablate.run(net, data, prune_below=0.05, keep_beta=True, seeds=1, fractions=[], eligible="relu")
    zeroed = ablate.run(net, data, prune_below=0.05, keep_beta=False, seeds=1, fractions=[], eligible="relu")
    assert kept.attrs["prune_operation"] == "gamma=0, beta kept"
    assert float(kept["loss"].sel(variant="pruned", draw=0)) == float(kept["loss"].sel(variant="baseline", draw=0))
    assert float(zeroed["loss"].sel(variant="pruned", draw=0)) != float(zeroed["loss"].sel(variant="baseline", draw=0))


@pytest.mark.parametrize("eligible", ["all", "no-shortcut"])
def test_controls_use_the_same_count(model, data, eligible):
    ds = ablate.run(model, data, prune_below=0.01, seeds=3, fractions=[0.25], eligible=eligible, batch_size=64)
    shortcut = (ds["role"] == "shortcut").values
    k = sum(len(c) for name, c in ZEROED.items() if eligible == "all" or "shortcut" not in name)
    assert int(ds["n_changed"].sel(variant="pruned")) == k == int(ds["small_gamma_count"].sum())
    assert (ds["random_count"].sum("layer").values == k).all()
    assert int(ds["largest_count"].sum()) == k
    assert ds.attrs["eligible_bns"] == eligible and bool(ds["eligible"].values[shortcut].any()) == (eligible == "all")
    if eligible != "all":
        assert ds["random_count"].values[:, shortcut].sum() == 0 and ds["largest_count"].values[shortcut].sum() == 0
    draws = {tuple(ds["random_count"].sel(draw=s).values) for s in range(3)}
    assert len(draws) > 1  # the seeds draw different channels
    # the largest control picks the k largest |gamma| of the eligible layers
    modules = dict(model.named_modules())
    gammas = [(abs(float(g)), name) for name in ds["layer"].values if bool(ds["eligible"].sel(layer=name))
              for g in modules[name].weight.detach()]
    top = sorted(gammas, key=lambda t: -t[0])[:k]
    for name in ds["layer"].values:
        assert int(ds["largest_count"].sel(layer=name)) == sum(1 for _, n in top if n == name)
    n = int(ds["n_eligible"])
    assert int(ds["curve_n_pruned"].sel(fraction=0.25)) == round(0.25 * n)


def test_curve_matches_hand_pruning(model, data):
    ds = ablate.run(model, data, seeds=1, fractions=[0, 0.5], batch_size=64)
    base = float(ds["accuracy"].sel(variant="baseline", draw=0))
    assert float(ds["curve_accuracy"].sel(curve="smallest", fraction=0.0, draw=0)) == base
    # independent: zero gamma and beta of the half of all BN channels with the smallest |gamma|
    net = copy.deepcopy(model)
    modules = dict(net.named_modules())
    entries = [(abs(float(g)), depth, c, site.name) for depth, site in enumerate(find_sites(net).bn)
               for c, g in enumerate(modules[site.name].weight.detach())]
    count = round(0.5 * len(entries))
    with torch.no_grad():
        for _, _, c, name in sorted(entries)[:count]:
            modules[name].weight[c] = 0.0
            modules[name].bias[c] = 0.0
    out = logits(net, data)
    expected = (out.argmax(1) == data.y).float().mean().item()
    loss = torch.nn.functional.cross_entropy(out, data.y).item()
    assert int(ds["curve_n_pruned"].sel(fraction=0.5)) == count
    assert float(ds["curve_accuracy"].sel(curve="smallest", fraction=0.5, draw=0)) == pytest.approx(expected)
    assert float(ds["curve_loss"].sel(curve="smallest", fraction=0.5, draw=0)) == pytest.approx(loss, rel=1e-5)


def test_reenable_values():
    channels = ablate._Channels(["a", "b"], np.array([0, 4, 6]), torch.tensor([0.0, 0.5, -0.2, 0.9, 0.001, 0.002],
                                dtype=torch.float64), torch.zeros(6, dtype=torch.float64))
    small = channels.gamma.abs() < 0.01
    values, counts = ablate.reenable_values(channels, small, 0.01, "median", None)
    assert values[0] == pytest.approx(0.5) and values[4] == values[5] == 1.0  # layer b has no live channel
    assert counts == {"init": 0, "median": 1, "one": 2}
    values, counts = ablate.reenable_values(channels, small, 0.01, "init", None)  # no init: median, else 1
    assert counts == {"init": 0, "median": 1, "one": 2}
    init = torch.tensor([0.4, 0.1, 0.2, 0.3, 0.6, 0.7], dtype=torch.float64)
    values, counts = ablate.reenable_values(channels, small, 0.01, "init", init)
    assert torch.equal(values, init) and counts == {"init": 3, "median": 0, "one": 0}
    values, counts = ablate.reenable_values(channels, small, 0.01, "one", init)
    assert (values == 1).all() and counts["one"] == 3


def test_cli_reenable_from_init_never_writes_the_checkpoint(tmp_path, model, real_cifar10_root):
    run_dir = tmp_path / "run"
    final = save_checkpoint(run_dir / "final.pt", model, mode="bn", dataset="cifar10", epoch=3)
    init_model = build_model("cifar_resnet_8_4", seed=5)
    save_checkpoint(run_dir / "init.pt", init_model, mode="bn", dataset="cifar10", epoch=0)
    digest = sha256_file(final)
    out = tmp_path / "a.zarr"
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", str(final), "--data-root", str(real_cifar10_root), "--limit", "40", "--seeds", "2",
              "--fractions", "0,0.5", "--reenable-pruned", "--out", str(out), "--json", "--plot", str(tmp_path / "a.png")])
    assert exit_info.value.code in (0, None)
    assert sha256_file(final) == digest
    ds = open_result(out)
    assert ds.attrs["reenable_sources"] == "init: 6, median: 0, one: 0" and str(run_dir / "init.pt") in ds.attrs["init_checkpoint"]
    assert list(ds["variant"].values) == ["baseline", "pruned", "random", "largest", "reenabled"]
    assert ds.sizes["draw"] == 2 and ds.sizes["checkpoint"] == 1
    assert (tmp_path / "a.png").stat().st_size > 0


@pytest.mark.parametrize("args", [["--fractions", "0,x"], ["--fractions", "1.5"], ["--eligible", "some"],
                                  ["--reenable-value", "two"], ["--seeds", "0"], ["--prune-below", "-1"], ["--prune-below", "nan"]])
def test_bad_options_one_line_exit_2(tmp_path, capsys, model, args):
    ckpt = save_checkpoint(tmp_path / "final.pt", model, mode="bn", dataset="synthetic")
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", str(ckpt), "--dataset", "synthetic", "--limit", "8", "--out", str(tmp_path / "o.zarr"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1, err


def test_run_rejects_bad_values(model, data):
    with pytest.raises(RfprobeError, match="unknown --eligible 'none'"):
        ablate.run(model, data, eligible="none")
    with pytest.raises(RfprobeError, match=r"--fractions must lie in \[0, 1\], got -0.1"):
        ablate.run(model, data, fractions=[-0.1])
