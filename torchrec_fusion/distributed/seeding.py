"""Seeded initialisation of embedding tables that does not depend on how they are sharded: every
value is a function of (seed, table, row, column), so a run starts alike at any world size and plan."""

import hashlib
import math

import torch
from torch import nn


def _block_values(seed: int, table: str, block: int, rows: int, dim: int, bound: float) -> torch.Tensor:
    digest = hashlib.blake2b(f"{seed}/{table}/{block}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.empty(rows, dim).uniform_(-bound, bound, generator=g)


def fill_rows(out: torch.Tensor, seed: int, table: str, row0: int, col0: int, total_rows: int,
              total_dim: int, block_rows: int = 4096) -> None:
    """Writes the seeded init of rows ``[row0, row0+len)`` / cols ``[col0, col0+w)`` of a
    ``total_rows x total_dim`` table into ``out``. The values depend only on
    (seed, table, row, col), never on how the table is sharded.

    Example::

        whole, half = torch.empty(10, 4), torch.empty(5, 2)
        fill_rows(whole, seed=0, table="t", row0=0, col0=0, total_rows=10, total_dim=4)
        fill_rows(half, seed=0, table="t", row0=5, col0=2, total_rows=10, total_dim=4)
        assert torch.equal(half, whole[5:, 2:])
    """
    bound = math.sqrt(1.0 / total_rows)
    n, w = out.shape
    r = row0
    while r < row0 + n:
        block = r // block_rows
        b_start = block * block_rows
        b_rows = min(block_rows, total_rows - b_start)
        vals = _block_values(seed, table, block, b_rows, total_dim, bound)
        take = min(b_start + b_rows, row0 + n) - r
        out[r - row0 : r - row0 + take].copy_(vals[r - b_start : r - b_start + take, col0 : col0 + w])
        r += take


@torch.no_grad()
def seed_embedding_tables(module: nn.Module, seed: int) -> None:
    """Initialises every embedding table of ``module`` (plain or DMP-sharded) from ``seed``,
    identically at any world size and under any sharding plan: each rank writes
    only its own shards (row and column offsets of each shard, so grid shards too)."""
    for key, value in module.state_dict().items():
        if not key.endswith(".weight") or ".embedding_bags." not in key:
            continue
        table = key.split(".")[-2]
        if hasattr(value, "local_shards"):  # ShardedTensor
            rows, dim = value.size()
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                fill_rows(shard.tensor, seed, table, r0, c0, rows, dim)
        elif hasattr(value, "to_local"):  # DTensor
            raise NotImplementedError("seeded init of DTensor tables is not supported yet")
        else:
            fill_rows(value, seed, table, 0, 0, value.size(0), value.size(1))
