"""MMoE: shared experts mixed by one softmax gate per task (Ma et al., KDD 2018)."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import MultiTaskArch, StackedExperts, small_softmax


class MMoEArch(MultiTaskArch):
    """Multi-gate mixture of experts.

    Each of ``num_experts`` experts is an MLP over the input; task ``t`` gets
    ``sum_e softmax(W_t x)_e * expert_e(x)``. The experts run together as one
    :class:`StackedExperts`, and the gates of all tasks as one linear layer.

    Args:
        in_features: input width.
        task_names: the tasks; one gate each.
        num_experts: number of shared experts.
        expert_layer_sizes: hidden sizes of each expert MLP.
        dropout: dropout inside the experts.

    Example::

        arch = MMoEArch(8, ["a", "b"], num_experts=3, expert_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert out["b"].shape == (4, 16)
        assert torch.allclose(arch.gate_weights()["a"].sum(1), torch.ones(4))
    """

    @dataclass(frozen=True)
    class Options:
        """MMoE's options (``arch_options``)."""

        num_experts: int = field(default=4, metadata={"help": "shared experts"})
        expert_layer_sizes: List[int] = field(default_factory=lambda: [64],
                                              metadata={"help": "hidden sizes of each expert"})

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        num_experts: int = Options.num_experts,
        expert_layer_sizes: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names)
        if num_experts < 1 or not expert_layer_sizes:
            raise ValueError("MMoE needs num_experts >= 1 and non-empty expert_layer_sizes")
        self.experts = StackedExperts(in_features, num_experts, expert_layer_sizes, dropout)
        self.num_experts = num_experts
        self.gates = nn.Linear(in_features, num_experts * len(self.task_names))  # every task's gate at once
        self.out_features = expert_layer_sizes[-1]

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        experts = self.experts(features)  # B x E x H
        w = small_softmax(self.gates(features).view(features.size(0), len(self.task_names), -1), 2)  # B x T x E
        mixed = torch.bmm(w, experts)  # B x T x H
        out = {}
        for j, t in enumerate(self.task_names):
            self._gate_weights[t] = w[:, j].detach()
            out[t] = mixed[:, j]
        return out

    def gate(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """Task ``task``'s gate weights ``[B, num_experts]`` for ``features``."""
        j = self.task_names.index(task)
        logits = self.gates(features)[:, j * self.num_experts:(j + 1) * self.num_experts]
        return small_softmax(logits, 1)
