"""One code path for one process and for ``torchrun`` (DistributedDataParallel).

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them everything here is a no-op. PyTorch's
SyncBatchNorm only runs on accelerators, so on CPU (gloo) BatchNorm layers are replaced by
``SyncBatchNorm2d`` below, which all-reduces the per-channel sums with autograd support: the
statistics, and so the gradients, are those of the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from . import device as devices


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    control: object = None  # the group for small host-side values (gloo; None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Initialise the process group when launched by torchrun; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else None
    chosen = devices.resolve(device, local_rank)  # before the process group: every process refuses alike
    cuda = chosen.type == "cuda"
    if cuda and chosen.index is not None:
        torch.cuda.set_device(chosen)
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return Context(dist.get_rank(), world_size, chosen, control)
    return Context(0, 1, chosen)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(t)
    return t


def max_over_processes(value: int, ctx: Context) -> int:
    """The largest of one small integer over all processes, reduced on the CPU (gloo), so a check
    at every step waits for no GPU work."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control)
    return int(t.item())


def gather_objects(obj, ctx: Context) -> list:
    """Every process's ``obj`` (picklable, on the CPU), in rank order, on every process."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.control)
    return out


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch on any device (PyTorch's own needs CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware

        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """PyTorch's SyncBatchNorm on accelerators, ours on CPU; weights and statistics are kept."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
