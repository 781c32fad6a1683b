"""Limits checked before anything large is allocated: the embedding tables' bytes (rows x dim x 4,
plus the embedding optimizer's state) against the memory of this machine. A table's rows come from
the data (one per id up to the largest id, unless the spec bounds them), so one stray id of 10^8
asks for gigabytes: that is refused here, naming the table, before the model is built or sharded.
(The world size against the cores is checked by the launcher, before any process starts.)"""

import dataclasses
import os
import sys
from typing import List, Mapping, Optional

import torch
import torch.distributed as dist

from torchrec_fusion.distributed.optimizers import optimizer_state_bytes

# warn when the tables need more than this share of the memory available (the rest of the run needs room too)
WARN_SHARE = 0.5


class TableMemoryError(ValueError):
    """Embedding tables that cannot fit in the memory this machine has."""


@dataclasses.dataclass(frozen=True)
class TableSize:
    """One sparse feature's table: its rows, width and bytes (weights plus optimizer state), times
    ``copies`` (an ensemble gives each member its own table)."""

    feature: str
    rows: int
    dim: int
    bytes: int
    copies: int = 1


def table_sizes(rows: Mapping[str, int], dim: int, embedding_optimizer: Optional[str], copies: int = 1,
                elem_bytes: int = 4) -> List[TableSize]:
    """Each feature's table (``rows[feature]`` x ``dim`` fp32 values and its optimizer state), largest first.

    Example::

        sizes = table_sizes({"user": 1000, "item": 10}, 8, "rowwise_adagrad")
        assert [s.feature for s in sizes] == ["user", "item"] and sizes[0].bytes == 1000 * 8 * 4 + 1000 * 4
    """
    sizes = [TableSize(f, int(n), dim, copies * (int(n) * dim * elem_bytes
                                                 + optimizer_state_bytes(embedding_optimizer, int(n), dim, elem_bytes)),
                       copies) for f, n in rows.items()]
    return sorted(sizes, key=lambda s: -s.bytes)


def available_memory() -> Optional[int]:
    """Bytes of memory this machine can still give (``MemAvailable`` of /proc/meminfo, else the free
    physical pages), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB ({int(n):,} bytes)"


def check_table_memory(sizes: List[TableSize], available: Optional[int], share: float = 1.0,
                       where: str = "this machine") -> Optional[str]:
    """Raises :class:`TableMemoryError` when ``share`` of the tables (this host's part of a sharded
    model: its ranks / all ranks) needs more than ``available`` bytes; returns a warning when it
    needs more than half of them, else None. Nothing is known (None) when ``available`` is None.

    Example::

        sizes = table_sizes({"user": 100_000_001}, 32, "rowwise_adagrad")
        try:
            check_table_memory(sizes, available=8 * 2**30)
            refused = ""
        except TableMemoryError as e:
            refused = str(e)
        assert "'user'" in refused and "100,000,001 rows" in refused
    """
    need = sum(s.bytes for s in sizes) * share
    if available is None or not sizes or need <= WARN_SHARE * available:
        return None
    big = sizes[0]
    what = (f"the embedding tables need {_fmt(need)} on {where}, which has {_fmt(available)} available; the "
            f"largest, feature {big.feature!r}, has {big.rows:,} rows x {big.dim} "
            f"{'x ' + str(big.copies) + ' ensemble members ' if big.copies > 1 else ''}= {_fmt(big.bytes)} "
            "with its optimizer state")
    if need <= available:
        return what
    raise TableMemoryError(f"{what}. A table has one row per id up to the largest id: bound it with num_embeddings "
                           "and out_of_range: hash (or modulo) in the table spec, lower --embedding-dim, or run on "
                           "more hosts")


def _available_on_host(device: torch.device, local_world_size: int) -> Optional[int]:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) * local_world_size  # one device per local rank
    return available_memory()


def check_tables_fit(rows: Mapping[str, int], dim: int, embedding_optimizer: Optional[str], copies: int,
                     device: torch.device, world_size: int, local_world_size: int, is_main: bool) -> None:
    """:func:`check_table_memory` on every rank alike: rank 0 measures the memory and every rank
    gets its number, so that all ranks refuse together (none is left waiting in a collective)."""
    box = [_available_on_host(device, local_world_size) if is_main else None]
    if dist.is_initialized() and world_size > 1:
        dist.broadcast_object_list(box, src=0)
    where = "this machine" if device.type == "cpu" else f"this host's {local_world_size} GPU(s)"
    warning = check_table_memory(table_sizes(rows, dim, embedding_optimizer, copies), box[0],
                                 local_world_size / world_size, where)
    if warning and is_main:
        print(f"torchrec-fusion: warning: {warning}", file=sys.stderr)
