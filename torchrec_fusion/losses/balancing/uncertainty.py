"""Uncertainty weighting: learnt homoscedastic task uncertainty (Kendall et al., CVPR 2018)."""

import math
from typing import Dict, Sequence

import torch
from torch import nn

from torchrec_fusion.losses.balancing.base import LossBalancer
from torchrec_fusion.tasks import TaskKind, TaskSpec


class UncertaintyWeighting(LossBalancer):
    """``sum_t c_t exp(-s_t) L_t + s_t / 2`` with a learnt log-variance ``s_t = log sigma_t^2``.

    The factors follow the paper's two likelihoods: ``c_t = 1/2`` for regression
    (Gaussian, ``L / (2 sigma^2) + log sigma``) and ``c_t = 1`` for binary and
    multiclass tasks (``L / sigma^2 + log sigma``). For a fixed loss ``L_t`` the
    optimum is ``exp(s_t) = 2 c_t L_t`` (``L_t`` for regression, ``2 L_t`` for
    classification), where the effective weight ``c_t exp(-s_t)`` is
    ``1 / (2 L_t)`` for every kind: tasks with a larger (noisier) loss get a
    smaller weight. ``s_t`` starts where the weight is the task's
    ``loss_weight`` (which must be > 0). The ``s_t`` are dense parameters
    (``log_variance``): the model's dense optimizer trains them.

    Args:
        tasks: the task specs.

    Example::

        from torchrec_fusion.tasks import TaskSpec
        b = UncertaintyWeighting([TaskSpec("a"), TaskSpec("r", "regression")])
        loss = b({"a": torch.tensor(1.0), "r": torch.tensor(2.0)})
        loss.backward()
        assert b.task_weights() == {"a": 1.0, "r": 1.0} and b.log_variance.grad is not None
    """

    factors: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__(tasks)
        if any(t.loss_weight <= 0 for t in tasks):
            raise ValueError("uncertainty weighting needs every loss_weight > 0 (it is the starting weight)")
        factors = [0.5 if t.kind == TaskKind.REGRESSION else 1.0 for t in tasks]
        self.register_buffer("factors", torch.tensor(factors))
        self.log_variance = nn.Parameter(
            torch.tensor([math.log(c / t.loss_weight) for c, t in zip(factors, tasks)]))

    def weights(self) -> torch.Tensor:
        """The effective weights ``c_t exp(-s_t)`` of the losses, ``[T]``."""
        return self.factors * torch.exp(-self.log_variance)

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.task_names])
        # a task without labels in this batch (loss exactly 0) adds nothing: its regulariser alone
        # would pull s_t down, and the weight of a sparsely labelled task up, batch after batch
        present = (stacked.detach() > 0).to(stacked.dtype)
        return (present * (self.weights() * stacked + 0.5 * self.log_variance)).sum()

    def task_weights(self) -> Dict[str, float]:
        """The effective weight ``c_t exp(-s_t)`` of each task's loss."""
        return dict(zip(self.task_names, self.weights().tolist()))
