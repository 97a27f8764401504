import numpy as np
import pytest
import torch

from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.graph import BN_TYPES

# BN-parameter counts and totals from docs/science.md (the BN-only paper, OpenLTH option-B shortcuts).
BN_COUNTS = {14: 1120, 32: 2464, 56: 4256, 110: 8288, 218: 16352, 434: 32480, 866: 64736}


def bn_params(model):
    return sum(p.numel() for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters())


@pytest.mark.parametrize("depth,expected", sorted(BN_COUNTS.items()))
def test_cifar_resnet_bn_parameter_counts(depth, expected):
    with torch.device("meta"):
        model = build_model(f"cifar_resnet_{depth}")
    assert bn_params(model) == expected


@pytest.mark.parametrize("depth,expected", [(14, 175_258), (110, 1_730_714)])
def test_cifar_resnet_total_parameters(depth, expected):
    with torch.device("meta"):
        model = build_model(f"cifar_resnet_{depth}")
    assert sum(p.numel() for p in model.parameters()) == expected


def test_width_names_first_stage_filters():
    model = build_model("cifar_resnet_14_32")
    assert model.conv.out_channels == 32 and model.fc.in_features == 128


def test_openlth_module_names():
    names = set(build_model("cifar_resnet_20").state_dict())
    for key in ("conv.weight", "bn.weight", "bn.running_var", "blocks.0.conv1.weight", "blocks.0.bn2.bias",
                "blocks.3.shortcut.0.weight", "blocks.3.shortcut.1.weight", "fc.weight", "fc.bias"):
        assert key in names
    assert not any(k.startswith("blocks.0.shortcut") for k in names)


def test_forward_shapes():
    x = torch.randn(2, 3, 32, 32)
    assert build_model("cifar_resnet_8", num_classes=7)(x).shape == (2, 7)
    assert build_model("cifar_vgg_11")(x).shape == (2, 10)
    assert build_model("mlp_3x16", num_classes=2)(torch.randn(5, 2)).shape == (5, 2)


def test_bn_init_options():
    gammas = lambda m: torch.cat([b.weight for b in m.modules() if isinstance(b, BN_TYPES)])
    betas = lambda m: torch.cat([b.bias for b in m.modules() if isinstance(b, BN_TYPES)])
    uniform = build_model("cifar_resnet_8", seed=0)
    assert gammas(uniform).min() >= 0 and gammas(uniform).max() <= 1 and betas(uniform).abs().max() == 0
    assert (gammas(build_model("cifar_resnet_8", bn_init="fixed")) == 1).all()
    oneone = build_model("cifar_resnet_8", bn_init="oneone")
    assert (gammas(oneone) == 1).all() and (betas(oneone) == 1).all()
    pn = gammas(build_model("cifar_resnet_8", bn_init="positivenegative", seed=0))
    assert pn.min() < 0 < pn.max() and pn.abs().max() <= 1


def test_kaiming_normal_fan_in_init():
    model = build_model("cifar_resnet_14_64", seed=0)
    w = model.blocks[2].conv2.weight  # 128 x 128 x 3 x 3
    expected_std = (2 / (128 * 9)) ** 0.5
    assert abs(w.std().item() / expected_std - 1) < 0.02


def test_seed_reproducible_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("cifar_resnet_8", seed=5)
    after = torch.rand(1)
    b = build_model("cifar_resnet_8", seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_torchvision_models():
    model = build_model("torchvision:resnet18", num_classes=5)
    assert model.fc.out_features == 5
    assert model.rfprobe_input_shape == (3, 224, 224)


@pytest.mark.parametrize("name, message", [
    ("foo", "unknown architecture 'foo'; valid patterns: cifar_resnet_N"),
    ("cifar_resnet_15", "cifar_resnet_15: cifar_resnet depth must be 6n\\+2"),
    ("cifar_vgg_12", "cifar_vgg_12: cifar_vgg depth must be one of"),
    ("torchvision:nonexistent_net", "torchvision has no model 'nonexistent_net'"),
    ("mlp_0x4", "mlp_0x4: mlp needs depth >= 1"),
])
def test_unknown_names_list_valid_patterns(name, message):
    with pytest.raises(RfprobeError, match=message) as e:
        build_model(name)
    if name == "foo":
        for pattern in ("cifar_resnet_N[_W]", "cifar_vgg_", "mlp_DxW", "torchvision:<name>"):
            assert pattern in str(e.value)


def test_mlp_nobn_is_linear_relu_layers_computed_by_hand():
    model = build_model("mlp_3x8_nobn", 4, seed=0)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 8), (8, 8), (8, 8), (8, 4)]
    for m in linears[:-1]:
        bound = 1 / np.sqrt(m.in_features)
        assert m.bias.abs().max() <= bound and m.bias.abs().max() > 0.1 * bound  # PyTorch's default, kept
    x = torch.randn(5, 2)
    h = x
    for m in linears[:-1]:
        h = torch.clamp(h @ m.weight.T + m.bias, min=0)
    torch.testing.assert_close(model.eval()(x), h @ linears[-1].weight.T + linears[-1].bias)
    with pytest.raises(RfprobeError, match="mlp_3x8_nobn does not use --bn-init"):
        build_model("mlp_3x8_nobn", 4, bn_init="fixed")


def test_imagenet_resnets_have_torchvision_layout_openlth_init_and_load_openlth_state_dicts(tmp_path):
    """imagenet_resnet_18/50 have exactly torchvision's resnet18/50 module names and shapes; W scales every stage;
    OpenLTH's init (BN gamma ~ U[0, 1], beta 0); a state dict saved the way OpenLTH saves one (its model wrapped
    as `model`, so every key starts `model.`) loads with --arch and computes what its source computes."""
    import torchvision

    from rfprobe.checkpoint import load_checkpoint

    for depth in (18, 50):
        ours = build_model(f"imagenet_resnet_{depth}", 1000, seed=0).state_dict()
        theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
        assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]
    model = build_model("imagenet_resnet_18_16", 7, seed=1).eval()
    assert model.rfprobe_input_shape == (3, 224, 224)
    assert model.layer4[1].conv2.weight.shape == (128, 128, 3, 3) and model.fc.weight.shape == (7, 128)
    gammas = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    betas = torch.cat([m.bias.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert 0 <= float(gammas.min()) and float(gammas.max()) <= 1 and float(gammas.std()) > 0.2 and not betas.any()
    path = tmp_path / "openlth_model_ep2.pth"
    torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_checkpoint(path, arch="imagenet_resnet_18_16")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), model(x), rtol=0, atol=0)
    assert loaded.num_classes == 7
