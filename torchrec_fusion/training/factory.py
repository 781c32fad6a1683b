"""The model of a run: its EmbeddingBagCollection, its architecture (or an ensemble of complete
models), and the training wrapper with its loss balancing and fusion head."""

import dataclasses
from typing import Dict, List, Optional, Protocol, Sequence

import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_fusion.data.negatives import NegativeSampledData
from torchrec_fusion.fusion.head import FusionHead
from torchrec_fusion.losses import build_balancer
from torchrec_fusion.losses.retrieval import RetrievalLoss, mixture_log_q
from torchrec_fusion.modules.ensemble import DLRMMember, ModelEnsemble
from torchrec_fusion.modules.interface import MultiTaskModule
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain, loss_tasks
from torchrec_fusion.modules.retrieval import RetrievalArch
from torchrec_fusion.tasks import TaskKind, TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.precision import device_type, resolve_precision


class ModelSchema(Protocol):
    """What the factory reads off the data: features, table sizes, tasks (a loaded dataset or an
    exported run's schema)."""

    @property
    def feature_names(self) -> List[str]: ...

    @property
    def num_embeddings(self) -> Dict[str, int]: ...

    @property
    def pooling(self) -> Dict[str, str]: ...

    @property
    def num_dense(self) -> int: ...

    @property
    def tasks(self) -> List[TaskSpec]: ...

    def label_means(self) -> torch.Tensor: ...


_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def build_ebc(data: ModelSchema, embedding_dim: int, device: str = "meta", prefix: str = "") -> EmbeddingBagCollection:
    """One table ``<prefix>t_<feature>`` per sparse feature, sized from the data; on ``meta``
    by default so that no rank ever materialises a whole table before sharding."""
    tables = [
        EmbeddingBagConfig(name=f"{prefix}t_{f}", embedding_dim=embedding_dim, num_embeddings=data.num_embeddings[f],
                           feature_names=[f], pooling=_POOLING[data.pooling.get(f, "sum")])
        for f in data.feature_names
    ]
    return EmbeddingBagCollection(tables=tables, device=torch.device(device))


def _dlrm_member(config: TrainConfig, data: ModelSchema, ebc: EmbeddingBagCollection) -> DLRMMember:
    binary = [t for t in data.tasks if t.kind == TaskKind.BINARY]
    if not binary:
        raise ValueError("a dlrm ensemble member needs a binary task")
    target = next((t for t in binary if t.name == config.fusion_target), binary[0])
    dlrm = DLRM(ebc, data.num_dense, list(config.dense_arch_layer_sizes) + [config.embedding_dim],
                list(config.tower_layer_sizes) + [1])
    return DLRMMember(dlrm, target)


def build_model(config: TrainConfig, data: ModelSchema, arch: str, device: str = "meta",
                prefix: str = "") -> MultiTaskModule:
    """One complete model of architecture ``arch`` (or TorchRec's DLRM, ``"dlrm"``) with its own tables."""
    ebc = build_ebc(data, config.embedding_dim, device, prefix)
    if arch == "dlrm":
        return _dlrm_member(config, data, ebc)
    model = MultiTaskModel(
        ebc,
        dense_in_features=data.num_dense,
        tasks=data.tasks,
        arch=arch,
        arch_kwargs=config.member_options("arch", arch),
        dense_arch_layer_sizes=config.dense_arch_layer_sizes,
        tower_layer_sizes=config.tower_layer_sizes,
        interaction=config.interaction,
        dropout=config.dropout,
        embedding_l2=config.embedding_l2,
        precision=resolve_precision(config.precision, device_type(config.device))[0],
        retrieval=build_retrieval(config, data) if config.retrieval else None,
    )
    means = data.label_means()
    for j, t in enumerate(data.tasks):
        if t.kind == TaskKind.REGRESSION and not torch.isnan(means[j]):
            model.set_output_bias(t.name, float(means[j]))
    return model


_BAGS = ("user_history", "user_liked")


def build_retrieval(config: TrainConfig, data: ModelSchema) -> RetrievalArch:
    """The retrieval head of ``config`` over ``data``'s features (by default the user's history bags
    against the item id, the bags sqrt-pooled)."""
    users = config.retrieval_user_features or [f for f in _BAGS if f in data.feature_names]
    items = config.retrieval_item_features or ["item"]
    missing = sorted(set(users + items) - set(data.feature_names))
    if not users or missing:
        raise ValueError(f"retrieval towers need features of the data {data.feature_names}: user side {users}, "
                         f"item side {items} (history bags need history_length > 0)")
    item_bias = "item" if config.retrieval_item_bias and "item" in items else None
    return RetrievalArch(users, items, config.embedding_dim, config.retrieval_layer_sizes,
                         sqrt_pooled=[f for f in users + items if f in _BAGS], item_bias_feature=item_bias,
                         num_items=data.num_embeddings.get("item", 0))


def build_retrieval_loss(config: TrainConfig, data: ModelSchema) -> RetrievalLoss:
    """The retrieval loss, its log-Q table from the training rows' item shares and the sampler's."""
    n = data.num_embeddings["item"]
    extras: Dict[str, torch.Tensor] = getattr(data, "extras", {})
    counts = torch.bincount(extras["item"].long(), minlength=n).double() if "item" in extras else torch.ones(n)
    sampler = data.sampler if isinstance(data, NegativeSampledData) else None
    batch, sampled = config.batch_size, config.batch_size * config.negatives
    log_q = mixture_log_q(torch.arange(n), counts / counts.sum(), None if sampler is None else
                          sampler.probabilities().double(), batch, sampled if sampler is not None else 0)
    return RetrievalLoss(log_q, "item", config.retrieval_loss_weight, config.retrieval_temperature)


def _member_names(ensemble: Sequence[str]) -> List[str]:
    return [f"{a}{i}" if list(ensemble).count(a) > 1 else a for i, a in enumerate(ensemble)]


def weighted_tasks(tasks: Sequence[TaskSpec], weights: Optional[Dict[str, float]]) -> List[TaskSpec]:
    """``tasks`` with the loss weights named in ``weights`` (a weight of 0 trains without that task).

    Example::

        tasks = weighted_tasks([TaskSpec("like"), TaskSpec("rating", "regression")], {"rating": 0.0})
        assert [t.loss_weight for t in tasks] == [1.0, 0.0]
    """
    weights = weights or {}
    unknown = sorted(set(weights) - {t.name for t in tasks})
    if unknown:
        raise ValueError(f"task_weights: unknown task(s) {unknown}; the model's tasks are {[t.name for t in tasks]}")
    return [dataclasses.replace(t, loss_weight=float(weights[t.name])) if t.name in weights else t for t in tasks]


def build_train_model(config: TrainConfig, data: ModelSchema, device: str = "meta") -> MultiTaskTrain:
    """The model of ``config`` for ``data``'s features and tasks (an ensemble of complete
    models with ``config.ensemble``), wrapped for training with its balancing and fusion."""
    target = config.fusion_target
    model: MultiTaskModule
    if config.ensemble:
        names = _member_names(config.ensemble)
        model = ModelEnsemble(
            {n: build_model(config, data, a, device, prefix=f"{n}_") for n, a in zip(names, config.ensemble)},
            [t.name for t in data.tasks])
        if target is not None:  # the fused score is supervised by the batch column of that task
            target = next((t.name for t in model.tasks if t.name.endswith(f"_{target}")), target)
    else:
        model = build_model(config, data, config.arch, device)
    fusion: Optional[FusionHead] = None
    if config.fusion != "none":
        binary = [t.name for t in model.tasks if t.kind == TaskKind.BINARY]
        fusion = FusionHead(config.fusion, [t.name for t in model.tasks], model.feature_dim,
                            options=config.member_options("fusion"),
                            anchor=target if target in binary else next(iter(binary), None))
    balancer = build_balancer(config.balancing, weighted_tasks(loss_tasks(model), config.task_weights),
                              options=config.member_options("balancing"))
    retrieval = build_retrieval_loss(config, data) if config.retrieval and not config.ensemble else None
    return MultiTaskTrain(model, balancer, fusion, target, config.fusion_loss_weight, retrieval)
