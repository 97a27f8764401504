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
