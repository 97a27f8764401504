"""`python -m train ARCH --mode MODE --dataset cifar10 --out runs/NAME`: the command line of the trainer.

Defaults are the paper's recipe (see train/config.py). Bad input prints one line on stderr and exits
with 2; `--debug` shows tracebacks. Under `torchrun --nproc_per_node N` it trains data-parallel.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rfprobe.entrypoint import run_app
from rfprobe.errors import RfprobeError
from rfprobe.normalization import parse_values
from train.config import RECIPE_EPOCHS, RECIPE_MILESTONES, Config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _milestones(text: Optional[str]) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise RfprobeError(f"--milestones takes comma-separated epochs like 80,120, got {text!r}") from None


@app.command(no_args_is_help=True)
def command(
    arch: Annotated[str, typer.Argument(help="architecture, e.g. cifar_resnet_20, cifar_resnet_14_64, cifar_vgg_16, mlp_3x64")],
    mode: Annotated[str, typer.Option(help="all, bn, bn+output, output, none, gamma, beta, random")] = "all",
    dataset: Annotated[str, typer.Option(help="cifar10, cifar100, synthetic, toy2d[:kind]")] = "cifar10",
    data_root: Annotated[Optional[str], typer.Option(help="data directory (default $RFPROBE_DATA, else ~/.cache/rfprobe)")] = None,
    download: Annotated[bool, typer.Option(help="download CIFAR through torchvision if missing")] = False,
    out: Annotated[Optional[str], typer.Option(help="run directory (default runs/<arch>_<mode>_<dataset>_s<seed>)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="train on the first N training examples")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="evaluate on the first N test examples")] = None,
    epochs: Annotated[int, typer.Option(help="epochs")] = RECIPE_EPOCHS,
    batch_size: Annotated[int, typer.Option(help="global batch size (split over processes)")] = 128,
    eval_batch_size: Annotated[int, typer.Option(help="batch size of evaluation")] = 500,
    lr: Annotated[float, typer.Option(help="initial learning rate")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="weight decay on the trainable elements only")] = 1e-4,
    milestones: Annotated[Optional[str], typer.Option(
        help=f"epochs at which lr *= lr-factor (default {','.join(map(str, RECIPE_MILESTONES))} scaled by epochs/{RECIPE_EPOCHS})")] = None,
    lr_factor: Annotated[float, typer.Option(help="lr multiplier at each milestone")] = 0.1,
    augment: Annotated[bool, typer.Option(help="random crop (4-pixel padding) + horizontal flip")] = True,
    seed: Annotated[int, typer.Option(help="seed of the initialisation, masks, shuffling and augmentation")] = 0,
    bn_init: Annotated[str, typer.Option(help="uniform, fixed, oneone, positivenegative")] = "uniform",
    random_k: Annotated[int, typer.Option(help="random mode: trainable weights per output channel")] = 2,
    also: Annotated[Optional[list[str]], typer.Option(help="also train: shortcut (the 1x1 shortcut convs), output")] = None,
    skip_init_gain: Annotated[Optional[float], typer.Option(help="nf_* nets: initial skip gain (default 0, SkipInit)")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="nf_* nets: dropout rate before the classifier (default none)")] = None,
    normalization: Annotated[Optional[str], typer.Option(
        help="input normalisation preset: cifar10, cifar100, imagenet (OpenLTH's for CIFAR), kuangliu, half, synthetic, "
             "none (default: the dataset's own)")] = None,
    mean: Annotated[Optional[str], typer.Option(help="per-channel input mean, e.g. 0.485,0.456,0.406 (with --std; instead of --normalization)")] = None,
    std: Annotated[Optional[str], typer.Option(help="per-channel input std, e.g. 0.229,0.224,0.225 (with --mean)")] = None,
    eval_every: Annotated[int, typer.Option(help="evaluate every N epochs (and at the end); 0: never")] = 1,
    save_every: Annotated[int, typer.Option(help="write epoch_XXX.pt every N epochs; 0: never")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA")] = True,
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format (faster on CUDA and on CPU)")] = True,
    compile: Annotated[bool, typer.Option(help="torch.compile the model")] = False,
    sync_bn: Annotated[bool, typer.Option(help="with several processes: BN statistics over the global batch")] = False,
    deterministic: Annotated[bool, typer.Option(help="torch.use_deterministic_algorithms (slower on CUDA)")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads per process")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete the run in --out and start again")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar per epoch (on a terminal)")] = True,
) -> None:
    """Train ARCH in a trainable mode and write init.pt, epoch_XXX.pt, final.pt and metrics.jsonl."""
    from train.run import train

    train(Config(arch=arch, mode=mode, dataset=dataset, data_root=data_root, download=download, out=out, limit=limit,
                 test_limit=test_limit, epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, lr=lr,
                 momentum=momentum, weight_decay=weight_decay, milestones=_milestones(milestones), lr_factor=lr_factor,
                 augment=augment, seed=seed, bn_init=bn_init, random_k=random_k, also=tuple(also or ()),
                 skip_init_gain=skip_init_gain, dropout=dropout, normalization=normalization,
                 mean=mean and parse_values(mean, "--mean"), std=std and parse_values(std, "--std"),
                 eval_every=eval_every, save_every=save_every, device=device, amp=amp, channels_last=channels_last,
                 compile=compile, sync_bn=sync_bn, deterministic=deterministic, threads=threads, resume=resume,
                 overwrite=overwrite, progress=progress))


def main(argv: list[str] | None = None) -> None:
    """Run the command; bad input -> one stderr line, exit 2; other failures -> one line, exit 1."""
    run_app(app, "python -m train", argv, interrupted="interrupted (continue with --resume)")


if __name__ == "__main__":
    main()
