"""A fused ranking score: a weighted sum of scores in log form, its weights fitted on held-out rankings.

The scores of a catalogue ranking come in their own forms: a binary task's probability, a regression's
value, the retrieval head's logit. In log form (``log p`` for a probability, the value itself otherwise)
they add like the factors of a chain: ``log P(interaction) + log P(like | interaction)`` is the chain's
log score. A weighted sum of log forms therefore holds the chain product (weights 1 and 1) and every
single score (one weight of 1) as special cases.

:func:`fit_ranking_weights` chooses the weights by coordinate ascent on NDCG@k of held-out positives
(ranx's weight optimisation, on our own metric code). It starts from the best single score and only
ever accepts a step that raises the metric, so on the rankings it is fitted on, the fused score is never
below the best of its inputs. Fit it on a validation split, then use the weights on the test split.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from torchrec_fusion.evaluation.ranking import Items, ndcg

# weights tried for each score in turn (relative to the current weights: the first score fitted keeps 1)
DEFAULT_GRID: Tuple[float, ...] = (-0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def log_form(scores: torch.Tensor, probability: bool, floor: float = 1e-12) -> torch.Tensor:
    """``log(scores)`` (clamped at ``floor``) for probabilities, the scores themselves otherwise.

    Example::

        p = torch.tensor([0.5, 0.0])
        assert torch.allclose(log_form(p, True), torch.log(torch.tensor([0.5, 1e-12])))
        assert torch.equal(log_form(p, False), p)
    """
    return scores.clamp_min(floor).log() if probability else scores


def fuse_ranking(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_s weights[s] * scores[s]`` over the weighted scores (in log form); zero weights are skipped,
    so a score that is absent but weighted 0 is fine, and one absent but weighted otherwise is an error.

    Example::

        s = {"retrieval": torch.tensor([[2.0, 1.0]]), "like": torch.log(torch.tensor([[0.2, 0.9]]))}
        fused = fuse_ranking(s, {"retrieval": 1.0, "like": 1.0})
        assert torch.allclose(fused, s["retrieval"] + s["like"])
    """
    used = {n: float(w) for n, w in weights.items() if w != 0}
    missing = sorted(set(used) - set(scores))
    if missing:
        raise ValueError(f"ranking fusion weights name score(s) {missing} this model does not give; "
                         f"it gives {sorted(scores)}")
    if not used:
        raise ValueError("ranking fusion needs at least one non-zero weight")
    total: Optional[torch.Tensor] = None
    for name, w in used.items():
        term = w * scores[name].float()
        total = term if total is None else total + term
    assert total is not None
    return total


def _metric(fused: torch.Tensor, positives: Items, k: int, exclude: Optional[Items]) -> float:
    return ndcg(fused, positives, k, exclude)[1]


def fit_ranking_weights(scores: Mapping[str, torch.Tensor], positives: Items, k: int = 10,
                        exclude: Optional[Items] = None, grid: Sequence[float] = DEFAULT_GRID,
                        rounds: int = 3) -> Tuple[Dict[str, float], float]:
    """Weights of ``scores`` (each ``[U, N]``, in log form) that maximise NDCG@``k`` of ``positives``
    (never ranking the items in ``exclude``), and that NDCG.

    Starts from the best single score (weight 1, the others 0), then, ``rounds`` times, sets each other
    score's weight to the best value of ``grid`` given the rest; a change is kept only if it raises the
    metric, so the result is never below the best single score on these rankings.

    Example::

        torch.manual_seed(0)
        good = torch.randn(20, 30)
        positives = good.topk(3, dim=1).indices.tolist()       # what ``good`` ranks first
        scores = {"good": good + torch.randn(20, 30), "noise": torch.randn(20, 30), "also": good}
        weights, value = fit_ranking_weights(scores, positives, k=3, rounds=1)
        assert value >= max(ndcg(s, positives, 3)[1] for s in scores.values())
    """
    if not scores:
        raise ValueError("no scores to fuse")
    names = sorted(scores)
    singles = {n: _metric(scores[n].float(), positives, k, exclude) for n in names}
    best_name = max(names, key=lambda n: (singles[n], n))
    weights = {n: 1.0 if n == best_name else 0.0 for n in names}
    best = singles[best_name]
    for _ in range(rounds):
        improved = False
        for name in names:
            if name == best_name:
                continue
            for w in grid:
                trial = {**weights, name: float(w)}
                if trial == weights or not any(trial.values()):
                    continue
                value = _metric(fuse_ranking(scores, trial), positives, k, exclude)
                if value > best + 1e-9:
                    weights, best, improved = trial, value, True
        if not improved:
            break
    return weights, best
