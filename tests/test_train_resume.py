"""Killing the trainer (SIGKILL) and rerunning with --resume ends with the same weights as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from rfprobe.checkpoint import load_checkpoint
from train import Config, train

RUN = dict(arch="cifar_resnet_8_4", mode="random", dataset="synthetic", limit=256, test_limit=64, batch_size=32,
           epochs=3, save_every=0, threads=1, progress=False, random_k=3)
ARGV = ["cifar_resnet_8_4", "--mode", "random", "--random-k", "3", "--dataset", "synthetic", "--limit", "256",
        "--test-limit", "64", "--batch-size", "32", "--epochs", "3", "--save-every", "0", "--threads", "1", "--no-progress"]


def _rows(out):
    timing = ("seconds", "images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    reference = train(Config(out=str(tmp_path / "reference"), **RUN))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "train", *ARGV, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (out / "final.pt").exists()  # it really died mid-run
    killed_at = load_checkpoint(out / "last.pt").epoch
    assert 1 <= killed_at < 3

    resumed = train(Config(out=str(out), resume=True, **RUN))
    a, b = load_checkpoint(reference / "final.pt"), load_checkpoint(resumed / "final.pt")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs after resume"  # bitwise: the CPU kernels are deterministic here
    assert _rows(reference) == _rows(resumed)
    assert sorted(p.name for p in resumed.iterdir()) == ["config.toml", "final.pt", "init.pt", "metrics.jsonl"]
