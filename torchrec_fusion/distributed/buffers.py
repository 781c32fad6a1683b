"""Replicated buffers kept equal on every rank.

DMP wraps the dense part in DDP with ``broadcast_buffers=False``, so buffers that a module
updates in its forward (the running statistics of score normalisers, DWA's loss sums)
would drift apart rank by rank: each rank would score with its own statistics, and a
checkpoint (which keeps one copy of a replicated tensor) could not resume them. Averaging
them after every step keeps them equal, and, as these updates are linear in the batch
statistic (running averages, sums), equal to what a running average of the global
batch's statistic would be for equal local batches.
"""

from typing import List

import torch
import torch.distributed as dist
from torch import nn


def replicated_float_buffers(module: nn.Module) -> List[torch.Tensor]:
    """The floating-point plain-tensor buffers of ``module`` (sharded tables have none)."""
    return [b for _, b in module.named_buffers() if type(b) is torch.Tensor and b.is_floating_point()]


@torch.no_grad()
def average_buffers(buffers: List[torch.Tensor]) -> None:
    """Averages ``buffers`` in place over the default process group (one all-reduce)."""
    if not buffers or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
