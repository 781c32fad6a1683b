"""In-memory columnar multi-task data and its vectorised batch builder."""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.tasks import TaskKind, TaskSpec, check_tasks


@dataclass
class SparseColumn:
    """One id feature over all rows: ``values`` with row ``offsets`` (``N + 1``).

    ``offsets=None`` means exactly one id per row (the common, fastest case).
    """

    values: torch.Tensor
    offsets: Optional[torch.Tensor] = None

    def lengths(self) -> torch.Tensor:
        if self.offsets is None:
            return torch.ones(self.values.numel(), dtype=torch.int64)
        return self.offsets[1:] - self.offsets[:-1]

    def take(self, idx: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
        """Returns (values, lengths) of rows ``idx``, gathered without a Python loop."""
        # index_select, not values[idx]: the generic advanced-indexing kernel was most of a batch's cost
        if self.offsets is None:
            return self.values.index_select(0, idx), torch.ones(idx.numel(), dtype=torch.int64)
        starts = self.offsets.index_select(0, idx)
        lens = self.offsets.index_select(0, idx + 1) - starts
        total = int(lens.sum())
        if total == 0:
            return self.values[:0], lens
        shift = starts - (torch.cumsum(lens, 0) - lens)
        pos = torch.repeat_interleave(shift, lens, output_size=total) + torch.arange(total)
        return self.values.index_select(0, pos), lens


@dataclass
class MultiTaskData:
    """Columnar rows for multi-task training, ready to be cut into batches.

    Args:
        dense: ``[N, D]`` float dense features (``D`` may be 0).
        sparse: id features by name, each a :class:`SparseColumn`.
        num_embeddings: the table size each id feature needs (max id + 1 at least).
        tasks: the task specs, in label column order.
        labels: ``[N, T]`` float labels.
        masks: ``[N, T]`` bool, True where the label is present.
        weights: optional ``[N, T]`` float sample weights.
        extras: optional per-row columns carried along (user and item ids for
            ranking evaluation, for example); not fed to the model.
        pooling: per feature, how its bag is pooled: ``"sum"`` (default) or ``"mean"``.
    """

    dense: torch.Tensor
    sparse: Dict[str, SparseColumn]
    num_embeddings: Dict[str, int]
    tasks: List[TaskSpec]
    labels: torch.Tensor
    masks: torch.Tensor
    weights: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = "data"
    pooling: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks)
        n = self.dense.size(0)
        self.labels = self.labels.float()
        self.masks = self.masks.bool()
        if self.labels.shape != (n, len(self.tasks)) or self.masks.shape != self.labels.shape:
            raise ValueError(
                f"{self.source}: labels/masks must be [{n}, {len(self.tasks)}], got "
                f"{tuple(self.labels.shape)} / {tuple(self.masks.shape)}"
            )
        for name, col in self.sparse.items():
            rows = col.values.numel() if col.offsets is None else col.offsets.numel() - 1
            if rows != n:
                raise ValueError(f"{self.source}: feature {name!r} has {rows} rows, dense has {n}")
            if name not in self.num_embeddings:
                raise ValueError(f"{self.source}: no num_embeddings given for feature {name!r}")
        self.validate()

    def __len__(self) -> int:
        return self.dense.size(0)

    @property
    def feature_names(self) -> List[str]:
        return list(self.sparse)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    @property
    def in_memory(self) -> bool:
        """True: these rows can be split, subset and cut to fewer tasks (a stream's cannot)."""
        return True

    def in_memory_rows(self) -> "MultiTaskData":
        """These rows (a :class:`~torchrec_fusion.data.types.BatchSource` in memory)."""
        return self

    def validate(self) -> None:
        """Raises ``ValueError`` naming the feature or task at fault for: ids out of
        ``[0, num_embeddings)``, non-finite dense values, NaN or out-of-range labels
        where the mask says the label is present."""
        for name, col in self.sparse.items():
            v = col.values
            if v.numel() == 0:
                continue
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= self.num_embeddings[name]:
                bad = int(v[(v < 0) | (v >= self.num_embeddings[name])][0])
                raise ValueError(
                    f"{self.source}: feature {name!r} has id {bad} outside "
                    f"[0, num_embeddings={self.num_embeddings[name]})"
                )
        if self.dense.numel() and not torch.isfinite(self.dense).all():
            row = int((~torch.isfinite(self.dense)).any(1).nonzero()[0])
            raise ValueError(f"{self.source}: dense features are NaN/inf in row {row}")
        for j, task in enumerate(self.tasks):
            y, m = self.labels[:, j], self.masks[:, j]
            nonfinite = m & ~torch.isfinite(y)
            if nonfinite.any():
                raise ValueError(
                    f"{self.source}: task {task.name!r} has a NaN/inf label in row {int(nonfinite.nonzero()[0])}"
                )
            if task.kind == TaskKind.BINARY and (m & (y != 0) & (y != 1)).any():
                raise ValueError(f"{self.source}: binary task {task.name!r} has labels other than 0/1")
            if task.kind == TaskKind.MULTICLASS and (
                m & ((y < 0) | (y >= task.num_classes) | (y != y.round()))
            ).any():
                raise ValueError(
                    f"{self.source}: multiclass task {task.name!r} has labels outside 0..{task.num_classes - 1}"
                )
        # absent labels are zeroed so no NaN can leak into a loss through a mask
        self.labels = torch.where(self.masks, self.labels, torch.zeros_like(self.labels))

    def subset(self, idx: torch.Tensor, source: Optional[str] = None) -> "MultiTaskData":
        """Rows ``idx`` as a new dataset (a split, for example)."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        sparse = {}
        for name, col in self.sparse.items():
            vals, lens = col.take(idx)
            offs = None if col.offsets is None else torch.cat([lens.new_zeros(1), lens.cumsum(0)])
            sparse[name] = SparseColumn(vals, offs)
        return MultiTaskData(
            dense=self.dense[idx],
            sparse=sparse,
            num_embeddings=dict(self.num_embeddings),
            tasks=list(self.tasks),
            labels=self.labels[idx],
            masks=self.masks[idx],
            weights=None if self.weights is None else self.weights[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
            source=source or self.source,
            pooling=dict(self.pooling),
        )

    def split(self, fraction: float, seed: int) -> "tuple[MultiTaskData, MultiTaskData]":
        """A seeded random split into (1 - fraction, fraction) of the rows."""
        keep, held = random_split_rows(len(self), fraction, seed)
        return self.subset(keep), self.subset(held)

    def make_batch(self, idx: torch.Tensor, pad_to: Optional[int] = None) -> MultiTaskBatch:
        """Builds the batch of rows ``idx``; ``pad_to`` appends rows with empty bags,
        zero dense features and all-False masks (they add no loss and no metric)."""
        n, pad = idx.numel(), 0 if pad_to is None else pad_to - idx.numel()
        if pad < 0:
            raise ValueError(f"batch of {n} rows cannot be padded to {pad_to}")
        keys, values, lengths = [], [], []
        for name, col in self.sparse.items():
            v, lens = col.take(idx)
            keys.append(name)
            values.append(v)
            lengths.append(lens if pad == 0 else torch.cat([lens, lens.new_zeros(pad)]))
        dense, labels, masks = (t.index_select(0, idx) for t in (self.dense, self.labels, self.masks))
        weights = None if self.weights is None else self.weights.index_select(0, idx)
        if pad:
            dense = torch.cat([dense, dense.new_zeros(pad, dense.size(1))])
            labels = torch.cat([labels, labels.new_zeros(pad, labels.size(1))])
            masks = torch.cat([masks, masks.new_zeros(pad, masks.size(1))])
            if weights is not None:
                weights = torch.cat([weights, weights.new_zeros(pad, weights.size(1))])
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(values) if values else torch.empty(0, dtype=torch.int64),
            lengths=torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.int64),
        )
        return MultiTaskBatch(dense, kjt, labels, masks, tuple(self.task_names), weights)

    @property
    def num_dense(self) -> int:
        return self.dense.size(1)

    def label_means(self) -> torch.Tensor:
        """``[T]`` mean of each task's present labels (NaN where a task has none)."""
        m = self.masks.float()
        return (self.labels.nan_to_num() * m).sum(0) / m.sum(0)

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        g = batch_size * world_size
        return len(self) // g if drop_last else -(-len(self) // g)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        start: int = 0,
    ) -> Iterator[MultiTaskBatch]:
        """Yields this rank's batches of ``batch_size`` rows.

        Global batch ``i`` holds rows ``[i*G, (i+1)*G)`` of the (seeded, per-epoch)
        permutation, with ``G = batch_size * world_size``; rank ``r`` takes the
        ``r``-th slice of it. So a step on ``world_size`` ranks sees exactly the
        rows one process would see with batch size ``G``. Every rank yields the
        same number of batches: with ``drop_last=False`` the tail is padded with
        masked-out rows (for evaluation, where every row must count once).
        ``start`` skips the first global batches (a resumed epoch).
        """
        for _, idx in self.batch_indices(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                                         world_size=world_size, drop_last=drop_last, start=start):
            yield self.make_batch(idx, pad_to=batch_size)

    def batch_indices(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                      world_size: int = 1, drop_last: bool = True,
                      start: int = 0) -> Iterator[Tuple[int, torch.Tensor]]:
        """(global batch number, row indices) of each batch :meth:`batches` yields, cut the same way
        (the last batch's indices may be fewer than ``batch_size``: :meth:`batches` pads it)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = (
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            if shuffle
            else torch.arange(len(self))
        )
        g = batch_size * world_size
        for i in range(start, self.num_batches(batch_size, world_size, drop_last)):
            yield i, order[i * g + rank * batch_size : min(i * g + (rank + 1) * batch_size, len(self))]


def random_split_rows(n: int, fraction: float, seed: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """(kept rows, held-out rows) of a seeded permutation of ``n`` rows; ``fraction`` is held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * fraction))
    return perm[k:], perm[:k]
