"""The deployable inference module: a model and its fusion as one module over TorchRec's inference
inputs (a dense tensor and a ``KeyedJaggedTensor``), returning every task's score and the fused one.

:class:`InferenceModule` runs eagerly over any architecture here (fp32 or quantized tables).
:func:`script_inference` makes a TorchScript module of it by TorchRec's own route where that route
holds: the embedding lookup (``SparseArch`` over the EBC, quantized or not) is traced by
``torchrec.fx.symbolic_trace`` and scripted (a ``KeyedJaggedTensor`` is a TorchScript class), and
the dense part (dense MLP, interaction, experts, towers, fusion) is ``torch.jit.trace``-d over
tensors (branches on shapes other than the batch's are fixed by the trace, the same for every batch).
What does not work (TorchRec 1.8, torch 2.13, CPU): FX-tracing the whole module stops at
``TaskTowers.forward``, which branches on an output width; ``torch.jit.script`` of the dense modules
fails on their Python (set comprehensions, ``cast``); ``torch.export`` (non-strict) stops at the fusion
normalizer's data-dependent input check (``fusion/normalize.py``, ``check_scores``), exports a model
without fusion for its example batch size only (the KJT's sizes are static without TorchRec's dynamic
shape marks), and fails on a quantized EBC (FBGEMM's ``AtomicCounter`` has no fake class). The traced
dense part leaves out the normalizer's NaN/inf checks. An ensemble (several EBCs behind Python loops)
and a retrieval head (it reads the KJT's bag lengths and bias ids in the dense part) are refused by
:func:`script_inference`: serve them eagerly.
"""

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import SparseArch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.modules.features import join_features
from torchrec_fusion.modules.model import PRECISIONS, RETRIEVAL, MultiTaskModel, MultiTaskTrain, to_predictions
from torchrec_fusion.tasks import TaskSpec


def score_names(train: MultiTaskTrain) -> List[str]:
    """The scores an :class:`InferenceModule` of ``train`` returns: every task (chains included),
    ``retrieval`` with a retrieval head, ``fused`` with a fusion head."""
    retrieval = getattr(train.model, "retrieval", None) is not None
    return [t.name for t in train.tasks] + ([RETRIEVAL] if retrieval else []) + (
        ["fused"] if train.fusion is not None else [])


class InferenceModule(nn.Module):
    """``forward(dense [B, D], kjt) -> {score: [B] (or [B, C] for a multiclass task)}``: the
    predictions ``MultiTaskTrain`` makes (sigmoid of binary logits, softmax of multiclass ones,
    regression values, each chain's product), the retrieval logit, and the fused probability.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec_fusion.fusion.head import FusionHead
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        model = MultiTaskModel(ebc, 1, [TaskSpec("like"), TaskSpec("rating", "regression")], arch="shared_bottom")
        head = FusionHead("weighted", ["like", "rating"], model.feature_dim, {"normalizer": "none"})
        train = MultiTaskTrain(model, fusion=head)
        kjt = KeyedJaggedTensor.from_lengths_sync(["user"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        scores = InferenceModule(train).eval()(torch.rand(2, 1), kjt)
        assert sorted(scores) == ["fused", "like", "rating"] and scores["fused"].shape == (2,)
    """

    def __init__(self, train: MultiTaskTrain) -> None:
        super().__init__()
        self.model = train.model
        self.fusion = train.fusion
        self.tasks: List[TaskSpec] = list(train.tasks)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        outputs, features = self.model.forward_with_features(dense, sparse)
        return _scores(self.tasks, outputs, features, self.model.retrieval_vectors(), self.fusion)


def _scores(tasks: Sequence[TaskSpec], outputs: Dict[str, torch.Tensor], features: torch.Tensor,
            vectors: Optional[Tuple[torch.Tensor, torch.Tensor]], fusion: Optional[nn.Module]
            ) -> Dict[str, torch.Tensor]:
    preds = to_predictions(tasks, outputs)
    if vectors is not None:
        preds[RETRIEVAL] = (vectors[0] * vectors[1]).sum(dim=1)
    if fusion is not None:
        preds["fused"] = torch.sigmoid(fusion(preds, features))
    return preds


class _DensePart(nn.Module):
    """Everything of a :class:`MultiTaskModel` after the lookup: ``(dense, pooled [B, F, D])`` to the
    scores, as ``FeatureArch.forward_pooled`` and ``MultiTaskModel.forward_with_features`` compute them
    (under bf16 autocast when the model's precision says so). It holds no embedding table."""

    def __init__(self, model: MultiTaskModel, tasks: Sequence[TaskSpec], fusion: Optional[nn.Module]) -> None:
        super().__init__()
        self.dense_arch, self.interaction_arch = model.feature_arch.dense_arch, model.feature_arch.interaction_arch
        self.task_arch, self.towers, self.fusion, self.tasks = model.task_arch, model.towers, fusion, list(tasks)
        self.dtype = PRECISIONS[model.precision]

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            features = join_features(self.dense_arch(dense), sparse, self.interaction_arch)
            outputs = self.task_arch.combine_outputs(self.towers(self.task_arch(features)))
        outputs = {k: v.float() for k, v in outputs.items()}
        return _scores(self.tasks, outputs, features.float(), None, self.fusion)


class _Scripted(nn.Module):
    """The TorchScript module :func:`script_inference` returns: the scripted lookup, then the traced rest."""

    def __init__(self, sparse: torch.jit.ScriptModule, dense: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.sparse, self.dense = sparse, dense

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        scores: Dict[str, torch.Tensor] = self.dense(dense, self.sparse(sparse))
        return scores


def script_inference(module: InferenceModule, dense: torch.Tensor, sparse: KeyedJaggedTensor
                     ) -> torch.jit.ScriptModule:
    """A TorchScript module computing ``module``'s scores (see the module's docstring for the route),
    traced on the example batch ``(dense, sparse)`` (two rows or more); save it with
    ``torch.jit.save`` and load it with ``torch.jit.load``. A model the route cannot carry (an
    ensemble, a retrieval head) is a ``ValueError`` saying why."""
    import torchrec.fx

    model = module.model
    if not isinstance(model, MultiTaskModel):
        raise ValueError(f"{type(model).__name__}: only a single MultiTaskModel is scripted (an ensemble holds "
                         "one EBC per member behind Python loops the FX tracer cannot follow); serve it eagerly")
    if model.retrieval is not None:
        raise ValueError("a retrieval head reads the KJT's bag lengths and bias ids inside the dense part, which "
                         "only torch.jit.trace can take (over tensors, not a KJT); serve it eagerly")
    # a copy: tracing a quantized EBC caches a proxy in its buffers
    lookup: SparseArch = copy.deepcopy(model.feature_arch.sparse_arch)
    sparse_script = torch.jit.script(torchrec.fx.symbolic_trace(lookup))
    pooled = sparse_script(sparse)
    dense_part = _DensePart(model, module.tasks, module.fusion).eval()
    with torch.no_grad():
        dense_trace = torch.jit.trace(  # type: ignore[no-untyped-call]  # untyped in torch
            dense_part, (dense, pooled), strict=False, check_trace=False)
    scripted: torch.jit.ScriptModule = torch.jit.script(_Scripted(sparse_script, dense_trace))
    return scripted
