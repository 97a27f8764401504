import pickle
import time

import numpy as np
import pytest
import torch

from rfprobe.data import batches, load_dataset, make_synthetic, make_toy2d, normalize
from rfprobe.errors import DataError, RfprobeError


def write_cifar10_both_formats(root, n_per_file=20, seed=0):
    """The same tiny arrays written in the python version (pickles) and the binary version (records)."""
    rng = np.random.default_rng(seed)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    (root / "py" / "cifar-10-batches-py").mkdir(parents=True)
    (root / "bin" / "cifar-10-batches-bin").mkdir(parents=True)
    arrays = {}
    for name in files:
        x = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=n_per_file)
        arrays[name] = (x, y)
        with open(root / "py" / "cifar-10-batches-py" / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [int(v) for v in y], b"batch_label": b"x"}, f)
        records = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        records.tofile(root / "bin" / "cifar-10-batches-bin" / f"{name}.bin")
    return arrays


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_python_and_binary_versions_load_identically(tmp_path, split):
    arrays = write_cifar10_both_formats(tmp_path)
    py = load_dataset("cifar10", split, root=tmp_path / "py")
    bn = load_dataset("cifar10", split, root=tmp_path / "bin")
    assert torch.equal(py.x, bn.x) and torch.equal(py.y, bn.y)
    first = arrays["data_batch_1" if split == "train" else "test_batch"]
    assert torch.equal(py.x[0].flatten(), torch.from_numpy(first[0][0]))
    assert py.x.dtype == torch.uint8 and py.x.shape[1:] == (3, 32, 32)
    assert len(py) == (100 if split == "train" else 20)


def test_cifar_root_from_environment(tmp_path, monkeypatch):
    write_cifar10_both_formats(tmp_path)
    monkeypatch.setenv("RFPROBE_DATA", str(tmp_path / "bin"))
    assert len(load_dataset("cifar10", "test")) == 20


def test_missing_root_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="cifar10 not found") as e:
        load_dataset("cifar10", "test", root=tmp_path / "nowhere")
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message and "--data-root" in message and "--download" in message


def test_truncated_binary_file(tmp_path):
    write_cifar10_both_formats(tmp_path)
    path = tmp_path / "bin" / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("cifar10", "test", root=tmp_path / "bin")


def test_python_version_pickle_with_code_is_refused(tmp_path):
    write_cifar10_both_formats(tmp_path)
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    with open(tmp_path / "py" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", "test", root=tmp_path / "py")
    assert not target.exists()


def test_download_fails_cleanly_offline(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", offline)
    with pytest.raises(DataError, match="downloading cifar10 .* failed"):
        load_dataset("cifar10", "test", root=tmp_path, download=True)


@pytest.mark.realdata
def test_real_cifar10(real_cifar10_root):
    train = load_dataset("cifar10", "train", root=real_cifar10_root)
    assert len(train) == 50_000
    assert torch.bincount(train.y).tolist() == [5000] * 10
    means = (train.x.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465]), atol=5e-5)
    test = load_dataset("cifar10", "test", root=real_cifar10_root, limit=100)
    assert len(test) == 100


def test_synthetic_is_deterministic_fast_and_balanced():
    start = time.perf_counter()
    x, y = make_synthetic(12_000, seed=3)
    assert time.perf_counter() - start < 10  # 60k in a few seconds; this bound is loose on purpose
    x2, y2 = make_synthetic(12_000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(make_synthetic(100, seed=4)[0], x[:100])
    assert x.dtype == torch.uint8 and x.shape == (12_000, 3, 32, 32)
    assert torch.bincount(y).tolist() == [1200] * 10
    test_x, _ = make_synthetic(100, seed=3, split="test")
    assert not torch.equal(test_x, x[:100])


def test_synthetic_classes_not_separable_by_mean_colour():
    """A nearest-class-mean classifier on the per-image mean colour stays near chance."""
    x, y = make_synthetic(10_000, seed=0)
    colour = x.float().mean(dim=(2, 3))
    centroids = torch.stack([colour[y == c].mean(0) for c in range(10)])
    tx, ty = make_synthetic(5_000, seed=0, split="test")
    tcolour = tx.float().mean(dim=(2, 3))
    accuracy = (torch.cdist(tcolour, centroids).argmin(1) == ty).float().mean().item()
    assert accuracy < 0.13


def test_synthetic_normalisation_constants_match_the_data():
    data = load_dataset("synthetic", "train", n=5000)
    x = data.x.float() / 255
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.tensor(data.mean), atol=0.01)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.tensor(data.std), atol=0.01)


@pytest.mark.parametrize("kind,classes", [("moons", 2), ("circles", 2), ("spirals", 2), ("blobs", 4)])
def test_toy2d(kind, classes):
    x, y = make_toy2d(kind, 400, noise=0.0, seed=1)
    assert x.shape == (400, 2) and x.dtype == torch.float32 and int(y.max()) + 1 == classes
    if kind == "circles":
        radius = x.norm(dim=1)
        assert torch.allclose(radius, torch.where(y == 0, 1.0, 0.5))
    if kind == "blobs":
        assert torch.allclose(x.abs(), torch.ones_like(x))
    data = load_dataset(f"toy2d:{kind}", "test", n=50)
    assert len(data) == 50 and data.name == f"toy2d:{kind}"


def test_limit_batches_order_and_normalisation():
    data = load_dataset("synthetic", "test", limit=70)
    assert len(data) == 70
    got = list(batches(data, 32))
    assert [len(b[1]) for b in got] == [32, 32, 6]
    x = torch.cat([b[0] for b in got])
    expected = (data.x.float() / 255 - 0.5) / 0.288
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in got]), data.y)
    shuffled = torch.cat([b[1] for b in batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == sorted(data.y.tolist())
    assert normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3).eq(1).all()


@pytest.mark.parametrize("name,split", [("imagenet", "test"), ("cifar10", "val")])
def test_unknown_dataset_or_split(name, split):
    with pytest.raises(RfprobeError, match="unknown"):
        load_dataset(name, split)


def write_cifar100_both_formats(root, n=30, seed=1):
    """CIFAR-100 in the python version (train/test pickles with fine and coarse labels, meta) and the binary one
    (records <coarse><fine><3072 pixels>, fine_label_names.txt); coarse labels differ from fine ones."""
    rng = np.random.default_rng(seed)
    (root / "py" / "cifar-100-python").mkdir(parents=True)
    (root / "bin" / "cifar-100-binary").mkdir(parents=True)
    names = [f"class{i:02d}" for i in range(100)]
    arrays = {}
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(20, 100, size=n)
        coarse = fine // 5
        arrays[split] = (x, fine)
        with open(root / "py" / "cifar-100-python" / split, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
                         b"filenames": [b"x"] * n}, f)
        records = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], x], axis=1)
        records.tofile(root / "bin" / "cifar-100-binary" / f"{split}.bin")
    with open(root / "py" / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20}, f)
    (root / "bin" / "cifar-100-binary" / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    return arrays, names


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_both_formats_give_the_fine_labels(tmp_path, split):
    arrays, names = write_cifar100_both_formats(tmp_path)
    x, fine = arrays[split]
    for version in ("py", "bin"):
        data = load_dataset("cifar100", split, root=tmp_path / version)
        assert data.y.tolist() == fine.tolist(), version
        assert torch.equal(data.x.reshape(len(data), -1), torch.from_numpy(x)), version
        assert len(data.classes) == 100 and data.classes == tuple(names), version
        assert data.normalization.name == "cifar100"
