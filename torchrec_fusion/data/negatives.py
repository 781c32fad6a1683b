"""Sampled negatives: items a user never interacted with, added to training batches as rows of an
entire-space ``interaction`` task.

A rated dataset (MovieLens, a ``table`` with ``user_column``/``item_column``/``item_features``,
the synthetic data) holds only rows a user chose to interact with, so nothing in it teaches a
model what a user would *not* pick. :class:`NegativeSampler` draws, for each training row, K items
outside its user's observed set (uniformly, or by popularity^alpha); :class:`NegativeSampledData`
adds them to each batch as candidate rows labelled 0 for ``interaction`` (1 on every observed
row) with every other task masked, so rated-row tasks still learn, and are scored, on observed
rows only.
"""

from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.types import CandidateRows
from torchrec_fusion.tasks import TaskKind, TaskSpec

__all__ = ["INTERACTION", "NegativeSampledData", "NegativeSampler", "observed_rows", "with_interaction"]

INTERACTION = "interaction"
INTERACTION_TASK = TaskSpec(INTERACTION, TaskKind.BINARY)
_DISTRIBUTIONS = ("uniform", "popularity")
_EXACT_CHUNK = 1 << 22  # at most this many (user, item) weights at once in the exact draw
_EXACT_ABOVE = 0.5  # users whose observed items hold more of q than this are drawn exactly at once


class NegativeSampler:
    """Draws, for each user given, ``num_negatives`` items that user never interacted with in the
    training rows.

    Items are drawn i.i.d. (with replacement) from a proposal ``q`` over the items that have a
    training row (an item without one has no features to build a row from): ``"uniform"``, or
    ``"popularity"`` with ``q(item) ~ count(item)^alpha`` (``alpha=0`` is uniform). Draws that hit
    the user's observed set are redrawn, only those, for up to ``max_rounds`` rounds; what is left,
    and every row of a user whose observed items hold over half of ``q`` (rejection would mostly
    miss), is drawn exactly from the user's unobserved items, weighted by ``q``. So the result is
    ``q`` conditioned on "not observed", with no Python loop per row.
    Each call seeds its own generator from ``(seed, epoch, rank, step)``: runs reproduce and ranks
    draw differently.

    Args:
        users: ``[N]`` user index of each training row.
        items: ``[N]`` item index of each training row.
        num_items: the item index range (an item index is below it); None: ``max(items) + 1``.
        num_negatives: K, the items drawn per user.
        distribution: ``"uniform"`` or ``"popularity"``.
        alpha: the popularity exponent.
        seed: the run's seed.
        max_rounds: redraw rounds before the exact fallback.

    Example::

        users, items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2])
        s = NegativeSampler(users, items, num_items=3, num_negatives=4)
        assert s.sample(torch.tensor([0]), epoch=0).tolist() == [[2, 2, 2, 2]]
        assert torch.allclose(s.log_q(torch.tensor([0])).exp(), torch.tensor([1 / 3]))
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_items: Optional[int], num_negatives: int,
                 distribution: str = "uniform", alpha: float = 1.0, seed: int = 0, max_rounds: int = 8) -> None:
        users, items = users.long().flatten(), items.long().flatten()
        if users.numel() == 0 or users.shape != items.shape:
            raise ValueError(f"negatives need one user and one item per training row, got {users.numel()} "
                             f"users and {items.numel()} items")
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(f"negative sampling distribution must be one of {list(_DISTRIBUTIONS)}, "
                             f"got {distribution!r}")
        if num_negatives < 1 or max_rounds < 0 or not alpha >= 0:
            raise ValueError(f"need num_negatives >= 1, max_rounds >= 0 and alpha >= 0, got {num_negatives}, "
                             f"{max_rounds} and {alpha}")
        self.num_items = int(items.max()) + 1 if num_items is None else num_items
        if int(items.min()) < 0 or int(items.max()) >= self.num_items or int(users.min()) < 0:
            raise ValueError(f"user and item indices must be >= 0 and items < num_items={self.num_items}")
        self.num_negatives, self.seed, self.max_rounds = num_negatives, seed, max_rounds
        self.uniform = distribution == "uniform"
        counts = torch.bincount(items, minlength=self.num_items)
        self.support = counts.nonzero().squeeze(1)  # the items that can be drawn
        self.weights = counts[self.support].double() ** (0.0 if self.uniform else alpha)
        self.position = torch.full((self.num_items,), -1, dtype=torch.long)
        self.position[self.support] = torch.arange(self.support.numel())
        self.keys = torch.unique(users * self.num_items + items)  # sorted, distinct observed pairs
        seen = torch.bincount(self.keys // self.num_items)
        q = self.weights / self.weights.sum()
        self.seen_mass = torch.bincount(self.keys // self.num_items, q[self.position[self.keys % self.num_items]])
        if bool((seen >= self.support.numel()).any()):
            user = int((seen >= self.support.numel()).nonzero()[0])
            raise ValueError(f"user {user} interacted with every item of the training rows: no negative to sample")

    @classmethod
    def from_data(cls, train: MultiTaskData, num_negatives: int, distribution: str = "uniform", alpha: float = 1.0,
                  seed: int = 0, user: str = "user", item: str = "item") -> "NegativeSampler":
        """The sampler of the training rows ``train`` (their ``user`` and ``item`` extras)."""
        missing = [k for k in (user, item) if k not in train.extras]
        if missing:
            raise ValueError(f"{train.source}: sampled negatives need the extras {missing}")
        return cls(train.extras[user], train.extras[item], None, num_negatives, distribution, alpha, seed)

    def generator(self, epoch: int, rank: int, step: int) -> torch.Generator:
        """The generator of one call: a mix of ``(seed, epoch, rank, step)``."""
        entropy = [v & 0xFFFF_FFFF_FFFF_FFFF for v in (self.seed, epoch, rank, step)]
        return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))

    def sample(self, users: torch.Tensor, epoch: int = 0, rank: int = 0, step: int = 0) -> torch.Tensor:
        """``[B, K]`` items, row ``b`` none of which user ``users[b]`` interacted with."""
        g = self.generator(epoch, rank, step)
        users = users.long().flatten().repeat_interleave(self.num_negatives)
        known = users < self.seen_mass.numel()
        mass = torch.where(known, self.seen_mass[users.clamp(max=self.seen_mass.numel() - 1)], 0.0)
        items, heavy = torch.empty_like(users), mass > _EXACT_ABOVE
        todo = (~heavy).nonzero().squeeze(1)
        for _ in range(1 + self.max_rounds):
            if todo.numel() == 0:
                break
            items[todo] = self._draw(todo.numel(), g)
            todo = todo[self._seen(users[todo], items[todo])]
        exact = torch.cat([heavy.nonzero().squeeze(1), todo])
        if exact.numel():
            items[exact] = self._exact(users[exact], g)
        return items.view(-1, self.num_negatives)

    def probabilities(self) -> torch.Tensor:
        """``[num_items]`` the proposal ``q`` (before observed items are refused; 0 off the support)."""
        q = torch.zeros(self.num_items, dtype=torch.float64)
        q[self.support] = self.weights / self.weights.sum()
        return q

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """``log q(item)`` of each item (``-inf`` for an item that is never drawn), for the log-Q
        correction of a sampled softmax."""
        log_q: torch.Tensor = self.probabilities().log().float()[items.long()]
        return log_q

    def _draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.uniform:
            pick = torch.randint(self.support.numel(), (n,), generator=g)
        else:
            pick = torch.multinomial(self.weights, n, replacement=True, generator=g)
        return self.support[pick]

    def _seen(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each (user, item) pair is observed: a binary search in the sorted keys."""
        keys = users * self.num_items + items
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        seen: torch.Tensor = self.keys[pos] == keys
        return seen

    def _exact(self, users: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One item per row from ``q`` with the row user's observed items weighted 0: one CDF per
        distinct user (in chunks of users), the users' CDFs laid end to end, user ``j``'s normalised
        one shifted by ``j``, so one ``searchsorted`` draws every row."""
        distinct, row_user = torch.unique(users, return_inverse=True)
        out, c = torch.empty_like(users), self.support.numel()
        step = max(1, _EXACT_CHUNK // c)
        for lo in range(0, distinct.numel(), step):
            u = distinct[lo : lo + step]
            first = torch.searchsorted(self.keys, u * self.num_items)
            lens = torch.searchsorted(self.keys, (u + 1) * self.num_items) - first
            total = int(lens.sum())
            pos = torch.repeat_interleave(first - (lens.cumsum(0) - lens), lens, output_size=total)
            w = self.weights.repeat(u.numel(), 1)
            w[torch.repeat_interleave(torch.arange(u.numel()), lens, output_size=total),
              self.position[self.keys[pos + torch.arange(total)] % self.num_items]] = 0.0
            cdf = w.cumsum(1)
            cdf = cdf / cdf[:, -1:] + torch.arange(u.numel(), dtype=cdf.dtype).unsqueeze(1)
            rows = ((row_user >= lo) & (row_user < lo + u.numel())).nonzero().squeeze(1)
            local = row_user[rows] - lo
            r = torch.rand(rows.numel(), generator=g, dtype=cdf.dtype).clamp(max=1 - 2**-20)
            out[rows] = self.support[torch.searchsorted(cdf.flatten(), local + r, right=True) - local * c]
        return out


def observed_rows(batch: MultiTaskBatch) -> torch.Tensor:
    """``[B]`` True on a batch's observed rows, False on its sampled rows (``interaction`` present
    and 0) and padding rows (no label present): where rated-row metrics are computed. Every row
    of an evaluation split with :func:`with_interaction` but no sampled rows is observed."""
    sampled = batch.mask(INTERACTION) & (batch.label(INTERACTION) == 0)
    return batch.masks.any(1) & ~sampled


def with_interaction(data: MultiTaskData, evaluate: bool = False) -> MultiTaskData:
    """``data`` (a new :class:`MultiTaskData` sharing its columns) with the ``interaction`` task
    appended, so an evaluation split shares the training task list of :class:`NegativeSampledData`.

    Every row is observed, so its label is 1; but its mask is False unless ``evaluate`` (and an
    absent label is stored as 0, as every absent label): a one-class label has no AUC, and
    without sampled negatives in the split there is nothing to score.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        _, test = make_synthetic(SyntheticConfig(num_rows=100))
        t = with_interaction(test)
        assert t.task_names[-1] == INTERACTION and not t.masks[:, -1].any()
        assert with_interaction(test, evaluate=True).labels[:, -1].eq(1).all()
    """
    if INTERACTION in data.task_names:
        raise ValueError(f"{data.source}: already has a task {INTERACTION!r}")
    n = len(data)
    ones = torch.ones(n, 1)
    return MultiTaskData(
        data.dense, dict(data.sparse), dict(data.num_embeddings), [*data.tasks, INTERACTION_TASK],
        torch.cat([data.labels, ones], 1), torch.cat([data.masks, torch.full((n, 1), evaluate)], 1),
        None if data.weights is None else torch.cat([data.weights, ones], 1),
        dict(data.extras), data.source, dict(data.pooling),
    )


class NegativeSampledData:
    """Training rows with sampled negatives: a :class:`~torchrec_fusion.data.types.BatchSource`
    whose batches hold, for each batch of B observed rows (cut exactly as ``train.batches`` cuts
    them), those rows followed by B * K sampled rows, K per observed row: the row's user with an
    item the user never interacted with (``sampler``), built by ``candidates``.

    The tasks are ``train``'s plus a binary ``interaction`` task appended last (existing label
    columns keep their index): 1 on observed rows, 0 on sampled rows, where every other task is
    masked out. The model sees sampled rows as ordinary rows, so a step's batch holds
    ``B * (1 + K)`` rows for a ``batch_size`` of B (padding, with ``drop_last=False``, pads both
    parts). ``candidates`` must give rows with the same features as ``train`` (history bags too:
    pass the builder that adds them); :func:`observed_rows` tells a batch's observed rows apart.
    ``len``, ``extras`` and ``num_batches`` are those of the observed rows.

    Example::

        from torchrec_fusion.data.candidates import candidate_builder
        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, _ = make_synthetic(SyntheticConfig(num_rows=2000))
        sampler = NegativeSampler.from_data(tr, num_negatives=4)
        data = NegativeSampledData(tr, candidate_builder(tr, ["item", "category", "tags"]), sampler)
        b = next(data.batches(32, shuffle=True))
        assert b.batch_size == 32 * 5 and int(observed_rows(b).sum()) == 32
    """

    def __init__(self, train: MultiTaskData, candidates: CandidateRows, sampler: NegativeSampler,
                 user: str = "user") -> None:
        if INTERACTION in train.task_names:
            raise ValueError(f"{train.source}: already has a task {INTERACTION!r}")
        if user not in train.extras:
            raise ValueError(f"{train.source}: sampled negatives need the extras {[user]}")
        self.train, self.candidates, self.sampler, self.user = train, candidates, sampler, user
        self._tasks = [*train.tasks, INTERACTION_TASK]

    @property
    def num_negatives(self) -> int:
        """K, the sampled rows per observed row."""
        return self.sampler.num_negatives

    @property
    def tasks(self) -> List[TaskSpec]:
        return list(self._tasks)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self._tasks]

    @property
    def feature_names(self) -> List[str]:
        return self.train.feature_names

    @property
    def num_embeddings(self) -> Dict[str, int]:
        return self.train.num_embeddings

    @property
    def pooling(self) -> Dict[str, str]:
        return self.train.pooling

    @property
    def num_dense(self) -> int:
        return self.train.num_dense

    @property
    def extras(self) -> Dict[str, torch.Tensor]:
        return self.train.extras

    @property
    def source(self) -> str:
        return f"{self.train.source} + {self.num_negatives} negatives"

    @property
    def in_memory(self) -> bool:
        """False: these rows are built batch by batch; the observed rows are :attr:`train`."""
        return False

    def in_memory_rows(self) -> Optional[MultiTaskData]:
        return None

    def __len__(self) -> int:
        return len(self.train)

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        return self.train.num_batches(batch_size, world_size, drop_last)

    def label_means(self) -> torch.Tensor:
        """``train``'s label means, then ``interaction``'s over the mixed rows: ``1 / (1 + K)``."""
        return torch.cat([self.train.label_means(), torch.tensor([1.0 / (1 + self.num_negatives)])])

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, start: int = 0) -> Iterator[MultiTaskBatch]:
        """This rank's batches of ``batch_size`` observed rows and their sampled rows; the draws
        are seeded by (sampler seed, ``epoch``, ``rank``, global batch number), so a resumed epoch
        (``start``) draws what the uninterrupted one drew."""
        for step, idx in self.train.batch_indices(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                                                  world_size=world_size, drop_last=drop_last, start=start):
            yield self.make_batch(idx, batch_size, epoch=epoch, rank=rank, step=step)

    def make_batch(self, idx: torch.Tensor, pad_to: Optional[int] = None, *, epoch: int = 0, rank: int = 0,
                   step: int = 0) -> MultiTaskBatch:
        """The batch of observed rows ``idx`` (padded to ``pad_to``) and their sampled rows."""
        users = self.train.extras[self.user].index_select(0, idx)
        items = self.sampler.sample(users, epoch, rank, step)
        sampled = self.candidates(users.long().repeat_interleave(self.num_negatives), items.flatten())
        if sampled.feature_names != self.train.feature_names or sampled.num_dense != self.train.num_dense:
            raise ValueError(f"candidate rows have features {sampled.feature_names} (dense {sampled.num_dense}), "
                             f"the training rows {self.train.feature_names} (dense {self.train.num_dense})")
        pad = 0 if pad_to is None else pad_to - idx.numel()
        return _mixed_batch(self.train, idx, pad, sampled, pad * self.num_negatives, tuple(self.task_names))


def _padded(t: torch.Tensor, pad: int) -> torch.Tensor:
    return t if pad == 0 else torch.cat([t, t.new_zeros(pad, *t.shape[1:])])


def _mixed_batch(train: MultiTaskData, idx: torch.Tensor, pad: int, sampled: MultiTaskData, pad_sampled: int,
                 task_names: tuple[str, ...]) -> MultiTaskBatch:
    """Observed rows ``idx`` of ``train`` (then ``pad`` empty rows) followed by the ``sampled`` rows
    (then ``pad_sampled`` empty rows), gathered feature by feature as ``make_batch`` does."""
    values, lengths = [], []
    for name, col in train.sparse.items():
        v, lens = col.take(idx)
        other = sampled.sparse[name]
        values += [v, other.values]
        lengths += [_padded(lens, pad), _padded(other.lengths(), pad_sampled)]
    n, m = idx.numel(), len(sampled)
    t = len(task_names)
    ones, zeros = torch.ones(n, 1), torch.zeros(m, t)
    present = torch.zeros(m, t, dtype=torch.bool)
    present[:, -1] = True
    labels = torch.cat([_padded(torch.cat([train.labels.index_select(0, idx), ones], 1), pad),
                        _padded(zeros, pad_sampled)])
    masks = torch.cat([_padded(torch.cat([train.masks.index_select(0, idx), ones.bool()], 1), pad),
                       _padded(present, pad_sampled)])
    weights = None
    if train.weights is not None:
        weights = torch.cat([_padded(torch.cat([train.weights.index_select(0, idx), ones], 1), pad),
                             _padded(present.float(), pad_sampled)])
    dense = torch.cat([_padded(train.dense.index_select(0, idx), pad), _padded(sampled.dense, pad_sampled)])
    kjt = KeyedJaggedTensor(keys=train.feature_names,
                            values=torch.cat(values) if values else torch.empty(0, dtype=torch.int64),
                            lengths=torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.int64))
    return MultiTaskBatch(dense, kjt, labels, masks, task_names, weights)
