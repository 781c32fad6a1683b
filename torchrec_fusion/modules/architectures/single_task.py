"""Single-task baseline: one independent MLP per task, no sharing in the dense part."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp


class SingleTaskArch(MultiTaskArch):
    """Each task reads its own MLP over the feature vector.

    No dense parameter is shared between tasks. The embedding tables (and the
    dense-feature projection of :class:`FeatureArch`) are one set for all tasks
    by construction in this framework, so this baseline isolates the effect of
    sharing in the dense part, not in the embeddings.

    Args:
        in_features: input width.
        task_names: the tasks; one MLP each.
        task_layer_sizes: hidden sizes of each task's MLP (empty: the identity).
        dropout: dropout after each hidden layer.

    Example::

        arch = SingleTaskArch(8, ["a", "b"], task_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert out["a"].shape == (4, 16) and arch.gate_weights() is None
    """

    @dataclass(frozen=True)
    class Options:
        """The options (``arch_options``) of the single-task baseline, and of ESMM."""

        task_layer_sizes: List[int] = field(default_factory=lambda: [128, 64],
                                                  metadata={"help": "hidden sizes of each task's MLP"})

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        task_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names)
        self.task_mlps = nn.ModuleDict({t: mlp(in_features, task_layer_sizes, dropout) for t in self.task_names})
        self.out_features = task_layer_sizes[-1] if task_layer_sizes else in_features

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {t: m(features) for t, m in self.task_mlps.items()}
