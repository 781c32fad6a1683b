"""Shared machinery of the gradient-based strategies (GradNorm, PCGrad).

The training pipeline runs one ``backward()`` on the loss it is handed, and the
fused embedding optimizer updates the tables inside that backward, never
materialising their gradients. So these strategies act on the *shared dense
parameters* only, and without a second backward: in ``forward`` they take each
task's gradient on those parameters with ``torch.autograd.grad`` (which never
reaches the embedding kernels, as the parameters lie downstream of them), build
the gradient they want ``g*``, and return the surrogate
``sum_t w_t L_t + <theta, stopgrad(g* - sum_t w_t grad L_t)>`` whose gradient is
``g*`` on the shared parameters and the plain weighted sum everywhere else
(embeddings, towers). Under DDP the per-task gradients are each rank's own;
the corrected gradients are then averaged across ranks as usual.
"""

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from torchrec_fusion.losses.balancing.base import LossBalancer
from torchrec_fusion.tasks import TaskSpec


class GradientBalancer(LossBalancer):
    """Base of strategies that reshape the shared parameters' gradient."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__(tasks)
        self._shared: Optional[Callable[[], List[nn.Parameter]]] = None

    def bind(self, shared_parameters: Callable[[], List[nn.Parameter]]) -> None:
        self._shared = shared_parameters

    def shared_parameters(self) -> List[nn.Parameter]:
        if self._shared is None:
            raise RuntimeError(f"{type(self).__name__} needs the shared parameters: wrap the model in "
                               "MultiTaskTrain, or call bind(model.shared_parameters)")
        return [p for p in self._shared() if p.requires_grad]

    def active(self, losses: Dict[str, torch.Tensor]) -> bool:
        """True when gradients are being taken (training, with a graph)."""
        return self.training and torch.is_grad_enabled() and any(loss.requires_grad for loss in losses.values())

    def task_gradients(self, losses: Dict[str, torch.Tensor], params: List[nn.Parameter]) -> torch.Tensor:
        """``[T, P]``: each task's flattened gradient on ``params`` (zeros where a task does not reach)."""
        rows = []
        for t in self.task_names:
            grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]))
        return torch.stack(rows)

    @staticmethod
    def surrogate(weighted_loss: torch.Tensor, params: List[nn.Parameter], correction: torch.Tensor) -> torch.Tensor:
        """``weighted_loss + <params, correction>``: adds ``correction`` (flat, detached) to the
        gradient of ``params`` and changes nothing else."""
        flat = torch.cat([p.reshape(-1) for p in params])
        return weighted_loss + (flat * correction.detach()).sum()
