import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
REAL_CIFAR10 = Path(os.environ.get("RFPROBE_REAL_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))


@pytest.fixture
def real_cifar10_root():
    if not (REAL_CIFAR10 / "cifar-10-batches-bin").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {REAL_CIFAR10}")
    return REAL_CIFAR10


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (then restore): tiny models gain nothing from threads, and on a
    shared, oversubscribed CPU OpenMP's spinning threads make them 10-30x slower.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test starts from the same global torch RNG state, so a bare torch.randn in a test is reproducible."""
    torch.manual_seed(0)


@pytest.fixture
def cli_error(capsys):
    """`cli_error(main, args)`: run an entry point (rfprobe.cli.main or train.__main__.main) that must refuse
    `args` as bad input; assert exit code 2 and exactly one stderr line without a traceback; return that line."""

    def run(main, args):
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, err
        return err.strip()

    return run


def kill_when(args, ready, timeout: float = 120.0) -> None:
    """Start `args` (in the repository), SIGKILL it as soon as `ready()` is true, and check it really died by
    the signal (so the test exercises an interrupted run, not a finished one)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]


def assert_within_ulps(actual, expected, ulps: float) -> None:
    """|actual - expected| <= ulps * eps * max|expected|, elementwise (eps of the dtype, scale the largest
    magnitude): for results that take different kernel paths (MKL and oneDNN pick them per CPU), equal up to
    the order of their sums, so only a few roundings apart."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    bound = ulps * torch.finfo(expected.dtype).eps * scale
    worst = (actual - expected).abs().max()
    assert worst <= bound, f"differ by {float(worst / (torch.finfo(expected.dtype).eps * scale)):.1f} ulps of the scale (allowed {ulps})"
