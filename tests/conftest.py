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
