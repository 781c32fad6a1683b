"""Trainable fusions: the members of :data:`~torchrec_fusion.fusion.head.TRAINABLE_FUSIONS`.

A member is a :class:`TrainableFusion`: built as ``cls(task_names, context_dim, options)`` (``options``
an instance of its ``Options`` dataclass), its ``forward(preds, context)`` maps the per-task predictions
``Dict[str, Tensor]`` (each ``[B]``) and the context ``[B, context_dim]`` (the model's feature vector)
to one fused logit ``[B]``. Class attributes say what it supports (``takes_weights``). Adding one is a
file with its class and one ``TRAINABLE_FUSIONS.register`` line.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import torch
from torch import nn

from torchrec_fusion.fusion.normalize import METHODS, ScoreNormalizer
from torchrec_fusion.fusion.score import GatedFusion, StackingFusion, WeightedFusion


@dataclass(frozen=True)
class NormalizedOptions:
    """Options every built-in trainable fusion has: how the predictions are normalised first."""

    normalizer: str = field(default="zscore", metadata={
        "help": f"normalisation of the task predictions before fusing, one of {list(METHODS)}"})

    def __post_init__(self) -> None:
        if self.normalizer not in METHODS:
            raise ValueError(f"unknown normalizer {self.normalizer!r}; expected one of {list(METHODS)}")


@dataclass(frozen=True)
class HiddenOptions(NormalizedOptions):
    """Options of the fusions with an MLP (the gate, the meta-learner)."""

    hidden: List[int] = field(default_factory=lambda: [32], metadata={"help": "hidden sizes of the MLP"})


def running_normalizer(method: str, num_scores: int) -> ScoreNormalizer:
    """A normaliser whose statistics are tracked while training and frozen in eval (``none`` and
    ``logit`` have none)."""
    return ScoreNormalizer(method, num_scores, track_running_stats=method not in ("none", "logit"))


class Calibration(nn.Module):
    """``a * s + b`` with learnt ``a`` (from 1) and ``b`` (from 0): a fused score as a logit, so that its
    sigmoid is trained and reported as a probability; the ranking is that of ``s`` while ``a > 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.shift = nn.Parameter(torch.tensor(0.0))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.scale * scores + self.shift

    def start_at_zero(self) -> bool:
        """Scale 0: the output is 0 until training moves it (the gradient of the scale is not 0)."""
        with torch.no_grad():
            self.scale.zero_()
        return True


class TrainableFusion(nn.Module, ABC):
    """The interface of a trainable fusion (see the module docstring).

    Attributes:
        takes_weights: it accepts fixed per-task weights (option ``weights``).
    """

    takes_weights: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], context_dim: int, options: Any) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.context_dim = context_dim
        self.options = options

    @abstractmethod
    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        """The fused logit ``[B]``."""

    def weights(self) -> Optional[torch.Tensor]:
        """Its per-task weights ``[T]`` (detached), or None where it has no global ones."""
        return None

    def start_at_zero(self) -> bool:
        """Makes its output 0 for any input until it is trained (so that, added to an anchor's logit,
        the fused score starts as the anchor's own); False where it cannot."""
        return False


class WeightedHead(TrainableFusion):
    """``sum_t w_t * s_t`` over the normalised predictions with learnt simplex weights (or the fixed
    ``weights``), calibrated (:class:`Calibration`).

    Example::

        head = WeightedHead(["a", "b"], 0, WeightedHead.Options(weights=[3., 1.]))
        assert head.weights().tolist() == [3., 1.] and not head.combine.raw_weights.requires_grad
    """

    takes_weights = True

    @dataclass(frozen=True)
    class Options(NormalizedOptions):
        """The weighted fusion's options (``fusion_options``)."""

        weights: Optional[List[float]] = field(default=None, metadata={
            "help": "fixed weights, one per task, instead of learnt simplex weights"})

    def __init__(self, task_names: Sequence[str], context_dim: int, options: Options) -> None:
        super().__init__(task_names, context_dim, options)
        norm = running_normalizer(options.normalizer, len(self.task_names))
        w = options.weights
        self.combine = WeightedFusion(self.task_names, w, "fixed" if w else "simplex", norm)
        self.calibration = Calibration()

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor = self.calibration(self.combine(preds))
        return fused

    def weights(self) -> Optional[torch.Tensor]:
        return self.combine.weights().detach()

    def start_at_zero(self) -> bool:
        return self.calibration.start_at_zero()


class GatedHead(TrainableFusion):
    """Per-sample weights ``softmax(MLP(context))`` on the normalised predictions, calibrated
    (:class:`~torchrec_fusion.fusion.score.GatedFusion`, :class:`Calibration`)."""

    Options = HiddenOptions

    def __init__(self, task_names: Sequence[str], context_dim: int, options: HiddenOptions) -> None:
        super().__init__(task_names, context_dim, options)
        norm = running_normalizer(options.normalizer, len(self.task_names))
        self.combine = GatedFusion(self.task_names, context_dim, options.hidden, norm)
        self.calibration = Calibration()

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor = self.calibration(self.combine(preds, context))
        return fused

    def start_at_zero(self) -> bool:
        return self.calibration.start_at_zero()


class StackingHead(TrainableFusion):
    """A meta-learner MLP over the normalised predictions and the context, whose output is the logit
    (:class:`~torchrec_fusion.fusion.score.StackingFusion`)."""

    Options = HiddenOptions

    def __init__(self, task_names: Sequence[str], context_dim: int, options: HiddenOptions) -> None:
        super().__init__(task_names, context_dim, options)
        norm = running_normalizer(options.normalizer, len(self.task_names))
        self.combine = StackingFusion(self.task_names, context_dim, options.hidden, norm)

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor = self.combine(preds, context)
        return fused

    def start_at_zero(self) -> bool:
        last = self.combine.mlp[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # the hidden layers keep their random start: their gradients are not 0
            last.weight.zero_()
            last.bias.zero_()
        return True


__all__ = ["Calibration", "GatedHead", "HiddenOptions", "NormalizedOptions", "StackingHead", "TrainableFusion",
           "WeightedHead", "running_normalizer"]
