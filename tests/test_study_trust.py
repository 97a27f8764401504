"""Studies you can trust (issue 20): a store is reused only when it is whole and belongs to the checkpoint and
the options; the study holds exactly the command's inputs; workers die with their parent; inputs carry their
own metadata; nothing the user wrote is deleted."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import REPO
from rfprobe.checkpoint import save_checkpoint, sha256_file
from rfprobe.cli import main
from rfprobe.models import build_model
from rfprobe.results import open_result
from rfprobe.study import open_study, records

pytestmark = pytest.mark.usefixtures("one_thread")


def compare(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None), captured.err
    return captured


def shrink_some_gammas(model, seed):
    """As if trained: some BN gammas near zero (so dead counts differ between models), chosen by `seed`, and
    running statistics moved off their init."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            small = torch.rand(m.weight.shape, generator=g) < 0.3
            m.weight.data[small] = 1e-4
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.mul_(1 + torch.rand(m.running_var.shape, generator=g))
    return model


def checkpoint(path, arch="cifar_resnet_8_4", seed=0, mode="all", **meta):
    model = shrink_some_gammas(build_model(arch, 10, seed=seed), seed)
    save_checkpoint(path, model, mode=mode, dataset="synthetic", epoch=1, seed=seed, **meta)
    return path


def dead_alone(path, tmp_path, name):
    out = tmp_path / f"{name}.zarr"
    with pytest.raises(SystemExit):
        main(["dead", str(path), "--out", str(out)])
    return open_result(out)


def test_retrained_checkpoint_is_recomputed_and_stale_stores_are_left_out(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "a.pt", seed=0, mode="all")
    out = tmp_path / "s"
    compare([ckpt, "--passes", "affine,dead", "--out", out], capsys)
    old_sha = sha256_file(ckpt)
    checkpoint(ckpt, seed=3, mode="bn")  # retrained in place
    new_sha = sha256_file(ckpt)
    assert new_sha != old_sha
    err = compare([ckpt, "--passes", "dead", "--out", out], capsys).err
    assert "recomputing" in err and "another file" in err
    assert "leaves out" in err and "affine.zarr" in err
    tree = open_study(out).load()
    assert "affine" not in tree.children  # the old model's numbers are never shown under the new coordinates
    dead = tree["dead"].to_dataset()
    assert dead["checkpoint_sha256"].values.tolist() == [new_sha]
    assert dead["mode"].values.tolist() == ["bn"] and dead["seed"].values.tolist() == [3]
    alone = dead_alone(ckpt, tmp_path, "alone")
    np.testing.assert_array_equal(dead["n_dead"].values, alone["n_dead"].values)
    compare([ckpt, "--passes", "affine,dead", "--out", out], capsys)
    affine = open_study(out).load()["affine"].to_dataset()
    assert affine["checkpoint_sha256"].values.tolist() == [new_sha]


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_store_is_recomputed_and_the_study_equals_an_undamaged_one(tmp_path, capsys, damage):
    files = [checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(2)]
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    compare([*files, "--passes", "affine,dead", "--out", clean], capsys)
    compare([*files, "--passes", "affine,dead", "--out", broken], capsys)
    chunk = broken / "runs" / "m1" / "dead.zarr" / "n_dead" / "0.0.0"
    assert chunk.is_file()
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:5])
    captured = compare([*files, "--passes", "affine,dead", "--out", broken, "--json"], capsys)
    assert "recomputing" in captured.err and "n_dead/0.0.0" in captured.err
    report = json.loads(captured.out)
    assert report["computed"] == 1 and report["skipped"] == 3
    a, b = open_study(clean).load(), open_study(broken).load()
    for name in ("affine", "dead"):
        xr.testing.assert_identical(a[name].to_dataset().drop_vars("checkpoint_path").drop_attrs(),
                                    b[name].to_dataset().drop_vars("checkpoint_path").drop_attrs())


def test_study_and_report_hold_exactly_the_commands_inputs_unless_keep(tmp_path, capsys):
    files = [checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(3)]
    out = tmp_path / "s"
    compare([*files, "--passes", "dead", "--out", out], capsys)
    compare([files[0], "--passes", "dead", "--out", out], capsys)
    tree = open_study(out).load()
    assert tree["dead"]["checkpoint"].values.tolist() == ["m0"]
    with pytest.raises(SystemExit):
        main(["report", str(out)])
    page = (out / "report.html").read_text()
    assert "m0.pt" in page and "m1.pt" not in page and "m2.pt" not in page
    compare([files[0], "--passes", "dead", "--out", out, "--keep"], capsys)
    assert open_study(out).load()["dead"]["checkpoint"].values.tolist() == ["m0", "m1", "m2"]


def test_user_files_inside_stores_are_never_deleted(tmp_path, capsys, cli_error):
    ckpt = checkpoint(tmp_path / "a.pt")
    store = tmp_path / "dead.zarr"
    with pytest.raises(SystemExit):
        main(["dead", str(ckpt), "--out", str(store)])
    (store / "mynotes.txt").write_text("mine")
    err = cli_error(main, ["dead", str(ckpt), "--out", store, "--overwrite"])
    assert "holds files rfprobe did not write (mynotes.txt)" in err
    assert (store / "mynotes.txt").read_text() == "mine"
    out = tmp_path / "s"
    compare([ckpt, "--passes", "dead", "--out", out], capsys)
    inside = out / "runs" / "a" / "dead.zarr"
    (inside / "mynotes.txt").write_text("mine")
    checkpoint(ckpt, seed=5)  # the store is now stale: a recompute would replace it
    err = cli_error(main, ["compare", ckpt, "--passes", "dead", "--out", out])
    assert "mynotes.txt" in err and (inside / "mynotes.txt").read_text() == "mine"


def test_killed_runs_temporaries_are_removed_by_the_next_write(tmp_path):
    from rfprobe.atomic import _HOST, atomic_file

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale_dir = tmp_path / f".dead.zarr.tmp-{_HOST}-{pid}-abcd1234"
    stale_dir.mkdir()
    (stale_dir / "new").mkdir()
    live = tmp_path / f".dead.zarr.tmp-{_HOST}-{os.getpid()}-abcd1234"
    live.mkdir()
    other_host = tmp_path / f".dead.zarr.tmp-elsewhere-{pid}-abcd1234"
    other_host.mkdir()
    mine = tmp_path / ".dead.zarr.tmp-notes"
    mine.write_text("a user's file that only looks similar")
    with atomic_file(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert not stale_dir.exists() and live.exists() and other_host.exists() and mine.exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the workers")
def test_workers_die_with_a_killed_parent(tmp_path):
    files = [checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(6)]
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "rfprobe.cli", "compare", *map(str, files), "--passes",
                             "sparsity", "--dataset", "synthetic", "--sparsity-limit", "2000", "--jobs", "2",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid)
                   if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()]
        if len(workers) == 2:
            break
        time.sleep(0.05)
    assert len(workers) == 2, "the workers never started"
    time.sleep(1.0)  # let them get into their work
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its parent by 10 s"


MANIFEST = """
[[input]]
path = "nets/r8-a.pth"
arch = "cifar_resnet_8_4"
mode = "bn"
epoch = 160
seed = 1
lr = 0.1

[[input]]
path = "nets/r8-b.pth"
arch = "cifar_resnet_8_4"
mode = "all"
epoch = 160
seed = 2
lr = 0.1

[[input]]
path = "nets/r14.pth"
arch = "cifar_resnet_14_4"
mode = "bn"
epoch = 160
seed = 1
lr = 0.2

[[input]]
path = "nets/r20.pth"
arch = "cifar_resnet_20_8"
mode = "all"
epoch = 160
seed = 1
lr = 0.2

[[input]]
path = "nets/r20-init.pth"
label = "r20-init"
arch = "cifar_resnet_20_8"
mode = "all"
epoch = 0
seed = 1
lr = 0.2
"""


def test_inputs_manifest_mixes_architectures_and_carries_coordinates(tmp_path, capsys):
    nets = tmp_path / "nets"
    nets.mkdir()
    for name, arch, seed in (("r8-a", "cifar_resnet_8_4", 1), ("r8-b", "cifar_resnet_8_4", 2),
                             ("r14", "cifar_resnet_14_4", 1), ("r20", "cifar_resnet_20_8", 1),
                             ("r20-init", "cifar_resnet_20_8", 1)):
        model = build_model(arch, 10, seed=seed)
        if name != "r20-init":
            shrink_some_gammas(model, seed)
        torch.save(model.state_dict(), nets / f"{name}.pth")  # bare, OpenLTH-style: no metadata inside
    (tmp_path / "inputs.toml").write_text(MANIFEST)
    out = tmp_path / "s"
    captured = compare(["--inputs", tmp_path / "inputs.toml", "--passes", "dead,signal", "--signal-batch", "8",
                        "--out", out], capsys)
    assert "records no trainable mode" not in captured.err
    tree = open_study(out).load()
    dead = tree["dead"].to_dataset()
    assert dead["checkpoint"].values.tolist() == ["r8-a", "r8-b", "r14", "r20", "r20-init"]
    assert dead["arch"].values.tolist() == ["cifar_resnet_8_4"] * 2 + ["cifar_resnet_14_4"] + ["cifar_resnet_20_8"] * 2
    by_mode = dead["pooled_n_dead"].sel(pool="all", threshold=0.01).groupby("mode").sum()
    hand = {}
    for label, mode in zip(dead["checkpoint"].values, dead["mode"].values):
        hand[mode] = hand.get(mode, 0) + int(dead["pooled_n_dead"].sel(checkpoint=label, pool="all", threshold=0.01))
    assert dict(zip(by_mode["mode"].values.tolist(), by_mode.values.tolist())) == hand
    assert dead.groupby("mode").count()["pooled_n_channels"].sel(pool="all").values.tolist() == [3, 2]  # all, bn
    assert dead["lr"].values.tolist() == [0.1, 0.1, 0.2, 0.2, 0.2] or dead["lr"].values.tolist() == [
        "0.1", "0.1", "0.2", "0.2", "0.2"]
    assert dead["epoch"].values.tolist() == [160, 160, 160, 160, 0]
    # per layer, a position along each net's own depth: first layer 0, last 1, whatever the architecture
    position = dead["relative_depth"]
    assert position.dims == ("checkpoint", "layer")
    for label in dead["checkpoint"].values:
        values = position.sel(checkpoint=label).values
        values = values[np.isfinite(values)]
        assert values.min() == 0 and values.max() == 1
    # the dead counts equal the pass run alone on each bare file with its architecture
    alone = tmp_path / "alone.zarr"
    with pytest.raises(SystemExit):
        main(["dead", str(nets / "r14.pth"), "--arch", "cifar_resnet_14_4", "--out", str(alone)])
    np.testing.assert_array_equal(
        open_result(alone)["pooled_n_dead"].values[0], dead["pooled_n_dead"].sel(checkpoint="r14").values)
    # signal at initialisation normalises with batch statistics, after training with running ones
    bn = {label: str(open_result(out / "runs" / label / "signal.zarr")["bn_statistics"].values[0])
          for label in ("r20", "r20-init")}
    assert bn == {"r20": "running", "r20-init": "batch"}
    recs = records(out)
    assert recs["r20-init"]["epoch"] == 0 and recs["r8-b"]["extra"] == {"lr": 0.1}


def test_a_bare_file_without_a_mode_gets_unknown_with_one_warning(tmp_path, capsys):
    torch.save(build_model("cifar_resnet_8_4", 10, seed=0).state_dict(), tmp_path / "bare.pth")
    captured = compare([tmp_path / "bare.pth", "--arch", "cifar_resnet_8_4", "--passes", "dead", "--out",
                        tmp_path / "s"], capsys)
    assert captured.err.count("records no trainable mode") == 1 and "--inputs" in captured.err
    assert open_study(tmp_path / "s").load()["dead"]["mode"].values.tolist() == ["unknown"]


def test_signal_on_an_init_file_without_epoch_uses_batch_statistics(tmp_path):
    from rfprobe.checkpoint import load_checkpoint
    from rfprobe.passes import signal

    torch.save(build_model("cifar_resnet_8_4", 10, seed=0).state_dict(), tmp_path / "init.pth")
    ckpt = load_checkpoint(tmp_path / "init.pth", arch="cifar_resnet_8_4")
    assert ckpt.epoch is None and signal.at_init(ckpt)
    assert signal.uses_batch_stats(ckpt, None) and not signal.uses_batch_stats(ckpt, False)
    trained = build_model("cifar_resnet_8_4", 10, seed=0)
    trained.train()
    trained(torch.randn(8, 3, 32, 32))  # one batch moves the running statistics
    torch.save(trained.state_dict(), tmp_path / "trained.pth")
    ckpt = load_checkpoint(tmp_path / "trained.pth", arch="cifar_resnet_8_4")
    assert not signal.at_init(ckpt) and not signal.uses_batch_stats(ckpt, None) and signal.uses_batch_stats(ckpt, True)


def test_an_inputs_normalization_is_how_its_data_passes_measure_it(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "a.pt")
    (tmp_path / "inputs.toml").write_text('[[input]]\npath = "a.pt"\nlabel = "own"\n\n'
                                          '[[input]]\npath = "a.pt"\nlabel = "lth"\nnormalization = "imagenet"\n')
    out = tmp_path / "s"
    compare(["--inputs", tmp_path / "inputs.toml", "--passes", "sparsity", "--dataset", "synthetic",
             "--sparsity-limit", "16", "--out", out], capsys)
    sparsity = open_study(out).load()["sparsity"].to_dataset()
    assert sparsity["normalization"].values.tolist() == ["synthetic", "imagenet"]
    assert sparsity["normalization_mean"].values[1] == "0.485, 0.456, 0.406"
    assert float(sparsity["pooled_zero_fraction"].sel(checkpoint="own")) != float(
        sparsity["pooled_zero_fraction"].sel(checkpoint="lth"))
    assert records(out)["lth"]["normalization"] == "imagenet" and ckpt.exists()
