"""ESMM: pCTCVR = pCTR x pCVR, supervised over the entire impression space (Ma et al., SIGIR 2018)."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch

from torchrec_fusion.modules.architectures.base import check_chain_options, ctcvr_logit
from torchrec_fusion.modules.architectures.single_task import SingleTaskArch

__all__ = ["ESMMArch", "ctcvr_logit"]


class ESMMArch(SingleTaskArch):
    """Entire Space Multi-task Model: a click task and a post-click conversion task.

    Each task gets its own MLP over the shared features (the embeddings are shared, as in the
    paper); the towers give, per task, a logit. Two ways to use it:

    * ``chain=[first, second]`` (any task list holding both, binary): every task keeps its own
      output, the second's being P(second | first), supervised where it is observed (its mask);
      :meth:`combine_outputs` adds ``<first>_x_<second>``, the logit of P(first) x P(second | first)
      (see :func:`ctcvr_logit`), which ``MultiTaskTrain`` supervises on every row with the label
      ``first AND second`` (:class:`~torchrec_fusion.modules.architectures.base.TaskChain`). Other
      tasks (a regression ``rating``) are ordinary tasks.
    * no chain: ``task_names`` is exactly ``[ctr_task, cvr_task]``, both binary, and
      ``outputs[cvr_task]`` is the logit of **pCTCVR** ``= sigmoid(a) * sigmoid(b)``, not of pCVR:
      ``cvr_task`` takes the click-and-conversion label on every impression (mask True on all
      rows), so pCVR is never supervised directly; pCVR of the last batch is :meth:`cvr_probability`.

    Args:
        in_features: input width.
        task_names: the tasks (``[ctr_task, cvr_task]`` without a chain).
        task_layer_sizes: hidden sizes of each task's MLP.
        dropout: dropout after each hidden layer.
        chain: ``[first, second]``: the entire-space chain (empty: the two-task form).
        chain_loss_weight: the chain's loss weight.

    Example::

        arch = ESMMArch(8, ["ctr", "ctcvr"], task_layer_sizes=[16])
        reps = arch(torch.rand(4, 8))
        out = arch.combine_outputs({"ctr": torch.zeros(4), "ctcvr": torch.zeros(4)})
        assert torch.allclose(torch.sigmoid(out["ctcvr"]), torch.full((4,), 0.25))
        assert torch.allclose(arch.cvr_probability(), torch.full((4,), 0.5))
        chained = ESMMArch(8, ["rating", "like", "interaction"], chain=["interaction", "like"])
        out = chained.combine_outputs({t: torch.zeros(4) for t in ["rating", "like", "interaction"]})
        assert out["like"].eq(0).all()  # P(like | interaction), unchanged
        assert torch.allclose(torch.sigmoid(out["interaction_x_like"]), torch.full((4,), 0.25))
    """

    @dataclass(frozen=True)
    class Options:
        """ESMM's options (``arch_options``)."""

        task_layer_sizes: List[int] = field(default_factory=lambda: [128, 64],
                                            metadata={"help": "hidden sizes of each task's MLP"})
        chain: List[str] = field(default_factory=list, metadata={
            "help": "two binary tasks FIRST SECOND: SECOND stays P(SECOND | FIRST) on its observed rows, and the "
                    "output FIRST_x_SECOND = P(FIRST) x P(SECOND | FIRST) is learnt on every row"})
        chain_loss_weight: float = field(default=1.0, metadata={"help": "loss weight of the chain's output"})

        def __post_init__(self) -> None:
            check_chain_options(self.chain, self.chain_loss_weight)

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        task_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        chain: Sequence[str] = (),
        chain_loss_weight: float = 1.0,
    ) -> None:
        if not chain and len(task_names) != 2:
            raise ValueError(f"ESMM needs exactly two binary tasks [ctr, ctcvr] (or arch_options.chain), "
                             f"got {list(task_names)}")
        super().__init__(in_features, task_names, task_layer_sizes, dropout)
        self.set_chain(chain, chain_loss_weight)
        self.last_cvr_logit = torch.empty(0)

    def combine_outputs(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """With a chain: the outputs and the chain's logit. Without: ``{ctr_task: CTR logit,
        cvr_task: pCTCVR logit}`` from the heads' CTR and CVR logits, the CVR logit (detached)
        kept in ``last_cvr_logit``."""
        if self.chains:
            return super().combine_outputs(outputs)
        ctr, cvr = self.task_names
        self.last_cvr_logit = outputs[cvr].detach()
        return {ctr: outputs[ctr], cvr: ctcvr_logit(outputs[ctr], outputs[cvr])}

    def cvr_probability(self) -> torch.Tensor:
        """pCVR = P(conversion | click) of the last batch, ``[B]`` (the two-task form)."""
        return torch.sigmoid(self.last_cvr_logit)
