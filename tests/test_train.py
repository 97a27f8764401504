"""The trainer's semantics: which elements each mode moves, BN statistics, augmentation, errors."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from rfprobe.checkpoint import load_checkpoint
from rfprobe.models import build_model
from rfprobe.graph import BN_TYPES
from rfprobe.trainable import apply, select
from train import Config, train
from train.__main__ import main
from train.augment import crop_flip, draw
from train.config import read_toml
from train.optim import MaskedSGD

TINY = dict(arch="cifar_resnet_8_4", dataset="synthetic", limit=256, test_limit=128, epochs=1, batch_size=64,
            eval_batch_size=128, save_every=0, progress=False, threads=1)
CASES = [("all", ()), ("bn", ()), ("bn+output", ()), ("output", ()), ("gamma", ()), ("beta", ()), ("random", ()),
         ("bn", ("shortcut",)), ("bn", ("output",))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per mode: {(mode, also): (init checkpoint, final checkpoint)}."""
    root = tmp_path_factory.mktemp("modes")
    done = {}
    for mode, also in CASES:
        out = train(Config(mode=mode, also=also, out=str(root / f"{mode}{''.join(also)}"), **TINY))
        done[mode, also] = load_checkpoint(out / "init.pt"), load_checkpoint(out / "final.pt")
    return done


def _running_stats(model):
    return {n: b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("mode,also", CASES)
def test_mode_moves_exactly_its_elements(runs, mode, also):
    init, final = runs[mode, also]
    plan = select(init.model, mode, also=also, masks=final.masks or None)
    before, after = dict(init.model.named_parameters()), dict(final.model.named_parameters())
    assert final.mode == mode and final.epoch == 1 and list(final.hparams["also"]) == list(also)
    for name, p0 in before.items():
        moved = after[name] != p0
        if name in plan.masks:
            assert torch.equal(moved, plan.masks[name]), name  # exactly the masked elements, no more, no fewer
        elif name in plan.tensors:
            assert moved.float().mean() > 0.9, name
        else:
            assert not moved.any(), f"{name} is frozen in mode {mode} but moved"
    for name, stat in _running_stats(final.model).items():  # forward in train mode updates them in every mode
        assert not torch.equal(stat, _running_stats(init.model)[name]), name


def test_also_output_is_bn_plus_output(runs):
    """`--mode bn --also output` trains what `--mode bn+output` trains: same seed, same data, same weights."""
    also, plus = runs["bn", ("output",)][1], runs["bn+output", ()][1]
    for (name, a), b in zip(also.model.state_dict().items(), plus.model.state_dict().values()):
        assert torch.equal(a, b), name
    fc = {n for n, _ in also.model.named_parameters() if n.startswith("fc.")}
    init = runs["bn", ("output",)][0]
    assert fc and all(not torch.equal(dict(also.model.named_parameters())[n], dict(init.model.named_parameters())[n]) for n in fc)


def test_bn_mode_trains_gamma_and_beta_only(runs):
    init, final = runs["bn", ()]
    bn = {n for n, m in init.model.named_modules() if isinstance(m, BN_TYPES)}
    for (name, p0), p1 in zip(init.model.named_parameters(), final.model.parameters()):
        if name.rpartition(".")[0] in bn:
            assert (p1 != p0).any(), name
        else:
            assert torch.equal(p1, p0), name


def test_random_mode_k_per_channel_and_masks_stored(runs):
    init, final = runs["random", ()]
    assert final.masks and set(final.masks) == {n for n, p in init.model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    for name, mask in final.masks.items():
        assert mask.flatten(1).sum(1).eq(2).all(), name
        p0, p1 = init.model.get_parameter(name), final.model.get_parameter(name)
        assert (p1 != p0).flatten(1).sum(1).eq(2).all(), name


def test_output_mode_changes_only_fc(runs):
    init, final = runs["output", ()]
    changed = {n for (n, p0), p1 in zip(init.model.named_parameters(), final.model.parameters()) if not torch.equal(p0, p1)}
    assert changed == {"fc.weight", "fc.bias"}


def test_masked_sgd_never_moves_frozen_elements():
    """Weight decay and momentum with per-element masks: frozen elements and their momentum stay exactly 0-moved."""
    model = build_model("cifar_resnet_8_4", seed=1)
    plan = select(model, "random", k=3, generator=torch.Generator().manual_seed(0))
    apply(model, plan)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = MaskedSGD(model, plan, lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(3):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.randn_like(p) if step < 2 else torch.zeros_like(p)  # last step: decay + momentum only
        opt.step()
    for name, p in model.named_parameters():
        mask = plan.element_mask(name, p)
        assert torch.equal(p.detach()[~mask], start[name][~mask]), name
        assert (p.detach()[mask] != start[name][mask]).all(), name
        if p in opt.sgd.state:
            buf = opt.sgd.state[p]["momentum_buffer"]
            assert buf[~mask].eq(0).all() and buf[mask].ne(0).all(), name


def test_masked_sgd_equals_sgd_on_trained_elements():
    """On the trainable elements, masked SGD is plain SGD with weight decay (g + wd * w, then momentum)."""
    torch.manual_seed(0)
    w = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True
    model = torch.nn.Linear(6, 4, bias=False)
    model.weight.data.copy_(w)
    from rfprobe.trainable import Trainable
    opt = MaskedSGD(model, Trainable("random", ("weight",), {"weight": mask}), lr=0.1, momentum=0.9, weight_decay=0.01)
    ref = w.clone().requires_grad_()
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(4, 6)
        model.weight.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(model.weight.detach()[mask], ref.detach()[mask])
    assert torch.equal(model.weight.detach()[~mask], w[~mask])


def test_none_mode_writes_untrained_init_and_final(tmp_path):
    out = train(Config(mode="none", out=str(tmp_path / "none"), **TINY))
    init, final = load_checkpoint(out / "init.pt"), load_checkpoint(out / "final.pt")
    assert final.epoch == 0 and 0.0 <= final.metrics["test_acc"] <= 0.3
    assert all(torch.equal(a, b) for a, b in zip(init.model.state_dict().values(), final.model.state_dict().values()))


def test_run_directory_files_and_metrics(tmp_path):
    out = train(Config(mode="bn", out=str(tmp_path / "r"), **{**TINY, "epochs": 3, "save_every": 2, "eval_every": 2}))
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "epoch_002.pt", "final.pt", "init.pt", "metrics.jsonl"]
    assert Config(**read_toml(out / "config.toml")) == Config(mode="bn", out=str(tmp_path / "r"),
                                                             **{**TINY, "epochs": 3, "save_every": 2, "eval_every": 2})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r["test_acc"] is None for r in rows] == [False, True, False, False]  # init, every 2nd, and the last
    assert [r["lr"] for r in rows[1:]] == pytest.approx([0.1, 0.1, 0.001])  # milestones 80,120 of 160 scaled to 2,2
    assert all(r["train_images"] == 256 and r["images_per_s"] > 0 for r in rows[1:])
    final = load_checkpoint(out / "final.pt")
    assert final.metrics["test_acc"] == rows[-1]["test_acc"] and final.hparams["mode"] == "bn"
    raw = torch.load(out / "final.pt", weights_only=True)
    assert raw["bn_init"] == "uniform" and raw["seed"] == 0 and raw["dataset"] == "synthetic"


def test_milestones_scale_with_epochs():
    assert Config(arch="a").milestones == (80, 120)
    assert Config(arch="a", epochs=16).milestones == (8, 12)
    assert Config(arch="a", epochs=16, milestones=(3,)).milestones == (3,)
    c = Config(arch="a", epochs=160)
    assert [c.lr_at(e) for e in (0, 79, 80, 119, 120)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_augmentation_matches_torchvision_per_image():
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    top, left, flip = draw(40, torch.Generator().manual_seed(3))
    assert set(top.tolist()) <= set(range(9)) and len(set(top.tolist())) > 4 and 5 < int(flip.sum()) < 35
    batch = crop_flip(x, top, left, flip)
    for k in range(40):
        ref = TF.crop(TF.pad(x[k], [4]), int(top[k]), int(left[k]), 32, 32)
        assert torch.equal(batch[k], TF.hflip(ref) if flip[k] else ref), k


def test_bn_only_skips_frozen_weight_gradients():
    """Frozen convs get no weight gradient at all (that is where BN-only saves time)."""
    model = build_model("cifar_resnet_8_4", seed=0)
    apply(model, select(model, "bn"))
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("argv,message", [
    (["cifar_resnet_8", "--mode", "bogus"], "unknown mode 'bogus'"),
    (["cifar_resnet_7", "--dataset", "synthetic", "--limit", "64"], "cifar_resnet_7"),
    (["cifar_resnet_8", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["mlp_2x8", "--dataset", "synthetic", "--limit", "64"], "takes inputs of shape (2,)"),
    (["cifar_resnet_8", "--dataset", "synthetic", "--limit", "10"], "fewer than one batch"),
    (["cifar_resnet_8", "--bn-init", "zero"], "unknown --bn-init 'zero'"),
    (["cifar_resnet_8", "--also", "everything"], "unknown --also 'everything'"),
])
def test_bad_input_one_line_exit_2(argv, message, capsys, tmp_path, cli_error):
    assert message in cli_error(main, [*argv, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_resume_from_init_only_equals_a_fresh_run(tmp_path):
    """A run that died after writing init.pt (nothing else) resumes from it and ends where an uninterrupted run ends."""
    settings = {**TINY, "epochs": 2, "mode": "bn"}
    reference = train(Config(out=str(tmp_path / "ref"), **settings))
    out = tmp_path / "died"
    out.mkdir()
    shutil.copy(reference / "init.pt", out / "init.pt")
    resumed = train(Config(out=str(out), resume=True, **settings))
    a, b = load_checkpoint(reference / "final.pt"), load_checkpoint(resumed / "final.pt")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs after resuming from init.pt"
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_existing_run_directory_refused(tmp_path, capsys, cli_error):
    args = ["cifar_resnet_8_4", "--dataset", "synthetic", "--limit", "64", "--test-limit", "64", "--batch-size", "32",
            "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as ok:
        main(args)
    assert ok.value.code == 0
    before = (tmp_path / "run" / "final.pt").read_bytes()
    assert "exists; pass --resume" in cli_error(main, args)
    assert "--lr 0.1 (recorded) vs 0.2 (now)" in cli_error(main, [*args, "--resume", "--lr", "0.2"])
    assert (tmp_path / "run" / "final.pt").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert "not empty and holds no run" in cli_error(main, [*args[:-1], str(tmp_path / "other"), "--overwrite"])
    with pytest.raises(SystemExit) as again:
        main([*args, "--resume"])
    assert again.value.code == 0 and "already complete" in capsys.readouterr().out


def test_any_registry_model_trains_in_all_mode_and_bn_modes_need_bn(tmp_path, capsys, cli_error):
    out = train(Config(mode="all", out=str(tmp_path / "nf"), **{**TINY, "arch": "nf_resnet_8_4"}))
    init, final = load_checkpoint(out / "init.pt"), load_checkpoint(out / "final.pt")
    assert all(not torch.equal(a, b) for a, b in zip(init.model.parameters(), final.model.parameters()))
    err = cli_error(main, ["nf_resnet_8_4", "--mode", "bn", "--dataset", "synthetic", "--limit", "64", "--out", str(tmp_path / "x")])
    assert "has no BatchNorm" in err


def test_points_dataset_trains_without_augmentation(tmp_path):
    """2-D toy points (float, not images) train an MLP; augmentation applies to images only."""
    out = train(Config(arch="mlp_2x16", mode="all", dataset="toy2d:blobs", epochs=3, batch_size=50, lr=0.05,
                       save_every=0, progress=False, threads=1, out=str(tmp_path / "mlp")))
    assert load_checkpoint(out / "final.pt").metrics["test_acc"] > 0.9  # four well separated blobs


def test_skip_init_gain_sets_the_nf_skip_gain_and_is_recorded(tmp_path, capsys, cli_error):
    out = train(Config(mode="all", out=str(tmp_path / "nf"), skip_init_gain=1.0, **{**TINY, "arch": "nf_resnet_8_4"}))
    init = load_checkpoint(out / "init.pt")
    gains = [v for k, v in init.model.state_dict().items() if k.endswith("skip_gain")]
    assert gains and all(float(g) == 1.0 for g in gains)
    assert init.hparams["skip_init_gain"] == 1.0
    default = build_model("nf_resnet_8_4")
    assert all(float(v) == 0.0 for k, v in default.state_dict().items() if k.endswith("skip_gain"))
    err = cli_error(main, ["cifar_resnet_8_4", "--skip-init-gain", "1", "--dataset", "synthetic", "--out", str(tmp_path / "x")])
    assert "cifar_resnet_8_4 does not use --skip-init-gain (it takes bn_init)" in err
    err = cli_error(main, ["nf_resnet_8_4", "--bn-init", "fixed", "--dataset", "synthetic", "--out", str(tmp_path / "x")])
    assert "nf_resnet_8_4 does not use --bn-init (it takes skip_init_gain, dropout)" in err
    assert Config(arch="nf_resnet_8_4").bn_init is None and Config(arch="cifar_resnet_8").bn_init == "uniform"


def test_evaluation_reports_top5_accuracy_as_counted_by_hand():
    """test_top5: the fraction of examples whose label is among the 5 largest logits (here the inputs themselves,
    through an identity model), against a count with numpy's argsort."""
    from rfprobe.data import Data
    from rfprobe.normalization import PRESETS
    from train.distributed import Context
    from train.loop import evaluate

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=g)
    labels = torch.randint(0, 12, (300,), generator=g)
    data = Data("points", "test", logits, labels, tuple(map(str, range(12))), PRESETS["none"], "test")
    got = evaluate(torch.nn.Identity(), data, Context(0, 1, torch.device("cpu")), batch_size=64, amp=False)
    top5 = (logits.numpy().argsort(1)[:, -5:] == labels.numpy()[:, None]).any(1).mean()
    assert got["test_top5"] == pytest.approx(top5, abs=1e-12) and 0 < got["test_acc"] < got["test_top5"] < 1
