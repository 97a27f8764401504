import pytest

from rfprobe.models import build_model
from rfprobe.graph import find_sites


def test_resnet14_roles_stages_blocks():
    sites = find_sites(build_model("cifar_resnet_14"))
    roles = {s.name: s.role for s in sites.bn}
    assert roles["bn"] == "relu"
    for b in range(6):
        assert roles[f"blocks.{b}.bn1"] == "relu"
        assert roles[f"blocks.{b}.bn2"] == "residual"
    assert roles["blocks.2.shortcut.1"] == roles["blocks.4.shortcut.1"] == "shortcut"
    assert len(sites.bn) == 15 and [s.depth for s in sites.bn] == list(range(15))
    stages = {s.name: s.stage for s in sites.bn}
    assert stages["bn"] == stages["blocks.1.bn2"] == 0
    assert stages["blocks.2.bn1"] == stages["blocks.2.shortcut.1"] == 1 and stages["blocks.5.bn2"] == 2
    blocks = {s.name: s.block for s in sites.bn}
    assert blocks["bn"] == -1 and blocks["blocks.3.bn1"] == 3 and blocks["blocks.4.shortcut.1"] == 4
    producers = {s.name: s.producer for s in sites.bn}
    assert producers["blocks.2.shortcut.1"] == "blocks.2.shortcut.0" and producers["bn"] == "conv"
    assert sites.output_layer == "fc"


def test_resnet14_relu_sites_keyed_by_feeder():
    sites = find_sites(build_model("cifar_resnet_14"))
    names = [s.name for s in sites.relu]
    assert names[:3] == ["bn", "blocks.0.bn1", "blocks.0.add"]
    assert len(names) == 1 + 2 * 6
    assert {s.source for s in sites.relu} == {"bn", "add"}
    assert [s.n_channels for s in sites.relu][-1] == 64


def test_torchvision_resnet18_roles():
    sites = find_sites(build_model("torchvision:resnet18"))
    roles = {s.name: s.role for s in sites.bn}
    assert roles["bn1"] == "relu"
    for layer in range(1, 5):
        for block in range(2):
            assert roles[f"layer{layer}.{block}.bn1"] == "relu"
            assert roles[f"layer{layer}.{block}.bn2"] == "residual"
    assert [n for n, r in roles.items() if r == "shortcut"] == [f"layer{i}.0.downsample.1" for i in (2, 3, 4)]
    assert sum(s.name.endswith(".add") for s in sites.relu) == 8


def test_torchvision_resnet50_bottleneck_shortcuts():
    sites = find_sites(build_model("torchvision:resnet50"))
    roles = {s.name: s.role for s in sites.bn}
    assert roles["layer1.0.downsample.1"] == "shortcut"  # stride-1 projection in the first bottleneck
    assert roles["layer1.0.bn3"] == "residual" and roles["layer1.0.bn2"] == "relu"
    assert sum(r == "shortcut" for r in roles.values()) == 4


@pytest.mark.parametrize("name,n_bn", [("cifar_vgg_11", 8), ("mlp_3x8", 3)])
def test_plain_nets_all_relu(name, n_bn):
    sites = find_sites(build_model(name))
    assert len(sites.bn) == n_bn and {s.role for s in sites.bn} == {"relu"}
    assert all(s.block == -1 for s in sites.bn)
