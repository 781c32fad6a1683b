"""A score-fusion head trained beside the task heads, in the same DMP loop."""

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from torchrec_fusion.fusion.normalize import ScoreNormalizer
from torchrec_fusion.fusion.score import GatedFusion, StackingFusion, WeightedFusion

TRAINABLE_FUSIONS = ("weighted", "gated", "stacking")


class FusionHead(nn.Module):
    """Fuses the task predictions into one ranking score, supervised by a binary task's label.

    The predictions enter detached, so training the fusion never moves the task
    heads, and are normalised first with statistics tracked while training and
    frozen in eval mode (``normalizer``). ``weighted`` learns simplex weights
    (or keeps ``weights`` fixed), ``gated`` learns per-sample weights from the
    context (the model's feature vector), ``stacking`` is an MLP over the scores
    and the context. For ``weighted`` and ``gated`` the fused score ``s`` is
    calibrated as ``sigmoid(a * s + b)`` with learnt ``a, b`` so that it can be
    trained and reported as a probability (log-loss); ``a`` starts positive and
    the ranking is that of ``s`` while it stays so.

    Args:
        method: ``weighted``, ``gated`` or ``stacking``.
        task_names: the tasks whose predictions are fused.
        context_dim: width of the context (gated and stacking).
        normalizer: ``zscore``, ``minmax``, ``rank``, ``logit`` or ``none``.
        weights: fixed weights for ``weighted`` (learnt on the simplex if None).
        hidden: hidden sizes of the gate / meta-learner.

    Example::

        head = FusionHead("weighted", ["click", "rating"], context_dim=4)
        logit = head({"click": torch.rand(8), "rating": 1 + 4 * torch.rand(8)}, torch.randn(8, 4))
        assert logit.shape == (8,) and torch.allclose(head.weights().sum(), torch.tensor(1.0))
    """

    def __init__(self, method: str, task_names: Sequence[str], context_dim: int = 0, normalizer: str = "zscore",
                 weights: Optional[Sequence[float]] = None, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        if method not in TRAINABLE_FUSIONS:
            raise ValueError(f"unknown fusion {method!r}; trainable fusions are {list(TRAINABLE_FUSIONS)}")
        self.method = method
        self.task_names = list(task_names)
        norm = ScoreNormalizer(normalizer, len(self.task_names), track_running_stats=normalizer not in ("none", "logit"))
        if method == "weighted":
            self.fusion: nn.Module = WeightedFusion(self.task_names, weights, "fixed" if weights else "simplex", norm)
        elif method == "gated":
            self.fusion = GatedFusion(self.task_names, context_dim, hidden, norm)
        else:
            self.fusion = StackingFusion(self.task_names, context_dim, hidden, norm)
        self.scale = nn.Parameter(torch.tensor(1.0)) if method != "stacking" else None
        self.shift = nn.Parameter(torch.tensor(0.0)) if method != "stacking" else None

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        """The fused logit ``[B]`` (its sigmoid is the fused probability)."""
        preds = {t: preds[t].detach().float() for t in self.task_names}
        context = context.detach()
        if self.method == "weighted":
            return self.scale * self.fusion(preds) + self.shift
        if self.method == "gated":
            return self.scale * self.fusion(preds, context) + self.shift
        return self.fusion(preds, context)

    def weights(self) -> Optional[torch.Tensor]:
        """The fusion weights of ``weighted`` (None for the others)."""
        return self.fusion.weights().detach() if self.method == "weighted" else None

    def describe(self) -> Dict[str, object]:
        w = self.weights()
        out: Dict[str, object] = {"method": self.method}
        if w is not None:
            out["weights"] = dict(zip(self.task_names, w.tolist()))
        return out


__all__ = ["FusionHead", "TRAINABLE_FUSIONS"]
