"""Task towers: one MLP and output head per task."""

from typing import Dict, Sequence

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import mlp
from torchrec_fusion.tasks import TaskSpec


class TaskTowers(nn.Module):
    """Per task, an MLP then a linear head of the task's ``output_dim``.

    Outputs are raw: logits for binary (``[B]``) and multiclass (``[B, C]``)
    tasks, values for regression (``[B]``).

    Example::

        from torchrec_fusion.tasks import TaskSpec
        towers = TaskTowers(8, [TaskSpec("a"), TaskSpec("c", "multiclass", num_classes=3)], [16])
        out = towers({"a": torch.rand(4, 8), "c": torch.rand(4, 8)})
        assert out["a"].shape == (4,) and out["c"].shape == (4, 3)
    """

    def __init__(self, in_features: int, tasks: Sequence[TaskSpec], layer_sizes: Sequence[int] = (64,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        width = layer_sizes[-1] if layer_sizes else in_features
        self.towers = nn.ModuleDict({t.name: mlp(in_features, layer_sizes, dropout) for t in tasks})
        self.heads = nn.ModuleDict({t.name: nn.Linear(width, t.output_dim) for t in tasks})

    def forward(self, representations: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {}
        for name, tower in self.towers.items():
            y = self.heads[name](tower(representations[name]))
            out[name] = y.squeeze(1) if y.size(1) == 1 else y
        return out
