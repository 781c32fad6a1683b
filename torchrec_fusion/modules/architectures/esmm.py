"""ESMM: pCTCVR = pCTR x pCVR, supervised over the entire impression space (Ma et al., SIGIR 2018)."""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from torchrec_fusion.modules.architectures.single_task import SingleTaskArch


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """The logit of ``sigmoid(ctr_logit) * sigmoid(cvr_logit)``, computed in log space.

    With ``log p = logsigmoid(a) + logsigmoid(b)`` and
    ``log(1 - p) = logaddexp(logsigmoid(-a), logsigmoid(a) + logsigmoid(-b))``
    (as ``1 - s(a) s(b) = s(-a) + s(a) s(-b)``), the result ``log p - log(1 - p)``
    has no cancellation and finite gradients for any finite logits.

    Example::

        a, b = torch.tensor([0.3, 30.0]), torch.tensor([-1.2, 30.0])
        p = torch.sigmoid(ctcvr_logit(a, b).double())
        assert torch.allclose(p, torch.sigmoid(a.double()) * torch.sigmoid(b.double()))
    """
    log_ctr, log_cvr = F.logsigmoid(ctr_logit), F.logsigmoid(cvr_logit)
    log_not = torch.logaddexp(F.logsigmoid(-ctr_logit), log_ctr + F.logsigmoid(-cvr_logit))
    return log_ctr + log_cvr - log_not


class ESMMArch(SingleTaskArch):
    """Entire Space Multi-task Model for a click task and a post-click conversion task.

    ``task_names`` is exactly ``[ctr_task, cvr_task]``, in that order, both
    binary. Each task gets its own MLP over the shared features (the embeddings
    are shared, as in the paper); the towers then give a CTR logit ``a`` and a
    CVR logit ``b``. :meth:`combine_outputs` returns:

    * ``outputs[ctr_task]``: the CTR logit ``a`` (unchanged);
    * ``outputs[cvr_task]``: the logit of **pCTCVR** ``= sigmoid(a) * sigmoid(b)``
      (see :func:`ctcvr_logit`), not of pCVR.

    Labels: ``ctr_task`` takes the click label on every impression; ``cvr_task``
    takes the **click-and-conversion** label (1 iff clicked and converted) on
    every impression, with its mask True on all rows (unclicked rows are
    negatives, not absent). BCE-with-logits on both outputs is the ESMM loss;
    pCVR is never supervised directly, so it is learnt over the entire space.
    The predicted probability of the ``cvr_task`` (and its metrics) is pCTCVR;
    pCVR of the last batch is :meth:`cvr_probability`.

    Args:
        in_features: input width.
        task_names: ``[ctr_task, cvr_task]``.
        task_layer_sizes: hidden sizes of each task's MLP.
        dropout: dropout after each hidden layer.

    Example::

        arch = ESMMArch(8, ["ctr", "ctcvr"], task_layer_sizes=[16])
        reps = arch(torch.rand(4, 8))
        out = arch.combine_outputs({"ctr": torch.zeros(4), "ctcvr": torch.zeros(4)})
        assert torch.allclose(torch.sigmoid(out["ctcvr"]), torch.full((4,), 0.25))
        assert torch.allclose(arch.cvr_probability(), torch.full((4,), 0.5))
    """

    Options = SingleTaskArch.Options

    def __init__(
        self,
        in_features: int,
        task_names: Sequence[str],
        task_layer_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        if len(task_names) != 2:
            raise ValueError(f"ESMM needs exactly two binary tasks [ctr, ctcvr], got {list(task_names)}")
        super().__init__(in_features, task_names, task_layer_sizes, dropout)
        self.last_cvr_logit = torch.empty(0)

    def combine_outputs(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``{ctr_task: CTR logit, cvr_task: pCTCVR logit}`` from the heads' CTR and CVR logits;
        keeps the CVR logit (detached) in ``last_cvr_logit``."""
        ctr, cvr = self.task_names
        self.last_cvr_logit = outputs[cvr].detach()
        return {ctr: outputs[ctr], cvr: ctcvr_logit(outputs[ctr], outputs[cvr])}

    def cvr_probability(self) -> torch.Tensor:
        """pCVR = P(conversion | click) of the last batch, ``[B]``."""
        return torch.sigmoid(self.last_cvr_logit)
