"""Any model and any normalisation layer (issue 22): models named from timm, torchvision and the user's own code;
every affine normalisation kind is a norm site and every activation a probe site; checked against hand-made
facts (gammas set by hand, counts by hand, an independent forward-hook computation)."""

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.errors import CheckpointError, RfprobeError
from rfprobe.graph import find_sites
from rfprobe.models import build_model
from rfprobe.models.external import is_user_code, parse_arch_kwargs, parse_input_shape
from rfprobe.passes import affine, dead
from rfprobe.passes.ablate.compute import _channels, set_channels
from rfprobe.trainable import select

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = {"img_size": 32, "patch_size": 4, "depth": 2}
CONVNEXT = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}


def timm_model(name, **kwargs):
    pytest.importorskip("timm")
    return build_model(f"timm:{name}", 10, seed=0, **kwargs).eval()


def small_gamma_count(model, t=0.01):
    ds = dead.run(model, thresholds=[t])
    return int(ds["pooled_n_dead"].sel(pool="all", threshold=t))


def test_arch_kwargs_and_input_shape_parse():
    assert parse_arch_kwargs("img_size=32,patch_size=4,global_pool='avg',dims=(8, 16),bias=False,x=none") == {
        "img_size": 32, "patch_size": 4, "global_pool": "avg", "dims": (8, 16), "bias": False, "x": "none"}
    assert parse_arch_kwargs({"depth": 2}) == {"depth": 2} and parse_arch_kwargs(None) == {}
    with pytest.raises(RfprobeError, match="is not key=value"):
        parse_arch_kwargs("img_size")
    assert parse_input_shape("3,32,32") == (3, 32, 32) and parse_input_shape([2]) == (2,)
    with pytest.raises(RfprobeError, match="every dimension must be at least 1"):
        parse_input_shape("3,0,32")
    assert is_user_code("tests.factories:make_net") and is_user_code("path/to/nets.py:make")
    assert not is_user_code("timm:resnet18") and not is_user_code("torchvision:resnet18")


def test_vit_layernorm_hand_counts_kinds_and_roles():
    model = timm_model("vit_tiny_patch16_224", **VIT)
    sites = find_sites(model)
    assert {s.kind for s in sites.norm} == {"layernorm"} and {s.axis for s in sites.norm} == {"feature"}
    assert len(sites.norm) == 2 * VIT["depth"] + 1
    assert [s.role for s in sites.norm[:-1]] == ["weight"] * (2 * VIT["depth"])  # pre-norm: LN feeds qkv / fc1
    assert {(s.kind, s.dim) for s in sites.activations} == {("gelu", 2)}  # tokens (B, N, D): features last
    assert len(sites.additions) == 2 * VIT["depth"] and {a.dim for a in sites.additions} == {2}
    with torch.no_grad():
        model.blocks[0].norm1.weight[:5] = 1e-3
        model.blocks[1].norm2.weight[10:13] = -5e-3
        model.norm.weight[7] = 0.0099
        model.norm.weight[8] = 0.0101  # not below 0.01 (0.01 itself rounds below it in float32)
    assert small_gamma_count(model) == 9
    ds = affine.run(model)
    assert set(ds["kind"].values) == {"layernorm"} and set(ds["channel_axis"].values) == {"feature"}
    assert int(ds["pooled_n_channels"]) == 192 * (2 * VIT["depth"] + 1)


def test_layer_scale_is_not_a_norm_site():
    model = timm_model("convnext_atto", **CONVNEXT)  # ConvNeXt blocks carry a layer-scale `gamma` (init 1e-6)
    names = {s.name for s in find_sites(model).norm}
    layer_scales = [n for n, p in model.named_parameters() if n.endswith("gamma")]
    assert layer_scales and not any(n.rpartition(".")[0] in names for n in layer_scales)
    assert small_gamma_count(model) == 0  # the 1e-6 layer scales would all count if they were pooled


def test_convnext_layernorm2d_hand_counts_and_zeroed_channel_outputs_beta():
    model = timm_model("convnext_atto", **CONVNEXT)
    sites = find_sites(model)
    assert {s.kind for s in sites.norm} == {"layernorm2d"} and {s.axis for s in sites.norm} == {"channel"}
    norm = model.stages[1].blocks[0].norm
    with torch.no_grad():
        norm.weight[[0, 3]] = 0.0
        norm.bias.normal_()
    assert small_gamma_count(model) == 2
    site = next(s for s in sites.norm if s.name == "stages.1.blocks.0.norm")
    seen = {}
    handle = norm.register_forward_hook(lambda m, i, o: seen.update(out=o.detach().clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        before = seen["out"]
        channels = _channels(model, [site])
        mask = torch.zeros(len(channels), dtype=torch.bool)
        mask[5] = True
        set_channels(model, channels, mask, gamma=0.0, beta=None)  # zero channel 5's gamma, keep its beta
        model(x)
    handle.remove()
    after = seen["out"]
    assert torch.equal(after[:, 5], torch.full_like(after[:, 5], float(norm.bias[5].detach())))
    others = [c for c in range(after.shape[1]) if c != 5]
    torch.testing.assert_close(after[:, others], before[:, others])


@pytest.mark.parametrize("factory, kind", [("resnet18_gn", "groupnorm"), ("resnet18_frozen", "frozen_batchnorm")])
def test_resnet18_groupnorm_and_frozen_bn_hand_counts(factory, kind):
    model = build_model(f"tests.factories:{factory}", 10, seed=0, input_shape=(3, 32, 32)).eval()
    sites = find_sites(model)
    assert {s.kind for s in sites.norm} == {kind} and len(sites.norm) == 20
    roles = [s.role for s in sites.norm]
    assert (roles.count("relu"), roles.count("residual"), roles.count("shortcut")) == (9, 8, 3)
    assert all(s.running_stats == (kind == "frozen_batchnorm") for s in sites.norm)
    with torch.no_grad():
        model.layer1[0].bn1.weight[:4] = 0.005
        model.layer3[1].bn2.weight[7] = -0.001
        model.layer4[0].downsample[1].weight[0] = 0.0
    assert small_gamma_count(model) == 6
    assert small_gamma_count(model, t=1e-3) == 1  # only the exact 0; |-0.001| is not below 0.001


def test_outlier_dimensions_hand_count():
    model = timm_model("vit_tiny_patch16_224", **VIT)
    with torch.no_grad():
        model.blocks[0].norm2.weight[[3, 50]] = 10.0  # 10x the layer's median |gamma| of 1
        model.blocks[1].norm1.weight[9] = 2.9  # below 3x the median
        model.blocks[1].norm1.bias[:] = 0.1
        model.blocks[1].norm1.bias[4] = -0.5  # 5x the median |beta|
    ds = affine.run(model)
    assert int(ds["pooled_n_gamma_outliers"]) == 2 and int(ds["pooled_n_beta_outliers"]) == 1
    row = ds["gamma_outlier"].sel(layer="blocks.0.norm2").values
    assert np.flatnonzero(row == 1).tolist() == [3, 50]
    assert int(affine.run(model, outlier_k=2.5)["pooled_n_gamma_outliers"]) == 3
    with pytest.raises(RfprobeError, match="--outlier-k must be finite and > 0"):
        affine.run(model, outlier_k=0)


def test_gelu_inactive_fraction_equals_forward_hooks():
    from rfprobe.data import batches, load_dataset
    from rfprobe.passes import sparsity

    model = timm_model("vit_tiny_patch16_224", **VIT)
    data = load_dataset("synthetic", "test", limit=24)
    ds = sparsity.run(model, data, batch_size=10)
    pre = {}
    hooks = [block.mlp.act.register_forward_hook(
        lambda m, i, o, k=k: pre.setdefault(k, []).append((i[0].detach().clone(), o.detach().clone())))
        for k, block in enumerate(model.blocks)]
    with torch.no_grad():
        for x, _ in batches(data, 10):
            model(x)
    for h in hooks:
        h.remove()
    for k in range(VIT["depth"]):
        z = torch.cat([p[0] for p in pre[k]]).double()
        a = torch.cat([p[1] for p in pre[k]]).double()
        inactive = (z <= 0).double().mean(dim=(0, 1)).numpy()
        layer = ds.isel(layer=k)
        assert str(layer["kind"].values) == "gelu" and str(layer["channel_axis"].values) == "feature"
        np.testing.assert_array_equal(layer["zero_fraction"].values[:len(inactive)], inactive)
        np.testing.assert_allclose(layer["mean_activation"].values[:len(inactive)], a.mean(dim=(0, 1)).numpy(),
                                   rtol=1e-5, atol=1e-6)
        dead = (z.amax(dim=(0, 1)) <= 0).numpy()
        np.testing.assert_array_equal(layer["dead"].values[:len(inactive)], dead.astype(float))
    assert "pre-activation z <= 0" in ds.attrs["activation_definition"]


def test_fused_norm_act_module_is_a_norm_and_an_activation_site():
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU), nn.Conv2d(4, 2, 1),
                          BatchNormAct2d(2, act_layer=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    model.rfprobe_input_shape = (3, 8, 8)
    sites = find_sites(model.eval())
    assert [(s.name, s.kind, s.role) for s in sites.norm] == [("1", "batchnorm", "relu"), ("3", "batchnorm", "activation")]
    assert [(s.kind, s.source, s.norm) for s in sites.activations] == [("relu", "bn", "1"), ("silu", "bn", "3")]
    assert select(model, "bn").tensors == ("1.weight", "1.bias", "3.weight", "3.bias")


def test_norm_mode_trains_every_norm_kind_and_bn_mode_refuses_without_bn():
    model = build_model("tests.factories:make_net", 10, seed=0)
    assert select(model, "norm").tensors == ("norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias", "ln.weight",
                                             "ln.bias")
    assert select(model, "norm+output").tensors[-2:] == ("head.weight", "head.bias")
    with pytest.raises(RfprobeError, match="has no BatchNorm layers"):
        select(model, "bn")


def test_checkpoint_recording_user_code_is_refused_unless_named(tmp_path):
    never = "rfprobe_test_never_imported.nets:make"
    state = build_model("tests.factories:make_net", 10, seed=0).state_dict()
    torch.save({"format": "rfprobe.checkpoint/1", "arch": never, "num_classes": 10, "state_dict": state},
               tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=f"pass --arch {never} to run it"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert "rfprobe_test_never_imported" not in sys.modules
    path = save_checkpoint(tmp_path / "mine.pt", build_model("tests.factories:make_net", 10, seed=0, width=4))
    with pytest.raises(CheckpointError, match="pass --arch tests.factories:make_net"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch="tests.factories:make_net")
    assert ckpt.arch_kwargs == {"width": 4} and ckpt.model.rfprobe_input_shape == (3, 32, 32)


def test_unknown_timm_and_factory_names_are_one_line_errors():
    pytest.importorskip("timm")
    with pytest.raises(RfprobeError, match="timm has no model 'no_such_net'"):
        build_model("timm:no_such_net")
    with pytest.raises(RfprobeError, match="has no function 'nope'"):
        build_model("tests.factories:nope")
    with pytest.raises(RfprobeError, match="cannot import module"):
        build_model("no_such_package_xyz.nets:make")
    with pytest.raises(RfprobeError, match="unexpected keyword argument"):
        build_model("tests.factories:make_net", colour="red")


def test_norm_zoo_kinds_axes_and_roles():
    model = build_model("rfprobe.models.examples:norm_zoo_net", 10, seed=0).eval()
    sites = find_sites(model)
    assert [(s.name, s.kind, s.axis, s.role) for s in sites.norm] == [
        ("bn", "batchnorm", "channel", "relu"), ("gn", "groupnorm", "channel", "activation"),
        ("inorm", "instancenorm", "channel", "residual"), ("ln_pixels", "layernorm", "feature", "weight"),
        ("ln", "layernorm", "feature", "weight"), ("rms", "rmsnorm", "feature", "weight")]
    assert [(s.kind, s.dim, s.n_channels, s.source) for s in sites.activations] == [
        ("relu", 1, 8, "bn"), ("silu", 1, 8, "norm"), ("gelu", 3, 16, "other"), ("relu6", 1, 16, "other")]
    assert [s.stage for s in sites.norm[:3]] == [0, 1, 1]
    with torch.no_grad():
        model.rms.weight[:3] = 0.0  # RMSNorm: gamma only; its beta reads 0
        model.inorm.weight[1] = -1e-4
    ds = affine.run(model)
    assert float(ds["beta"].sel(layer="rms").sum()) == 0 and small_gamma_count(model) == 4


def test_any_model_notebook_runs_clean():
    pytest.importorskip("timm")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    notebook = nbformat.read(repo / "docs" / "notebooks" / "any_model.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(repo)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], "warnings in the notebook"
    outliers = next(o for o in outputs if "text/plain" in o.get("data", {}) and "blocks.2.norm2" in o["data"]["text/plain"])
    assert "blocks.2.norm2    2" in outliers["data"]["text/plain"]


def test_partition_refuses_nets_that_are_not_piecewise_linear_naming_the_operation():
    from rfprobe.geometry.tangent import Tangent

    gelu = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 3))
    gelu.rfprobe_input_shape = (2,)
    with pytest.raises(RfprobeError, match=r"not piecewise linear: a gelu activation \(1: GELU\)"):
        Tangent.from_model(gelu)
    ln = nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    ln.rfprobe_input_shape = (2,)
    with pytest.raises(RfprobeError, match=r"not piecewise linear: layernorm 1 \(statistics of each example\)"):
        Tangent.from_model(ln)


def test_activations_not_batch_first_are_regrouped_by_example():
    from rfprobe.passes.sparsity.compute import _channels_first

    x = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).reshape(2 * 3, 5, 4)  # (examples * windows, tokens, C)
    flat = _channels_first(x, 2, batch=2)
    assert flat.shape == (2, 4, 15)
    torch.testing.assert_close(flat[1, 2], x[3:6, :, 2].reshape(-1))  # example 1's windows, channel 2
    seq = torch.randn(7, 2, 4)  # (tokens, examples, C): sequence-first
    torch.testing.assert_close(_channels_first(seq, 2, batch=2)[1, 3], seq[:, 1, 3])
    with pytest.raises(RfprobeError, match="cannot be attributed to examples"):
        _channels_first(torch.randn(5, 3, 4), 2, batch=2)


def test_signal_leaves_out_additions_without_a_residual_branch():
    from rfprobe.passes import signal

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            x = x + self.fc(torch.relu(x))       # a residual block
            return x + torch.roll(x, 1, dims=1)  # a weight-free mixer: no residual branch to tell apart

    model = Net()
    model.rfprobe_input_shape = (6,)
    ds = signal.run(model, torch.randn(8, 6), batch_stats=False)
    assert ds.sizes["block"] == 2 and ds.attrs["skipped_additions"] == "add_1"
