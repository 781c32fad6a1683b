"""Start-up shared by every command that needs the sharded model (train, evaluate, recommend, the
benchmarks): the process group, the data, the model planned and sharded by TorchRec, its optimizers
and pipeline, and loading a checkpoint into them."""

import dataclasses
import logging
import os
import warnings
from typing import Any, Dict, Optional, Set

import torch
from torch import nn
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import KeyedOptimizerWrapper

from torchrec_fusion.data.types import BatchSource
from torchrec_fusion.distributed.launcher import DistContext, cpu_cores, init_distributed
from torchrec_fusion.distributed.replication import replicated_in, small_table_constraints
from torchrec_fusion.distributed.sharding import make_sharders, plan_sharding, shard_model
from torchrec_fusion.modules.model import MultiTaskTrain
from torchrec_fusion.training.allocator import retain_freed_memory
from torchrec_fusion.training.checkpoint import load_checkpoint, load_rng
from torchrec_fusion.training.config import TrainConfig, import_plugins
from torchrec_fusion.training.factory import build_train_model
from torchrec_fusion.training.limits import check_tables_fit
from torchrec_fusion.training.prepare import PreparedData, prepare_data


class _DropBenign(logging.Filter):
    """TorchRec's planner warns on the root logger for every data_parallel table (they have no
    sharding spec, by design)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found for ")


def quiet_third_party_logs() -> None:
    """Silences TorchRec's and torch's planner/deprecation chatter; our own log stays."""
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropBenign) for f in root.filters):
        root.addFilter(_DropBenign())
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torchrec|torch|torchrec_fusion)(\.|$)")


@dataclasses.dataclass
class Session:
    """A model ready to train or score: sharded by the planner, with its optimizer and pipeline."""

    model: MultiTaskTrain  # the unsharded module DMP wraps
    dmp: nn.Module
    optimizer: Any
    pipeline: TrainPipelineSparseDist
    plan: Any

    @property
    def module(self) -> MultiTaskTrain:
        """The training module as DMP holds it (its embedding tables replaced by sharded ones)."""
        return train_module(self.dmp)


def train_module(dmp: nn.Module) -> MultiTaskTrain:
    """The :class:`MultiTaskTrain` inside a DMP model."""
    module = getattr(dmp, "module", dmp)
    if not isinstance(module, MultiTaskTrain):
        raise TypeError(f"expected a DMP-wrapped MultiTaskTrain, got {type(module).__name__}")
    return module


@dataclasses.dataclass
class Started:
    """One rank's start-up: where it stands, its data, and its sharded model."""

    ctx: DistContext
    prepared: PreparedData
    session: Session


def _replicated_before(config: TrainConfig) -> Optional[Set[str]]:
    """The tables replicated in the checkpoint a resumed run continues (None for a fresh start)."""
    from torchrec_fusion.training.checkpoint import read_state

    path = resume_path(config)
    return replicated_in(str(read_state(path).get("plan", ""))) if path else None


def build_session(config: TrainConfig, ctx: DistContext, data: BatchSource) -> Session:
    """Builds ``config``'s model for ``data`` on the meta device, plans it with the memory budget
    of ``config.rank_memory_mb``, and shards it with DMP (tables are not initialised here)."""
    model = build_train_model(config, data)
    asked = {t: ParameterConstraints(**c) for t, c in (config.constraints or {}).items()}
    budget = {} if config.rank_memory_mb is None else {"memory_budget_bytes": int(config.rank_memory_mb * 2**20)}
    # small tables replicated unasked (asked constraints, --sharding-type and a memory budget win)
    constraints = small_table_constraints(model, ctx.world_size, config.embedding_optimizer, config.sharding_type,
                                          asked, memory_budget=bool(budget), previous=_replicated_before(config))
    sharders = make_sharders(config.sharding_type, constraints)
    plan = plan_sharding(model, ctx, config.batch_size, config.sharding_type, constraints, sharders,
                         embedding_optimizer=config.embedding_optimizer, **budget)
    dmp, optimizer = shard_model(
        model, ctx, plan,
        embedding_optimizer=config.embedding_optimizer, embedding_lr=config.embedding_lr,
        dense_optimizer=config.dense_optimizer, dense_lr=config.dense_lr,
        dense_optimizer_kwargs={"weight_decay": config.dense_weight_decay} if config.dense_weight_decay else None,
        sharders=sharders,
    )
    return Session(model, dmp, optimizer, TrainPipelineSparseDist(dmp, optimizer, ctx.device), plan)


def set_threads(requested: Optional[int], ctx: DistContext) -> int:
    """Sets this rank's intra-op threads: ``requested``, else this machine's cores shared among its
    local ranks (at least 1; ranks outnumbering cores would otherwise fight over them). Returns it."""
    threads = requested or max(1, cpu_cores() // ctx.local_world_size)
    torch.set_num_threads(threads)
    return threads


def start(config: TrainConfig) -> Started:
    """Joins the process group, seeds, loads the data and shards the model: every command's start."""
    quiet_third_party_logs()
    import_plugins(config.plugins)  # a spawned rank registers the plugin components again
    ctx = init_distributed(config.device)
    set_threads(config.threads, ctx)
    retain_freed_memory()
    torch.manual_seed(config.seed)
    prepared = prepare_data(config)
    data = prepared.train
    # before the model is built: tables this machine cannot hold are refused, naming the feature
    check_tables_fit({f: data.num_embeddings[f] for f in data.feature_names}, config.embedding_dim,
                     config.embedding_optimizer, len(config.ensemble or [None]), ctx.device, ctx.world_size,
                     ctx.local_world_size, ctx.is_main)
    return Started(ctx, prepared, build_session(config, ctx, data))


def start_from_checkpoint(config: TrainConfig, checkpoint: str) -> "tuple[Started, Dict[str, Any]]":
    """:func:`start`, then the model (not the optimizer) of ``checkpoint``, resharded to this world size."""
    started = start(config)
    state = load_checkpoint(checkpoint, started.session.dmp)
    return started, state


def generators(module: nn.Module) -> Dict[str, torch.Generator]:
    """Every torch.Generator a submodule keeps (PCGrad's, for one): their state is part of a resume."""
    return {f"{path}.{k}": v for path, m in module.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Generator)}


def init_optimizer_state(optimizer: Any) -> None:
    """Creates the lazily built state of the dense optimizers (a zero-gradient step), so that a
    checkpoint can be loaded into it in place; fused embedding optimizers have theirs already."""
    for _, opt in getattr(optimizer, "optimizers", [("", optimizer)]):
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()
            for p in opt.params.values():
                p.grad = None


def restore(session: Session, path: str, ctx: DistContext, exact: bool = True) -> Dict[str, Any]:
    """Loads checkpoint ``path`` into ``session`` (resharding to this world size and plan).
    ``exact``: also restore the RNG states when the world size is the saved one."""
    init_optimizer_state(session.optimizer)
    state: Dict[str, Any] = load_checkpoint(path, session.dmp, session.optimizer)
    if exact and state.get("world_size") == ctx.world_size:
        rng = load_rng(path, ctx.rank)  # tensors only
        torch.set_rng_state(rng["torch"])
        for name, g in generators(session.dmp).items():
            if name in rng["generators"]:
                g.set_state(rng["generators"][name])
    return state


def resume_path(config: TrainConfig) -> Optional[str]:
    """The checkpoint ``config.resume`` names: "auto" is the latest under OUT/checkpoints (None
    when there is none yet, a fresh start); a path must hold a published checkpoint."""
    from torchrec_fusion.training.checkpoint import latest_checkpoint

    if not config.resume:
        return None
    if config.resume == "auto":
        if not config.output_dir:
            raise ValueError("--resume auto needs --output-dir (it looks in OUT/checkpoints)")
        return latest_checkpoint(os.path.join(config.output_dir, "checkpoints"))
    path = config.resume
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a run folder
        path = latest_checkpoint(os.path.join(path, "checkpoints")) or path
    elif os.path.exists(os.path.join(path, "latest")):  # a checkpoints folder
        path = latest_checkpoint(path) or path
    return path
