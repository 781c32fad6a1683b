"""GradNorm: learn task weights that balance gradient norms (Chen et al., ICML 2018)."""

from dataclasses import dataclass, field
from typing import Dict, Sequence

import torch
from torch import nn

from torchrec_fusion.losses.balancing.gradient import GradientBalancer
from torchrec_fusion.tasks import TaskSpec


class GradNorm(GradientBalancer):
    """Task weights ``w_t`` trained so that each task's weighted gradient norm on
    the shared dense parameters, ``G_t = w_t ||grad L_t||``, tracks
    ``mean(G) * r_t^alpha``, where ``r_t`` is the task's loss relative to its first
    loss, divided by the mean of those ratios: a task that trains more slowly gets
    a larger weight. The main loss is ``sum_t w_t L_t`` with ``w`` held fixed; the
    GradNorm loss ``sum_t |G_t - target_t|`` reaches ``w`` alone (the target and
    the gradient norms are constants to it), so the dense optimizer trains ``w``
    beside the model. ``w`` is renormalised to sum to the number of tasks before
    each step. See :mod:`torchrec_fusion.losses.balancing.gradient` for fused
    optimizers and DDP.

    Args:
        tasks: the task specs; ``loss_weight`` gives the starting weights.
        alpha: asymmetry ``alpha`` (0: equal gradient norms; the paper uses 0.5 to 3).

    Example::

        from torchrec_fusion.tasks import TaskSpec
        theta = torch.nn.Parameter(torch.ones(2))
        b = GradNorm([TaskSpec("a", "regression"), TaskSpec("b", "regression")], alpha=1.0)
        b.bind(lambda: [theta])
        loss = b({"a": (theta ** 2).sum(), "b": 10 * theta.sum()})
        loss.backward()
        assert b.task_weight_param.grad is not None and b.task_weight_param.grad[1] > 0  # b's larger norm: w_b falls
    """

    @dataclass(frozen=True)
    class Options:
        """GradNorm's options (``balancing_options``)."""

        alpha: float = field(default=1.5, metadata={"help": "asymmetry (0: equal gradient norms)"})

    initial_losses: torch.Tensor
    started: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], alpha: float = Options.alpha) -> None:
        super().__init__(tasks)
        weights = torch.tensor([t.loss_weight for t in tasks], dtype=torch.float32)
        if not (weights > 0).all():
            raise ValueError("GradNorm needs every loss_weight > 0 (it is the starting weight)")
        self.alpha = alpha
        self.task_weight_param = nn.Parameter(weights * len(tasks) / weights.sum())
        self.register_buffer("initial_losses", torch.zeros(len(tasks)))
        self.register_buffer("started", torch.zeros(len(tasks), dtype=torch.bool))  # per task: L_t(0) known

    @torch.no_grad()
    def _project(self) -> None:
        """Back onto ``w > 0, sum(w) = T`` after an optimizer step moved ``w``."""
        w = self.task_weight_param.clamp_(min=1e-3)
        w.mul_(len(self.task_names) / w.sum())

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        self._project()
        stacked = torch.stack([losses[t] for t in self.task_names])
        if not self.active(losses):
            return (self.task_weight_param.detach() * stacked).sum()
        # a task's first loss is taken from the first batch where it has labels (a masked-out task's loss
        # is 0); a task absent from this batch, or not started, counts as on pace (ratio 1): its
        # gradient norm is 0, so it does not move w either way
        present = stacked.detach() > 0
        first = present & ~self.started
        self.initial_losses.copy_(torch.where(first, stacked.detach(), self.initial_losses))
        self.started |= first
        w = self.task_weight_param
        params = self.shared_parameters()
        norms = self.task_gradients(losses, params).norm(dim=1)  # ||grad L_t||, a constant to w
        g: torch.Tensor = w * norms
        ratio = torch.where(present & self.started, stacked.detach() / self.initial_losses.clamp_min(1e-12),
                            torch.ones_like(stacked))
        target: torch.Tensor = (g.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        return (w.detach() * stacked).sum() + (g - target).abs().sum()

    def task_weights(self) -> Dict[str, float]:
        self._project()
        return dict(zip(self.task_names, self.task_weight_param.detach().tolist()))
