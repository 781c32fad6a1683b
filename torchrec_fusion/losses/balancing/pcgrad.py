"""PCGrad: project conflicting task gradients (Yu et al., NeurIPS 2020)."""

from dataclasses import dataclass, field
from typing import Dict, Sequence

import torch

from torchrec_fusion.losses.balancing.gradient import GradientBalancer
from torchrec_fusion.tasks import TaskSpec


def project_conflicting(grads: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """PCGrad's surgery on ``[T, P]`` task gradients: each ``g_i`` loses its component
    along every other ``g_j`` it conflicts with (``g_i . g_j < 0``), visiting the
    ``j`` in ``order``; returns the sum of the projected gradients ``[P]``.

    Example::

        g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        out = project_conflicting(g, torch.tensor([0, 1]))
        # g1 -> g1 - (g1.g2/|g2|^2) g2 = [0.5, 0.5]; g2 -> g2 - (g2.g1/|g1|^2) g1 = [0, 1]
        assert torch.allclose(out, torch.tensor([0.5, 1.5]))
    """
    projected = grads.clone()
    norms = (grads * grads).sum(1).clamp_min(1e-20)
    for i in range(grads.size(0)):
        for j in order.tolist():
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                projected[i] -= dot / norms[j] * grads[j]
    return projected.sum(0)


class PCGrad(GradientBalancer):
    """Gradient surgery on the shared dense parameters; tasks keep their fixed
    ``loss_weight`` and the non-shared parameters (towers, embeddings) get the
    plain weighted sum, as in the paper. The order in which each task's
    gradient is projected is shuffled every step from a seeded generator, the
    same on every rank. See :mod:`torchrec_fusion.losses.balancing.gradient`
    for how it works with fused embedding optimizers and DDP.

    Args:
        tasks: the task specs.
        seed: seed of the projection order.

    Example::

        from torchrec_fusion.tasks import TaskSpec
        theta = torch.nn.Parameter(torch.zeros(2))
        b = PCGrad([TaskSpec("a", "regression"), TaskSpec("b", "regression")])
        b.bind(lambda: [theta])
        losses = {"a": theta @ torch.tensor([1.0, 0.0]), "b": theta @ torch.tensor([-1.0, 1.0])}
        b(losses).backward()
        assert torch.allclose(theta.grad, torch.tensor([0.5, 1.5]))
    """

    @dataclass(frozen=True)
    class Options:
        """PCGrad's options (``balancing_options``)."""

        seed: int = field(default=0, metadata={"help": "seed of the projection order"})

    weights: torch.Tensor

    def __init__(self, tasks: Sequence[TaskSpec], seed: int = Options.seed) -> None:
        super().__init__(tasks)
        self.register_buffer("weights", torch.tensor([t.loss_weight for t in tasks], dtype=torch.float32))
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        weighted = {t: w * losses[t] for t, w in zip(self.task_names, self.weights)}
        total: torch.Tensor = sum(weighted.values())
        if not self.active(losses):
            return total
        params = self.shared_parameters()
        grads = self.task_gradients(weighted, params)
        order = torch.randperm(len(self.task_names), generator=self.generator)
        return self.surrogate(total, params, project_conflicting(grads, order) - grads.sum(0))

    def task_weights(self) -> Dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist()))
