"""`python -m train`'s options are derived from train.config.Config; `--config FILE.toml` sets the same fields."""

import pytest

from rfprobe.checkpoint import load_checkpoint
from train.__main__ import main
from train.config import TRAINING_FIELDS, Config, read_toml

TINY = ["cifar_resnet_8_4", "--dataset", "synthetic", "--limit", "128", "--test-limit", "64", "--batch-size", "64",
        "--eval-batch-size", "64", "--save-every", "0", "--no-progress", "--threads", "1", "--device", "cpu"]


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.err


def test_every_kind_of_option_reaches_the_config(tmp_path, capsys):
    out = tmp_path / "r"
    code, err = run([*TINY, "--mode", "bn", "--epochs", "2", "--milestones", "1", "--lr-factor", "0.5",
                     "--also", "shortcut", "--also", "output", "--no-augment", "--mean", "0.5,0.5,0.5",
                     "--std", "0.25,0.25,0.25", "--weight-decay", "0", "--out", out], capsys)
    assert code == 0, err
    recorded = load_checkpoint(out / "final.pt").hparams
    assert recorded["milestones"] == [1] and recorded["lr_factor"] == 0.5 and recorded["also"] == ["shortcut", "output"]
    assert recorded["augment"] is False and recorded["mean"] == [0.5] * 3 and recorded["std"] == [0.25] * 3
    assert recorded["weight_decay"] == 0 and recorded["epochs"] == 2 and recorded["limit"] == 128
    assert load_checkpoint(out / "final.pt").normalization.name == "custom"
    saved = read_toml(out / "config.toml")
    assert saved["also"] == ("shortcut", "output") and saved["milestones"] == (1,) and "resume" not in saved


def test_config_file_with_command_line_overrides(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('arch = "cifar_resnet_8_4"\nmode = "bn"\nepochs = 3\nlr = 0.05\n'
                                       'dataset = "synthetic"\nlimit = 128\ntest_limit = 64\nbatch_size = 64\n'
                                       'save_every = 0\nprogress = false\ndevice = "cpu"\n')
    out = tmp_path / "r"
    code, err = run(["--config", tmp_path / "run.toml", "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    recorded = load_checkpoint(out / "final.pt")
    assert recorded.epoch == 1 and recorded.mode == "bn" and recorded.hparams["lr"] == 0.05
    assert Config(**read_toml(out / "config.toml")).epochs == 1
    code, err = run(["--config", out / "config.toml", "--resume"], capsys)  # the stored config resumes the run
    assert code == 0 and "already complete" not in err


@pytest.mark.parametrize("text, message", [
    ('arch = "cifar_resnet_8"\nbatchsize = 3\n', "unknown setting(s) batchsize"),
    ('arch = "cifar_resnet_8"\nepochs = "ten"\n', "epochs must be int"),
    ('arch = "cifar_resnet_8"\nalso = "output"\n', "also must be a list"),
    ('arch = [1\n', "not valid TOML"),
    ('mode = "bn"\n', "no architecture given"),
])
def test_bad_config_files(tmp_path, capsys, text, message):
    (tmp_path / "bad.toml").write_text(text)
    code, err = run(["--config", tmp_path / "bad.toml", "--out", tmp_path / "r"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_training_fields_come_from_the_field_metadata():
    assert "normalization" in TRAINING_FIELDS and "seed" in TRAINING_FIELDS
    assert "device" not in TRAINING_FIELDS and "eval_every" not in TRAINING_FIELDS
    recorded = Config(arch="cifar_resnet_8", normalization="imagenet").hparams()
    assert Config(arch="cifar_resnet_8").differences(recorded) == [
        "--normalization imagenet (recorded) vs None (now)"]


def test_overwrite_deletes_only_the_runs_files(tmp_path, capsys):
    out = tmp_path / "r"
    assert run([*TINY, "--epochs", "1", "--out", out], capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    assert run([*TINY, "--epochs", "1", "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "final.pt").exists()
