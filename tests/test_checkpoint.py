import pickle
from collections import OrderedDict

import pytest
import torch

from rfprobe.checkpoint import FORMAT, load_checkpoint, save_checkpoint, sha256_file
from rfprobe.errors import CheckpointError
from rfprobe.models import build_model


def openlth_state_dict(depth=8, width=4, classes=10, seed=0):
    """An OpenLTH-style state dict written by hand from the architecture's definition (not our model)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g)

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g)
        sd[f"{name}.bias"] = torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv", width, 3, 3)
    bn("bn", width)
    n, current, i = (depth - 2) // 6, width, 0
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for b in range(n):
            conv(f"blocks.{i}.conv1", filters, current, 3)
            bn(f"blocks.{i}.bn1", filters)
            conv(f"blocks.{i}.conv2", filters, filters, 3)
            bn(f"blocks.{i}.bn2", filters)
            if stage > 0 and b == 0:
                conv(f"blocks.{i}.shortcut.0", filters, current, 1)
                bn(f"blocks.{i}.shortcut.1", filters)
            current, i = filters, i + 1
    sd["fc.weight"] = torch.randn(classes, current, generator=g)
    sd["fc.bias"] = torch.randn(classes, generator=g)
    return sd


def test_openlth_state_dict_loads_and_round_trips(tmp_path):
    sd = openlth_state_dict()
    torch.save(sd, tmp_path / "openlth.pt")
    ckpt = load_checkpoint(tmp_path / "openlth.pt", arch="cifar_resnet_8_4")
    assert ckpt.bare and ckpt.num_classes == 10 and not ckpt.model.training
    for k, v in sd.items():
        assert torch.equal(ckpt.model.state_dict()[k], v)
    save_checkpoint(tmp_path / "ours.pt", ckpt.model, mode="bn", epoch=3, metrics={"test_acc": 0.5})
    again = load_checkpoint(tmp_path / "ours.pt")
    assert not again.bare and again.arch == "cifar_resnet_8_4" and again.mode == "bn" and again.epoch == 3
    assert again.metrics == {"test_acc": 0.5}
    for k, v in sd.items():
        assert torch.equal(again.model.state_dict()[k], v)
    assert again.sha256 == sha256_file(tmp_path / "ours.pt") and len(again.sha256) == 64


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    sd = openlth_state_dict()
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "ep": 4}, tmp_path / "w.pt")
    ckpt = load_checkpoint(tmp_path / "w.pt", arch="cifar_resnet_8_4")
    assert torch.equal(ckpt.model.fc.weight, sd["fc.weight"])


def test_bare_state_dict_needs_arch(tmp_path):
    torch.save(openlth_state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_checkpoint(tmp_path / "bare.pt")


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    torch.save(openlth_state_dict(depth=8), tmp_path / "r8.pt")
    with pytest.raises(CheckpointError, match="state dict does not match cifar_resnet_14_4") as e:
        load_checkpoint(tmp_path / "r8.pt", arch="cifar_resnet_14_4")
    message = str(e.value)
    assert "does not match cifar_resnet_14_4" in message and "\n" not in message
    assert "missing keys: blocks.3.bn1.bias" in message and "unexpected keys: blocks.1.shortcut.0.weight" in message


def test_shape_mismatch_is_reported(tmp_path):
    torch.save(openlth_state_dict(width=4), tmp_path / "w4.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "w4.pt", arch="cifar_resnet_8_8")


def test_truncated_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "full.pt", build_model("cifar_resnet_8"))
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x00\x01\x02\x03" * 10])
def test_not_a_checkpoint(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("via_torch_save", [True, False])
def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, via_torch_save):
    target = tmp_path / "pwned.txt"
    payload = {"format": FORMAT, "state_dict": {}, "evil": _WritesAFile(str(target))}
    if via_torch_save:
        torch.save(payload, tmp_path / "evil.pt")
    else:
        (tmp_path / "evil.pt").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not target.exists()


def test_nonfinite_weights_warn_and_are_recorded(tmp_path):
    model = build_model("cifar_resnet_8")
    with torch.no_grad():
        model.blocks[0].bn1.weight[0] = float("nan")
        model.fc.bias[1] = float("inf")
    save_checkpoint(tmp_path / "nan.pt", model)
    with pytest.warns(UserWarning, match="NaN or inf"):
        ckpt = load_checkpoint(tmp_path / "nan.pt")
    assert ckpt.nonfinite == ["blocks.0.bn1.weight", "fc.bias"]


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model("cifar_resnet_8", seed=0), epoch=1)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_model("cifar_resnet_8", seed=1), epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
