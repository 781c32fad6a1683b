"""Shared-bottom: one MLP shared by all tasks (Caruana 1997)."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch

from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp


class SharedBottomArch(MultiTaskArch):
    """All tasks read the same bottom MLP output.

    Args:
        in_features: input width.
        task_names: the tasks.
        bottom_layer_sizes: hidden sizes of the shared MLP.
        dropout: dropout after each hidden layer.

    Example::

        arch = SharedBottomArch(8, ["a", "b"], bottom_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert out["a"].shape == (4, 16) and out["a"] is out["b"]
    """

    @dataclass(frozen=True)
    class Options:
        """Shared-bottom's options (``arch_options``)."""

        bottom_layer_sizes: List[int] = field(default_factory=lambda: [128, 64],
                                                    metadata={"help": "hidden sizes of the shared MLP"})

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        bottom_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names)
        self.bottom = mlp(in_features, bottom_layer_sizes, dropout)
        self.out_features = bottom_layer_sizes[-1] if bottom_layer_sizes else in_features

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        shared = self.bottom(features)
        return dict.fromkeys(self.task_names, shared)
