"""Loss balancing: how per-task losses become the one loss that is minimised."""

from abc import ABC, abstractmethod
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

from torchrec_fusion.tasks import TaskSpec


class LossBalancer(nn.Module, ABC):
    """Base of the loss-weighting strategies.

    Args:
        tasks: the task specs (their ``loss_weight`` is the starting weight).
    """

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]

    def bind(self, shared_parameters: Callable[[], List[nn.Parameter]]) -> None:
        """Gives gradient-based strategies the model's shared dense parameters
        (called by ``MultiTaskTrain``); loss-based strategies ignore it."""

    @abstractmethod
    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Combines ``{task: loss}`` into the scalar that is back-propagated."""

    @abstractmethod
    def task_weights(self) -> Dict[str, float]:
        """The current weight of each task, for logging."""


class FixedWeights(LossBalancer):
    """``sum_t w_t * L_t`` with the tasks' fixed ``loss_weight``.

    Example::

        from torchrec_fusion.tasks import TaskSpec
        b = FixedWeights([TaskSpec("a"), TaskSpec("b", loss_weight=0.5)])
        assert b({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}).item() == 2.0
    """

    weights: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__(tasks)
        self.register_buffer("weights", torch.tensor([t.loss_weight for t in tasks], dtype=torch.float32))

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        total: torch.Tensor = sum(w * losses[t] for t, w in zip(self.task_names, self.weights))
        return total

    def task_weights(self) -> Dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist()))
