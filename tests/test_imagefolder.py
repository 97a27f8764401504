"""Image folders streamed through DataLoader workers: against an independent loop over the same files through
torchvision's ImageFolder and transforms, against the same pass on the decoded tensors held in memory, with a
file that will not decode and one that is not an image at all."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from typer.testing import CliRunner

from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import app, main
from rfprobe.data import load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.imagefolder import resolve_transform
from rfprobe.loading import DataOptions
from rfprobe.models import build_model
from rfprobe.passes import sparsity
from rfprobe.results import open_result

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 10
PER_CLASS = 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 images in 10 class folders (JPEG and PNG; RGB, greyscale, RGBA, palette and CMYK; 20 to 80 pixels a
    side) and one truncated JPEG, whose header is a JPEG's but whose body ends early."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir()
        for i in range(PER_CLASS):
            h, w = rng.integers(20, 81, 2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 2
            image = Image.fromarray(pixels)
            kind = (c + i) % 6
            if kind == 0:
                image.save(root / f"class_{c}" / f"{i}.jpg", quality=90)
            elif kind == 1:
                image.convert("L").save(root / f"class_{c}" / f"{i}.jpeg")
            elif kind == 2:
                image.convert("RGBA").save(root / f"class_{c}" / f"{i}.png")
            elif kind == 3:
                image.convert("P").save(root / f"class_{c}" / f"{i}.png")
            elif kind == 4:
                image.convert("CMYK").save(root / f"class_{c}" / f"{i}.jpg")
            else:
                image.convert("L").save(root / f"class_{c}" / f"{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (root / "class_3" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    return root


class SmallNet(nn.Module):
    """conv-BN-ReLU, conv-ReLU, pooled, linear, on 3 x 32 x 32 (so its transform is resize 37, crop 32)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, CLASSES)
        self.rfprobe_input_shape = (3, 32, 32)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        net.features[1].bias.uniform_(-0.3, 0.3)
    return net.eval()


def streamed(folder, model, workers=0):
    options = DataOptions(dataset="imagefolder", root=str(folder), workers=workers)
    return options.for_checkpoint(None, options.load(), model=model)


def reference_zero_fractions(folder, model) -> list[np.ndarray]:
    """Per ReLU module and channel, the fraction of zero outputs over every image and position, by torchvision's
    ImageFolder with Resize(37) + CenterCrop(32) + ToTensor + Normalize(ImageNet's), one image at a time."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(37), transforms.CenterCrop(32), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    images = datasets.ImageFolder(str(folder))
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    zeros, counts = [0.0] * len(relus), [0] * len(relus)
    outputs = {}
    handles = [r.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)) for i, r in enumerate(relus)]
    try:
        with torch.no_grad():
            for path, _ in images.samples:
                try:
                    x = transform(Image.open(path).convert("RGB"))
                except OSError:
                    continue
                model(x[None])
                for i in range(len(relus)):
                    zeros[i] = zeros[i] + (outputs[i][0] == 0).double().sum((1, 2)).numpy()
                    counts[i] += outputs[i][0, 0].numel()
    finally:
        for handle in handles:
            handle.remove()
    return [z / c for z, c in zip(zeros, counts)]


def test_transform_is_the_models_own_else_its_input_size(model):
    assert resolve_transform(model).describe() == "resize 37 (bilinear), centre crop 32 (model input size)"
    assert resolve_transform(model, image_size=48).describe() == "resize 55 (bilinear), centre crop 48 (options)"
    tv = build_model("torchvision:resnet18", 10)
    assert (resolve_transform(tv).resize, resolve_transform(tv).crop) == (256, 224)
    small = build_model("torchvision:resnet18", 10, input_shape=(3, 64, 64))
    assert (resolve_transform(small).resize, resolve_transform(small).crop) == (73, 64)


def test_sparsity_on_a_streamed_folder_equals_an_independent_loop(folder, model, capsys):
    data = streamed(folder, model, workers=2)
    assert len(data) == CLASSES * PER_CLASS + 1 and data.streamed
    ds = sparsity.run(model, data, batch_size=64)
    err = capsys.readouterr().err
    assert err.count("truncated.jpg") == 1 and "skipped" in err
    want = reference_zero_fractions(folder, model)
    for i, expected in enumerate(want):
        got = ds["zero_fraction"].values[i, :len(expected)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert ds.attrs["undecodable_files"] == 1 and "truncated.jpg" in ds.attrs["undecodable_file_names"]
    assert ds.attrs["image_folder_images"] == CLASSES * PER_CLASS + 1 and ds.attrs["image_folder_classes"] == CLASSES
    assert ds.attrs["normalization"] == "imagenet" and "centre crop 32" in ds.attrs["image_transform"]


def test_streamed_pass_equals_the_pass_on_the_decoded_tensors_in_memory(folder, model):
    data = streamed(folder, model, workers=0)
    in_memory = data.materialized()
    assert not in_memory.streamed and len(in_memory) == CLASSES * PER_CLASS
    a = sparsity.run(model, data, batch_size=32)
    b = sparsity.run(model, in_memory, batch_size=32)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_bad_folders_are_refused_in_one_line_before_any_work(folder, tmp_path, monkeypatch):
    monkeypatch.delenv("RFPROBE_DATA", raising=False)
    with pytest.raises(RfprobeError, match="needs --data-root"):
        DataOptions(dataset="imagefolder")
    with pytest.raises(RfprobeError, match="--image-size and --resize apply to --dataset imagefolder"):
        DataOptions(dataset="cifar10", image_size=64)
    with pytest.raises(RfprobeError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RfprobeError, match="no class sub-folders"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    copy = tmp_path / "copy"
    shutil.copytree(folder / "class_0", copy / "class_0")
    (copy / "class_0" / "notes.jpg").write_text("<html>not an image</html>")
    with pytest.raises(RfprobeError, match=r"notes\.jpg has no image header .*: not an image"):
        load_dataset("imagefolder", root=copy)


def test_cli_sparsity_on_an_image_folder(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RFPROBE_DATA", raising=False)
    ckpt = tmp_path / "r8.pt"
    save_checkpoint(ckpt, build_model("cifar_resnet_8", seed=0), dataset="cifar10")
    out = tmp_path / "sparsity.zarr"
    result = CliRunner().invoke(app, ["sparsity", str(ckpt), "--dataset", "imagefolder", "--data-root", str(folder),
                                      "--workers", "2", "--limit", "50", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    attrs = open_result(out).attrs
    assert attrs["dataset"] == "imagefolder" and attrs["image_folder_images"] == 50 and attrs["n_examples"] == 50
    assert attrs["image_folder"] == str(folder.resolve()) and attrs["undecodable_files"] == 0
    for extra, words in (([], "needs --data-root"), (["--data-root", str(folder), "--workers", "-1"], "--workers")):
        with pytest.raises(SystemExit) as exit_info:
            main(["sparsity", str(ckpt), "--dataset", "imagefolder", *extra, "--out", str(tmp_path / "x.zarr")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1, err
        assert words in err
    assert not (tmp_path / "x.zarr").exists()


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """DIR/train (4 classes x 24 images and a truncated JPEG) and DIR/val (4 x 6), JPEG and PNG, 24 to 60 px."""
    root = tmp_path_factory.mktemp("splits")
    rng = np.random.default_rng(1)
    for split, count in (("train", 24), ("val", 6)):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(24, 61, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] = pixels[..., c % 3] // 4 + 160
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.{'png' if i % 3 else 'jpg'}")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (root / "train" / "c1" / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    return root


def test_trainer_on_an_image_folder_resumes_bitwise(split_folder, tmp_path, monkeypatch, capsys):
    """Two epochs on DIR/train (RandomResizedCrop + flip decoded by 2 workers), evaluated on DIR/val; a run
    interrupted after its first epoch and resumed with decoding in the main process ends bitwise where the
    uninterrupted one ends: each image's crop and flip are drawn from (seed, epoch, index), not from a worker."""
    import train.run
    from rfprobe.checkpoint import load_checkpoint
    from train import Config

    run = dict(arch="cifar_resnet_8_4", dataset="imagefolder", data_root=str(split_folder), epochs=2, batch_size=16,
               lr=0.05, save_every=0, threads=1, progress=False)
    reference = train.run.train(Config(out=str(tmp_path / "reference"), workers=2, **run))
    err = capsys.readouterr().err
    assert err.count("truncated.jpg") == 2, err  # once per epoch
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all(r["test_acc"] is not None for r in rows)
    # 6 full batches of 16 drawn from 97 files; the truncated one was drawn (and dropped) in both epochs
    assert [r["train_images"] for r in rows[1:]] == [95, 95]
    assert rows[1]["lr"] == pytest.approx(0.05 / 5)  # the imagenet recipe's warm-up (5 epochs)

    real_save = train.run.save_checkpoint

    def save_then_die(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train.run, "save_checkpoint", save_then_die)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train.run.train(Config(out=str(out), workers=0, **run))
    monkeypatch.setattr(train.run, "save_checkpoint", real_save)
    assert load_checkpoint(out / "last.pt").epoch == 1 and not (out / "final.pt").exists()
    resumed = train.run.train(Config(out=str(out), workers=0, resume=True, **run))
    a, b = load_checkpoint(reference / "final.pt"), load_checkpoint(resumed / "final.pt")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs after resume"
    timing = ("seconds", "images_per_s")
    strip = [{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_trainer_refuses_a_folder_without_splits(folder, tmp_path, monkeypatch):
    from train import Config
    from train.run import train

    with pytest.raises(RfprobeError, match="training needs DIR/train and DIR/val"):
        train(Config(arch="cifar_resnet_8_4", dataset="imagefolder", data_root=str(folder), epochs=1,
                     out=str(tmp_path / "run"), progress=False))
    monkeypatch.delenv("RFPROBE_DATA", raising=False)
    with pytest.raises(RfprobeError, match=r"needs --data-root DIR \(or \$RFPROBE_DATA\)"):
        train(Config(arch="cifar_resnet_8_4", dataset="imagefolder", epochs=1, out=str(tmp_path / "run2"),
                      progress=False))
    assert not (tmp_path / "run2").exists()


def test_compare_streams_an_image_folder_in_parallel_jobs(folder, tmp_path):
    """`rfprobe compare` over two checkpoints with --jobs 2: each job process streams the folder through its own
    DataLoader worker; each checkpoint's store equals the pass run alone on it."""
    from rfprobe import open_study

    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"r8-{seed}.pt")
        save_checkpoint(paths[-1], build_model("cifar_resnet_8", seed=seed), dataset="cifar10")
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["compare", *map(str, paths), "--passes", "sparsity", "--dataset", "imagefolder",
                                      "--data-root", str(folder), "--workers", "1", "--jobs", "2", "--limit", "60",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stored = open_study(out).load()["sparsity"].ds
    assert stored.sizes["checkpoint"] == 2
    alone = sparsity.run(load_model(paths[1]), streamed_limited(folder, paths[1], 60), batch_size=500)
    np.testing.assert_array_equal(stored["zero_fraction"].isel(checkpoint=1).values, alone["zero_fraction"].values)
    assert stored.attrs["image_folder_images"] == 60 and stored.attrs["image_folder"] == str(folder.resolve())


def load_model(path):
    from rfprobe.checkpoint import load_checkpoint

    return load_checkpoint(path).model.eval()


def streamed_limited(folder, path, limit):
    from rfprobe.checkpoint import load_checkpoint

    options = DataOptions(dataset="imagefolder", root=str(folder), limit=limit, workers=0)
    return options.for_checkpoint(load_checkpoint(path), options.load())


def test_imagenet_layout_names_classes_from_torchvisions_meta_and_refuses_archives(folder, tmp_path, monkeypatch):
    """DIR/val/<wnid>/ with torchvision's parsed devkit DIR/meta.bin gives ImageNet's class names; a DIR that
    holds only the archives is refused in one line naming how to unpack them."""
    monkeypatch.delenv("RFPROBE_DATA", raising=False)
    root = tmp_path / "imagenet"
    for wnid, source in (("n01440764", "class_0"), ("n01443537", "class_1")):
        shutil.copytree(folder / source, root / "val" / wnid)
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish", "Carassius auratus")}, []),
               root / "meta.bin")
    data = load_dataset("imagefolder", "test", root=root)
    assert data.classes == ("tench", "goldfish") and len(data) == 2 * PER_CLASS
    assert data.source.endswith("val")
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(RfprobeError, match="holds ImageNet's archives, not its images"):
        load_dataset("imagefolder", "test", root=archives)


@pytest.mark.slow
def test_torchrun_two_processes_on_an_image_folder_equal_one(split_folder, tmp_path):
    """DDP on an image folder (2 CPU processes, gloo, --sync-bn, NCHW: see test_train_ddp for the tolerance): each
    rank streams its slice of every global batch, and the weights equal one process's on the same global batches."""
    import subprocess
    import sys

    from rfprobe.checkpoint import load_checkpoint
    from train import Config
    from train.run import train

    clean = tmp_path / "folder"
    shutil.copytree(split_folder, clean)
    (clean / "train" / "c1" / "truncated.jpg").unlink()  # a dropped image would make the ranks' batches uneven
    argv = ["cifar_resnet_8_4", "--mode", "all", "--dataset", "imagefolder", "--data-root", str(clean), "--workers",
            "1", "--batch-size", "16", "--epochs", "1", "--lr", "0.05", "--save-every", "0", "--threads", "1",
            "--no-progress", "--sync-bn", "--no-channels-last"]
    out = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "train", *argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train(Config(arch="cifar_resnet_8_4", mode="all", dataset="imagefolder", data_root=str(clean), workers=0,
                          batch_size=16, epochs=1, lr=0.05, save_every=0, threads=1, progress=False, sync_bn=True,
                          channels_last=False, out=str(tmp_path / "single")))
    a, b = load_checkpoint(single / "final.pt"), load_checkpoint(out / "final.pt")
    assert b.hparams["world_size"] == 2 and b.metrics["test_acc"] == pytest.approx(a.metrics["test_acc"], abs=1 / 24)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(y, x, rtol=0, atol=2e-3, msg=name)
        else:
            assert torch.equal(x, y), name
