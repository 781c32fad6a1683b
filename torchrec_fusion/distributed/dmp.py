"""The model wrapped in TorchRec's DistributedModelParallel under a plan, with its optimizers: fused
ones applied in backward for the tables, PyTorch's for the dense part."""

from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.distributed.optimizers import (
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    choose,
    dense_embedding_optimizer,
)
from torchrec_fusion.distributed.sharders import make_sharders
from torchrec_fusion.distributed.tables import embedding_bag_collections


class _DenseParallel(DefaultDataParallelWrapper):  # type: ignore[misc]  # torchrec is untyped
    """TorchRec's DDP wrapping of the dense part, except in a single process: there DDP would only
    copy every gradient into its buckets, all-reduce them with no one and wait (about 0.5-2 ms of a
    10 ms step on CPU), so the dense part stays unwrapped."""

    def wrap(self, dmp: DistributedModelParallel, env: Any, device: torch.device) -> None:
        if env.world_size > 1:
            super().wrap(dmp, env, device)


def _check_fused_adam(embedding_optimizer: str, ctx: DistContext, plan: ShardingPlan) -> None:
    """FBGEMM has no CPU kernel for its fused Adam: refuse it for tables that would need one."""
    fused_tables = [t for params in plan.plan.values() for t, ps in params.items()
                    if ps.sharding_type != ShardingType.DATA_PARALLEL.value]
    if embedding_optimizer == "adam" and ctx.device.type == "cpu" and fused_tables:
        raise ValueError("embedding optimizer adam: FBGEMM's CPU kernels have no fused Adam (tables "
                         f"{fused_tables[:3]}...); on CPU use rowwise_adagrad, adagrad or sgd, or shard the "
                         "tables data_parallel")


def _combined_optimizer(dmp: DistributedModelParallel, embedding_optimizer: str, embedding_lr: float,
                        embedding_optimizer_kwargs: Optional[Mapping[str, Any]],
                        dense_cls: type, dense_kwargs: Mapping[str, Any]) -> CombinedOptimizer:
    """DMP's fused optimizer, the embedding optimizer for tables on the dense kernel, and the dense
    optimizer for every other parameter, as one optimizer."""
    rest = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_tables = {k: p for k, p in rest.items() if ".embedding_bags." in k and k.endswith(".weight")}
    dense_params = {k: p for k, p in rest.items() if k not in dense_tables}
    optims: List[Any] = [dmp.fused_optimizer]
    if dense_tables:
        optims.append(KeyedOptimizerWrapper(dense_tables, lambda ps: dense_embedding_optimizer(
            embedding_optimizer, list(ps), embedding_lr, embedding_optimizer_kwargs)))
    if dense_params:
        optims.append(KeyedOptimizerWrapper(dense_params, lambda ps: dense_cls(ps, **dense_kwargs)))
    return CombinedOptimizer(optims)


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
    gradients (``dense_embedding_optimizer``), so that a table learns alike under any plan."""
    emb_cls = choose(EMBEDDING_OPTIMIZERS, embedding_optimizer, "embedding optimizer")
    _check_fused_adam(embedding_optimizer, ctx, plan)
    dense_cls = choose(DENSE_OPTIMIZERS, dense_optimizer, "dense optimizer")

    emb_params = [p for m in embedding_bag_collections(model) for p in m.parameters()]
    apply_optimizer_in_backward(emb_cls, emb_params, {"lr": embedding_lr, **(embedding_optimizer_kwargs or {})})
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan,
                                   sharders=sharders or make_sharders(), data_parallel_wrapper=_DenseParallel())
    # one fused kernel over all dense parameters instead of a loop of small ops per parameter
    dense_kwargs = {"lr": dense_lr, "fused": True, **(dense_optimizer_kwargs or {})}
    return dmp, _combined_optimizer(dmp, embedding_optimizer, embedding_lr, embedding_optimizer_kwargs,
                                    dense_cls, dense_kwargs)
