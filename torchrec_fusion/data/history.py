"""Interaction-history features: each row's user history and item audience as id bags."""

from typing import Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import BatchSource


def _grouped_bags(keys: torch.Tensor, vals: torch.Tensor, num_keys: int, max_len: int,
                  seed: int) -> SparseColumn:
    """Per key, up to ``max_len`` of its values (a seeded random choice), as one bag per key."""
    g = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(keys.numel(), generator=g)
    keys, vals = keys[shuffle], vals[shuffle]
    order = torch.argsort(keys, stable=True)
    keys, vals = keys[order], vals[order]
    counts = torch.bincount(keys, minlength=num_keys)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keys.numel()) - starts[keys]
    keep = rank < max_len
    counts = counts.clamp(max=max_len)
    return SparseColumn(vals[keep], torch.cat([counts.new_zeros(1), counts.cumsum(0)]))


def _rows_bags(bags: SparseColumn, row_keys: torch.Tensor, exclude: torch.Tensor) -> SparseColumn:
    """Each row's bag ``bags[row_keys[r]]`` without the value ``exclude[r]`` (leave-one-out)."""
    vals, lens = bags.take(row_keys)
    row = torch.repeat_interleave(torch.arange(row_keys.numel()), lens)
    keep = vals != exclude[row]
    lens = torch.bincount(row[keep], minlength=row_keys.numel())
    return SparseColumn(vals[keep], torch.cat([lens.new_zeros(1), lens.cumsum(0)]))


class InteractionHistory:
    """Per-user and per-item interaction bags from the training rows, ready to be attached
    to any rows (training, test, or candidate pairs) with :meth:`add_to`.

    Args:
        train: the training rows (``user`` and ``item`` extras; a stream holds none in memory
            and is refused).
        max_len: at most this many ids per bag (a seeded random choice).
        seed: seed of that choice.
    """

    def __init__(self, train: BatchSource, max_len: int = 64, seed: int = 0, user: str = "user",
                 item: str = "item") -> None:
        missing = [k for k in (user, item) if k not in train.extras]
        if missing:
            raise ValueError(f"{train.source}: history features need the extras {missing}")
        if max_len < 1:
            raise ValueError(f"history max_len must be >= 1, got {max_len}")
        self.user, self.item = user, item
        u_tr, i_tr = train.extras[user].long(), train.extras[item].long()
        self.num_users = max(int(u_tr.max()) + 1, train.num_embeddings.get(user, 0))
        self.num_items = max(int(i_tr.max()) + 1, train.num_embeddings.get(item, 0))
        self.by_user = _grouped_bags(u_tr, i_tr, self.num_users, max_len, seed)
        self.by_item = _grouped_bags(i_tr, u_tr, self.num_items, max_len, seed + 1)

    def add_to(self, d: MultiTaskData) -> MultiTaskData:
        """Adds the ``user_history`` and ``item_audience`` bags to ``d`` (in place), each row
        leaving out its own (user, item) interaction."""
        u, i = d.extras[self.user].long(), d.extras[self.item].long()
        if len(d) and (int(u.max()) >= self.num_users or int(i.max()) >= self.num_items):
            raise ValueError(f"{d.source}: user or item index beyond the training vocabularies")
        d.sparse["user_history"] = _rows_bags(self.by_user, u, i)
        d.sparse["item_audience"] = _rows_bags(self.by_item, i, u)
        d.num_embeddings["user_history"] = self.num_items
        d.num_embeddings["item_audience"] = self.num_users
        d.pooling.update(user_history="mean", item_audience="mean")
        d.validate()
        return d


def add_history_features(train: MultiTaskData, test: MultiTaskData, max_len: int = 64, seed: int = 0,
                         user: str = "user", item: str = "item") -> Tuple[MultiTaskData, MultiTaskData]:
    """Adds ``user_history`` (items the row's user interacted with) and ``item_audience``
    (users who interacted with the row's item) as mean-pooled bags, in the spirit of
    SVD++'s implicit feedback.

    Both come from ``train`` only; a training row's own interaction is left out of
    its bags, so a training row sees what a test row sees: every other interaction
    of its user and item. Rows are matched by the ``user`` and ``item`` extras.
    Each bag keeps at most ``max_len`` ids (a seeded random choice).

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, te = make_synthetic(SyntheticConfig(num_rows=2000))
        tr, te = add_history_features(tr, te, max_len=8)
        assert int(tr.sparse["user_history"].lengths().max()) <= 8
    """
    history = InteractionHistory(train, max_len, seed, user, item)
    for d in (test, train):
        if user not in d.extras or item not in d.extras:
            raise ValueError(f"{d.source}: history features need the extras {[user, item]}")
    return history.add_to(train), history.add_to(test)
