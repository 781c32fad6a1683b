"""Simple baselines for the catalogue ranking: popularity and EASE, scored like the model.

The ``[U, N]`` scores of :func:`baseline_scores` go through the same ranking code as the model's
(:func:`~torchrec_fusion.evaluation.catalogue.catalogue_report`), on the same candidates, so a
report shows at a glance whether the model beats the simple answers:

* **popularity**: an item's number of training interactions, the same for every user;
* **EASE** (Steck 2019, "Embarrassingly Shallow Autoencoders"): item-item weights
  ``B = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1`` over the binary user x item matrix
  ``X`` of the training interactions; a user's scores are ``x_u B``. ``lambda`` is chosen on a
  validation split carved from the training interactions only (:func:`choose_ease_lambda`).
  EASE needs an ``N x N`` float64 Gram matrix in memory, so above :data:`EASE_MAX_ITEMS` items
  it is skipped, with the reason in the info.

The interaction matrix is sparse (COO): the catalogue and the user base can be large, and its Gram
matrix is computed sparse x sparse; the scored users' rows are made dense only for scoring.
"""

import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.evaluation.catalogue import CatalogueTask
from torchrec_fusion.evaluation.ranking import group_positions, ranking_metrics

__all__ = ["EASE_LAMBDAS", "EASE_MAX_ITEMS", "baseline_scores", "choose_ease_lambda", "ease", "ease_scores",
           "interaction_matrix", "popularity_scores", "validation_split"]

#: Above this many items EASE is skipped: its ``N x N`` float64 Gram matrix and inverse take
#: ``2 * 8 * N^2`` bytes (6.4 GB at 20,000 items).
EASE_MAX_ITEMS = 20_000
#: The L2 weights :func:`choose_ease_lambda` tries by default (a log grid).
EASE_LAMBDAS: Tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def interaction_matrix(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """The binary ``[num_users, num_items]`` float matrix of the (user, item) rows, sparse COO and
    coalesced (a repeated pair counts once).

    Example::

        x = interaction_matrix(torch.tensor([0, 0, 2, 0]), torch.tensor([1, 2, 0, 1]), 3, 3)
        assert x.is_sparse and x.to_dense().tolist() == [[0., 1., 1.], [0., 0., 0.], [1., 0., 0.]]
    """
    pairs = torch.unique(users.long() * num_items + items.long())  # sorted: row-major, coalesced order
    idx = torch.stack([pairs // num_items, pairs % num_items])
    return torch.sparse_coo_tensor(idx, torch.ones(idx.size(1)), (num_users, num_items), is_coalesced=True,
                                   check_invariants=True)


def popularity_scores(train_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """``[N]``: each item's number of training interactions.

    Example::

        assert popularity_scores(torch.tensor([2, 0, 2]), 4).tolist() == [1., 0., 2., 0.]
    """
    return torch.bincount(train_items.long(), minlength=num_items).float()


def ease(x: torch.Tensor, lam: float, max_items: int = EASE_MAX_ITEMS) -> torch.Tensor:
    """EASE item-item weights ``[N, N]`` (float32, zero diagonal) of the binary ``[U, N]`` matrix
    ``x`` (sparse or dense), solved in float64.

    Raises:
        ValueError: more than ``max_items`` items (the Gram matrix would not fit), or ``lam <= 0``.

    Example::

        b = ease(torch.tensor([[1., 1., 0.], [0., 1., 1.]]), lam=1.0)
        assert b.shape == (3, 3) and b.diagonal().abs().max() == 0 and b[0, 1] > 0
    """
    n = x.size(1)
    if n > max_items:
        raise ValueError(f"EASE needs an {n} x {n} Gram matrix; at most {max_items} items are allowed")
    if lam <= 0:
        raise ValueError(f"EASE needs lam > 0, got {lam}")
    gram: torch.Tensor
    if x.is_sparse:
        x64 = x.coalesce().double()
        with warnings.catch_warnings():  # torch goes through CSR internally and says it is beta
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            gram = torch.sparse.mm(x64.t().coalesce(), x64).to_dense()
    else:
        gram = x.double().t() @ x.double()
    gram.diagonal().add_(lam)
    p: torch.Tensor = torch.linalg.inv(gram)
    b = p / -p.diagonal()[None, :]
    b.diagonal().zero_()
    return b.float()


def ease_scores(x_users: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[U, N]`` EASE scores of users with interaction rows ``x_users`` (``[U, N]``, sparse or dense).

    Example::

        b = ease(torch.tensor([[1., 1., 0.], [0., 1., 1.]]), lam=1.0)
        s = ease_scores(torch.tensor([[1., 0., 0.]]), b)
        assert s[0, 1] > s[0, 2]                  # item 1 goes with item 0, item 2 does not
    """
    x = x_users.to_dense() if x_users.is_sparse else x_users
    return x.float() @ b


def validation_split(users: torch.Tensor, fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Boolean mask of the rows held out for validation: per user, ``round(fraction * rows)`` of its
    rows drawn with ``seed`` (a user with few rows may keep them all).

    Example::

        held = validation_split(torch.tensor([0] * 10 + [1] * 5 + [2]), fraction=0.2)
        assert held[:10].sum() == 2 and held[10:15].sum() == 1 and not held[15]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    perm = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(seed))
    group, col, _ = group_positions(users[perm])
    counts = torch.bincount(group)
    held = torch.zeros(users.numel(), dtype=torch.bool)
    held[perm] = col < torch.round(counts.double() * fraction).long()[group]
    return held


def _rows_of(users: torch.Tensor, items: torch.Tensor, who: torch.Tensor, num_items: int) -> torch.Tensor:
    """``[len(who), num_items]`` bool: the items of the rows of each user in ``who``."""
    row_of = torch.full((int(torch.cat([users.long(), who.long()]).max()) + 1,), -1, dtype=torch.long)
    row_of[who] = torch.arange(len(who))
    r = row_of[users.long()]
    out = torch.zeros(len(who), num_items, dtype=torch.bool)
    out[r[r >= 0], items.long()[r >= 0]] = True
    return out


def _validation_ndcg(b: torch.Tensor, fit: Tuple[torch.Tensor, torch.Tensor], held: Tuple[torch.Tensor, torch.Tensor],
                     k: int, users_per_chunk: int) -> float:
    """Mean NDCG@k of EASE weights ``b`` over the users of the held-out (user, item) rows, ranking
    every item but the user's fit rows."""
    n = b.size(0)
    who = torch.unique(held[0].long())
    per_user = []
    for start in range(0, len(who), users_per_chunk):
        w = who[start : start + users_per_chunk]
        seen = _rows_of(*fit, w, n)
        positives = _rows_of(*held, w, n) & ~seen
        per_user.append(ranking_metrics(ease_scores(seen, b), positives, (k,), exclude=seen).per_user[f"ndcg@{k}"])
    ndcg = torch.cat(per_user) if per_user else torch.zeros(0)
    return float(ndcg.nanmean()) if bool((~ndcg.isnan()).any()) else math.nan


def choose_ease_lambda(train_user: torch.Tensor, train_item: torch.Tensor, num_items: int,
                       lambdas: Sequence[float] = EASE_LAMBDAS, fraction: float = 0.2, seed: int = 0,
                       relevant: Optional[torch.Tensor] = None, k: int = 10,
                       users_per_chunk: int = 4096) -> Tuple[float, Dict[float, float]]:
    """The EASE ``lambda`` with the best validation NDCG@k, and that NDCG for each one tried.

    Only the training rows are read: :func:`validation_split` holds out a seeded ``fraction`` of
    each user's rows, EASE is fitted on the rest, and each user's held-out rows that are
    ``relevant`` (a boolean mask over the training rows, e.g. a ``like`` label of 1; every held-out
    row when ``None``) are ranked against every item the user has no fit row for, with the ranking
    code of the report. Ties go to the smaller ``lambda``.

    Example::

        g = torch.Generator().manual_seed(0)
        users, items = torch.randint(0, 50, (800,), generator=g), torch.randint(0, 30, (800,), generator=g)
        lam, ndcgs = choose_ease_lambda(users, items, 30, lambdas=(1.0, 100.0))
        assert lam in (1.0, 100.0) and ndcgs[lam] == max(ndcgs.values())
    """
    if not lambdas:
        raise ValueError("choose_ease_lambda needs at least one lambda")
    held = validation_split(train_user, fraction, seed)
    fit = (train_user[~held], train_item[~held])
    rel = held if relevant is None else held & relevant.bool()
    x = interaction_matrix(fit[0], fit[1], int(train_user.max()) + 1, num_items)
    ndcgs = {float(lam): _validation_ndcg(ease(x, lam), fit, (train_user[rel], train_item[rel]), k, users_per_chunk)
             for lam in lambdas}
    best = max(ndcgs, key=lambda lam: (-math.inf if math.isnan(ndcgs[lam]) else ndcgs[lam], -lam))
    return best, ndcgs


def baseline_scores(train: MultiTaskData, task: CatalogueTask, relevance_mask: Optional[torch.Tensor] = None,
                    seed: int = 0, lambdas: Sequence[float] = EASE_LAMBDAS, max_items: int = EASE_MAX_ITEMS,
                    user: str = "user", item: str = "item") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``[U, N]`` scores of the baselines for the task's users, and what was chosen or skipped.

    ``"popularity"`` always; ``"ease"`` when the catalogue has at most ``max_items`` items, with
    ``lambda`` chosen by :func:`choose_ease_lambda` on the training rows (``relevance_mask`` marks
    the relevant ones). The info holds ``ease_lambda`` and ``ease_validation_ndcg@10`` (lambda ->
    NDCG, keys as strings), or ``ease_skipped`` (the reason).

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        from torchrec_fusion.evaluation.catalogue import catalogue_task, relevant_rows
        tr, te = make_synthetic(SyntheticConfig(num_rows=3000, table_sizes={"user": 100, "item": 300}))
        t = catalogue_task(tr, te, num_items=te.num_embeddings["item"], relevance="ctr")
        scores, info = baseline_scores(tr, t, relevant_rows(tr, "ctr"), lambdas=(10.0, 100.0))
        assert set(scores) == {"popularity", "ease"} and info["ease_lambda"] in (10.0, 100.0)
        assert scores["ease"].shape == t.positives.shape
    """
    users, items = train.extras[user].long(), train.extras[item].long()
    n = task.num_items
    scores = {"popularity": popularity_scores(items, n).expand(len(task.users), n)}  # a view: one row
    if n > max_items:
        return scores, {"ease_skipped": f"{n} items > {max_items}: the {n} x {n} Gram matrix is not built"}
    lam, ndcgs = choose_ease_lambda(users, items, n, lambdas, seed=seed, relevant=relevance_mask)
    b = ease(interaction_matrix(users, items, int(users.max()) + 1, n), lam, max_items)
    scores["ease"] = ease_scores(_rows_of(users, items, task.users.long(), n).float(), b)
    return scores, {"ease_lambda": lam, "ease_validation_ndcg@10": {f"{k:g}": v for k, v in ndcgs.items()}}
