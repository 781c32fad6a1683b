"""A score-fusion head trained beside the task heads, in the same DMP loop, and the registry of the
trainable fusions it can hold."""

from typing import Any, Dict, Mapping, Optional, Sequence, Type

import torch
from torch import nn

from torchrec_fusion.fusion.trainable import GatedHead, StackingHead, TrainableFusion, WeightedHead
from torchrec_fusion.registry import Registry

TRAINABLE_FUSIONS: Registry[Type[TrainableFusion]] = Registry("trainable fusion")
TRAINABLE_FUSIONS.register("weighted", WeightedHead)
TRAINABLE_FUSIONS.register("gated", GatedHead)
TRAINABLE_FUSIONS.register("stacking", StackingHead)


class FusionHead(nn.Module):
    """Fuses the task predictions into one ranking score, supervised by a binary task's label.

    The predictions enter detached, so training the fusion never moves the task heads, and go to the
    member of :data:`TRAINABLE_FUSIONS` named ``method`` (see :mod:`~torchrec_fusion.fusion.trainable`):
    ``weighted`` learns simplex weights (or keeps fixed ``weights``), ``gated`` learns per-sample weights
    from the context (the model's feature vector), ``stacking`` is an MLP over the scores and the context.
    Each normalises the predictions first, with statistics tracked while training and frozen in eval.

    Args:
        method: a name in :data:`TRAINABLE_FUSIONS`.
        task_names: the tasks whose predictions are fused.
        context_dim: width of the context (gated and stacking).
        options: the member's options by name (its ``Options``: ``normalizer``, ``weights``, ``hidden``).
        legacy: the same options as keyword arguments (``normalizer=``, ``weights=``, ``hidden=``);
            None values are left out.
        anchor: a binary task (the fusion's target): the fused logit is that task's own logit plus
            the fusion's output, which starts at 0 (:meth:`TrainableFusion.start_at_zero`). Untrained, the
            fused score is then exactly the target's score, and training moves it only where the other
            scores help on the target: a learnt fusion starts from its best-placed input, never below it.
            Fixed ``weights`` and members that cannot start at 0 are not anchored.

    Example::

        head = FusionHead("weighted", ["click", "rating"], context_dim=4)
        logit = head({"click": torch.rand(8), "rating": 1 + 4 * torch.rand(8)}, torch.randn(8, 4))
        assert logit.shape == (8,) and torch.allclose(head.weights().sum(), torch.tensor(1.0))
        assert FusionHead("gated", ["a", "b"], 4, {"hidden": [8]}).fusion.options.hidden == [8]
        anchored = FusionHead("stacking", ["click", "rating"], 4, anchor="click")
        p = {"click": torch.tensor([0.2, 0.7]), "rating": torch.tensor([4.0, 1.0])}
        assert torch.allclose(torch.sigmoid(anchored(p, torch.randn(2, 4))), p["click"])
    """

    def __init__(self, method: str, task_names: Sequence[str], context_dim: int = 0,
                 options: Optional[Mapping[str, Any]] = None, anchor: Optional[str] = None, **legacy: Any) -> None:
        super().__init__()
        member = TRAINABLE_FUSIONS[method]
        values = dict(options or {})
        for key, value in legacy.items():
            if key in values:
                raise ValueError(f"fusion option {key!r} given both in options and as a keyword")
            if value is not None:
                values[key] = value
        if values.get("weights") is not None and not member.takes_weights:
            takers = sorted(n for n, m in TRAINABLE_FUSIONS.items() if m.takes_weights)
            raise ValueError(f"fusion {method!r} takes no weights; these do: {takers}")
        self.method = method
        self.task_names = list(task_names)
        self.fusion = member(self.task_names, context_dim,
                             TRAINABLE_FUSIONS.options(method, values, where=f"fusion {method!r} options"))
        if anchor is not None and anchor not in self.task_names:
            raise ValueError(f"fusion anchor {anchor!r} is not one of the fused tasks {self.task_names}")
        fixed = values.get("weights") is not None
        self.anchor = anchor if anchor is not None and not fixed and self.fusion.start_at_zero() else None

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor, detach_inputs: bool = True
                ) -> torch.Tensor:
        """The fused logit ``[B]`` (its sigmoid is the fused probability). Its inputs are detached, so that
        training the fusion never moves the task heads; ``detach_inputs=False`` keeps them attached (the
        same value, differentiable in the predictions and the context: explanations need that)."""
        if detach_inputs:
            preds, context = {t: p.detach() for t, p in preds.items()}, context.detach()
        fused: torch.Tensor = self.fusion({t: preds[t].float() for t in self.task_names}, context.float())
        if self.anchor is not None:
            p = preds[self.anchor].float().clamp(1e-6, 1 - 1e-6)
            fused = fused + (p.log() - (-p).log1p())
        return fused

    def weights(self) -> Optional[torch.Tensor]:
        """The fusion's per-task weights (``weighted``; None for the others)."""
        return self.fusion.weights()

    def describe(self) -> Dict[str, object]:
        """The method and, where it has them, its weights by task (logged each epoch)."""
        w = self.weights()
        out: Dict[str, object] = {"method": self.method}
        if w is not None:
            out["weights"] = dict(zip(self.task_names, w.tolist()))
        return out


__all__ = ["FusionHead", "TRAINABLE_FUSIONS"]
