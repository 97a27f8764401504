"""The sparsity pass against statistics computed from the full stored activations of a hand-written forward."""

import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import main
from rfprobe.data import batches, load_dataset
from rfprobe.models import build_model
from rfprobe.passes import sparsity
from rfprobe.results import open_result

pytestmark = pytest.mark.usefixtures("one_thread")


BINS = 8


def resnet_activations(model, x):
    """Every ReLU output of an OpenLTH CIFAR ResNet, by site name, written out by hand (no fx, no hooks)."""
    acts = {}
    out = F.relu(model.bn(model.conv(x)))
    acts["bn"] = out
    for i, block in enumerate(model.blocks):
        a = F.relu(block.bn1(block.conv1(out)))
        acts[f"blocks.{i}.bn1"] = a
        out = F.relu(block.bn2(block.conv2(a)) + block.shortcut(out))
        acts[f"blocks.{i}.add"] = out
    return acts


def mlp_activations(model, x):
    acts = {}
    for i, layer in enumerate(model.layers):
        x = F.relu(layer.bn(layer.linear(x)))
        acts[f"layers.{i}.bn"] = x
    return acts


def stored(model, data, forward):
    model.eval()
    with torch.no_grad():
        parts = [forward(model, x) for x, _ in batches(data, 1000)]
    return {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}


def bin_of(k, c):
    """Largest i with i/BINS <= k/c (exact rationals), the last bin closed."""
    return min(max(i for i in range(BINS + 1) if Fraction(i, BINS) <= Fraction(int(k), int(c))), BINS - 1)


def check_against_stored(ds, acts, model, threshold=0.01):
    modules = dict(model.named_modules())
    assert list(ds["layer"].values) == list(acts)
    zeros_all = outputs_all = dead_all = channels_all = 0
    per_example = np.zeros(next(iter(acts.values())).shape[0])
    for name, a in acts.items():
        a = a.reshape(a.shape[0], a.shape[1], -1)  # (N, C, P)
        n, c, p = a.shape
        one = ds.sel(layer=name)
        zero = (a == 0)
        np.testing.assert_allclose(one["zero_fraction"].values[:c], zero.mean((0, 2)), rtol=0, atol=1e-12)
        np.testing.assert_allclose(one["mean_activation"].values[:c], a.mean((0, 2)), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(one["max_activation"].values[:c], a.max((0, 2)), rtol=1e-6)
        dead = zero.all((0, 2))
        np.testing.assert_array_equal(one["dead"].values[:c], dead.astype(float))
        assert np.isnan(one["zero_fraction"].values[c:]).all()
        entirely = zero.all(2)  # (N, C)
        np.testing.assert_allclose(one["example_zero_fraction"].values[:c], entirely.mean(0), atol=1e-12)
        k = entirely.sum(1)
        np.testing.assert_allclose(float(one["example_zero_channel_fraction_mean"]), (k / c).mean(), atol=1e-12)
        hist = np.bincount([bin_of(ki, c) for ki in k], minlength=BINS)
        np.testing.assert_array_equal(one["example_zero_channel_hist"].values, hist)
        assert int(one["positions"]) == p and int(one["dead_count"]) == dead.sum()
        np.testing.assert_allclose(float(one["layer_zero_fraction"]), zero.mean(), atol=1e-12)
        if str(one["source"].values) == "bn":
            gamma = modules[name].weight.detach().double().numpy()
            small = np.abs(gamma) < threshold
            assert int(one["small_gamma_count"].sel(threshold=threshold)) == small.sum()
            assert int(one["dead_small_gamma_count"].sel(threshold=threshold)) == (small & dead).sum()
            np.testing.assert_array_equal(one["gamma"].values[:c], gamma)
        else:
            assert np.isnan(float(one["small_gamma_count"].sel(threshold=threshold)))
        zeros_all += zero.sum()
        outputs_all += zero.size
        dead_all += dead.sum()
        channels_all += c
        per_example += k
    np.testing.assert_allclose(float(ds["pooled_zero_fraction"]), zeros_all / outputs_all, atol=1e-12)
    assert int(ds["pooled_dead_count"]) == dead_all
    np.testing.assert_allclose(float(ds["pooled_dead_fraction"]), dead_all / channels_all)
    hist = np.bincount([bin_of(ki, channels_all) for ki in per_example], minlength=BINS)
    np.testing.assert_array_equal(ds["pooled_example_zero_channel_hist"].values, hist)



@pytest.fixture(scope="module")
def resnet():
    model = build_model("cifar_resnet_8_4", seed=0)
    with torch.no_grad():
        for bn in (model.bn, model.blocks[1].bn1, model.blocks[2].bn1):  # some running stats, so BN is not identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        model.blocks[0].bn1.weight[1], model.blocks[0].bn1.bias[1] = 0.0, -1.0   # always 0 after the ReLU
        model.blocks[0].bn1.weight[2], model.blocks[0].bn1.bias[2] = 0.0, 1.0    # always 1 after the ReLU
        model.blocks[1].bn1.weight[3] = 0.005                                       # small gamma, not dead
        model.blocks[2].bn1.bias[:4] = -50.0                                        # dead with a large gamma
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return load_dataset("synthetic", "test", n=48)


def test_streamed_equals_stored_resnet(resnet, images):
    ds = sparsity.run(resnet, images, batch_size=13, bins=BINS)
    check_against_stored(ds, stored(resnet, images, resnet_activations), resnet)
    # the hand-set channels
    b0 = ds.sel(layer="blocks.0.bn1")
    assert float(b0["zero_fraction"].sel(channel=1)) == 1.0 and float(b0["dead"].sel(channel=1)) == 1.0
    assert float(b0["zero_fraction"].sel(channel=2)) == 0.0 and float(b0["dead"].sel(channel=2)) == 0.0
    assert float(b0["mean_activation"].sel(channel=2)) == 1.0 and float(b0["max_activation"].sel(channel=2)) == 1.0
    assert int(b0["dead_small_gamma_count"].sel(threshold=0.01)) == 1  # channel 1; channel 2 is small but alive
    assert int(b0["small_gamma_count"].sel(threshold=0.01)) == 2
    assert int(ds["dead_count"].sel(layer="blocks.2.bn1")) >= 4
    assert float(ds["accuracy"]) == pytest.approx(
        np.mean([(resnet(x).argmax(1) == y).float().mean().item() for x, y in batches(images, 48)]))


def test_streamed_equals_stored_mlp():
    model = build_model("mlp_2x8", seed=1)
    with torch.no_grad():
        model.layers[1].bn.bias[:3] = torch.tensor([-20.0, 0.0, 20.0])
    data = load_dataset("toy2d:moons", "test", n=300)
    ds = sparsity.run(model, data, batch_size=64, bins=BINS)
    check_against_stored(ds, stored(model, data, mlp_activations), model)
    assert int(ds["positions"].sel(layer="layers.0.bn")) == 1


def test_batch_size_and_limit_invariance(resnet, images):
    whole = sparsity.run(resnet, images, batch_size=48, bins=BINS)
    for batch_size in (1, 7):
        other = sparsity.run(resnet, images, batch_size=batch_size, bins=BINS)
        for name, var in whole.data_vars.items():
            # conv kernels sum in a batch-size-dependent order: floats agree to ~1e-7, a 1e-4 slack admits
            # a rare pre-activation within rounding of 0 flipping sides, far below any real discrepancy
            tolerance = {"rtol": 1e-5, "atol": 1e-4} if var.dtype.kind == "f" else {"rtol": 0, "atol": 0}
            np.testing.assert_allclose(other[name].values, var.values, err_msg=name, **tolerance)
    limited = sparsity.run(resnet, images.subset(20), batch_size=7, bins=BINS)
    assert limited.attrs["n_examples"] == 20
    check_against_stored(limited, stored(resnet, images.subset(20), resnet_activations), resnet)


def test_cli_limit_and_output(tmp_path, resnet, real_cifar10_root):
    ckpt = save_checkpoint(tmp_path / "run" / "final.pt", resnet, mode="bn", dataset="cifar10", epoch=1)
    out = tmp_path / "s.zarr"
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsity", str(ckpt), "--data-root", str(real_cifar10_root), "--limit", "30", "--batch-size", "16",
              "--out", str(out), "--json", "--plot", str(tmp_path / "s.png")])
    assert exit_info.value.code in (0, None)
    ds = open_result(out)
    assert ds.sizes["checkpoint"] == 1 and ds.attrs["n_examples"] == 30 and ds.attrs["rfprobe_pass"] == "sparsity"
    assert (tmp_path / "s.png").stat().st_size > 0
    direct = sparsity.run(resnet, load_dataset("cifar10", root=real_cifar10_root, limit=30), batch_size=30)
    np.testing.assert_allclose(ds["zero_fraction"].isel(checkpoint=0).values, direct["zero_fraction"].values, atol=1e-12)


@pytest.mark.parametrize("command", ["sparsity", "ablate"])
@pytest.mark.parametrize("problem", ["root", "split"])
def test_bad_data_one_line_exit_2(tmp_path, capsys, command, problem, resnet):
    ckpt = save_checkpoint(tmp_path / "final.pt", resnet, mode="bn", dataset="cifar10")
    args = ["--data-root", str(tmp_path / "nowhere")] if problem == "root" else ["--split", "validation"]
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(ckpt), "--out", str(tmp_path / "o.zarr"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("rfprobe: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("not found" in err) if problem == "root" else ("split" in err)
    assert not (tmp_path / "o.zarr").exists()


def test_nan_channel_is_nan_not_zero(images):
    model = build_model("cifar_resnet_8_4", seed=0).eval()
    with torch.no_grad():
        model.blocks[0].bn1.running_var[0] = -1.0  # sqrt(-1): every output of channel 0 is NaN
    ds = sparsity.run(model, images, batch_size=48, bins=BINS)
    one = ds.sel(layer="blocks.0.bn1", channel=0)
    for name in ("zero_fraction", "mean_activation", "max_activation", "dead"):
        assert np.isnan(float(one[name])), name
    assert float(one["example_zero_fraction"]) == 0.0
    assert int(ds["dead_count"].sel(layer="blocks.0.bn1")) == 0


@pytest.mark.slow
def test_torchvision_reused_inplace_relu_matches_interpreter():
    """torchvision reuses one in-place ReLU module per block: every site must still be seen exactly once.
    Reference: torch.fx.Interpreter over the untouched trace, cloning each ReLU node's output."""
    import torch.fx as fx

    from rfprobe.graph import find_sites

    model = build_model("torchvision:resnet18", seed=0).eval()
    data = load_dataset("synthetic", "test", n=6)
    ds = sparsity.run(model, data, batch_size=4, bins=BINS)
    sites = find_sites(model)
    names = {site.node: site.name for site in sites.relu}
    outputs = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.name in names:
                outputs.setdefault(names[node.name], []).append(out.clone())
            return out

    with torch.no_grad():
        for x, _ in batches(data, 4):
            Recorder(sites.graph).run(x)
    assert len(outputs) == ds.sizes["layer"] == 17
    for name, parts in outputs.items():
        a = torch.cat(parts).double()
        c = a.shape[1]
        np.testing.assert_allclose(ds["zero_fraction"].sel(layer=name).values[:c], (a == 0).double().mean((0, 2, 3)),
                                   atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ds["mean_activation"].sel(layer=name).values[:c], a.mean((0, 2, 3)), rtol=1e-5,
                                   atol=1e-7, err_msg=name)


@pytest.mark.parametrize("args", [["--threshold", "0"], ["--threshold", "nan"], ["--bins", "0"], ["--batch-size", "0"]])
def test_bad_options_one_line_exit_2(tmp_path, capsys, resnet, args):
    ckpt = save_checkpoint(tmp_path / "final.pt", resnet, mode="bn", dataset="synthetic")
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsity", str(ckpt), "--dataset", "synthetic", "--limit", "8", "--out", str(tmp_path / "o.zarr"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1, err


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_probes_equal_the_brute_force_count(resnet, images):
    """--compile fuses each probe's reductions; the result is checked against the stored activations as the
    eager pass is (counts, maxima and histograms exact; sums to float32 rounding), NaN channels included."""
    ds = sparsity.run(resnet, images, batch_size=13, bins=BINS, compile=True)
    check_against_stored(ds, stored(resnet, images, resnet_activations), resnet)
    eager = sparsity.run(resnet, images, batch_size=13, bins=BINS)
    for name in ("zero_fraction", "dead", "max_activation", "example_zero_channel_hist", "pooled_example_zero_channel_hist"):
        np.testing.assert_array_equal(ds[name].values, eager[name].values)
    np.testing.assert_allclose(ds["mean_activation"].values, eager["mean_activation"].values, rtol=1e-6)
    assert ds.attrs["compiled_probes"] == 1 and eager.attrs["compiled_probes"] == 0
    broken = build_model("cifar_resnet_8_4", seed=0).eval()
    with torch.no_grad():
        broken.blocks[0].bn1.running_var[0] = -1.0
    one = sparsity.run(broken, images, batch_size=48, bins=BINS, compile=True).sel(layer="blocks.0.bn1", channel=0)
    assert np.isnan(float(one["zero_fraction"])) and np.isnan(float(one["mean_activation"]))


class InPlaceShared(torch.nn.Module):
    """An in-place ReLU whose input is used again afterwards (so it sees relu(z)): the fused probe must not
    replace that ReLU by an out-of-place one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)
        self.rfprobe_input_shape = (3, 32, 32)

    def forward(self, x):
        z = self.bn(self.conv(x))
        a = F.relu(z, inplace=True)
        b = F.relu(self.bn2(self.conv2(a)))
        return self.fc(F.adaptive_avg_pool2d(a + z + b, 1).flatten(1))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_probes_keep_an_in_place_relu_that_others_read(images):
    from rfprobe.graph import find_sites
    model = InPlaceShared().eval()
    x = next(batches(images, 16))[0]
    with torch.inference_mode():
        want = model(x)
        probed, _, shared = sparsity._instrument(model, find_sites(model).relu, BINS, "cpu", compile=True)
        shared.batch_k = torch.zeros(16, dtype=torch.int64)
        got = probed(x)
    kinds = [type(m).__name__ for n, m in probed.named_children() if n.startswith("rfprobe_probe_")]
    assert kinds == ["_Probe", "_ProbedRelu"]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_compile_failure_is_one_line(tmp_path, cli_error, monkeypatch, resnet):
    """Where torch.compile cannot work (no C++ compiler, no triton), --compile says so in one line."""
    import torch._dynamo.exc

    def broken(function):
        def fail(*args):
            raise torch._dynamo.exc.TorchRuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return fail

    from rfprobe.passes.sparsity import compute

    monkeypatch.setattr(compute, "compiled", broken)
    ckpt = save_checkpoint(tmp_path / "final.pt", resnet, mode="bn", dataset="synthetic")
    line = cli_error(main, ["sparsity", ckpt, "--dataset", "synthetic", "--limit", "20", "--compile",
                            "--out", tmp_path / "o.zarr"])
    assert "--compile failed on this machine (InvalidCxxCompiler" in line and "without --compile" in line
    assert not (tmp_path / "o.zarr").exists()
