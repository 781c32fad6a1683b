"""Task towers: one MLP and output head per task."""

from typing import Dict, Sequence, cast

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import mlp
from torchrec_fusion.tasks import TaskSpec


class TaskTowers(nn.Module):
    """Per task, an MLP then a linear head of the task's ``output_dim``.

    Outputs are raw: logits for binary (``[B]``) and multiclass (``[B, C]``)
    tasks, values for regression (``[B]``). Each task keeps its own ``nn.Linear`` layers
    (``towers[task]``, ``heads[task]``), but with several tasks every layer runs for all of them
    as one batched product (``baddbmm`` over the tasks' stacked weights) instead of one small
    product per task: the towers' cost stops growing with the number of tasks' kernel launches.

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
        names = list(self.towers)
        towers = [cast(nn.Sequential, self.towers[n]) for n in names]
        heads = [cast(nn.Linear, self.heads[n]) for n in names]
        if len(names) == 1:
            y = heads[0](towers[0](representations[names[0]]))
            return {names[0]: y.squeeze(1) if y.size(1) == 1 else y}
        x = torch.stack([representations[n] for n in names])  # [T, B, in]
        for j in range(0, len(towers[0]), 2):  # (Linear, ReLU or ReluDropout) per layer
            x = self._stacked(x, [cast(nn.Linear, tower[j]) for tower in towers])
            x = towers[0][j + 1](x)  # the activation, elementwise and alike in every tower
        if len({h.out_features for h in heads}) == 1:
            y = self._stacked(x, heads)
            return {n: y[i].squeeze(1) if y.size(2) == 1 else y[i] for i, n in enumerate(names)}
        out = {}
        for i, (n, h) in enumerate(zip(names, heads)):
            y = h(x[i])
            out[n] = y.squeeze(1) if y.size(1) == 1 else y
        return out

    @staticmethod
    def _stacked(x: torch.Tensor, layers: Sequence[nn.Linear]) -> torch.Tensor:
        """``[T, B, in]`` through task ``t``'s ``layers[t]``, all tasks in one ``baddbmm``."""
        w = torch.stack([lin.weight for lin in layers]).transpose(1, 2)  # [T, in, out]
        b = torch.stack([lin.bias for lin in layers]).unsqueeze(1)  # [T, 1, out]
        return torch.baddbmm(b, x, w)
