"""MMoE: shared experts mixed by one softmax gate per task (Ma et al., KDD 2018)."""

from typing import Dict, Sequence

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp


class MMoEArch(MultiTaskArch):
    """Multi-gate mixture of experts.

    Each of ``num_experts`` experts is an MLP over the input; task ``t`` gets
    ``sum_e softmax(W_t x)_e * expert_e(x)``.

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

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        num_experts: int = 4,
        expert_layer_sizes: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names)
        if num_experts < 1 or not expert_layer_sizes:
            raise ValueError("MMoE needs num_experts >= 1 and non-empty expert_layer_sizes")
        self.experts = nn.ModuleList(mlp(in_features, expert_layer_sizes, dropout) for _ in range(num_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(in_features, num_experts) for t in self.task_names})
        self.out_features = expert_layer_sizes[-1]

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        experts = torch.stack([e(features) for e in self.experts], dim=1)  # B x E x H
        out = {}
        for t, gate in self.gates.items():
            w = torch.softmax(gate(features), dim=1)
            self._gate_weights[t] = w.detach()
            out[t] = torch.bmm(w.unsqueeze(1), experts).squeeze(1)
        return out
