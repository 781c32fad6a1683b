"""Ranking the whole item catalogue for each test user, with every score and fused scores.

For every user with a relevant held-out item, every item is a candidate except
the user's training items; each score (a task's prediction, the learnt fused
score, or a rank aggregation of the task scores, which the caller computes with
:func:`torchrec_fusion.fusion.rank_aggregation.aggregate_lists`, or a baseline of
:mod:`torchrec_fusion.evaluation.baselines`: popularity, EASE) ranks them, and
the held-out relevant items are the positives. Both protocols of
:mod:`torchrec_fusion.evaluation.ranking` are reported: full ranking, and the
sampled one (one held-out positive against sampled unseen negatives).
"""

from dataclasses import dataclass
from typing import Callable, Collection, Dict, Iterator, Mapping, Sequence, Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.evaluation.ranking import ranking_metrics, sampled_ranking_metrics


@dataclass
class CatalogueTask:
    """Who is ranked, what counts as relevant, and what is excluded.

    Attributes:
        users: ``[U]`` user indices with at least one relevant held-out item.
        positives: ``[U, N]`` relevant held-out items.
        seen: ``[U, N]`` the users' training items (never candidates).
        heldout: ``[U]`` one relevant held-out item per user (seeded), for the sampled protocol.
    """

    users: torch.Tensor
    positives: torch.Tensor
    seen: torch.Tensor
    heldout: torch.Tensor

    @property
    def num_items(self) -> int:
        return self.positives.size(1)


def relevant_rows(data: MultiTaskData, relevance: str = "like") -> torch.Tensor:
    """``[rows]`` bool: the rows whose ``relevance`` label is present and 1.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, _ = make_synthetic(SyntheticConfig(num_rows=500))
        assert relevant_rows(tr, "ctr").sum() == (tr.labels[:, tr.task_names.index("ctr")] == 1).sum()
    """
    j = data.task_names.index(relevance)
    return data.masks[:, j] & (data.labels[:, j] == 1)


def catalogue_task(train: MultiTaskData, test: MultiTaskData, num_items: int, relevance: str = "like",
                   seed: int = 0, user: str = "user", item: str = "item") -> CatalogueTask:
    """The ranking task of ``test``: a row is relevant where its ``relevance`` label is 1.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, te = make_synthetic(SyntheticConfig(num_rows=3000))
        t = catalogue_task(tr, te, num_items=te.num_embeddings["item"], relevance="ctr")
        assert t.positives.shape == t.seen.shape and bool(t.positives[torch.arange(len(t.users)), t.heldout].all())
    """
    rel = relevant_rows(test, relevance)
    users = torch.unique(test.extras[user][rel].long())
    row_of = torch.full((int(max(train.extras[user].max(), test.extras[user].max())) + 1,), -1, dtype=torch.long)
    row_of[users] = torch.arange(len(users))
    positives = torch.zeros(len(users), num_items, dtype=torch.bool)
    positives[row_of[test.extras[user][rel].long()], test.extras[item][rel].long()] = True
    seen = torch.zeros_like(positives)
    tr_u = row_of[train.extras[user].long()]
    keep = tr_u >= 0
    seen[tr_u[keep], train.extras[item].long()[keep]] = True
    positives &= ~seen
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(positives.shape, generator=g)
    heldout = torch.where(positives, noise, torch.full_like(noise, -1.0)).argmax(1)
    has = positives.any(1) & seen.any(1)  # a user without training rows has no row to score items with
    return CatalogueTask(users[has], positives[has], seen[has], heldout[has])


def candidate_chunks(task: CatalogueTask, make_rows: Callable[[torch.Tensor, torch.Tensor], MultiTaskData],
                     users_per_chunk: int = 64) -> Iterator[Tuple[slice, MultiTaskData]]:
    """Yields (user slice, rows of those users x every item), user-major, to be scored in turn."""
    items = torch.arange(task.num_items)
    for start in range(0, len(task.users), users_per_chunk):
        u = task.users[start : start + users_per_chunk]
        yield slice(start, start + len(u)), make_rows(u.repeat_interleave(task.num_items), items.repeat(len(u)))


def catalogue_report(scores: Mapping[str, torch.Tensor], task: CatalogueTask, ks: Sequence[int] = (10,),
                     num_negatives: int = 100, seed: int = 0,
                     baselines: Collection[str] = ()) -> Dict[str, Dict[str, float]]:
    """Full-ranking and sampled metrics of each ``[U, N]`` score (seen items are never candidates).

    The rows of the scores named in ``baselines`` (e.g. those of
    :func:`~torchrec_fusion.evaluation.baselines.baseline_scores`) carry ``"baseline": True``, a
    flag and not a metric (reports that print float metrics leave it out).
    """
    report: Dict[str, Dict[str, float]] = {}
    for name, s in scores.items():
        s = s.float()
        full = ranking_metrics(s, task.positives, ks, exclude=task.seen)
        sampled = sampled_ranking_metrics(s, task.heldout, num_negatives, ks, seen=task.seen | task.positives,
                                          seed=seed)
        report[name] = {**full.mean, **{f"sampled_{k}": v for k, v in sampled.mean.items()},
                        "users": full.num_users}
        if name in baselines:
            report[name]["baseline"] = True
    return report
