"""The multi-task model and its training wrapper, in the shape of TorchRec's DLRM."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.losses import FixedWeights, LossBalancer, task_loss, task_losses
from torchrec_fusion.losses.retrieval import RetrievalLoss
from torchrec_fusion.losses.task_losses import with_chain_labels
from torchrec_fusion.modules.architectures import MultiTaskArch, build_architecture
from torchrec_fusion.modules.architectures.base import TaskChain
from torchrec_fusion.modules.features import FeatureArch
from torchrec_fusion.modules.interface import MultiTaskModule
from torchrec_fusion.modules.retrieval import RetrievalArch
from torchrec_fusion.modules.towers import TaskTowers
from torchrec_fusion.tasks import TaskKind, TaskSpec, check_tasks

# the dense part's compute dtype under torch.autocast (None: plain fp32)
PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}


class MultiTaskModel(MultiTaskModule):
    """A multi-task recommender over one (shardable) EmbeddingBagCollection.

    ``FeatureArch`` (embeddings, dense MLP, dot interactions) feeds a
    multi-task architecture (shared-bottom, MMoE, ...) whose per-task
    representations go through one tower per task.

    Args:
        embedding_bag_collection: the EBC; build it on ``torch.device("meta")``
            when the model is to be sharded by DMP.
        dense_in_features: width of the dense features.
        tasks: the task specs.
        arch: registered architecture name, or a built :class:`MultiTaskArch`.
        arch_kwargs: the architecture's options (its ``Options``: ``num_experts``...), checked: an
            unknown or mistyped one is a ``ValueError``; a ``dropout`` here overrides ``dropout``.
        dense_arch_layer_sizes: hidden sizes of the dense MLP.
        tower_layer_sizes: hidden sizes of each task tower.
        interaction: add pairwise dot products of the feature embeddings.
        dropout: dropout inside architecture and towers.
        embedding_l2: L2 penalty weight on looked-up embeddings (see :class:`FeatureArch`);
            :class:`MultiTaskTrain` adds it to the loss.
        precision: ``"fp32"``, or ``"bf16"``: the dense part (MLPs, experts, gates, towers) runs
            under ``torch.autocast`` in bfloat16 (its matrix products 4-5x faster on CPUs with
            AVX512-BF16 or AMX); parameters, optimizer state, embeddings, outputs and losses stay fp32.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_user", embedding_dim=8, num_embeddings=100, feature_names=["user"]),
            EmbeddingBagConfig(name="t_item", embedding_dim=8, num_embeddings=50, feature_names=["item"]),
        ])
        model = MultiTaskModel(ebc, dense_in_features=2,
                               tasks=[TaskSpec("like", "binary"), TaskSpec("rating", "regression")],
                               arch="mmoe", arch_kwargs={"num_experts": 2, "expert_layer_sizes": [16]})
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        out = model(torch.rand(2, 2), kjt)
        assert out["like"].shape == (2,) and out["rating"].shape == (2,)
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        tasks: Sequence[TaskSpec],
        arch: Any = "mmoe",
        arch_kwargs: Optional[Mapping[str, Any]] = None,
        dense_arch_layer_sizes: Sequence[int] = (64,),
        tower_layer_sizes: Sequence[int] = (64,),
        interaction: bool = True,
        dropout: float = 0.0,
        embedding_l2: float = 0.0,
        precision: str = "fp32",
        retrieval: Optional[RetrievalArch] = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.tasks = check_tasks(tasks)
        self.feature_arch = FeatureArch(embedding_bag_collection, dense_in_features, list(dense_arch_layer_sizes),
                                        interaction, embedding_l2)
        names = [t.name for t in self.tasks]
        if isinstance(arch, MultiTaskArch):
            self.task_arch = arch
        else:
            options = dict(arch_kwargs or {})
            arch_dropout = options.pop("dropout", dropout)
            self.task_arch = build_architecture(arch, self.feature_arch.out_features, names, dropout=arch_dropout,
                                                options=options)
        kinds = {t.name: t.kind for t in self.tasks}
        for c in self.task_arch.chains:
            if not all(kinds[n] == TaskKind.BINARY for n in (c.first, c.second)):
                raise ValueError(f"arch_options.chain [{c.first}, {c.second}]: a chain multiplies two probabilities, "
                                 f"its tasks must be binary, not {[kinds[c.first].value, kinds[c.second].value]}")
        self.towers = TaskTowers(self.task_arch.out_features, self.tasks, tower_layer_sizes, dropout)
        self.retrieval = retrieval
        self._retrieval_vectors: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def forward_with_features(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
                              ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The outputs of :meth:`forward` and the feature vector ``[B, H]`` they came from."""
        dtype = PRECISIONS[self.precision]
        # TrainPipelineSparseDist traces the model only to find its inputs: no autocast then
        if dtype is None or is_fx_symbolic_tracing():
            features, pooled = self.feature_arch.forward_pooled(dense_features, sparse_features)
            outputs = self.task_arch.combine_outputs(self.towers(self.task_arch(features)))
        else:
            with torch.autocast(dense_features.device.type, dtype=dtype):
                # the features come in ``dtype``: the experts and the gates would each cast fp32 ones again
                features, pooled = self.feature_arch.forward_pooled(dense_features, sparse_features, dtype)
                outputs = self.task_arch.combine_outputs(self.towers(self.task_arch(features)))
            outputs = {k: v.float() for k, v in outputs.items()}  # the features stay in ``dtype``
        if self.retrieval is not None:  # outside autocast: fp32 dot products, compared over the catalogue
            user, item = self.retrieval(pooled, self.retrieval.bag_lengths(sparse_features),
                                        self.retrieval.bias_ids(sparse_features))
            self._retrieval_vectors = (user, item)  # the score is their dot product (MultiTaskTrain)
        return outputs, features

    def retrieval_vectors(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return self._retrieval_vectors

    @property
    def chains(self) -> List[TaskChain]:
        """The architecture's entire-space chains: each adds an output ``<first>_x_<second>``."""
        return self.task_arch.chains

    @property
    def feature_dim(self) -> int:
        """Width of the feature vector returned by :meth:`forward_with_features`."""
        return self.feature_arch.out_features

    def label_columns(self) -> Optional[List[int]]:
        """Batch label column of each task when they differ from the task order (ensembles)."""
        return None

    def regularization(self) -> Optional[torch.Tensor]:
        """The embedding penalty of the last training forward, if any."""
        return self.feature_arch.penalty if self.feature_arch.embedding_l2 and self.training else None

    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """The architecture's last gate weights per task (None without gates)."""
        return self.task_arch.gate_weights()

    def shared_parameters(self) -> List[nn.Parameter]:
        """The dense parameters every task's loss flows through: the dense MLP and the
        multi-task architecture (experts, gates), not the towers nor the embeddings.
        Gradient-based loss balancing acts on these."""
        return list(self.feature_arch.dense_arch.parameters()) + list(self.task_arch.parameters())

    def set_output_bias(self, task: str, value: float) -> None:
        """Starts a task's head at ``value`` (the label mean for a regression task)."""
        with torch.no_grad():
            cast(nn.Linear, self.towers.heads[task]).bias.fill_(value)


def _chains(model: MultiTaskModule) -> List[TaskChain]:
    if isinstance(model, MultiTaskModel):
        return model.chains
    if any(isinstance(m, MultiTaskModel) and m.chains for m in model.modules()):
        raise ValueError("arch_options.chain: an ensemble member's chain would be neither trained nor scored; "
                         "train the chained architecture on its own")
    return []


def loss_tasks(model: MultiTaskModule) -> List[TaskSpec]:
    """The tasks :class:`MultiTaskTrain` computes a loss, a prediction and metrics for (and a balancer
    weighs): the model's, then one binary task per entire-space chain of its architecture.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        tasks = [TaskSpec("like"), TaskSpec("interaction")]
        model = MultiTaskModel(ebc, 1, tasks, arch="esmm", arch_kwargs={"chain": ["interaction", "like"]})
        assert [t.name for t in loss_tasks(model)] == ["like", "interaction", "interaction_x_like"]
    """
    return list(model.tasks) + [c.spec for c in _chains(model)]


def to_predictions(tasks: Sequence[TaskSpec], outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Sigmoid for binary, softmax for multiclass, identity for regression."""
    preds = {}
    for t in tasks:
        y = outputs[t.name]
        preds[t.name] = torch.sigmoid(y) if t.kind == TaskKind.BINARY else (
            torch.softmax(y, dim=-1) if t.kind == TaskKind.MULTICLASS else y)
    return preds


class MultiTaskTrain(nn.Module):
    """Wraps a :class:`MultiTaskModel` (or any :class:`MultiTaskModule`) for ``TrainPipelineSparseDist``,
    as ``DLRMTrain`` does.

    Args:
        model: the multi-task model.
        balancer: combines the per-task losses; fixed ``loss_weight`` by default.
        fusion: optional fusion head (``torchrec_fusion.fusion.head.FusionHead``):
            fuses the detached task predictions (and the feature vector as
            context) into one score, trained in the same loop.
        fusion_target: the binary task whose label supervises the fused score.
        fusion_loss_weight: weight of the fusion loss in the total loss.

    ``forward(batch)`` returns ``(loss, (loss.detach(), predictions, labels))``:
    predictions and labels are dicts keyed by task name (and ``"fused"``, the
    fused probability and its target label, with a fusion head); a label that
    is absent (mask False) is NaN, so metrics skip it. The last per-task losses
    are kept in ``last_task_losses``. ``tasks`` is :func:`loss_tasks`: an
    entire-space chain of the architecture is one more binary task, its label
    derived from its two tasks' columns (:func:`~torchrec_fusion.losses.task_losses.chain_labels`);
    ``balancer`` must weigh every one of them.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec_fusion.data.batch import MultiTaskBatch
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        train = MultiTaskTrain(MultiTaskModel(ebc, 1, [TaskSpec("like")], arch="shared_bottom"))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
        batch = MultiTaskBatch(torch.rand(2, 1), kjt, torch.tensor([[1.0], [0.0]]),
                               torch.tensor([[True], [False]]), ("like",))
        loss, (_, preds, labels) = train(batch)
        loss.backward()
        assert labels["like"].isnan().tolist() == [False, True]
    """

    model: MultiTaskModule
    balancer: LossBalancer

    def __init__(self, model: MultiTaskModule, balancer: Optional[LossBalancer] = None,
                 fusion: Optional[nn.Module] = None, fusion_target: Optional[str] = None,
                 fusion_loss_weight: float = 1.0, retrieval_loss: Optional[RetrievalLoss] = None) -> None:
        super().__init__()
        self.model = model
        self.retrieval_loss = retrieval_loss
        self.tasks = loss_tasks(model)
        self.balancer = balancer if balancer is not None else FixedWeights(self.tasks)
        missing = [t.name for t in self.tasks if t.name not in self.balancer.task_names]
        if missing:
            raise ValueError(f"the loss balancer has no weight for task(s) {missing}: build it over loss_tasks(model)")
        names = [t.name for t in model.tasks]
        self._chain_cols = [(names.index(c.first), names.index(c.second)) for c in _chains(model)]
        self.balancer.bind(model.shared_parameters)
        self.fusion = fusion
        self.fusion_loss_weight = fusion_loss_weight
        self._label_cols = model.label_columns()
        self._fusion_col = -1
        if fusion is not None:
            names = [t.name for t in self.tasks]
            target = fusion_target or next((t.name for t in self.tasks if t.kind == TaskKind.BINARY), None)
            if target not in names or self.tasks[names.index(target)].kind != TaskKind.BINARY:
                raise ValueError(f"fusion target must be a binary task of {names}, got {target!r}")
            self._fusion_col = names.index(target)
        self.last_task_losses: Dict[str, torch.Tensor] = {}

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
        outputs, features = self.model.forward_with_features(batch.dense_features, batch.sparse_features)
        y, m, w = batch.labels, batch.masks, batch.weights
        if self._label_cols is not None:  # several outputs read the same label column (ensembles)
            y, m = y[:, self._label_cols], m[:, self._label_cols]
            w = None if w is None else w[:, self._label_cols]
        if self._chain_cols:  # a label column per chain, after the tasks'
            y, m, w = with_chain_labels(y, m, w, self._chain_cols)
        losses = task_losses(self.tasks, outputs, y, m, w)
        loss = self.balancer(losses)
        penalty = self.model.regularization()
        if penalty is not None:
            loss = loss + penalty
        preds = {k: v.detach() for k, v in to_predictions(self.tasks, outputs).items()}
        labels_t = torch.where(m, y, torch.full_like(y, float("nan")))
        labels = {t.name: labels_t[:, j] for j, t in enumerate(self.tasks)}
        vectors = self.model.retrieval_vectors()
        if vectors is not None:
            user, item = vectors
            if self.retrieval_loss is not None and self.training:
                losses[RETRIEVAL] = self.retrieval_loss(user, item, batch, self.model.tasks)
                loss = loss + self.retrieval_loss.weight * losses[RETRIEVAL]
            preds[RETRIEVAL] = (user * item).sum(dim=1).detach()
            labels[RETRIEVAL] = torch.where(m.any(1), torch.ones_like(y[:, 0]), torch.full_like(y[:, 0], float("nan")))
        if self.fusion is not None:
            j = self._fusion_col
            fused = self.fusion(preds, features)
            losses["fused"] = task_loss(FUSED_TASK, fused, y[:, j], m[:, j], None if w is None else w[:, j])
            loss = loss + self.fusion_loss_weight * losses["fused"]
            preds["fused"], labels["fused"] = torch.sigmoid(fused).detach(), labels_t[:, j]
        self.last_task_losses = {k: v.detach() for k, v in losses.items()}
        return loss, (loss.detach(), preds, labels)


FUSED_TASK = TaskSpec("fused", TaskKind.BINARY)
RETRIEVAL = "retrieval"  # the output (and loss) of a retrieval head: the user-item dot product
