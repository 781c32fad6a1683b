"""Planning and wrapping: EmbeddingShardingPlanner, DMP, fused and dense optimizers."""

import hashlib
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec import optim as trec_optim
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError, PlannerErrorType
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

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

# FBGEMM's TBE default epsilon; the fused optimizers use it unless told otherwise.
FBGEMM_EPS = 1.0e-8

# Sharding types whose lookup pools with SUM on each row shard and needs the MEAN division
# after the shards are reduced (TorchRec's lookup for grid shards is a table-row-wise one).
_ROW_SPLIT_TYPES = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}


class MeanPoolingFixedShardedEBC(ShardedEmbeddingBagCollection):
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


class CpuEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """The EBC sharder, with the sharding types it offers on CPU chosen by what was measured,
    and a sharded EBC whose MEAN pooling is right (:class:`MeanPoolingFixedShardedEBC`).

    * row_wise, table_row_wise and grid_shard: TorchRec offers them for "cuda" only; they
      train on CPU with gloo too, so they are offered when ``cuda_only_types`` is set (the
      user asked for one of them, or a memory budget cannot be met without splitting rows):
      unasked, the planner would pick row-wise, whose lookups measured about 15x slower than
      table-wise on CPU.
    * data_parallel: trains correctly on CPU (DDP all-reduces the replicated tables' gradients
      and :func:`shard_model` gives them the embedding optimizer), but it replicates every table
      on every rank and the planner would pick it for small tables, so it is offered only when
      ``data_parallel`` is set. (PyTorch warns that fbgemm's dense TBE op has no autograd kernel
      and "may lead to silently incorrect behavior": its CPU kernel records its own autograd
      node, and its gradients were checked equal to ``F.embedding_bag``'s.)
    On other devices TorchRec's own list is used.
    """

    def __init__(self, cuda_only_types: bool = False, data_parallel: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cuda_only_types, self._data_parallel = cuda_only_types, data_parallel
        self._init_kwargs = kwargs

    def sharding_types(self, compute_device_type: str) -> List[str]:
        if compute_device_type != "cpu":
            return super().sharding_types(compute_device_type)
        types = super().sharding_types("cuda" if self._cuda_only_types else "cpu")
        if self._data_parallel and ShardingType.DATA_PARALLEL.value not in types:
            types.append(ShardingType.DATA_PARALLEL.value)
        return [t for t in types if self._data_parallel or t != ShardingType.DATA_PARALLEL.value]

    def with_row_splits(self) -> "CpuEmbeddingBagCollectionSharder":
        """The same sharder, offering the row-wise family on CPU too."""
        return type(self)(cuda_only_types=True, data_parallel=self._data_parallel, **self._init_kwargs)

    def shard(self, module: Any, params: Any, env: Any, device: Optional[torch.device] = None,
              module_fqn: Optional[str] = None) -> ShardedEmbeddingBagCollection:
        return MeanPoolingFixedShardedEBC(
            module=module, table_name_to_parameter_sharding=params, env=env, fused_params=self.fused_params,
            device=device, qcomm_codecs_registry=self.qcomm_codecs_registry, module_fqn=module_fqn,
            sharded_module_order_overwrite=self._sharded_module_order_overwrite)


def _pick(registry: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def _ebcs(module: nn.Module) -> List[nn.Module]:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    return [m for m in module.modules() if isinstance(m, EmbeddingBagCollection)]


def table_names(module: nn.Module) -> List[str]:
    """Names of all embedding tables of the EBCs inside ``module``."""
    return [c.name for m in _ebcs(module) for c in m.embedding_bag_configs()]


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


def optimizer_state_bytes(embedding_optimizer: Optional[str], rows: int, cols: int, elem_bytes: int = 4) -> int:
    """Bytes of the embedding optimizer's state for a ``rows x cols`` shard (FBGEMM's layout:
    row-wise Adagrad keeps one float per row, Adagrad one per weight, Adam two, SGD none)."""
    per = {None: 0, "sgd": 0, "rowwise_adagrad": rows, "adagrad": rows * cols, "adam": 2 * rows * cols}
    return _pick(per, embedding_optimizer, "embedding optimizer") * elem_bytes


def table_bytes(module: nn.Module, embedding_optimizer: Optional[str] = "rowwise_adagrad") -> Dict[str, int]:
    """Per table of ``module``: bytes of its weights plus its embedding optimizer state (no
    table is materialised: meta tables are measured by their shapes)."""
    out = {}
    for ebc in _ebcs(module):
        for c in ebc.embedding_bag_configs():
            weight = ebc.embedding_bags[c.name].weight
            elem = weight.element_size()
            out[c.name] = (c.num_embeddings * c.embedding_dim * elem
                           + optimizer_state_bytes(embedding_optimizer, c.num_embeddings, c.embedding_dim))
    return out


def shard_bytes_per_rank(plan: ShardingPlan, module: nn.Module, world_size: int,
                         embedding_optimizer: Optional[str] = "rowwise_adagrad") -> List[int]:
    """Bytes each rank holds under ``plan``: its shards' weights plus their embedding optimizer
    state (a data_parallel table counts whole on every rank)."""
    shapes = {c.name: (c.num_embeddings, c.embedding_dim, ebc.embedding_bags[c.name].weight.element_size())
              for ebc in _ebcs(module) for c in ebc.embedding_bag_configs()}
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


class MemoryBudgetError(PlannerError):
    """The tables (and their optimizer state) do not fit in ``memory_budget_bytes`` x ranks."""

    def __reduce__(self) -> Any:  # keeps error_type when sent to the other ranks / the launcher
        return type(self), (str(self), self.error_type)


def _collective(pg: Any, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on rank 0, its result (or its exception) broadcast to every rank, so that
    a planner error is raised on all ranks instead of leaving the others waiting."""
    if pg is None or dist.get_world_size(pg) == 1:
        return fn(*args)
    box: List[Any] = [None]
    if dist.get_rank(pg) == 0:
        try:
            box = [("ok", fn(*args))]
        except Exception as e:  # noqa: BLE001 - handed to every rank, re-raised below
            box = [("err", e)]
    dist.broadcast_object_list(box, src=0, group=pg)
    status, value = box[0]
    if status == "err":
        raise value
    return value


_NO_ROOM = (PlannerErrorType.INSUFFICIENT_STORAGE, PlannerErrorType.STRICT_CONSTRAINTS)


def _budget_error(error: PlannerError, module: nn.Module, world_size: int, budget: int, opt_name: str,
                  sharding_type: Optional[str], constraints: Optional[Mapping[str, ParameterConstraints]]
                  ) -> MemoryBudgetError:
    sizes = table_bytes(module, opt_name)
    need = sum(sizes.values())
    biggest = max(sizes, key=lambda t: sizes[t]) if sizes else None
    asked = sorted(({sharding_type} if sharding_type else set())
                   | {t for c in (constraints or {}).values() for t in (c.sharding_types or [])})
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


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB ({int(n):,} bytes)"


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
    ``"rowwise_adagrad"``, :func:`shard_model`'s default). ``module`` stays on the meta device:
    nothing is allocated here.
    """
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    cap: Dict[str, int] = {}
    if memory_budget_bytes is not None:
        cap = {"ddr_cap" if ctx.compute_device == "cpu" else "hbm_cap": int(memory_budget_bytes)}
    topology = Topology(world_size=ctx.world_size, local_world_size=ctx.local_world_size,
                        compute_device=ctx.compute_device, **cap)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size,
                                       constraints=build_constraints(module, sharding_type, constraints),
                                       debug=False)
    sharders = sharders or make_sharders(sharding_type, constraints)
    params = [p for ebc in _ebcs(module) for p in ebc.parameters()]
    applied = {getattr(p, "_optimizer_classes", [None])[0] for p in params}
    opt_name = embedding_optimizer
    if opt_name is None:
        opt_name = next((n for n, c in EMBEDDING_OPTIMIZERS.items() if c in applied), "rowwise_adagrad")
    opt_cls = _pick(EMBEDDING_OPTIMIZERS, opt_name, "embedding optimizer")

    def plan_on_rank0() -> ShardingPlan:
        # the planner's storage estimate reads the optimizer from the parameter; shard_model applies
        # it only later, so it is lent to the tables for planning
        lent = [p for p in params if not hasattr(p, "_optimizer_classes")]
        for p in lent:
            p._optimizer_classes = [opt_cls]
        try:
            try:
                return planner.plan(module, sharders)
            except PlannerError as e:
                wider = [s.with_row_splits() if isinstance(s, CpuEmbeddingBagCollectionSharder)
                         and not s._cuda_only_types else s for s in sharders]
                if (memory_budget_bytes is None or e.error_type not in _NO_ROOM
                        or ctx.compute_device != "cpu" or wider == sharders):
                    raise
                return planner.plan(module, wider)
        except PlannerError as e:
            if memory_budget_bytes is None or e.error_type not in _NO_ROOM:
                raise
            raise _budget_error(e, module, ctx.world_size, memory_budget_bytes, opt_name, sharding_type,
                                constraints) from e
        finally:
            for p in lent:
                del p._optimizer_classes

    return _collective(dist.GroupMember.WORLD if dist.is_initialized() else None, plan_on_rank0)


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


class RowSparseAdam(torch.optim.Optimizer):
    """Adam as FBGEMM's fused TBE runs it on embedding rows: only the rows with a gradient
    move (and their moments); the bias correction counts the steps that had a gradient;
    ``weight_decay`` is added to the update, scaled by the learning rate. (FBGEMM 1.8.0 has
    no CPU kernel for its fused Adam; this one serves dense-kernel tables on any device.)"""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = FBGEMM_EPS, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros(())
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                g = p.grad.reshape(p.shape[0], -1)
                rows = g.ne(0).any(dim=1).nonzero().squeeze(1)
                if rows.numel() == 0:  # e.g. a zero-gradient step that only creates the state
                    continue
                st["step"] += 1
                t = float(st["step"])
                w = p.view(p.shape[0], -1)
                m = st["exp_avg"].view(p.shape[0], -1)
                v = st["exp_avg_sq"].view(p.shape[0], -1)
                gr = g[rows]
                m_r = m[rows].mul_(b1).add_(gr, alpha=1 - b1)
                v_r = v[rows].mul_(b2).addcmul_(gr, gr, value=1 - b2)
                m[rows], v[rows] = m_r, v_r
                w_r = w[rows]
                upd = (m_r / (1 - b1 ** t)) / ((v_r / (1 - b2 ** t)).sqrt() + group["eps"])
                upd += group["weight_decay"] * w_r
                w[rows] = w_r - group["lr"] * upd
        return loss


def dense_embedding_optimizer(name: str, params: List[torch.Tensor], lr: float,
                              kwargs: Optional[Mapping[str, Any]] = None) -> torch.optim.Optimizer:
    """A PyTorch optimizer that updates embedding tables the way FBGEMM's fused optimizer
    ``name`` does (same formula and epsilon), for tables whose kernel is not fused: the dense
    kernel of data_parallel tables, whose gradient DDP all-reduces before ``step()``.
    ``kwargs`` take FBGEMM's names: ``eps``, and ``beta1``/``beta2`` for Adam."""
    kw = dict(kwargs or {})
    allowed = {"rowwise_adagrad": {"eps"}, "adagrad": {"eps"}, "sgd": set(), "adam": {"eps", "beta1", "beta2"}}
    unknown = sorted(set(kw) - _pick(allowed, name, "embedding optimizer"))
    if unknown:
        raise ValueError(f"embedding optimizer kwargs {unknown} are not supported for {name!r} on tables with the "
                         f"dense kernel (data_parallel); supported: {sorted(allowed[name])}")
    eps = kw.get("eps", FBGEMM_EPS)
    if name == "rowwise_adagrad":
        return RowWiseAdagrad(params, lr=lr, eps=eps)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return RowSparseAdam(params, lr=lr, betas=(kw.get("beta1", 0.9), kw.get("beta2", 0.999)), eps=eps)


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
    every other parameter the dense optimizer. Returns (model, combined optimizer).

    Tables on TorchRec's dense kernel (all data_parallel tables) have no fused optimizer: left
    alone, TorchRec would leave them to the dense optimizer (Adam at the dense learning rate).
    They get the embedding optimizer instead, run by PyTorch after DDP has all-reduced their
    gradients (:func:`dense_embedding_optimizer`), so that a table learns alike under any plan."""
    emb_cls = _pick(EMBEDDING_OPTIMIZERS, embedding_optimizer, "embedding optimizer")
    fused_tables = [t for params in plan.plan.values() for t, ps in params.items()
                    if ps.sharding_type != ShardingType.DATA_PARALLEL.value]
    if embedding_optimizer == "adam" and ctx.device.type == "cpu" and fused_tables:
        raise ValueError("embedding optimizer adam: FBGEMM's CPU kernels have no fused Adam (tables "
                         f"{fused_tables[:3]}...); on CPU use rowwise_adagrad, adagrad or sgd, or shard the "
                         "tables data_parallel")
    dense_cls = _pick(DENSE_OPTIMIZERS, dense_optimizer, "dense optimizer")

    emb_params = [p for m in _ebcs(model) for p in m.parameters()]
    apply_optimizer_in_backward(emb_cls, emb_params, {"lr": embedding_lr, **(embedding_optimizer_kwargs or {})})
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan,
                                   sharders=sharders or make_sharders(), data_parallel_wrapper=_DenseParallel())
    rest = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_tables = {k: p for k, p in rest.items() if ".embedding_bags." in k and k.endswith(".weight")}
    dense_params = {k: p for k, p in rest.items() if k not in dense_tables}
    optims: List[Any] = [dmp.fused_optimizer]
    if dense_tables:
        optims.append(KeyedOptimizerWrapper(dense_tables, lambda ps: dense_embedding_optimizer(
            embedding_optimizer, list(ps), embedding_lr, embedding_optimizer_kwargs)))
    if dense_params:
        # one fused kernel over all dense parameters instead of a loop of small ops per parameter
        dense_kwargs = {"lr": dense_lr, "fused": True, **(dense_optimizer_kwargs or {})}
        optims.append(KeyedOptimizerWrapper(dense_params, lambda ps: dense_cls(ps, **dense_kwargs)))
    return dmp, CombinedOptimizer(optims)


class _DenseParallel(DefaultDataParallelWrapper):
    """TorchRec's DDP wrapping of the dense part, except in a single process: there DDP would only
    copy every gradient into its buckets, all-reduce them with no one and wait (about 0.5-2 ms of a
    10 ms step on CPU), so the dense part stays unwrapped."""

    def wrap(self, dmp: DistributedModelParallel, env: Any, device: torch.device) -> None:
        if env.world_size > 1:
            super().wrap(dmp, env, device)


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
