"""Interaction-history features: each row's user history, liked items and item audience as id bags."""

from typing import Optional, Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import BatchSource
from torchrec_fusion.tasks import TaskKind


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


def _offsets(lens: torch.Tensor) -> torch.Tensor:
    return torch.cat([lens.new_zeros(1), lens.cumsum(0)])


def _filtered_bags(bags: SparseColumn, row_keys: torch.Tensor, exclude: torch.Tensor) -> SparseColumn:
    """:meth:`_KeyBags.rows` by comparing every gathered value (any bags, repeated values included)."""
    vals, lens = bags.take(row_keys)
    row = torch.repeat_interleave(torch.arange(row_keys.numel()), lens)
    keep = vals != exclude[row]
    return SparseColumn(vals[keep], _offsets(torch.bincount(row[keep], minlength=row_keys.numel())))


class _KeyBags:
    """Bags of values per key, and a sorted (key, value) index that finds a row's own value in one
    lookup, built once and used by every :meth:`rows` call (candidate rows come batch by batch)."""

    def __init__(self, bags: SparseColumn) -> None:
        assert bags.offsets is not None
        self.bags, self.offsets = bags, bags.offsets
        lens = bags.lengths()
        self.width = int(bags.values.max()) + 1 if bags.values.numel() else 1
        owner = torch.repeat_interleave(torch.arange(lens.numel()), lens)
        self.codes, self.where = torch.sort(owner * self.width + bags.values)
        self.repeats = bool((self.codes[1:] == self.codes[:-1]).any())  # then a row may drop several values

    def position(self, row_keys: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        """Per row, where ``exclude[r]`` sits in the storage of bag ``row_keys[r]`` (-1: absent)."""
        if self.codes.numel() == 0:
            return torch.full_like(row_keys, -1)
        wanted = row_keys * self.width + exclude.clamp(0, self.width - 1)
        at = torch.searchsorted(self.codes, wanted).clamp(max=self.codes.numel() - 1)
        found = (self.codes[at] == wanted) & (exclude >= 0) & (exclude < self.width)
        return torch.where(found, self.where[at], -1)

    def rows(self, row_keys: torch.Tensor, exclude: torch.Tensor) -> SparseColumn:
        """Each row's bag ``row_keys[r]`` without the value ``exclude[r]`` (leave-one-out).

        A row drops at most one stored value, found by :meth:`position`; the kept values are then
        gathered in one pass over the output (a running sum of per-row jumps), so rows of
        thousands of ids cost about as much as copying them."""
        if self.repeats:
            return _filtered_bags(self.bags, row_keys, exclude)
        pos = self.position(row_keys, exclude)
        found = pos >= 0
        start = self.offsets.index_select(0, row_keys)
        lens = self.offsets.index_select(0, row_keys + 1) - start - found.long()
        out_start = torch.cumsum(lens, 0) - lens
        total = int(lens.sum())
        jump = start - out_start  # source minus output position at a row's first value
        end = jump + found.long()  # ... and past its dropped value (it may sit at the next row's start)
        steps = torch.ones(total + 1, dtype=torch.int64)
        steps.index_add_(0, out_start, jump - torch.cat([end.new_zeros(1), end[:-1]]))
        steps.index_add_(0, (pos - jump)[found], torch.ones_like(pos[found]))
        steps[0] -= 1
        src = torch.cumsum(steps[:total], 0)
        return SparseColumn(self.bags.values.index_select(0, src), _offsets(lens))


def _liked_pairs(train: BatchSource, task: str, user: str, item: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (user, item) pairs of the training rows whose label of binary ``task`` is present and 1."""
    rows = train.in_memory_rows()
    if rows is None:
        raise ValueError(f"{train.source}: a liked-items bag needs the training rows in memory")
    if task not in rows.task_names:
        raise ValueError(f"{train.source}: no task {task!r} for the liked-items bag (tasks: {rows.task_names})")
    j = rows.task_names.index(task)
    if rows.tasks[j].kind != TaskKind.BINARY:
        raise ValueError(f"{train.source}: the liked-items bag needs a binary task, {task!r} is {rows.tasks[j].kind}")
    liked = rows.masks[:, j] & (rows.labels[:, j] == 1)
    return rows.extras[user].long()[liked], rows.extras[item].long()[liked]


class InteractionHistory:
    """Per-user and per-item interaction bags from the training rows, ready to be attached
    to any rows (training, test, or candidate pairs) with :meth:`add_to`.

    Args:
        train: the training rows (``user`` and ``item`` extras; a stream holds none in memory
            and is refused).
        max_len: at most this many ids per bag (a seeded random choice).
        seed: seed of that choice.
        liked: a binary task: also build ``user_liked``, the user's training items whose label
            of that task is present and 1 (the positive feedback beside ``user_history``'s
            implicit one).

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, _ = make_synthetic(SyntheticConfig(num_rows=500))
        history = InteractionHistory(tr, max_len=1000, liked=tr.task_names[0])
        history.add_to(tr)
        assert tr.num_embeddings["user_liked"] == history.num_items and "user_liked" in tr.feature_names
    """

    def __init__(self, train: BatchSource, max_len: int = 64, seed: int = 0, user: str = "user",
                 item: str = "item", liked: Optional[str] = None) -> None:
        missing = [k for k in (user, item) if k not in train.extras]
        if missing:
            raise ValueError(f"{train.source}: history features need the extras {missing}")
        if max_len < 1:
            raise ValueError(f"history max_len must be >= 1, got {max_len}")
        self.user, self.item = user, item
        u_tr, i_tr = train.extras[user].long(), train.extras[item].long()
        self.num_users = max(int(u_tr.max()) + 1, train.num_embeddings.get(user, 0))
        self.num_items = max(int(i_tr.max()) + 1, train.num_embeddings.get(item, 0))
        self.by_user = _KeyBags(_grouped_bags(u_tr, i_tr, self.num_users, max_len, seed))
        self.by_item = _KeyBags(_grouped_bags(i_tr, u_tr, self.num_items, max_len, seed + 1))
        self.liked: Optional[_KeyBags] = None
        if liked is not None:
            u_liked, i_liked = _liked_pairs(train, liked, user, item)
            self.liked = _KeyBags(_grouped_bags(u_liked, i_liked, self.num_users, max_len, seed + 2))

    def add_to(self, d: MultiTaskData) -> MultiTaskData:
        """Adds the ``user_history`` and ``item_audience`` bags (and ``user_liked`` when built) to
        ``d`` (in place), each row leaving out its own (user, item) interaction."""
        u, i = d.extras[self.user].long(), d.extras[self.item].long()
        if len(d) and (int(u.max()) >= self.num_users or int(i.max()) >= self.num_items):
            raise ValueError(f"{d.source}: user or item index beyond the training vocabularies")
        d.sparse["user_history"] = self.by_user.rows(u, i)
        d.sparse["item_audience"] = self.by_item.rows(i, u)
        d.num_embeddings["user_history"] = self.num_items
        d.num_embeddings["item_audience"] = self.num_users
        d.pooling.update(user_history="mean", item_audience="mean")
        if self.liked is not None:
            d.sparse["user_liked"] = self.liked.rows(u, i)
            d.num_embeddings["user_liked"] = self.num_items
            d.pooling["user_liked"] = "mean"
        d.validate()
        return d


def add_history_features(train: MultiTaskData, test: MultiTaskData, max_len: int = 64, seed: int = 0,
                         user: str = "user", item: str = "item",
                         liked: Optional[str] = None) -> Tuple[MultiTaskData, MultiTaskData]:
    """Adds ``user_history`` (items the row's user interacted with) and ``item_audience``
    (users who interacted with the row's item) as mean-pooled bags, in the spirit of
    SVD++'s implicit feedback, and ``user_liked`` (the user's items of label 1 for task
    ``liked``) when ``liked`` is given.

    All come from ``train`` only; a training row's own interaction is left out of
    its bags, so a training row sees what a test row sees: every other interaction
    of its user and item. Rows are matched by the ``user`` and ``item`` extras.
    Each bag keeps at most ``max_len`` ids (a seeded random choice).

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, te = make_synthetic(SyntheticConfig(num_rows=2000))
        tr, te = add_history_features(tr, te, max_len=8)
        assert int(tr.sparse["user_history"].lengths().max()) <= 8
    """
    history = InteractionHistory(train, max_len, seed, user, item, liked)
    for d in (test, train):
        if user not in d.extras or item not in d.extras:
            raise ValueError(f"{d.source}: history features need the extras {[user, item]}")
    return history.add_to(train), history.add_to(test)
