"""PLE: progressive layered extraction with shared and task-specific experts (Tang et al., RecSys 2020)."""

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp


class ExtractionLevel(nn.Module):
    """One PLE level (a CGC block): per task ``num_task_experts`` experts, plus
    ``num_shared_experts`` shared ones.

    Task ``t``'s gate is a softmax over ``[t's experts..., shared experts...]``
    computed from ``t``'s input; the optional shared gate is a softmax over
    ``[every task's experts in task order..., shared experts...]`` computed from
    the shared input, and gives the shared input of the next level.

    Example::

        level = ExtractionLevel(8, ["a", "b"], 2, 1, [16], shared_gate=True)
        x = torch.rand(4, 8)
        out, shared, gates = level({"a": x, "b": x}, x)
        assert out["a"].shape == shared.shape == (4, 16) and gates["b"].shape == (4, 3)
    """

    def __init__(self, in_features: int, task_names: Sequence[str], num_shared_experts: int,
                 num_task_experts: int, expert_layer_sizes: Sequence[int], shared_gate: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.shared_experts = nn.ModuleList(
            mlp(in_features, expert_layer_sizes, dropout) for _ in range(num_shared_experts))
        self.task_experts = nn.ModuleDict({
            t: nn.ModuleList(mlp(in_features, expert_layer_sizes, dropout) for _ in range(num_task_experts))
            for t in task_names})
        self.task_gates = nn.ModuleDict(
            {t: nn.Linear(in_features, num_task_experts + num_shared_experts) for t in task_names})
        total = len(task_names) * num_task_experts + num_shared_experts
        self.shared_gate = nn.Linear(in_features, total) if shared_gate else None

    def forward(
        self, task_inputs: Dict[str, torch.Tensor], shared_input: torch.Tensor
    ) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Returns (per-task outputs, next shared input or None, per-task gate weights)."""
        shared = [e(shared_input) for e in self.shared_experts]
        own = {t: [e(task_inputs[t]) for e in cast(nn.ModuleList, experts)] for t, experts in self.task_experts.items()}
        out, gates = {}, {}
        for t, gate in self.task_gates.items():
            w = torch.softmax(gate(task_inputs[t]), dim=1)
            gates[t] = w
            out[t] = torch.bmm(w.unsqueeze(1), torch.stack(own[t] + shared, dim=1)).squeeze(1)
        next_shared = None
        if self.shared_gate is not None:
            every: List[torch.Tensor] = [e for t in self.task_experts for e in own[t]] + shared
            w = torch.softmax(self.shared_gate(shared_input), dim=1)
            next_shared = torch.bmm(w.unsqueeze(1), torch.stack(every, dim=1)).squeeze(1)
        return out, next_shared, gates


@dataclass(frozen=True)
class CGCOptions:
    """The options (``arch_options``) of CGC, and of every PLE level."""

    num_shared_experts: int = field(default=2, metadata={"help": "shared experts per level"})
    num_task_experts: int = field(default=1, metadata={"help": "experts per task per level"})
    expert_layer_sizes: List[int] = field(default_factory=lambda: [128, 64],
                                          metadata={"help": "hidden sizes of each expert"})


@dataclass(frozen=True)
class PLEOptions(CGCOptions):
    """PLE's options (``arch_options``): CGC's and the number of levels."""

    num_levels: int = field(default=2, metadata={"help": "extraction levels (1 is CGC)"})


class PLEArch(MultiTaskArch):
    """Progressive Layered Extraction: ``num_levels`` stacked :class:`ExtractionLevel`.

    At the first level every input is the feature vector; each level's task
    outputs feed the same task's experts and gate at the next level, and the
    shared gate (over all experts of the level) feeds the next level's shared
    experts. The last level has no shared gate. One level is CGC
    (:class:`CGCArch`). ``gate_weights()`` gives the last level's task gates,
    ``[B, num_task_experts + num_shared_experts]`` with the task's own experts
    first.

    Args:
        in_features: input width.
        task_names: the tasks.
        num_levels: number of extraction levels (1 is CGC).
        num_shared_experts: shared experts per level.
        num_task_experts: experts per task per level.
        expert_layer_sizes: hidden sizes of every expert MLP.
        dropout: dropout inside the experts.

    Example::

        arch = PLEArch(8, ["a", "b"], num_levels=2, num_shared_experts=2,
                       num_task_experts=1, expert_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert out["a"].shape == (4, 16) and arch.gate_weights()["b"].shape == (4, 3)
    """

    Options: ClassVar[type] = PLEOptions  # a type, not PLEOptions: CGC's are PLE's without num_levels

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        num_levels: int = PLEOptions.num_levels,
        num_shared_experts: int = PLEOptions.num_shared_experts,
        num_task_experts: int = PLEOptions.num_task_experts,
        expert_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names)
        if num_levels < 1 or num_shared_experts < 1 or num_task_experts < 1 or not expert_layer_sizes:
            raise ValueError("PLE needs num_levels, num_shared_experts and num_task_experts >= 1 "
                             "and non-empty expert_layer_sizes")
        widths = [in_features] + [expert_layer_sizes[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(w, self.task_names, num_shared_experts, num_task_experts, expert_layer_sizes,
                            shared_gate=i < num_levels - 1, dropout=dropout)
            for i, w in enumerate(widths))
        self.out_features = expert_layer_sizes[-1]

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        inputs, shared = dict.fromkeys(self.task_names, features), features
        gates: Dict[str, torch.Tensor] = {}
        for level in self.levels:
            inputs, shared, gates = level(inputs, shared)
        self._gate_weights = {t: w.detach() for t, w in gates.items()}
        return inputs


class CGCArch(PLEArch):
    """Customized Gate Control: PLE with one level (Tang et al., RecSys 2020).

    Args:
        in_features: input width.
        task_names: the tasks.
        num_shared_experts: shared experts.
        num_task_experts: experts per task.
        expert_layer_sizes: hidden sizes of every expert MLP.
        dropout: dropout inside the experts.

    Example::

        arch = CGCArch(8, ["a", "b"], num_shared_experts=1, num_task_experts=2, expert_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert len(arch.levels) == 1 and arch.gate_weights()["a"].shape == (4, 3)
    """

    Options = CGCOptions

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        num_shared_experts: int = CGCOptions.num_shared_experts,
        num_task_experts: int = CGCOptions.num_task_experts,
        expert_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, task_names, 1, num_shared_experts, num_task_experts, expert_layer_sizes,
                         dropout)
