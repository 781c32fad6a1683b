"""The multi-task architecture family: shared input in, one representation per task out."""

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


def mlp(in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear + ReLU (+ dropout) layers; an empty ``layer_sizes`` is the identity."""
    layers: List[nn.Module] = []
    for size in layer_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = size
    return nn.Sequential(*layers)


class MultiTaskArch(nn.Module, ABC):
    """Base of every multi-task architecture.

    Subclasses map the feature vector ``[B, in_features]`` to one
    representation ``[B, out_features]`` per task. Architectures with gates
    keep the last batch's gate weights for introspection.

    Args:
        in_features: width of the input feature vector.
        task_names: the tasks, in order.
    """

    def __init__(self, in_features: int, task_names: Sequence[str]) -> None:
        super().__init__()
        self.in_features = in_features
        self.task_names = list(task_names)
        self.out_features = in_features
        self._gate_weights: Dict[str, torch.Tensor] = {}

    @abstractmethod
    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns ``{task: [B, out_features]}``."""

    def combine_outputs(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Hook after the task heads: architectures whose tasks are tied by construction
        (ESMM's pCTCVR = pCTR x pCVR, for example) derive outputs here. Identity by default."""
        return outputs

    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """Per task, the last batch's gate weights ``[B, num_experts]`` (detached),
        or None for architectures without gates."""
        return dict(self._gate_weights) or None
