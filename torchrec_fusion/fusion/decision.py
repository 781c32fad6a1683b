"""Decision-level fusion: (weighted) voting over thresholded scores, and a filter-then-rank cascade.

Scores follow :mod:`~torchrec_fusion.fusion.rank_aggregation`: K rankers ``[..., N]`` (a list or one
``[K, ..., N]`` tensor), NaN = candidate missing from that ranker, +/-inf raise ``ValueError``. A ranker
votes *yes* for a candidate when its score is ``>=`` its threshold; a missing candidate gets a *no*.
"""

from typing import Optional, Sequence, Union

import torch

from torchrec_fusion.fusion.normalize import check_scores
from torchrec_fusion.fusion.rank_aggregation import Scores, stack_scores

Thresholds = Union[float, Sequence[float]]


def _per_ranker(values: Union[float, Sequence[float]], s: torch.Tensor, what: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=s.dtype)
    if v.dim() == 0:
        return v
    if v.shape != (s.shape[0],):
        raise ValueError(f"expected one {what} per ranker ({s.shape[0]}), got {tuple(v.shape)}")
    return v.reshape(-1, *[1] * (s.dim() - 1))


def votes(scores: Scores, thresholds: Thresholds = 0.5, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Weighted share of *yes* votes in [0, 1] per candidate (equal weights by default); usable as a
    ranking score itself.

    Example::

        a, b, c = torch.tensor([[.9, .2]]), torch.tensor([[.6, .7]]), torch.tensor([[.1, float("nan")]])
        assert votes([a, b, c]).allclose(torch.tensor([[2 / 3, 1 / 3]]))
        assert votes([a, b, c], thresholds=[.5, .8, .0], weights=[1., 1., 2.]).allclose(torch.tensor([[.75, 0.]]))
    """
    s = stack_scores(scores)
    yes = (s >= _per_ranker(thresholds, s, "threshold")).to(s.dtype)
    w = _per_ranker(1.0 if weights is None else weights, s, "weight").expand(s.shape[0], *[1] * (s.dim() - 1))
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"vote weights must be finite and >= 0 with a positive sum, got {w.flatten().tolist()}")
    return (w * yes).sum(0) / w.sum()


def majority_vote(scores: Scores, thresholds: Thresholds = 0.5) -> torch.Tensor:
    """Boolean ``[..., N]``: more than half of the K rankers vote *yes* (a tie, K/2 of K, is a *no*).

    Example::

        a, b = torch.tensor([[.9, .2, .7]]), torch.tensor([[.6, .7, .1]])
        c = torch.tensor([[.1, .8, float("nan")]])
        assert majority_vote([a, b, c]).tolist() == [[True, True, False]]
        assert majority_vote([a, b]).tolist() == [[True, False, False]]
    """
    return votes(scores, thresholds) > 0.5


def weighted_vote(scores: Scores, weights: Sequence[float], thresholds: Thresholds = 0.5,
                  quota: float = 0.5) -> torch.Tensor:
    """Boolean ``[..., N]``: the weight of the *yes* votes exceeds ``quota`` of the total weight.

    Example::

        a, b, c = torch.tensor([[.9, .2]]), torch.tensor([[.6, .7]]), torch.tensor([[.1, .8]])
        assert weighted_vote([a, b, c], weights=[3., 1., 1.]).tolist() == [[True, False]]
    """
    return votes(scores, thresholds, weights) > quota


def cascade(filter_scores: torch.Tensor, rank_scores: torch.Tensor, threshold: float,
            exclude: bool = False) -> torch.Tensor:
    """Keeps the candidates whose ``filter_scores >= threshold`` and orders them by ``rank_scores``.

    Filtered-out candidates (including those missing, NaN, from the filter) are either demoted below
    every kept one of the same list, keeping their ``rank_scores`` order among themselves (default; each
    is shifted down by ``max - min + 1`` of the list's ranking scores), or, with ``exclude=True``, set to
    ``-inf``. Candidates missing from ``rank_scores`` stay NaN. (``-inf`` is not accepted by the rank
    fusions: replace it with NaN before fusing further.)

    Example::

        p_click = torch.tensor([[.9, .1, .6, .8]])
        value = torch.tensor([[1., 5., 3., 2.]])
        assert cascade(p_click, value, .5).tolist() == [[1., 0., 3., 2.]]     # 5 - (5 - 1 + 1) = 0
        assert cascade(p_click, value, .5, exclude=True).tolist() == [[1., float("-inf"), 3., 2.]]
    """
    check_scores(filter_scores, "filter_scores", allow_nan=True)
    check_scores(rank_scores, "rank_scores", allow_nan=True)
    if filter_scores.shape != rank_scores.shape:
        raise ValueError(f"shape mismatch: {tuple(filter_scores.shape)} vs {tuple(rank_scores.shape)}")
    keep = filter_scores >= threshold
    miss = torch.isnan(rank_scores)
    if exclude:
        return torch.where(keep | miss, rank_scores, -torch.inf)
    hi = torch.where(miss, -torch.inf, rank_scores).amax(-1, keepdim=True)
    lo = torch.where(miss, torch.inf, rank_scores).amin(-1, keepdim=True)
    return torch.where(keep | miss, rank_scores, rank_scores - (hi - lo + 1))
