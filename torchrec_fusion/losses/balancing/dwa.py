"""Dynamic Weight Average: weights from the tasks' loss descent rates (Liu et al., CVPR 2019)."""

from dataclasses import dataclass, field
from typing import Dict, Sequence

import torch

from torchrec_fusion.losses.balancing.base import LossBalancer
from torchrec_fusion.tasks import TaskSpec


class DynamicWeightAverage(LossBalancer):
    """``sum_t lambda_t w_t L_t`` with ``w = T_n softmax(r / temperature)``.

    ``r_t = Lbar_t(k-1) / Lbar_t(k-2)`` is the ratio of task ``t``'s mean loss
    over the last two complete windows of ``window`` training steps (the paper
    uses epochs; this balancer only sees steps). A task whose loss falls more
    slowly has a larger ratio and gets a larger weight. The ``w_t`` sum to the
    number of tasks ``T_n``; they are all 1 until two windows are complete.
    ``lambda_t`` is the task's fixed ``loss_weight`` (1 by default). The
    weights are updated in training mode only, with the detached losses, and
    all running state lives in buffers, so it is checkpointed with the model.

    Args:
        tasks: the task specs.
        window: training steps per averaging window.
        temperature: softmax temperature ``T`` (larger: more even weights).

    Example::

        from torchrec_fusion.tasks import TaskSpec
        b = DynamicWeightAverage([TaskSpec("a"), TaskSpec("b")], window=1)
        for la, lb in [(4.0, 4.0), (2.0, 3.0), (1.0, 2.0)]:
            b({"a": torch.tensor(la), "b": torch.tensor(lb)})
        w = b.task_weights()
        assert w["b"] > w["a"] and abs(w["a"] + w["b"] - 2.0) < 1e-6
    """

    @dataclass(frozen=True)
    class Options:
        """DWA's options (``balancing_options``)."""

        window: int = field(default=100, metadata={"help": "training steps per averaging window"})
        temperature: float = field(default=2.0, metadata={"help": "softmax temperature (larger: more even weights)"})

    fixed: torch.Tensor
    weights: torch.Tensor
    loss_sum: torch.Tensor
    steps: torch.Tensor
    window_means: torch.Tensor
    windows_done: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], window: int = Options.window,
                 temperature: float = Options.temperature) -> None:
        super().__init__(tasks)
        if window < 1 or not temperature > 0:
            raise ValueError(f"DWA needs window >= 1 and temperature > 0, got {window} and {temperature}")
        self.window, self.temperature = window, temperature
        n = len(self.task_names)
        self.register_buffer("fixed", torch.tensor([t.loss_weight for t in tasks], dtype=torch.float32))
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("loss_sum", torch.zeros(n))  # of the window in progress
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # in the window in progress
        self.register_buffer("window_means", torch.zeros(2, n))  # [older, newer] complete windows
        self.register_buffer("windows_done", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, stacked: torch.Tensor) -> None:
        # tensor ops only (no Python branch on values): traceable, and no host sync
        self.loss_sum += stacked
        self.steps += 1
        full = self.steps >= self.window
        mean = self.loss_sum / self.window
        self.window_means.copy_(torch.where(full, torch.stack([self.window_means[1], mean]), self.window_means))
        self.windows_done += full.long()
        self.loss_sum.masked_fill_(full, 0.0)
        self.steps.masked_fill_(full, 0)
        ratio = self.window_means[1] / self.window_means[0].clamp_min(1e-12)
        dwa = len(self.task_names) * torch.softmax(ratio / self.temperature, dim=0)
        self.weights.copy_(torch.where(self.windows_done >= 2, dwa, torch.ones_like(dwa)))

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([losses[t] for t in self.task_names])
        if self.training:
            self._update(stacked.detach().to(self.loss_sum.dtype))
        return (self.fixed * self.weights * stacked).sum()

    def task_weights(self) -> Dict[str, float]:
        """The effective weight ``lambda_t w_t`` of each task's loss (sums to the
        number of tasks when every ``loss_weight`` is 1)."""
        return dict(zip(self.task_names, (self.fixed * self.weights).tolist()))
