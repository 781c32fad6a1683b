"""TorchRec's EmbeddingBagCollection sharder, fixed for MEAN pooling under row splits and with the
sharding types it offers on CPU chosen by what was measured."""

from typing import Any, Dict, List, Mapping, Optional, Set

import torch
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import PoolingType

SHARDING_TYPES: List[str] = [t.value for t in ShardingType if t.value not in ("", "unsharded")]

# Sharding types whose lookup pools with SUM on each row shard and needs the MEAN division
# after the shards are reduced (TorchRec's lookup for grid shards is a table-row-wise one).
_ROW_SPLIT_TYPES = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}

# The row-wise family: TorchRec offers it for CUDA only; it trains on CPU too.
CUDA_ONLY_TYPES = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}


class MeanPoolingFixedShardedEBC(ShardedEmbeddingBagCollection):  # type: ignore[misc]  # torchrec is untyped
    """TorchRec's sharded EBC, with MEAN pooling right for every mix of sharding types.

    A row-split table (row_wise, table_row_wise, grid_shard) pools with SUM on each shard and
    divides by the bag sizes after the shards are summed. TorchRec 1.8.0 does this with one list
    per pooling type of the "row-split" features, built for row_wise and table_row_wise only:

    * grid_shard tables are left out of it, so a MEAN-pooled grid-sharded feature comes back as
      the SUM of its bag (grid_shard's lookup runs as table_row_wise, with SUM);
    * as soon as one MEAN row-split feature exists, every feature's output is divided by its
      bag size except the SUM row-split ones: the features of table_wise, column_wise,
      table_column_wise and data_parallel tables (already pooled, SUM or MEAN) are divided again.

    Here the divisor lists are rebuilt from the plan: a feature is divided iff its table is MEAN
    pooled and row-split; every other feature is listed as "SUM" (a divisor of one).
    """

    def __init__(self, module: nn.Module, table_name_to_parameter_sharding: Mapping[str, Any], *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(module, table_name_to_parameter_sharding, *args, **kwargs)
        divide: Dict[str, bool] = {}
        for config in self._embedding_bag_configs:
            needs = (config.pooling == PoolingType.MEAN
                     and table_name_to_parameter_sharding[config.name].sharding_type in _ROW_SPLIT_TYPES)
            for feature in config.feature_names:
                if divide.setdefault(feature, needs) != needs:
                    raise NotImplementedError(
                        f"feature {feature!r} feeds a MEAN-pooled row-split table and another table that is not: "
                        "TorchRec divides per feature, not per table; shard its tables alike")
        self._pooling_type_to_rs_features.clear()
        for feature, needs in divide.items():
            self._pooling_type_to_rs_features[(PoolingType.MEAN if needs else PoolingType.SUM).value].append(feature)
        self._has_mean_pooling_callback = bool(self._pooling_type_to_rs_features.get(PoolingType.MEAN.value))


class CpuEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):  # type: ignore[misc]  # torchrec is untyped
    """The EBC sharder, with the sharding types it offers on CPU chosen by what was measured,
    and a sharded EBC whose MEAN pooling is right (:class:`MeanPoolingFixedShardedEBC`).

    * row_wise, table_row_wise and grid_shard: TorchRec offers them for "cuda" only; they
      train on CPU with gloo too, so they are offered when ``cuda_only_types`` is set (the
      user asked for one of them, or a memory budget cannot be met without splitting rows):
      unasked, the planner would pick row-wise, whose lookups measured about 15x slower than
      table-wise on CPU.
    * data_parallel: trains correctly on CPU (DDP all-reduces the replicated tables' gradients
      and ``shard_model`` gives them the embedding optimizer), but it replicates every table
      on every rank and the planner would pick it for small tables, so it is offered only when
      ``data_parallel`` is set. (PyTorch warns that fbgemm's dense TBE op has no autograd kernel
      and "may lead to silently incorrect behavior": its CPU kernel records its own autograd
      node, and its gradients were checked equal to ``F.embedding_bag``'s.)
    On other devices TorchRec's own list is used.

    Example::

        sharder = CpuEmbeddingBagCollectionSharder()
        assert sharder.sharding_types("cpu") == ["table_wise", "column_wise", "table_column_wise"]
        assert "row_wise" in sharder.with_row_splits().sharding_types("cpu")
    """

    def __init__(self, cuda_only_types: bool = False, data_parallel: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cuda_only_types, self._data_parallel = cuda_only_types, data_parallel
        self._init_kwargs = kwargs

    @property
    def offers_row_splits(self) -> bool:
        """Whether the row-wise family is offered on CPU."""
        return self._cuda_only_types

    def sharding_types(self, compute_device_type: str) -> List[str]:
        if compute_device_type != "cpu":
            return list(super().sharding_types(compute_device_type))
        types: List[str] = list(super().sharding_types("cuda" if self._cuda_only_types else "cpu"))
        if self._data_parallel and ShardingType.DATA_PARALLEL.value not in types:
            types.append(ShardingType.DATA_PARALLEL.value)
        return [t for t in types if self._data_parallel or t != ShardingType.DATA_PARALLEL.value]

    def with_row_splits(self) -> "CpuEmbeddingBagCollectionSharder":
        """The same sharder, offering the row-wise family on CPU too."""
        return type(self)(cuda_only_types=True, data_parallel=self._data_parallel, **self._init_kwargs)

    def shard(self, module: Any, params: Any, env: Any, device: Optional[torch.device] = None,
              module_fqn: Optional[str] = None) -> MeanPoolingFixedShardedEBC:
        return MeanPoolingFixedShardedEBC(
            module=module, table_name_to_parameter_sharding=params, env=env, fused_params=self.fused_params,
            device=device, qcomm_codecs_registry=self.qcomm_codecs_registry, module_fqn=module_fqn,
            sharded_module_order_overwrite=self._sharded_module_order_overwrite)


def asked_types(sharding_type: Optional[str] = None,
                constraints: Optional[Mapping[str, ParameterConstraints]] = None) -> Set[str]:
    """The sharding types a run asks for: ``sharding_type`` and those its per-table constraints name."""
    asked = {sharding_type} if sharding_type else set()
    for c in (constraints or {}).values():
        asked |= set(c.sharding_types or [])
    return asked


def make_sharders(sharding_type: Optional[str] = None,
                  constraints: Optional[Mapping[str, ParameterConstraints]] = None) -> List[Any]:
    """The EBC sharder for a run: see :class:`CpuEmbeddingBagCollectionSharder` for the types
    offered on CPU unless the user asks for them (``sharding_type`` or ``constraints``)."""
    asked = asked_types(sharding_type, constraints)
    return [CpuEmbeddingBagCollectionSharder(cuda_only_types=bool(asked & CUDA_ONLY_TYPES),
                                             data_parallel=ShardingType.DATA_PARALLEL.value in asked)]
