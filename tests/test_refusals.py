"""Bad input refused before work with exit 2 (issue 20): config values of the wrong type, an unwritable --out,
a device torch cannot use, a head that does not fit the dataset, damaged labels, a short split; short training
schedules; and the review's defects, each checked against an independent fact."""

import inspect
import os
import subprocess

import numpy as np
import pytest
import torch
import xarray as xr

from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import main
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "r8.pt", build_model("cifar_resnet_8_4", 10, seed=0), mode="bn",
                           dataset="synthetic", epoch=1)


@pytest.fixture
def not_a_checkpoint(tmp_path):
    """A file that fails as soon as anything opens it: an error about it means the options were not checked first."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    return path


@pytest.mark.parametrize("config,message", [
    ("limit = 100.7", "limit must be an integer, got 100.7"),
    ('limit = "many"', "limit must be an integer, got 'many'"),
    ("passes = \"dead\"\n[partition]\nsegments = \"x\"", "[partition]: segments must be an integer"),
    ("passes = \"dead\"\n[ablate]\nkeep_beta = 1", "[ablate]: keep_beta must be true or false"),
    ("[dead]\nthreshold = 0.01", "threshold must be a list of numbers"),
    ("jobs = 1.5", "jobs must be an integer"),
])
def test_config_values_of_the_wrong_type_are_refused_for_every_pass(tmp_path, not_a_checkpoint, cli_error, config,
                                                                    message):
    (tmp_path / "c.toml").write_text(config + "\n")
    err = cli_error(main, ["compare", not_a_checkpoint, "--out", tmp_path / "s", "--config", tmp_path / "c.toml"])
    assert message in err and not (tmp_path / "s").exists()


def _read_only(path):
    """Make `path` unwritable (chmod; for root, which chmod does not stop, the immutable flag); None if neither
    works here."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o555)
    try:
        (path / ".probe").touch()
    except OSError:
        return lambda: os.chmod(path, 0o755)
    (path / ".probe").unlink()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return lambda: (subprocess.run(["chattr", "-i", str(path)]), os.chmod(path, 0o755))
    os.chmod(path, 0o755)
    return None


@pytest.mark.parametrize("command", ["compare", "train", "sweep"])
def test_unwritable_out_is_refused_before_data_or_checkpoints_are_opened(tmp_path, not_a_checkpoint, cli_error,
                                                                         command):
    from train.__main__ import main as train_main
    from train.sweep import main as sweep_main

    locked = tmp_path / "locked"
    restore = _read_only(locked)
    if restore is None:
        pytest.skip("cannot make a directory read-only here (root without chattr)")
    try:
        if command == "compare":
            err = cli_error(main, ["compare", not_a_checkpoint, "--out", locked / "s"])
        elif command == "train":
            err = cli_error(train_main, ["cifar_resnet_8_4", "--dataset", "cifar10", "--data-root", tmp_path / "none",
                                         "--out", locked / "run"])
        else:
            spec = tmp_path / "spec.toml"
            spec.write_text('arch = "cifar_resnet_8_4"\ndataset = "synthetic"\n[grid]\nmode = ["bn"]\n')
            err = cli_error(sweep_main, [spec, "--out", locked / "sweep"])
    finally:
        restore()
    assert "--out" in err and "cannot write there" in err


@pytest.mark.parametrize("device", ["mps", "xpu", "tpu", "cuda:7"])
def test_devices_torch_cannot_use_are_refused(tmp_path, not_a_checkpoint, cli_error, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if device != "tpu" and device != "cuda:7" and (getattr(torch.backends, device, None) or getattr(torch, device, None)) \
            and (torch.backends.mps if device == "mps" else getattr(torch, device)).is_available():
        pytest.skip(f"this machine has an {device} device")
    err = cli_error(main, ["sparsity", not_a_checkpoint, "--dataset", "synthetic", "--device", device,
                           "--out", tmp_path / "s.zarr"])
    assert device.split(":")[0] in err and not (tmp_path / "s.zarr").exists()


def test_a_head_that_does_not_fit_the_dataset_is_refused_unless_num_classes_says_so(tmp_path, cli_error):
    torch.save(build_model("cifar_resnet_8_4", 100, seed=0).state_dict(), tmp_path / "wide.pth")
    base = ["sparsity", tmp_path / "wide.pth", "--arch", "cifar_resnet_8_4", "--dataset", "synthetic", "--limit", "20"]
    err = cli_error(main, [*base, "--out", tmp_path / "a.zarr"])
    assert "head has 100 outputs but synthetic has 10 classes" in err and "--num-classes 100" in err
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in [*base, "--num-classes", "100", "--out", tmp_path / "b.zarr"]])
    assert exit_.value.code in (0, None) and (tmp_path / "b.zarr").exists()


def _fake_cifar10(root, labels=None, n=3):
    """The binary CIFAR-10 layout with `n` records per file; the test batch's labels are `labels`."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = np.array(labels if labels is not None and name == "test_batch" else rng.integers(0, 10, n), dtype=np.uint8)
        x = rng.integers(0, 256, size=(len(y), 3072), dtype=np.uint8)
        np.concatenate([y[:, None], x], axis=1).tofile(folder / f"{name}.bin")
    return root


def test_labels_outside_the_classes_are_refused_by_every_pass_and_the_trainer(tmp_path, ckpt, cli_error, capsys):
    from train.__main__ import main as train_main

    root = _fake_cifar10(tmp_path / "data", labels=[3, 200, 1])
    for command in ("sparsity", "ablate"):
        err = cli_error(main, [command, ckpt, "--dataset", "cifar10", "--data-root", root, "--out", tmp_path / "x.zarr"])
        assert "label(s) outside 0..9" in err and "label 200" in err
    with pytest.raises(SystemExit) as exit_:
        train_main([str(a) for a in ["cifar_resnet_8_4", "--dataset", "cifar10", "--data-root", root, "--epochs", "1",
                                     "--out", tmp_path / "run"]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "label(s) outside 0..9" in err.splitlines()[-1]  # after the short train split's warning line
    assert not (tmp_path / "run" / "init.pt").exists()


def test_a_split_smaller_than_published_is_a_warning_and_an_error_with_strict(tmp_path, ckpt, capsys, cli_error):
    root = _fake_cifar10(tmp_path / "data", n=4)
    with pytest.raises(SystemExit) as exit_:
        main(["sparsity", str(ckpt), "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp_path / "a.zarr")])
    err = capsys.readouterr().err
    assert exit_.value.code in (0, None)
    assert "holds 4 examples, fewer than the published 10,000" in err
    err = cli_error(main, ["sparsity", ckpt, "--dataset", "cifar10", "--data-root", root, "--strict",
                           "--out", tmp_path / "b.zarr"])
    assert "refused with --strict" in err and not (tmp_path / "b.zarr").exists()
    from train.__main__ import main as train_main

    err = cli_error(train_main, ["cifar_resnet_8_4", "--dataset", "cifar10", "--data-root", root, "--strict",
                                 "--out", tmp_path / "run"])
    assert "train split holds 20 examples" in err and not (tmp_path / "run" / "init.pt").exists()


@pytest.mark.parametrize("epochs,milestones,first_rates", [
    (1, (1, 1), [0.1]),
    (2, (1, 2), [0.1, 0.01]),
    (3, (2, 2), [0.1, 0.1, 0.001]),
    (160, (80, 120), [0.1] * 80),
])
def test_short_schedules_start_at_the_base_rate_and_are_stated(tmp_path, epochs, milestones, first_rates):
    from train.config import Config, to_toml

    config = Config(arch="cifar_resnet_8_4", epochs=epochs)
    assert config.milestones == milestones
    assert [config.lr_at(e) for e in range(len(first_rates))] == pytest.approx(first_rates)
    assert config.lr_at(0) == config.lr
    assert f"milestones = [{', '.join(map(str, milestones))}]" in to_toml(config)
    assert config.schedule().startswith("lr 0.1 for epoch") and "# schedule: lr 0.1" in to_toml(config)


def test_the_trainers_first_line_states_the_schedule(tmp_path, capsys):
    from train import Config, train

    train(Config(arch="cifar_resnet_8_4", dataset="synthetic", limit=64, test_limit=32, epochs=3, batch_size=32,
                 progress=False, threads=1, out=str(tmp_path / "run")))
    first = capsys.readouterr().out.splitlines()[0]
    assert "lr 0.1 for epochs 1-2, 0.001 for epoch 3 (milestones 2, 2)" in first


# ---------------------------------------------------------------- the review's defects


def test_arch_shape_reads_every_family():
    from rfprobe.study import arch_shape

    assert arch_shape("nf_he_resnet_20") == (20, 16) and arch_shape("nf_he_resnet_110_32") == (110, 32)
    assert arch_shape("cifar_preact_resnet_56") == (56, 16) and arch_shape("nf_resnet_14_4") == (14, 4)
    assert arch_shape("cifar_vgg_16") == (16, 64) and arch_shape("mlp_3x64") == (3, 64)
    assert arch_shape("torchvision:resnet50") == (-1, -1)


def test_the_fingerprint_changes_with_the_rfprobe_version_and_how_a_bare_file_is_loaded(monkeypatch):
    import rfprobe
    from rfprobe.study import Entry, Request

    request = Request(passes=("dead",), options={"dead": {"threshold": None}})
    base = request.fingerprint("dead", "cpu")
    assert Request(passes=("dead",), options={"dead": {"threshold": None}}, arch="cifar_resnet_20").fingerprint(
        "dead", "cpu") != base
    assert request.fingerprint("dead", "cpu", Entry(__import__("pathlib").Path("x"), "x", "x", num_classes=100)) != base
    monkeypatch.setattr(rfprobe, "__version__", "9.9.9")
    assert request.fingerprint("dead", "cpu") != base


def test_partition_run_defaults_are_the_clis():
    from rfprobe.passes import REGISTRY, partition

    cli = REGISTRY["partition"].defaults()
    names = {"segments": "segments_per_kind", "recalibrate_bn": "recalibrate"}
    params = inspect.signature(partition.run).parameters
    for name, default in cli.items():
        if name == "kinds":
            continue
        assert params[names.get(name, name)].default == default, name
    assert params["batch_size"].default == REGISTRY["partition"].data["batch_size"]


def test_stacking_keeps_every_checkpoints_differing_attrs():
    from rfprobe.results import stack

    a = xr.Dataset({"v": ((), 1.0)}, attrs={"rfprobe_pass": "dead", "dataset": "cifar10", "n_examples": 100,
                                            "created": "2026-01-01"})
    b = xr.Dataset({"v": ((), 2.0)}, attrs={"rfprobe_pass": "dead", "dataset": "synthetic", "n_examples": 100,
                                            "created": "2026-02-02"})
    out = stack([a, b], ["a", "b"])
    assert out.attrs["dataset"] == "cifar10; synthetic" and out.attrs["created"] == "2026-01-01; 2026-02-02"
    assert out.attrs["n_examples"] == 100 and out.attrs["rfprobe_pass"] == "dead"


def test_jitter_of_a_layer_with_a_zero_gamma_channel_stays_finite():
    from rfprobe.data import load_dataset
    from rfprobe.geometry import Tangent
    from rfprobe.passes import partition

    moons = load_dataset("toy2d:moons", "train", n=512)
    model = partition.recalibrate_bn(build_model("mlp_1x8", 2, seed=0), moons)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    bn.weight.data[3] = 0.0
    found = partition.jitter(model, Tangent.from_model(model), moons, 8, 32, "cpu", torch.Generator().manual_seed(0))
    measured = found["jitter_offset_std"][1][0]
    assert np.isnan(measured[3]) and np.isfinite(np.delete(measured[:8], 3)).all()
    ratio = np.delete(measured[:8] / found["jitter_offset_predicted"][1][0][:8], 3)
    assert found["jitter_ratio"][1][0] == pytest.approx(np.median(ratio))


def test_the_study_data_cache_is_bounded_and_keyed_by_the_data_folder(monkeypatch):
    from rfprobe.checkpoint import Checkpoint
    from rfprobe.loading import DataOptions
    from rfprobe.study import runner as study

    loads = []
    monkeypatch.setattr(study, "_DATA_CACHE", study._DataCache())
    monkeypatch.setattr("rfprobe.loading.DataOptions.load", lambda self, dataset=None: loads.append(self.root) or
                        __import__("rfprobe.data", fromlist=["x"]).load_dataset("synthetic", "test", limit=4))
    model = build_model("cifar_resnet_8_4", 10, seed=0)
    ckpt = Checkpoint(path=__import__("pathlib").Path("x.pt"), sha256="0", arch="cifar_resnet_8_4", num_classes=10,
                      model=model, dataset="synthetic")
    for root in ("/data/a", "/data/b", "/data/a", "/data/c", "/data/d", "/data/a"):
        request = study.Request(passes=("sparsity",), options={"sparsity": {}},
                                data=DataOptions(dataset="synthetic", root=root), limits={"sparsity": 4})
        study._data_for(request, "sparsity", ckpt)
    assert loads == ["/data/a", "/data/b", "/data/c", "/data/d", "/data/a"]  # a kept while recent, then evicted
    assert len(study._DATA_CACHE.items) == study._DataCache.SIZE


def test_the_study_decodes_cifar_once_whatever_each_pass_limit(monkeypatch, tmp_path):
    from rfprobe.checkpoint import Checkpoint
    from rfprobe.loading import DataOptions
    from rfprobe.study import runner as study
    from test_data import write_cifar10_both_formats

    write_cifar10_both_formats(tmp_path, n_per_file=20)
    import rfprobe.data

    reads = []
    real = rfprobe.data.load_cifar
    monkeypatch.setattr(rfprobe.data, "load_cifar", lambda *a, **k: reads.append(a) or real(*a, **k))
    monkeypatch.setattr(study, "_DATA_CACHE", study._DataCache())
    ckpt = Checkpoint(path=__import__("pathlib").Path("x.pt"), sha256="0", arch="cifar_resnet_8_4", num_classes=10,
                      model=build_model("cifar_resnet_8_4", 10, seed=0), dataset="cifar10")
    request = study.Request(passes=("sparsity", "ablate"), options={"sparsity": {}, "ablate": {}},
                            data=DataOptions(dataset="cifar10", root=str(tmp_path / "bin")),
                            limits={"sparsity": 7, "ablate": 12})
    seven = study._data_for(request, "sparsity", ckpt)
    twelve = study._data_for(request, "ablate", ckpt)
    whole = real("cifar10", "test", str(tmp_path / "bin"))
    assert len(reads) == 1 and len(seven) == 7 and len(twelve) == 12
    assert torch.equal(twelve.x, whole.x[:12]) and torch.equal(seven.y, whole.y[:7])


def test_an_internal_bug_while_tracing_is_not_reported_as_bad_input(monkeypatch):
    import torch.fx as fx

    from rfprobe.graph import sites

    def broken(self, model):
        raise ZeroDivisionError("a bug inside rfprobe")

    monkeypatch.setattr(sites._Tracer, "trace", broken)
    with pytest.raises(ZeroDivisionError, match="a bug inside rfprobe"):
        sites.trace(build_model("cifar_resnet_8_4", 10, seed=0))

    def untraceable(self, model):
        raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(sites._Tracer, "trace", untraceable)
    with pytest.raises(RfprobeError, match="cannot trace"):
        sites.trace(build_model("cifar_resnet_8_4", 10, seed=0))


def test_a_damaged_store_is_one_line_naming_it(tmp_path, ckpt, cli_error):
    with pytest.raises(SystemExit):
        main(["dead", str(ckpt), "--out", str(tmp_path / "d.zarr")])
    chunk = tmp_path / "d.zarr" / "n_dead" / "0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:4])
    err = cli_error(main, ["plot", tmp_path / "d.zarr", "--out", tmp_path / "d.png"])
    assert "d.zarr: damaged store: n_dead/0.0.0 is damaged" in err


@pytest.mark.parametrize("args,message", [
    (["compare", "x.pt", "--out", "s", "--jobs", "x"], "Invalid value for '--jobs'"),
    (["dead"], "Missing argument 'checkpoints'"),
    (["dead", "x.pt", "--nope"], "No such option: --nope"),
])
def test_usage_errors_are_one_line(cli_error, args, message):
    err = cli_error(main, args)
    assert message in err and "--help" in err
