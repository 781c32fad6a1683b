"""Planning and wrapping: EmbeddingShardingPlanner, DMP, fused and dense optimizers."""

import hashlib
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec import optim as trec_optim
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_fusion.distributed.launcher import DistContext

SHARDING_TYPES: List[str] = [t.value for t in ShardingType if t.value not in ("", "unsharded")]

EMBEDDING_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "sgd": trec_optim.SGD,
    "adam": trec_optim.Adam,
}
DENSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


class CpuEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """The EBC sharder, with the sharding types it offers on CPU chosen by what was measured.

    * row_wise, table_row_wise and grid_shard: TorchRec offers them for "cuda" only; they
      train on CPU with gloo too, so they are offered when ``cuda_only_types`` is set (the
      user asked for one of them): unasked, the planner would pick row-wise, whose lookups
      measured about 15x slower than table-wise on CPU.
    * data_parallel: on CPU its dense TBE kernel has no autograd kernel
      (``fbgemm::dense_embedding_codegen_lookup_function``; PyTorch warns that the backward
      "may lead to silently incorrect behavior"), and 2 ranks measured different from one
      process from the second step on; it is offered only when ``data_parallel`` is set.
    On other devices TorchRec's own list is used.
    """

    def __init__(self, cuda_only_types: bool = False, data_parallel: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cuda_only_types, self._data_parallel = cuda_only_types, data_parallel

    def sharding_types(self, compute_device_type: str) -> List[str]:
        if compute_device_type != "cpu":
            return super().sharding_types(compute_device_type)
        types = super().sharding_types("cuda" if self._cuda_only_types else "cpu")
        if self._data_parallel and ShardingType.DATA_PARALLEL.value not in types:
            types.append(ShardingType.DATA_PARALLEL.value)
        return [t for t in types if self._data_parallel or t != ShardingType.DATA_PARALLEL.value]


def _pick(registry: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def table_names(module: nn.Module) -> List[str]:
    """Names of all embedding tables of the EBCs inside ``module``."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    return [c.name for m in module.modules() if isinstance(m, EmbeddingBagCollection)
            for c in m.embedding_bag_configs()]


def build_constraints(
    module: nn.Module,
    sharding_type: Optional[str] = None,
    constraints: Optional[Mapping[str, ParameterConstraints]] = None,
) -> Optional[Dict[str, ParameterConstraints]]:
    """User constraints per table; ``sharding_type`` forces one type on every other table."""
    tables = table_names(module)
    out = dict(constraints or {})
    unknown = sorted(set(out) - set(tables))
    if unknown:
        raise ValueError(f"constraints name unknown table(s) {unknown}; tables are {tables}")
    if sharding_type is not None:
        _pick({t: t for t in SHARDING_TYPES}, sharding_type, "sharding type")
        for t in tables:
            out.setdefault(t, ParameterConstraints(sharding_types=[sharding_type]))
    return out or None


def plan_sharding(
    module: nn.Module,
    ctx: DistContext,
    batch_size: int,
    sharding_type: Optional[str] = None,
    constraints: Optional[Mapping[str, ParameterConstraints]] = None,
    sharders: Optional[List[Any]] = None,
) -> ShardingPlan:
    """Plans on rank 0 with ``EmbeddingShardingPlanner`` and broadcasts the plan."""
    topology = Topology(world_size=ctx.world_size, local_world_size=ctx.local_world_size,
                        compute_device=ctx.compute_device)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size,
                                       constraints=build_constraints(module, sharding_type, constraints),
                                       debug=False)
    sharders = sharders or make_sharders(sharding_type, constraints)
    return planner.collective_plan(module, sharders, dist.GroupMember.WORLD)


CUDA_ONLY_TYPES = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}


def make_sharders(sharding_type: Optional[str] = None,
                  constraints: Optional[Mapping[str, ParameterConstraints]] = None) -> List[Any]:
    """The EBC sharder for a run: see :class:`CpuEmbeddingBagCollectionSharder` for the types
    offered on CPU unless the user asks for them (``sharding_type`` or ``constraints``)."""
    asked = {sharding_type} if sharding_type else set()
    for c in (constraints or {}).values():
        asked |= set(c.sharding_types or [])
    return [CpuEmbeddingBagCollectionSharder(cuda_only_types=bool(asked & CUDA_ONLY_TYPES),
                                             data_parallel=ShardingType.DATA_PARALLEL.value in asked)]


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: sharding type, kernel and the ranks holding it."""
    lines = []
    for module_path, params in plan.plan.items():
        for table, ps in params.items():
            ranks = sorted({r for r in (ps.ranks or [])})
            shards = len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 1
            lines.append(f"  {module_path or '<root>'}.{table}: {ps.sharding_type} / {ps.compute_kernel}, "
                         f"{shards} shard(s) on ranks {ranks}")
    return "sharding plan:\n" + "\n".join(lines)


def shard_model(
    model: nn.Module,
    ctx: DistContext,
    plan: ShardingPlan,
    embedding_optimizer: str = "rowwise_adagrad",
    embedding_lr: float = 0.05,
    embedding_optimizer_kwargs: Optional[Mapping[str, Any]] = None,
    dense_optimizer: str = "adam",
    dense_lr: float = 1e-3,
    dense_optimizer_kwargs: Optional[Mapping[str, Any]] = None,
    sharders: Optional[List[Any]] = None,
) -> Tuple[DistributedModelParallel, CombinedOptimizer]:
    """Wraps ``model`` in DMP; embeddings get a fused optimizer applied in backward,
    every other parameter the dense optimizer. Returns (model, combined optimizer)."""
    emb_cls = _pick(EMBEDDING_OPTIMIZERS, embedding_optimizer, "embedding optimizer")
    dense_cls = _pick(DENSE_OPTIMIZERS, dense_optimizer, "dense optimizer")
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    emb_params = [p for m in model.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()]
    apply_optimizer_in_backward(emb_cls, emb_params, {"lr": embedding_lr, **(embedding_optimizer_kwargs or {})})
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan,
                                   sharders=sharders or make_sharders())
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_kwargs = {"lr": dense_lr, **(dense_optimizer_kwargs or {})}
    dense = KeyedOptimizerWrapper(dense_params, lambda ps: dense_cls(ps, **dense_kwargs))
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def _block_values(seed: int, table: str, block: int, rows: int, dim: int, bound: float) -> torch.Tensor:
    digest = hashlib.blake2b(f"{seed}/{table}/{block}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.empty(rows, dim).uniform_(-bound, bound, generator=g)


def fill_rows(out: torch.Tensor, seed: int, table: str, row0: int, col0: int, total_rows: int,
              total_dim: int, block_rows: int = 4096) -> None:
    """Writes the seeded init of rows ``[row0, row0+len)`` / cols ``[col0, col0+w)`` of a
    ``total_rows x total_dim`` table into ``out``. The values depend only on
    (seed, table, row, col), never on how the table is sharded."""
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
    only its own shards."""
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
