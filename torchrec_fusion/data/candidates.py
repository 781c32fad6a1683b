"""Candidate rows: arbitrary (user, item) pairs with features copied from the training rows."""

from typing import Dict, List

import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import CandidateRows

__all__ = ["candidate_builder"]


def _last_rows(keys: torch.Tensor) -> torch.Tensor:
    """Per key ``0..max(keys)``, the index of its last row (-1 where it has none)."""
    rows = torch.arange(len(keys))
    return torch.full((int(keys.max()) + 1,), -1, dtype=torch.long).scatter_reduce(0, keys, rows, "amax")


def _lookup(table: torch.Tensor, ids: torch.Tensor, what: str) -> torch.Tensor:
    """``table[ids]``; an id beyond the table or without a row raises ``ValueError``."""
    ok = (ids >= 0) & (ids < len(table))
    r = torch.where(ok, table[ids.clamp(0, len(table) - 1)], torch.full_like(ids, -1))
    if (r < 0).any():
        raise ValueError(f"{what} {int(ids[r < 0][0])} has no training row to take its features from")
    return r


def candidate_builder(train: MultiTaskData, item_features: List[str], user: str = "user",
                      item: str = "item") -> CandidateRows:
    """Rows for arbitrary (user, item) index pairs, to score items a user has not met: the
    ``item_features`` come from the item's last training row, every other feature (and the
    dense columns) from the user's last training row. Users or items never seen in training
    have no row to copy and raise ``ValueError``.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, _ = make_synthetic(SyntheticConfig(num_rows=2000))
        user, item = tr.extras["user"][:2], tr.extras["item"][5:7]  # met in training
        rows = candidate_builder(tr, ["item", "category", "tags"])(user, item)
        assert torch.equal(rows.sparse["item"].values, item) and not rows.masks.any()
    """
    missing = [k for k in (user, item) if k not in train.extras]
    if missing:
        raise ValueError(f"{train.source}: candidate rows need the extras {missing}")
    unknown = sorted(set(item_features) - set(train.feature_names))
    if unknown:
        raise ValueError(f"item features {unknown} are not features of the data {train.feature_names}")
    last_u, last_i = _last_rows(train.extras[user].long()), _last_rows(train.extras[item].long())

    def make(users: torch.Tensor, items: torch.Tensor) -> MultiTaskData:
        ru, ri = _lookup(last_u, users.long(), "user"), _lookup(last_i, items.long(), "item")
        sparse: Dict[str, SparseColumn] = {}
        for f, col in train.sparse.items():
            values, lengths = col.take(ri if f in item_features else ru)
            sparse[f] = SparseColumn(values, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))
        n, t = len(users), len(train.tasks)
        return MultiTaskData(train.dense[ru], sparse, dict(train.num_embeddings), list(train.tasks),
                             torch.zeros(n, t), torch.zeros(n, t, dtype=torch.bool),
                             extras={user: users.long(), item: items.long()}, source="candidates",
                             pooling=dict(train.pooling))

    return make
