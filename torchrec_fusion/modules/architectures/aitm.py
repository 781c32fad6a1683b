"""AITM: adaptive information transfer along a sequence of tasks (Xi et al., KDD 2021)."""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from torchrec_fusion.modules.architectures.base import MultiTaskArch, check_chain_options, mlp


class AITModule(nn.Module):
    """The AIT attention over ``u in {p, q}`` (transferred info, own representation):
    ``w_u = softmax_u(<h1(u), h2(u)> / sqrt(k))`` and output ``sum_u w_u h3(u)``.

    Args:
        width: width of ``p``, ``q`` and of the output.
        attention_dim: ``k``, the width of ``h1`` and ``h2``.

    Example::

        ait = AITModule(8, 4)
        z, w = ait(torch.rand(3, 8), torch.rand(3, 8))
        assert z.shape == (3, 8) and torch.allclose(w.sum(1), torch.ones(3))
    """

    def __init__(self, width: int, attention_dim: int) -> None:
        super().__init__()
        self.h1, self.h2 = nn.Linear(width, attention_dim), nn.Linear(width, attention_dim)
        self.h3 = nn.Linear(width, width)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, transferred: torch.Tensor, own: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (output ``[B, width]``, weights ``[B, 2]`` over [transferred, own])."""
        u = torch.stack([transferred, own], dim=1)  # B x 2 x W
        w = torch.softmax((self.h1(u) * self.h2(u)).sum(-1) * self.scale, dim=1)
        return (w.unsqueeze(2) * self.h3(u)).sum(1), w


class AITMArch(MultiTaskArch):
    """Adaptive Information Transfer Multi-task model for tasks in a sequential order
    (impression -> click -> conversion ...), given in ``task_names`` order.

    Every task has its own MLP ``q_t`` over the features (embeddings are shared).
    Task 1's representation is ``z_1 = q_1``; for task ``t > 1`` an info MLP
    carries ``p = g_t(z_{t-1})`` from the previous task and :class:`AITModule`
    mixes ``[p, q_t]`` into ``z_t``. ``gate_weights()[t]`` (tasks after the
    first) holds the last batch's attention ``[B, 2]`` over [transferred, own].

    With ``chain=[first, second]`` (two binary tasks of any task list) the transfer runs along the
    chain only, ``first -> second``, and every other task (a regression ``rating``) reads its own
    MLP; as in :class:`~torchrec_fusion.modules.architectures.esmm.ESMMArch`, ``second`` stays
    P(second | first) on its observed rows and :meth:`combine_outputs` adds the entire-space
    ``<first>_x_<second>`` = P(first) x P(second | first), learnt on every row.

    The paper's behavioural expectation calibrator is opt-in and not added by
    the trainer: :meth:`calibration_loss` gives it for the user to add.

    Args:
        in_features: input width.
        task_names: the tasks, in the order of the user's conversion funnel.
        task_layer_sizes: hidden sizes of each task's MLP.
        attention_dim: ``k`` of the AIT attention (default: the representation width).
        dropout: dropout after each hidden layer.
        chain: ``[first, second]``: the funnel is these two tasks (empty: ``task_names``' order).
        chain_loss_weight: the chain's loss weight.

    Example::

        arch = AITMArch(8, ["click", "buy"], task_layer_sizes=[16])
        out = arch(torch.rand(4, 8))
        assert out["buy"].shape == (4, 16) and arch.gate_weights()["buy"].shape == (4, 2)
        chained = AITMArch(8, ["rating", "like", "interaction"], [16], chain=["interaction", "like"])
        assert chained.funnel == ["interaction", "like"] and list(chained.ait) == ["like"]
    """

    @dataclass(frozen=True)
    class Options:
        """AITM's options (``arch_options``)."""

        task_layer_sizes: List[int] = field(default_factory=lambda: [128, 64],
                                                  metadata={"help": "hidden sizes of each task's MLP"})
        attention_dim: Optional[int] = field(
            default=None, metadata={"help": "width k of the AIT attention (default: the representation width)"})
        chain: List[str] = field(default_factory=list, metadata={
            "help": "two binary tasks FIRST SECOND: the transfer runs FIRST -> SECOND, SECOND stays P(SECOND | "
                    "FIRST) on its observed rows, and FIRST_x_SECOND = P(FIRST) x P(SECOND | FIRST) is learnt on "
                    "every row"})
        chain_loss_weight: float = field(default=1.0, metadata={"help": "loss weight of the chain's output"})

        def __post_init__(self) -> None:
            check_chain_options(self.chain, self.chain_loss_weight)

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        task_layer_sizes: Sequence[int] = (128, 64),
        attention_dim: Optional[int] = Options.attention_dim,
        dropout: float = 0.0,
        chain: Sequence[str] = (),
        chain_loss_weight: float = 1.0,
    ) -> None:
        super().__init__(in_features, task_names)
        self.set_chain(chain, chain_loss_weight)
        if not task_layer_sizes or (attention_dim is not None and attention_dim < 1):
            raise ValueError("AITM needs non-empty task_layer_sizes and attention_dim >= 1 (or None), "
                             f"got {list(task_layer_sizes)} and {attention_dim}")
        width = task_layer_sizes[-1]
        # the tasks that transfer, in funnel order
        self.funnel = [self.chains[0].first, self.chains[0].second] if self.chains else list(self.task_names)
        later = self.funnel[1:]
        self.task_mlps = nn.ModuleDict({t: mlp(in_features, task_layer_sizes, dropout) for t in self.task_names})
        self.transfers = nn.ModuleDict({t: mlp(width, [width]) for t in later})
        k = width if attention_dim is None else attention_dim
        self.ait = nn.ModuleDict({t: AITModule(width, k) for t in later})
        self.out_features = width

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = {t: self.task_mlps[t](features) for t in self.task_names if t not in self.ait}
        for prev, t in zip(self.funnel, self.funnel[1:]):
            out[t], w = self.ait[t](self.transfers[t](out[prev]), self.task_mlps[t](features))
            self._gate_weights[t] = w.detach()
        return out

    def calibration_loss(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The behavioural expectation calibrator: ``sum_{t>1} mean(relu(s(y_t) - s(y_{t-1})))``
        over the heads' logits of the funnel's tasks (binary), penalising a later-funnel probability
        above the earlier one. Opt-in: add ``alpha * arch.calibration_loss(outputs)``
        to the loss yourself (the paper uses alpha = 0.6).

        Example::

            arch = AITMArch(4, ["click", "buy"], task_layer_sizes=[4])
            loss = arch.calibration_loss({"click": torch.tensor([0.0, 2.0]), "buy": torch.tensor([1.0, 0.0])})
            assert torch.isclose(loss, (torch.sigmoid(torch.tensor(1.0)) - 0.5) / 2)
        """
        probs = [torch.sigmoid(outputs[t]) for t in self.funnel]
        zero = outputs[self.funnel[0]].new_zeros(())
        return sum((torch.relu(b - a).mean() for a, b in zip(probs, probs[1:])), zero)
