"""The embedding tables of a model and the bytes they take, whole or under a sharding plan (tables on
the meta device are measured by their shapes: nothing is materialised)."""

from typing import Dict, List, Optional, Tuple

from torch import nn
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_fusion.distributed.optimizers import optimizer_state_bytes


def embedding_bag_collections(module: nn.Module) -> List[EmbeddingBagCollection]:
    """Every EmbeddingBagCollection inside ``module``."""
    return [m for m in module.modules() if isinstance(m, EmbeddingBagCollection)]


def table_names(module: nn.Module) -> List[str]:
    """Names of all embedding tables of the EBCs inside ``module``."""
    return [c.name for m in embedding_bag_collections(module) for c in m.embedding_bag_configs()]


def _table_shapes(module: nn.Module) -> Dict[str, Tuple[int, int, int]]:
    """Per table: rows, columns and bytes per element."""
    return {c.name: (c.num_embeddings, c.embedding_dim, ebc.embedding_bags[c.name].weight.element_size())
            for ebc in embedding_bag_collections(module) for c in ebc.embedding_bag_configs()}


def table_bytes(module: nn.Module, embedding_optimizer: Optional[str] = "rowwise_adagrad") -> Dict[str, int]:
    """Per table of ``module``: bytes of its weights plus its embedding optimizer state (no
    table is materialised: meta tables are measured by their shapes)."""
    return {name: rows * cols * elem + optimizer_state_bytes(embedding_optimizer, rows, cols)
            for name, (rows, cols, elem) in _table_shapes(module).items()}


def shard_bytes_per_rank(plan: ShardingPlan, module: nn.Module, world_size: int,
                         embedding_optimizer: Optional[str] = "rowwise_adagrad") -> List[int]:
    """Bytes each rank holds under ``plan``: its shards' weights plus their embedding optimizer
    state (a data_parallel table counts whole on every rank)."""
    shapes = _table_shapes(module)
    out = [0] * world_size
    for params in plan.plan.values():
        for table, ps in params.items():
            rows, cols, elem = shapes[table]
            if ps.sharding_spec is None:  # data_parallel: replicated
                for r in ps.ranks or range(world_size):
                    out[r] += rows * cols * elem + optimizer_state_bytes(embedding_optimizer, rows, cols)
                continue
            for shard in ps.sharding_spec.shards:
                r_, c_ = shard.shard_sizes
                out[shard.placement.rank()] += r_ * c_ * elem + optimizer_state_bytes(embedding_optimizer, r_, c_)
    return out
