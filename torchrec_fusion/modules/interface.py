"""The interface of a model that :class:`~torchrec_fusion.modules.model.MultiTaskTrain` trains."""

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.tasks import TaskSpec


class MultiTaskModule(nn.Module, ABC):
    """A model with one raw output per task (logits or values), as ``MultiTaskTrain`` needs it:
    :class:`~torchrec_fusion.modules.model.MultiTaskModel`,
    :class:`~torchrec_fusion.modules.ensemble.ModelEnsemble` and
    :class:`~torchrec_fusion.modules.ensemble.DLRMMember` implement it, and so can a model of one's own.

    Attributes:
        tasks: the task specs, one output each, in order.

    Example::

        from torchrec_fusion.tasks import TaskSpec

        class Constant(MultiTaskModule):
            def __init__(self) -> None:
                super().__init__()
                self.tasks = [TaskSpec("click")]
                self.bias = torch.nn.Parameter(torch.zeros(()))

            @property
            def feature_dim(self) -> int:
                return 0

            def forward_with_features(self, dense_features, sparse_features):
                b = dense_features.size(0)
                return {"click": self.bias.expand(b)}, dense_features.new_zeros(b, 0)

            def label_columns(self):
                return None

            def regularization(self):
                return None

            def gate_weights(self):
                return None

            def shared_parameters(self):
                return []

        assert Constant()(torch.rand(3, 2), None)["click"].shape == (3,)
    """

    tasks: List[TaskSpec]

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Width of the feature vector returned by :meth:`forward_with_features` (0: none)."""

    @abstractmethod
    def forward_with_features(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
                              ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The raw output per task name and the feature vector ``[B, feature_dim]`` they came from
        (the context a fusion head reads), in the dense part's compute dtype (bfloat16 under
        ``precision: bf16``: a reader casts it if it needs fp32)."""

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """The raw output per task: logits (binary ``[B]``, multiclass ``[B, C]``) or values
        (regression ``[B]``); :func:`~torchrec_fusion.modules.model.to_predictions` turns them into
        probabilities."""
        return self.forward_with_features(dense_features, sparse_features)[0]

    @abstractmethod
    def label_columns(self) -> Optional[List[int]]:
        """The batch label column of each task when they differ from the task order (ensembles), else None."""

    @abstractmethod
    def regularization(self) -> Optional[torch.Tensor]:
        """A penalty the trainer adds to the loss (from the last training forward), or None."""

    @abstractmethod
    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """Per task, the last batch's gate weights ``[B, E]`` (detached), or None without gates."""

    @abstractmethod
    def shared_parameters(self) -> List[nn.Parameter]:
        """The dense parameters every task's loss flows through, which gradient-based loss
        balancing acts on (empty: none)."""

    def retrieval_vectors(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The user and item vectors ``[B, d]`` of the last forward's rows when the model has a
        retrieval head (:class:`~torchrec_fusion.modules.retrieval.RetrievalArch`), else None."""
        return None
