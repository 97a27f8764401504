import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.models.nf_resnet import GAMMA_RELU, NFBlock, ScaledStdConv2d
from rfprobe.graph import find_sites
from rfprobe.trainable import select


@pytest.mark.parametrize("shape,groups", [((16, 8, 3, 3), 1), ((12, 6, 1, 1), 1), ((8, 8, 3, 3), 4)])
def test_scaled_ws_weights_zero_mean_unit_fan_in_variance(shape, groups):
    out_c, in_c, k, _ = shape
    conv = ScaledStdConv2d(in_c, out_c, k, groups=groups)
    with torch.no_grad():
        conv.weight.normal_(0.3, 5.0, generator=torch.Generator().manual_seed(0))  # any mean and scale: standardisation removes both
    w = conv.standardized_weight().detach().double().flatten(1).numpy()
    fan_in = (in_c // groups) * k * k
    assert w.shape == (out_c, fan_in)
    np.testing.assert_allclose(w.mean(axis=1), 0.0, atol=1e-6)  # float32 rounding
    # var(W) * N / (var(W) * N + eps) with var(W) * N = 25 N: within eps / (25 N) of 1
    np.testing.assert_allclose(w.var(axis=1) * fan_in, 1.0, rtol=1e-5)


def test_scaled_ws_gain_scales_variance_and_forward_uses_it():
    conv = ScaledStdConv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.gain.copy_(torch.arange(1.0, 7.0))
        conv.bias.uniform_(-1, 1)
    w = conv.weight.detach().double().flatten(1)
    reference = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) * 36 + 1e-4)
    reference = reference * torch.arange(1.0, 7.0, dtype=torch.float64)[:, None]
    vn = (w.var(1, unbiased=False) * 36).numpy()
    np.testing.assert_allclose((reference.var(1, unbiased=False) * 36).numpy(), np.arange(1.0, 7.0) ** 2 * vn / (vn + 1e-4),
                               rtol=1e-9)
    x = torch.randn(2, 4, 5, 5)
    expected = F.conv2d(x.double(), reference.view_as(conv.weight), conv.bias.detach().double(), padding=1)
    torch.testing.assert_close(conv(x).detach().double(), expected, rtol=1e-5, atol=1e-5)


def test_scaled_ws_constant_filter_gives_zero_not_nan():
    conv = ScaledStdConv2d(3, 2, 3)
    with torch.no_grad():
        conv.weight.fill_(0.7)
    assert torch.equal(conv.standardized_weight(), torch.zeros_like(conv.weight))


def test_relu_gain_gives_unit_variance():
    # Var(relu(z)) = 1/2 - 1/(2 pi) for z ~ N(0, 1)
    assert GAMMA_RELU ** 2 * (0.5 - 0.5 / math.pi) == pytest.approx(1.0, abs=1e-12)
    assert GAMMA_RELU == pytest.approx(1.7139588594436646, abs=2e-3)  # the official constant


def test_layout_betas_and_expected_variance():
    model = build_model("nf_resnet_20_8")
    blocks = list(model.blocks)
    assert len(blocks) == 9 and model.fc.in_features == 32 and model.conv.out_channels == 8
    assert [b.shortcut is not None for b in blocks] == [False, False, False, True, False, False, True, False, False]
    a2 = 0.2 ** 2
    expected = [1.0] + [(1.0 if i in (3, 6) else 1.0 + (i % 3) * a2) + a2 for i in range(9)]
    np.testing.assert_allclose(model.expected_variance, expected, rtol=1e-12)
    np.testing.assert_allclose([b.beta for b in blocks], np.sqrt(expected[:-1]), rtol=1e-12)
    assert all(isinstance(m, ScaledStdConv2d) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(b.skip_gain.item() == 0.0 and b.alpha == 0.2 and b.gamma == GAMMA_RELU for b in blocks)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_skip_gain_zero_makes_identity_blocks_the_identity():
    model = build_model("nf_resnet_8_4", seed=0)
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(model.blocks[0](x), x)
    model = build_model("nf_resnet_8_4", seed=0, skip_init_gain=1.0)
    assert model.blocks[0].skip_gain.item() == 1.0 and not torch.equal(model.blocks[0](x), x)


def test_transition_shortcut_convolves_the_scaled_activation():
    block = NFBlock(4, 8, downsample=True, alpha=0.2, beta=1.3, gamma=GAMMA_RELU, skip_init_gain=0.0)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(block(x), block.shortcut(F.relu(x / 1.3) * GAMMA_RELU))


def test_he_init_variant_has_plain_convs_and_unit_gain():
    model = build_model("nf_he_resnet_14_4", seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and not any(isinstance(m, ScaledStdConv2d) for m in convs)
    assert model.gamma == 1.0 and all(b.gamma == 1.0 for b in model.blocks)
    w = torch.cat([m.weight.detach().flatten() * math.sqrt(m.weight[0].numel()) for m in convs])
    assert float(w.var()) == pytest.approx(2.0, rel=0.1)  # kaiming normal: Var = 2 / fan_in


def test_options_dropout_and_errors():
    model = build_model("nf_resnet_8", dropout=0.25)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.25
    for kwargs, message in (({"dropout": 1.0}, ": .*dropout"), ({"alpha": 0.3}, " does not use --alpha"),
                            ({"skip_init_gain": "x"}, ": .*could not convert"), ({"bn_init": "fixed"}, " does not use --bn-init")):
        with pytest.raises(RfprobeError, match=f"nf_resnet_8{message}"):
            build_model("nf_resnet_8", **kwargs)
    with pytest.raises(RfprobeError, match="6n\\+2"):
        build_model("nf_resnet_9")


def test_traceable_no_bn_and_bn_modes_refuse():
    model = build_model("nf_resnet_20_4")
    sites = find_sites(model)
    assert sites.bn == [] and sites.output_layer == "fc"
    assert [a.name for a in sites.additions] == [f"blocks.{i}.add" for i in range(9)]
    assert all(a.residual is not None for a in sites.additions)
    assert "blocks.0.conv1" in {s.name for s in sites.relu}  # functional conv calls are named after their module
    for mode in ("bn", "bn+output", "gamma", "beta"):
        with pytest.raises(RfprobeError, match="has no BatchNorm layers"):
            select(model, mode, sites=sites)
    assert len(select(model, "all", sites=sites).tensors) == len(list(model.parameters()))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("nf_resnet_8_4", seed=1, skip_init_gain=0.5)
    with torch.no_grad():
        model.fc.weight.normal_()
    path = save_checkpoint(tmp_path / "nf.pt", model, mode="all", epoch=1)
    loaded = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.model.blocks[1].skip_gain.item() == 0.5


def test_one_training_step_moves_every_tensor():
    model = build_model("nf_resnet_8_4", seed=0, skip_init_gain=1.0)
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.1)
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 10)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert float(grads["blocks.2.skip_gain"].abs()) > 0 and float(grads["blocks.1.conv1.gain"].abs().sum()) > 0


def test_preact_resnet_layout():
    model = build_model("cifar_preact_resnet_14", bn_init="fixed")
    sites = find_sites(model)
    assert {s.role for s in sites.bn} == {"relu"} and len(sites.bn) == 2 * 6 + 1
    assert all(m.weight.min().item() == 1.0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert [a.residual for a in sites.additions][:2] == ["blocks_0_conv2", "blocks_1_conv2"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
