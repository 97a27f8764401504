"""Data-parallel plumbing: the process group from torchrun's environment, shards, reductions, sync BN.

Launched under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) each rank trains on its shard of every
global batch with DistributedDataParallel (gloo on CPU, nccl on CUDA); otherwise everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn

from rfprobe.data import resolve_device
from rfprobe.errors import RfprobeError
from rfprobe.graph import BN_TYPES


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Context:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device)
    if world == 1:
        return Context(0, 1, chosen)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank, world, chosen)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


def sum_all(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `tensor` over ranks (in place)."""
    if ctx.world > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(ctx: Context, model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank, so all ranks hold the saved model."""
    if ctx.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch across ranks, on any backend
    (torch's SyncBatchNorm needs CUDA). mean = sum_r S1_r / n, var = sum_r sum (x - mean)^2 / n over the
    n = sum_r n_r values per channel; the running variance gets the unbiased var * n / (n - 1), as in
    `F.batch_norm`. The reductions are autograd-aware, so gradients match single-process training."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = dist_fn.all_reduce(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1), factor)
        return out


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BN for torch's SyncBatchNorm (CUDA) or GroupBatchNorm (any device), keeping the same
    parameter and buffer objects, so names, requires_grad and state dict keys are unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, BN_TYPES):
        new = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


def check_batch(ctx: Context, batch_size: int) -> int:
    """Examples per rank per step; the global batch must split evenly."""
    if batch_size % ctx.world:
        raise RfprobeError(f"--batch-size {batch_size} does not split evenly over {ctx.world} processes")
    return batch_size // ctx.world
