"""Per-user top-K ranking metrics (HR@K, NDCG@K, recall@K, MRR), batched in torch.

``scores`` is ``[U, N]`` (higher = better), ``positives`` a boolean / 0-1 ``[U, N]`` matrix or one list
of item indices per user (binary relevance). Conventions:

* candidates: items whose score is not NaN and that are not in ``exclude`` (the user's seen / training
  items, as a mask or index lists); a positive that is not a candidate does not count.
* ranking: descending score, ties broken by lower item index first (as
  :func:`~torchrec_fusion.fusion.rank_aggregation.ranks`); ``+/-inf`` scores are allowed.
* HR@K = 1 if a positive is in the top K; recall@K = positives in the top K / all positives;
  NDCG@K = DCG@K / IDCG@K with ``DCG = sum_i rel_i / log2(i + 1)`` over positions i = 1..K and the
  ideal DCG from ``min(#positives, K)`` positives; MRR = 1 / rank of the first positive (no cutoff).
  K larger than the number of candidates ranks them all.
* a user with no positive among the candidates gets NaN, is left out of the mean and is counted in
  ``num_skipped``; the mean is NaN if no user has a positive.

Protocols: full ranking (:func:`ranking_metrics` with ``exclude=seen``) and sampled
(:func:`sampled_ranking_metrics`: the held-out positive against ``num_negatives`` unseen items drawn
with a seed, positive placed last so that ties count against it).
"""

import math
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch

Items = Union[torch.Tensor, Sequence[Sequence[int]]]


class RankingMetrics(NamedTuple):
    per_user: Dict[str, torch.Tensor]  # metric name -> [U], NaN for users without positives
    mean: Dict[str, float]             # metric name -> mean over users with positives
    num_users: int                     # users with at least one positive (those averaged)
    num_skipped: int                   # users without any


def as_mask(items: Items, shape: Sequence[int]) -> torch.Tensor:
    """Boolean ``[U, N]`` from a ``[U, N]`` 0-1 / boolean tensor or one index list per user.

    Example::

        assert as_mask([[0, 2], []], (2, 3)).tolist() == [[True, False, True], [False, False, False]]
    """
    if isinstance(items, torch.Tensor) and items.dim() == 2:
        if tuple(items.shape) != tuple(shape):
            raise ValueError(f"expected a [U, N] = {tuple(shape)} mask, got {tuple(items.shape)}")
        return items != 0
    lists = [torch.as_tensor(list(i), dtype=torch.long) for i in items]
    if len(lists) != shape[0]:
        raise ValueError(f"expected {shape[0]} index lists (one per user), got {len(lists)}")
    mask = torch.zeros(shape, dtype=torch.bool)
    if lists:
        rows = torch.repeat_interleave(torch.arange(shape[0]), torch.tensor([len(i) for i in lists]))
        mask[rows, torch.cat(lists)] = True
    return mask


def sorted_relevance(scores: torch.Tensor, positives: Items,
                     exclude: Optional[Items] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relevance ``[U, N]`` (float64, 0/1) in ranked order (non-candidates last, with relevance 0) and
    the number of positives per user ``[U]``.

    Example::

        rel, npos = sorted_relevance(torch.tensor([[.1, .5, .5, float("nan")]]), [[0, 3]])
        assert rel.tolist() == [[0., 0., 1., 0.]] and npos.tolist() == [1]
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores [U, N], got {tuple(scores.shape)}")
    valid = ~torch.isnan(scores)
    if exclude is not None:
        valid &= ~as_mask(exclude, scores.shape)
    rel = as_mask(positives, scores.shape) & valid
    order = torch.sort(torch.where(valid, scores, -torch.inf), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, torch.sort((~valid).gather(-1, order).float(), dim=-1, stable=True).indices)
    return rel.gather(-1, order).double(), rel.sum(-1)


def _hr(rel: torch.Tensor, npos: torch.Tensor, k: int) -> torch.Tensor:
    return (rel[:, :k].sum(-1) > 0).double()


def _recall(rel: torch.Tensor, npos: torch.Tensor, k: int) -> torch.Tensor:
    return rel[:, :k].sum(-1) / npos


def _ndcg(rel: torch.Tensor, npos: torch.Tensor, k: int) -> torch.Tensor:
    disc = 1.0 / torch.log2(torch.arange(2, rel.shape[1] + 2, dtype=torch.float64))
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), disc.cumsum(0)])
    return (rel[:, :k] * disc[:k]).sum(-1) / ideal[npos.clamp(max=k)]


def _mrr(rel: torch.Tensor, npos: torch.Tensor, k: Optional[int] = None) -> torch.Tensor:
    first = rel.argmax(-1) if rel.shape[1] else torch.zeros(rel.shape[0], dtype=torch.long)
    return torch.where(first < (k or rel.shape[1]), 1.0 / (first + 1).double(), 0.0)


def _per_user(fn: Callable[..., torch.Tensor], rel: torch.Tensor, npos: torch.Tensor,
              k: Optional[int]) -> Tuple[torch.Tensor, float]:
    v = torch.where(npos > 0, fn(rel, npos, k), torch.nan)
    return v, float(v.nanmean()) if (npos > 0).any() else math.nan


def hit_rate(scores: torch.Tensor, positives: Items, k: int,
             exclude: Optional[Items] = None) -> Tuple[torch.Tensor, float]:
    """HR@K: per user ``[U]`` (NaN without positives) and the mean.

    Example::

        per_user, mean = hit_rate(torch.tensor([[.9, .8, .1], [.1, .2, .3]]), [[2], [2]], k=1)
        assert per_user.tolist() == [0., 1.] and mean == .5
    """
    return _per_user(_hr, *sorted_relevance(scores, positives, exclude), k)


def recall(scores: torch.Tensor, positives: Items, k: int,
           exclude: Optional[Items] = None) -> Tuple[torch.Tensor, float]:
    """Recall@K (positives in the top K / all positives): per user and the mean.

    Example::

        assert recall(torch.tensor([[.9, .8, .1]]), [[0, 2]], k=2)[1] == .5
    """
    return _per_user(_recall, *sorted_relevance(scores, positives, exclude), k)


def ndcg(scores: torch.Tensor, positives: Items, k: int,
         exclude: Optional[Items] = None) -> Tuple[torch.Tensor, float]:
    """NDCG@K with binary relevance: per user and the mean.

    Example::

        # positive at rank 2: DCG = 1 / log2(3), IDCG = 1
        assert abs(ndcg(torch.tensor([[.9, .8, .1]]), [[1]], k=3)[1] - 1 / math.log2(3)) < 1e-12
    """
    return _per_user(_ndcg, *sorted_relevance(scores, positives, exclude), k)


def mrr(scores: torch.Tensor, positives: Items, exclude: Optional[Items] = None,
        k: Optional[int] = None) -> Tuple[torch.Tensor, float]:
    """Mean reciprocal rank of the first positive (0 beyond ``k`` if given): per user and the mean.

    Example::

        assert mrr(torch.tensor([[.9, .8, .1]]), [[2]])[1] == 1 / 3
    """
    return _per_user(_mrr, *sorted_relevance(scores, positives, exclude), k)


def ranking_metrics(scores: torch.Tensor, positives: Items, ks: Sequence[int] = (10,),
                    exclude: Optional[Items] = None) -> RankingMetrics:
    """Full-ranking protocol: ``hr@K``, ``ndcg@K``, ``recall@K`` for each K and ``mrr``, ranking all
    candidates except ``exclude`` (the user's seen items).

    Example::

        scores = torch.tensor([[.9, .8, .7, .1], [.1, .2, .3, .4], [.5, .5, .5, .5]])
        seen = [[0], [], []]                      # item 0 was seen by user 0: not ranked
        m = ranking_metrics(scores, [[1], [0, 1], []], ks=(1, 2), exclude=seen)
        assert m.per_user["hr@1"][:2].tolist() == [1., 0.] and m.num_skipped == 1
        assert m.mean["recall@2"] == .5 and m.mean["mrr"] == (1 + 1 / 3) / 2
    """
    rel, npos = sorted_relevance(scores, positives, exclude)
    per_user: Dict[str, torch.Tensor] = {}
    mean: Dict[str, float] = {}
    for k in ks:
        for name, fn in (("hr", _hr), ("ndcg", _ndcg), ("recall", _recall)):
            per_user[f"{name}@{k}"], mean[f"{name}@{k}"] = _per_user(fn, rel, npos, k)
    per_user["mrr"], mean["mrr"] = _per_user(_mrr, rel, npos, None)
    n = int((npos > 0).sum())
    return RankingMetrics(per_user, mean, n, rel.shape[0] - n)


def sample_negatives(heldout: torch.Tensor, num_items: int, num_negatives: int,
                     seen: Optional[Items] = None, seed: int = 0) -> torch.Tensor:
    """Per user, ``num_negatives`` distinct items drawn uniformly (seeded) from those neither seen nor
    held out: ``[U, num_negatives]`` long, ``-1`` where a user has too few such items. Uses a
    ``[U, num_items]`` random matrix.

    Example::

        neg = sample_negatives(torch.tensor([0, 1]), num_items=4, num_negatives=2, seen=[[3], []])
        assert neg[0].sort().values.tolist() == [1, 2] and 1 not in neg[1].tolist()
        assert torch.equal(neg, sample_negatives(torch.tensor([0, 1]), 4, 2, seen=[[3], []]))
    """
    if num_negatives > num_items:
        raise ValueError(f"num_negatives={num_negatives} exceeds num_items={num_items}")
    users = heldout.shape[0]
    keys = torch.rand(users, num_items, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bad = torch.zeros(users, num_items, dtype=torch.bool) if seen is None else as_mask(seen, (users, num_items))
    has = heldout >= 0
    bad[torch.arange(users)[has], heldout[has]] = True
    vals, idx = keys.masked_fill(bad, 2.0).topk(num_negatives, dim=-1, largest=False)
    return idx.masked_fill(vals > 1, -1)


def sampled_ranking_metrics(scores: torch.Tensor, heldout: torch.Tensor, num_negatives: int = 100,
                            ks: Sequence[int] = (10,), seen: Optional[Items] = None,
                            seed: int = 0) -> RankingMetrics:
    """Sampled protocol: the held-out item (``heldout[u]``, ``-1`` = none: user skipped) ranked against
    :func:`sample_negatives`, from a full score matrix ``[U, num_items]``. The positive is the last
    candidate, so a tie with a negative ranks it below (pessimistic). Without a full score matrix,
    score the sampled candidates yourself and call :func:`ranking_metrics`.

    Example::

        scores = torch.arange(6.).repeat(2, 1)                  # item 5 best, item 0 worst
        m = sampled_ranking_metrics(scores, torch.tensor([5, 0]), num_negatives=3, ks=(1,))
        assert m.per_user["hr@1"].tolist() == [1., 0.] and m.per_user["mrr"].tolist() == [1., .25]
    """
    neg = sample_negatives(heldout, scores.shape[1], num_negatives, seen, seed)
    cand = torch.cat([neg.clamp_min(0), heldout.clamp_min(0)[:, None]], 1)
    s = scores.gather(1, cand)
    s[:, :-1] = s[:, :-1].masked_fill(neg < 0, torch.nan)
    s[:, -1] = s[:, -1].masked_fill(heldout < 0, torch.nan)
    positives = torch.zeros_like(s, dtype=torch.bool)
    positives[:, -1] = heldout >= 0
    return ranking_metrics(s, positives, ks)


def group_positions(groups: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
    """Where each flat row goes in a padded ``[G, M]`` matrix of its group's rows: (row, col, shape);
    groups in sorted id order, rows in their original order.

    Example::

        row, col, shape = group_positions(torch.tensor([7, 3, 7]))
        assert row.tolist() == [1, 0, 1] and col.tolist() == [0, 0, 1] and shape == (2, 2)
    """
    _, inv, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    col = torch.empty_like(inv)
    col[order] = torch.arange(groups.numel()) - (counts.cumsum(0) - counts)[inv[order]]
    return inv, col, (counts.numel(), int(counts.max()) if counts.numel() else 0)


def group_to_padded(groups: torch.Tensor, scores: torch.Tensor,
                    labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat rows (``groups[i]`` = user of row i) to padded ``[G, M]`` scores (NaN padding) and labels
    (0 padding), users in sorted id order, rows in their original order.

    Example::

        s, y = group_to_padded(torch.tensor([7, 3, 7]), torch.tensor([.1, .2, .3]), torch.tensor([1., 0., 0.]))
        assert s.isnan().tolist() == [[False, True], [False, False]] and y.tolist() == [[0., 0.], [1., 0.]]
    """
    row, col, shape = group_positions(groups)
    s = torch.full(shape, torch.nan, dtype=scores.dtype)
    y = torch.zeros(shape, dtype=labels.dtype)
    s[row, col], y[row, col] = scores, labels
    return s, y
