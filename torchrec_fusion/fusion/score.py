"""Trainable score fusion after the task heads: per-task predictions ``Dict[str, Tensor]`` (each ``[B]``)
to one ranking score ``[B]``, and post-hoc weight fitting on a validation set (:func:`fit_weights`).

Each module stacks the predictions in ``task_names`` order into ``[B, T]`` (:meth:`stack`), applies its
optional ``normalizer`` (a :class:`~torchrec_fusion.fusion.normalize.ScoreNormalizer` or a method name,
which builds one with ``num_scores=T``; fit it with ``fusion.normalizer.fit(fusion.stack(preds))``) and
combines the columns.
"""

import itertools
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_fusion.evaluation.metrics import auc, log_loss
from torchrec_fusion.evaluation.ranking import group_to_padded, ndcg
from torchrec_fusion.fusion.normalize import ScoreNormalizer, check_scores
from torchrec_fusion.modules.architectures.base import mlp

Normalizer = Optional[Union[str, ScoreNormalizer]]


class _ScoreFusion(nn.Module):
    def __init__(self, task_names: Sequence[str], normalizer: Normalizer = None) -> None:
        super().__init__()
        if not task_names:
            raise ValueError("task_names is empty")
        self.task_names: List[str] = list(task_names)
        self.normalizer = ScoreNormalizer(normalizer, len(task_names)) if isinstance(normalizer, str) else normalizer

    def stack(self, preds: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` predictions in ``task_names`` order (before normalisation)."""
        missing = [t for t in self.task_names if t not in preds]
        if missing:
            raise KeyError(f"predictions missing for tasks {missing}")
        return torch.stack([preds[t] for t in self.task_names], -1)

    def _scores(self, preds: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.stack(preds)
        return x if self.normalizer is None else self.normalizer(x)


class WeightedFusion(_ScoreFusion):
    """Linear fusion ``sum_t w_t * s_t``.

    ``mode``: ``fixed`` (``weights`` as given, a buffer), ``learned`` (non-negative, ``softplus`` of a
    parameter) or ``simplex`` (non-negative, summing to 1: ``softmax`` of logits). ``weights=None``
    starts from uniform ``1 / T``.

    Example::

        fusion = WeightedFusion(["click", "like"], weights=[3., 1.], mode="simplex")
        assert torch.allclose(fusion.weights(), torch.tensor([.75, .25]))
        out = fusion({"click": torch.tensor([1., 0.]), "like": torch.tensor([0., 1.])})
        assert torch.allclose(out, torch.tensor([.75, .25]))
    """

    MODES = ("fixed", "learned", "simplex")

    def __init__(self, task_names: Sequence[str], weights: Optional[Sequence[float]] = None, mode: str = "fixed",
                 normalizer: Normalizer = None) -> None:
        super().__init__(task_names, normalizer)
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {self.MODES}")
        t = len(self.task_names)
        w = torch.full((t,), 1.0 / t) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (t,):
            raise ValueError(f"expected {t} weights, got {tuple(w.shape)}")
        if mode != "fixed" and (w < 0).any():
            raise ValueError(f"mode {mode!r} needs non-negative initial weights")
        self.mode = mode
        if mode == "fixed":
            self.register_buffer("raw_weights", w.clone())
        elif mode == "learned":
            w = w.clamp_min(1e-6)
            self.raw_weights = nn.Parameter(w + torch.log(-torch.expm1(-w)))   # softplus^-1
        else:
            self.raw_weights = nn.Parameter(torch.log(w.clamp_min(1e-8) / w.sum()))

    def weights(self) -> torch.Tensor:
        """The current weights ``[T]``.

        Example::

            fusion = WeightedFusion(["a", "b"], [1., 2.], mode="learned")
            assert torch.allclose(fusion.weights(), torch.tensor([1., 2.]))
        """
        if self.mode == "learned":
            return F.softplus(self.raw_weights)
        return self.raw_weights.softmax(0) if self.mode == "simplex" else self.raw_weights

    def forward(self, preds: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._scores(preds)
        return (x * self.weights().to(x.dtype)).sum(-1)


class GatedFusion(_ScoreFusion):
    """Per-sample weights ``softmax(MLP(context))`` ``[B, T]``; fused score ``sum_t w_t * s_t``. The gate's
    last layer starts at zero, so the initial weights are uniform.

    Example::

        fusion = GatedFusion(["click", "like"], context_dim=4, hidden=(8,))
        preds = {"click": torch.tensor([1., 0.]), "like": torch.tensor([0., 1.])}
        assert torch.allclose(fusion(preds, torch.randn(2, 4)), torch.tensor([.5, .5]))
    """

    def __init__(self, task_names: Sequence[str], context_dim: int, hidden: Sequence[int] = (32,),
                 normalizer: Normalizer = None) -> None:
        super().__init__(task_names, normalizer)
        body = mlp(context_dim, hidden)  # built before the last layer: the seeded init draws in layer order
        out = nn.Linear(hidden[-1] if hidden else context_dim, len(self.task_names))
        self.gate = nn.Sequential(*body, out)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def gate_weights(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` per-sample weights on the simplex."""
        logits: torch.Tensor = self.gate(context)
        return logits.softmax(-1)

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        return (self._scores(preds) * self.gate_weights(context)).sum(-1)


class StackingFusion(_ScoreFusion):
    """Meta-learner: an MLP over the T scores and ``extra_dim`` optional features gives a raw score
    ``[B]`` (a logit: train with ``BCEWithLogitsLoss``). ``hidden=()`` is logistic regression.

    Example::

        fusion = StackingFusion(["click", "like"], extra_dim=3, hidden=(8,))
        out = fusion({"click": torch.rand(5), "like": torch.rand(5)}, torch.randn(5, 3))
        assert out.shape == (5,)
    """

    def __init__(self, task_names: Sequence[str], extra_dim: int = 0, hidden: Sequence[int] = (32,),
                 normalizer: Normalizer = None) -> None:
        super().__init__(task_names, normalizer)
        self.extra_dim = extra_dim
        in_dim = len(self.task_names) + extra_dim
        self.mlp = nn.Sequential(*mlp(in_dim, hidden), nn.Linear(hidden[-1] if hidden else in_dim, 1))

    def forward(self, preds: Dict[str, torch.Tensor], extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self._scores(preds)
        if self.extra_dim:
            if extra is None or extra.shape[-1] != self.extra_dim:
                raise ValueError(f"expected extra features [B, {self.extra_dim}]")
            x = torch.cat([x, extra.to(x.dtype)], -1)
        out: torch.Tensor = self.mlp(x)
        return out.squeeze(-1)


class FittedWeights(NamedTuple):
    weights: Dict[str, float]  # on the simplex
    value: float               # objective at these weights


def _objective(objective: Union[str, Callable[[torch.Tensor, torch.Tensor], float]], groups: Optional[torch.Tensor],
               k: int) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A function to maximise."""
    if callable(objective):
        return objective
    if objective == "auc":
        return auc
    if objective == "logloss":
        return lambda s, y: -log_loss(s, y)
    if objective == "ndcg":
        if groups is None:
            raise ValueError("objective 'ndcg' needs groups (the user id of each row)")
        user = groups

        def grouped_ndcg(s: torch.Tensor, y: torch.Tensor) -> float:
            scores, labels = group_to_padded(user, s, y)
            return ndcg(scores, labels > 0, k=k)[1]
        return grouped_ndcg
    raise ValueError(f"unknown objective {objective!r}; expected 'auc', 'logloss', 'ndcg' or a callable")


def fit_weights(scores: Dict[str, torch.Tensor], labels: torch.Tensor,
                objective: Union[str, Callable[[torch.Tensor, torch.Tensor], float]] = "auc",
                groups: Optional[torch.Tensor] = None, k: int = 10, steps: int = 10, num_samples: int = 256,
                rounds: int = 50, seed: int = 0) -> FittedWeights:
    """Fits simplex weights for ``sum_t w_t * scores[t]`` on a validation set (pass normalised scores).

    ``objective``: ``auc``, ``logloss`` (scores must be probabilities; their convex combination is one),
    ``ndcg`` (NDCG@``k`` per user given ``groups``, the user id of each row, binary ``labels > 0``), or a
    callable ``(fused, labels) -> float`` to maximise. Search: for at most 4 scores, every point of the
    simplex grid with step ``1 / steps``; beyond, ``num_samples`` seeded Dirichlet(1) draws plus the
    uniform and one-hot weightings, refined by coordinate search (move one weight by +/- a step,
    renormalise, keep strict improvements; halve the step when none, for at most ``rounds`` rounds).
    Deterministic: ties keep the first point found.

    Example::

        y = torch.tensor([0., 0., 1., 1.])
        good, noise = torch.tensor([.1, .2, .8, .9]), torch.tensor([.9, .1, .1, .3])
        fit = fit_weights({"good": good, "noise": noise}, y, steps=4)
        assert fit.weights["good"] > .7 and fit.value == 1.0
    """
    names = list(scores)
    if not names:
        raise ValueError("no scores to fuse")
    s = torch.stack([check_scores(scores[n].double().flatten(), n) for n in names], 1)
    y = labels.double().flatten()
    fn = _objective(objective, groups, k)
    t = len(names)

    def value(w: torch.Tensor) -> float:
        return float(fn(s @ w, y))

    if t <= 4:
        grid = [c + (steps - sum(c),) for c in itertools.product(range(steps + 1), repeat=t - 1) if sum(c) <= steps]
        candidates = torch.tensor(grid, dtype=torch.float64) / steps
    else:
        g = torch.Generator().manual_seed(seed)
        draws = -torch.log(torch.rand(num_samples, t, generator=g, dtype=torch.float64))   # Dirichlet(1)
        candidates = torch.cat([torch.full((1, t), 1.0 / t, dtype=torch.float64),
                                torch.eye(t, dtype=torch.float64), draws / draws.sum(1, keepdim=True)])
    best_w, best = candidates[0], value(candidates[0])
    if math.isnan(best):
        raise ValueError("objective is undefined on these labels (e.g. AUC needs both classes)")
    for w in candidates[1:]:
        v = value(w)
        if v > best:
            best_w, best = w, v
    step = 1.0 / steps
    for _ in range(rounds if t > 4 else 0):
        improved = False
        for i, d in itertools.product(range(t), (step, -step)):
            w = best_w.clone()
            w[i] = (w[i] + d).clamp_min(0)
            if w.sum() <= 0:
                continue
            w, v = w / w.sum(), value(w / w.sum())
            if v > best:
                best_w, best, improved = w, v, True
        step = step if improved else step / 2
    return FittedWeights(dict(zip(names, best_w.tolist())), -best if objective == "logloss" else best)
