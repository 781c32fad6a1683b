"""Planning and wrapping: EmbeddingShardingPlanner, DMP, fused and dense optimizers.

The parts live in their own modules and are gathered here, the import path the rest of the
package uses: ``sharders`` (the EBC sharder and the sharding types offered on CPU), ``tables``
(table bytes, whole or per rank), ``planning`` (the planner, its memory budget, the plan in full,
``describe_plan``, and in a few lines, ``summarize_plan``), ``optimizers`` (the embedding and dense
optimizers), ``dmp`` (``shard_model``) and ``seeding`` (plan-independent table initialisation).
"""

from torchrec_fusion.distributed.dmp import shard_model
from torchrec_fusion.distributed.optimizers import (
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    FBGEMM_EPS,
    RowSparseAdam,
    dense_embedding_optimizer,
    optimizer_state_bytes,
)
from torchrec_fusion.distributed.planning import (
    MemoryBudgetError,
    build_constraints,
    describe_plan,
    plan_sharding,
    summarize_plan,
)
from torchrec_fusion.distributed.seeding import fill_rows, seed_embedding_tables
from torchrec_fusion.distributed.sharders import (
    CUDA_ONLY_TYPES,
    SHARDING_TYPES,
    CpuEmbeddingBagCollectionSharder,
    MeanPoolingFixedShardedEBC,
    make_sharders,
)
from torchrec_fusion.distributed.tables import shard_bytes_per_rank, table_bytes, table_names

__all__ = [
    "CUDA_ONLY_TYPES",
    "DENSE_OPTIMIZERS",
    "EMBEDDING_OPTIMIZERS",
    "FBGEMM_EPS",
    "SHARDING_TYPES",
    "CpuEmbeddingBagCollectionSharder",
    "MeanPoolingFixedShardedEBC",
    "MemoryBudgetError",
    "RowSparseAdam",
    "build_constraints",
    "dense_embedding_optimizer",
    "describe_plan",
    "fill_rows",
    "make_sharders",
    "optimizer_state_bytes",
    "plan_sharding",
    "seed_embedding_tables",
    "shard_bytes_per_rank",
    "shard_model",
    "summarize_plan",
    "table_bytes",
    "table_names",
]
