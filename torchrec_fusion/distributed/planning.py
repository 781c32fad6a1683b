"""Planning on rank 0 with TorchRec's ``EmbeddingShardingPlanner``, within a memory budget per rank,
and the plan broadcast to every rank (a planner error too, so that no rank is left waiting)."""

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError, PlannerErrorType
from torchrec.distributed.types import ShardingPlan

from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.distributed.optimizers import EMBEDDING_OPTIMIZERS, choose, optimizer_state_bytes
from torchrec_fusion.distributed.sharders import (
    SHARDING_TYPES,
    CpuEmbeddingBagCollectionSharder,
    asked_types,
    make_sharders,
)
from torchrec_fusion.distributed.tables import embedding_bag_collections, table_bytes, table_names

T = TypeVar("T")

# where TorchRec's planner reads the optimizer of a table's parameter (apply_optimizer_in_backward sets it)
_OPTIMIZER_CLASSES = "_optimizer_classes"
_NO_ROOM = (PlannerErrorType.INSUFFICIENT_STORAGE, PlannerErrorType.STRICT_CONSTRAINTS)


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
        choose({t: t for t in SHARDING_TYPES}, sharding_type, "sharding type")
        for t in tables:
            out.setdefault(t, ParameterConstraints(sharding_types=[sharding_type]))
    return out or None


class MemoryBudgetError(PlannerError):  # type: ignore[misc]  # torchrec is untyped
    """The tables (and their optimizer state) do not fit in ``memory_budget_bytes`` x ranks."""

    def __reduce__(self) -> Any:  # keeps error_type when sent to the other ranks / the launcher
        return type(self), (str(self), self.error_type)


def _collective(pg: Optional[dist.ProcessGroup], fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or its exception) broadcast to every rank, so that
    a planner error is raised on all ranks instead of leaving the others waiting."""
    if pg is None or dist.get_world_size(pg) == 1:
        return fn()
    box: List[Any] = [None]
    if dist.get_rank(pg) == 0:
        try:
            box = [("ok", fn())]
        except Exception as e:  # noqa: BLE001 - handed to every rank, re-raised below
            box = [("err", e)]
    dist.broadcast_object_list(box, src=0, group=pg)
    status, value = box[0]
    if status == "err":
        raise value
    result: T = value
    return result


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB ({int(n):,} bytes)"


def _budget_error(error: PlannerError, module: nn.Module, world_size: int, budget: int, opt_name: str,
                  sharding_type: Optional[str], constraints: Optional[Mapping[str, ParameterConstraints]]
                  ) -> MemoryBudgetError:
    """The planner's "no room" error told in the user's terms: the budget, the bytes needed, the
    largest table and the sharding types that were asked for."""
    sizes = table_bytes(module, opt_name)
    need = sum(sizes.values())
    biggest = max(sizes, key=lambda t: sizes[t]) if sizes else None
    asked = sorted(asked_types(sharding_type, constraints))
    msg = (f"the embedding tables do not fit in memory_budget_bytes={_fmt_bytes(budget)} per rank x "
           f"{world_size} rank(s) = {_fmt_bytes(budget * world_size)}: they need {_fmt_bytes(need)} "
           f"(weights + {opt_name} state")
    if biggest is not None:
        msg += f"; the largest table, {biggest!r}, {_fmt_bytes(sizes[biggest])}"
    msg += "), plus on each rank the dense parameters and input buffers the planner reserves"
    if asked:
        msg += f"; the sharding types asked for ({', '.join(asked)}) limit how a table may be split"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    msg += f". Raise the budget or the number of ranks. (planner: {first[:200]})"
    return MemoryBudgetError(msg, PlannerErrorType.INSUFFICIENT_STORAGE)


def _topology(ctx: DistContext, memory_budget_bytes: Optional[int]) -> Topology:
    """The ranks and their compute device; the budget is the ``hbm_cap`` (cuda/mtia) or ``ddr_cap`` (cpu)."""
    cap: Dict[str, int] = {}
    if memory_budget_bytes is not None:
        cap = {"ddr_cap" if ctx.compute_device == "cpu" else "hbm_cap": int(memory_budget_bytes)}
    return Topology(world_size=ctx.world_size, local_world_size=ctx.local_world_size,
                    compute_device=ctx.compute_device, **cap)


def _applied_optimizer(params: List[nn.Parameter]) -> str:
    """The embedding optimizer already applied to the tables, else ``"rowwise_adagrad"``."""
    applied = {getattr(p, _OPTIMIZER_CLASSES, [None])[0] for p in params}
    return next((n for n, c in EMBEDDING_OPTIMIZERS.items() if c in applied), "rowwise_adagrad")


@contextlib.contextmanager
def _optimizer_lent(params: List[nn.Parameter], optimizer: Type[torch.optim.Optimizer]) -> Iterator[None]:
    """The planner's storage estimate reads the optimizer from the parameter; ``shard_model``
    applies it only later, so it is lent to the tables that have none while planning."""
    lent = [p for p in params if not hasattr(p, _OPTIMIZER_CLASSES)]
    for p in lent:
        setattr(p, _OPTIMIZER_CLASSES, [optimizer])
    try:
        yield
    finally:
        for p in lent:
            delattr(p, _OPTIMIZER_CLASSES)


def _plan_or_split_rows(planner: EmbeddingShardingPlanner, module: nn.Module, sharders: List[Any],
                        may_split_rows: bool) -> ShardingPlan:
    """The planner's plan; when it finds no room and ``may_split_rows``, one more try with the
    row-wise family offered on CPU (column splits need ``min_partition``)."""
    try:
        return planner.plan(module, sharders)
    except PlannerError as e:
        wider = [s.with_row_splits() if isinstance(s, CpuEmbeddingBagCollectionSharder) and not s.offers_row_splits
                 else s for s in sharders]
        if not may_split_rows or e.error_type not in _NO_ROOM or wider == sharders:
            raise
        return planner.plan(module, wider)


def plan_sharding(
    module: nn.Module,
    ctx: DistContext,
    batch_size: int,
    sharding_type: Optional[str] = None,
    constraints: Optional[Mapping[str, ParameterConstraints]] = None,
    sharders: Optional[List[Any]] = None,
    memory_budget_bytes: Optional[int] = None,
    embedding_optimizer: Optional[str] = None,
) -> ShardingPlan:
    """Plans on rank 0 with ``EmbeddingShardingPlanner`` and broadcasts the plan.

    ``memory_budget_bytes``: the memory one rank may give to the model (the planner's
    ``Topology`` ``hbm_cap`` on cuda/mtia, ``ddr_cap`` on cpu); tables that do not fit on one
    rank are placed on different ranks or split. On CPU, when the plan cannot fit without
    splitting rows (column splits need ``min_partition``), the row-wise family is offered too.
    A model that does not fit at all raises :class:`MemoryBudgetError` naming the budget and
    the bytes needed. The planner's estimate counts each table's embedding optimizer state:
    ``embedding_optimizer`` names it (default: the one already applied to the tables, else
    ``"rowwise_adagrad"``, ``shard_model``'s default). ``module`` stays on the meta device:
    nothing is allocated here.
    """
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    planner = EmbeddingShardingPlanner(topology=_topology(ctx, memory_budget_bytes), batch_size=batch_size,
                                       constraints=build_constraints(module, sharding_type, constraints),
                                       debug=False)
    chosen = sharders or make_sharders(sharding_type, constraints)
    params = [p for ebc in embedding_bag_collections(module) for p in ebc.parameters()]
    opt_name = _applied_optimizer(params) if embedding_optimizer is None else embedding_optimizer
    opt_cls = choose(EMBEDDING_OPTIMIZERS, opt_name, "embedding optimizer")
    may_split_rows = memory_budget_bytes is not None and ctx.compute_device == "cpu"

    def plan_on_rank0() -> ShardingPlan:
        with _optimizer_lent(params, opt_cls):
            try:
                return _plan_or_split_rows(planner, module, chosen, may_split_rows)
            except PlannerError as e:
                if memory_budget_bytes is None or e.error_type not in _NO_ROOM:
                    raise
                raise _budget_error(e, module, ctx.world_size, memory_budget_bytes, opt_name, sharding_type,
                                    constraints) from e

    return _collective(dist.GroupMember.WORLD if dist.is_initialized() else None, plan_on_rank0)


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: sharding type, kernel and the ranks holding it."""
    lines = []
    for module_path, params in plan.plan.items():
        for table, ps in params.items():
            ranks = sorted(set(ps.ranks or []))
            shards = len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 1
            lines.append(f"  {module_path or '<root>'}.{table}: {ps.sharding_type} / {ps.compute_kernel}, "
                         f"{shards} shard(s) on ranks {ranks}")
    return "sharding plan:\n" + "\n".join(lines)


# tables replicated on every rank up to this many bytes in all are worth a try (see summarize_plan)
SMALL_TABLES_BYTES = 256 * 2**20


def _plan_bytes(plan: ShardingPlan, world_size: int, shapes: Mapping[str, Tuple[int, int]],
                embedding_optimizer: Optional[str]) -> Tuple[List[int], int]:
    """Bytes per rank (fp32 weights + optimizer state) and the bytes of every table held once;
    a data_parallel table counts whole on each rank, and only when ``shapes`` has it."""
    per_rank, whole = [0] * world_size, 0
    for params in plan.plan.values():
        for table, ps in params.items():
            if ps.sharding_spec is not None:
                for shard in ps.sharding_spec.shards:
                    rows, cols = shard.shard_sizes
                    size = rows * cols * 4 + optimizer_state_bytes(embedding_optimizer, rows, cols)
                    per_rank[shard.placement.rank()] += size
                    whole += size
            elif table in shapes:
                rows, cols = shapes[table]
                size = rows * cols * 4 + optimizer_state_bytes(embedding_optimizer, rows, cols)
                for r in ps.ranks or range(world_size):
                    per_rank[r] += size
                whole += size
    return per_rank, whole


def summarize_plan(plan: ShardingPlan, world_size: int, shapes: Optional[Mapping[str, Tuple[int, int]]] = None,
                   embedding_optimizer: Optional[str] = "rowwise_adagrad", batch_size: Optional[int] = None) -> str:
    """The plan in a few lines (:func:`describe_plan` has one per table): tables per sharding type,
    table bytes per rank, and, when several ranks shard small tables, what to compare.
    ``shapes``: rows and columns per table name (data_parallel tables are counted only with it)."""
    types: Dict[str, int] = {}
    for params in plan.plan.values():
        for ps in params.values():
            types[ps.sharding_type] = types.get(ps.sharding_type, 0) + 1
    kinds = ", ".join(f"{t} {n}" for t, n in sorted(types.items(), key=lambda kv: -kv[1]))
    per_rank, whole = _plan_bytes(plan, world_size, shapes or {}, embedding_optimizer)
    lines = [f"sharding plan: {sum(types.values())} table(s) on {world_size} rank(s): {kinds}",
             f"  table bytes per rank (weights + {embedding_optimizer} state): "
             + ", ".join(f"rank {r} {n / 2**20:,.1f} MiB" for r, n in enumerate(per_rank))]
    sharded = sum(n for t, n in types.items() if t != "data_parallel")
    if world_size > 1 and sharded and whole <= SMALL_TABLES_BYTES:
        tries = ["--sharding-type data_parallel (every table replicated: no all-to-all per step, their gradients "
                 "all-reduced instead)"]
        if batch_size is not None and batch_size <= 512:
            tries.append(f"a larger --batch-size than {batch_size} per rank (fewer, larger steps)")
        lines.append(f"  the tables take {whole / 2**20:,.1f} MiB in all, few enough to replicate; for speed, "
                     "compare\n    " + "\n    and ".join(tries))
    return "\n".join(lines)
