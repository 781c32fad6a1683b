"""Which tables every rank holds whole (data_parallel) when nobody said: the small ones.

A table sharded over ranks costs an all-to-all of pooled embeddings forwards and backwards at every
step; a replicated one costs its whole weight on every rank and one all-reduce of its gradient (a
dense one: TorchRec's data_parallel kernel is dense) with the dense parameters'. For a table of a few
thousand rows the all-reduce is a few hundred kilobytes, and two all-to-alls per step (and their
waiting) are gone: ml-100k's MMoE trained about 2x faster replicated (docs/performance.md). For a
large table replication would multiply its memory by the number of ranks and all-reduce all of it
at every step, so it is never chosen unasked above :data:`REPLICATE_TABLE_BYTES`.

The rule, applied only with several ranks, no ``--sharding-type`` and no memory budget (a budget
asks the planner to place tables by memory): tables whose weights plus embedding optimizer state
are at most ``REPLICATE_TABLE_BYTES`` are replicated, smallest first, while all the replicated
tables together stay within ``REPLICATE_TOTAL_BYTES``; every other table is left to TorchRec's
planner as before. A user constraint on a table always wins over the rule.

A resumed run keeps its checkpoint's choice instead (``previous``: the tables the checkpoint holds
replicated, at any world size), since a fused optimizer's state does not load across a replicated and a
sharded table; checkpoints written before this rule replicated nothing unasked, and load as they were.
"""

import re
from typing import Collection, Dict, Mapping, Optional, Set

from torch import nn
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType

from torchrec_fusion.distributed.tables import table_bytes

REPLICATE_TABLE_BYTES = 4 * 2**20  # weights + optimizer state of one table replicated unasked
REPLICATE_TOTAL_BYTES = 32 * 2**20  # of all the tables replicated unasked, together


def small_table_constraints(module: nn.Module, world_size: int, embedding_optimizer: Optional[str],
                            sharding_type: Optional[str] = None,
                            constraints: Optional[Mapping[str, ParameterConstraints]] = None,
                            memory_budget: bool = False, previous: Optional[Collection[str]] = None
                            ) -> Dict[str, ParameterConstraints]:
    """``constraints`` plus data_parallel for every small table they leave free (see the module's
    docstring for the rule); ``constraints`` unchanged when the rule does not apply.

    Example::

        import torch
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="small", embedding_dim=16, num_embeddings=1_000, feature_names=["a"]),
            EmbeddingBagConfig(name="large", embedding_dim=64, num_embeddings=10**7, feature_names=["b"])],
            device=torch.device("meta"))
        out = small_table_constraints(ebc, world_size=2, embedding_optimizer="rowwise_adagrad")
        assert out["small"].sharding_types == ["data_parallel"] and "large" not in out
        assert small_table_constraints(ebc, 1, "rowwise_adagrad") == {}
    """
    out = dict(constraints or {})
    if sharding_type is not None:
        return out
    if previous is not None:
        for name in previous:
            out.setdefault(name, ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value]))
        return out
    if world_size < 2 or memory_budget:
        return out
    total = 0
    for name, size in sorted(table_bytes(module, embedding_optimizer).items(), key=lambda kv: kv[1]):
        if name in out or size > REPLICATE_TABLE_BYTES or total + size > REPLICATE_TOTAL_BYTES:
            continue
        out[name] = ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])
        total += size
    return out


def replicated_in(plan_text: str) -> Set[str]:
    r"""The tables a plan as :func:`~torchrec_fusion.distributed.planning.describe_plan` writes it (a
    checkpoint's ``plan``) holds replicated.

    Example::

        text = "sharding plan:\n  model.ebc.t_user: data_parallel / dense, 0 shard(s) on ranks [0, 1]\n" \
               "  model.ebc.t_item: table_wise / fused, 1 shard(s) on ranks [1]"
        assert replicated_in(text) == {"t_user"}
    """
    return {m.group(1) for m in re.finditer(r"\.([^.\s:]+): data_parallel /", plan_text)}
