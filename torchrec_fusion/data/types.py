"""The shapes the data package shares: a source of batches, a loaded dataset, a dataset reader.

A reader (``synthetic``, ``movielens``, ``table``, ``criteo``) is one module holding a class with
an ``Options`` dataclass and a static ``load(options, seed)`` returning :class:`LoadedData`; the
trainer reads the train split through :class:`BatchSource` only, so rows in memory
(:class:`MultiTaskData`) and rows streamed from disk (``TableStream``) serve alike.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, runtime_checkable

import torch

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.tasks import TaskSpec

__all__ = ["BatchSource", "CandidateRows", "DatasetReader", "LoadedData"]

# rows for arbitrary (user index, item index) pairs, features filled in and no labels: candidates to rank
CandidateRows = Callable[[torch.Tensor, torch.Tensor], MultiTaskData]


@runtime_checkable
class BatchSource(Protocol):
    """Rows that training and evaluation cut into batches: their schema (tasks, id features with
    table sizes and pooling, dense width), their number, and their batches, the same way on every
    rank (see :meth:`MultiTaskData.batches`).

    :class:`MultiTaskData` (rows in memory) and ``TableStream`` (Parquet rows read batch by batch)
    implement it. Only rows in memory can be split, subset or cut to fewer tasks: :attr:`in_memory`
    says whether they are, and :meth:`in_memory_rows` gives them typed.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        train, _ = make_synthetic(SyntheticConfig(num_rows=100))
        assert isinstance(train, BatchSource) and train.in_memory and train.in_memory_rows() is train
        assert train.num_batches(16) == len(train) // 16
    """

    @property
    def tasks(self) -> List[TaskSpec]:
        """The task specs, in label column order."""

    @property
    def task_names(self) -> List[str]:
        """The task names, in label column order."""

    @property
    def feature_names(self) -> List[str]:
        """The id features, in the order of a batch's ``KeyedJaggedTensor`` keys."""

    @property
    def num_embeddings(self) -> Dict[str, int]:
        """The table size of every id feature."""

    @property
    def pooling(self) -> Dict[str, str]:
        """Per id feature, ``"sum"`` or ``"mean"`` (absent: ``"sum"``)."""

    @property
    def num_dense(self) -> int:
        """The width of the dense features."""

    @property
    def extras(self) -> Dict[str, torch.Tensor]:
        """Per-row columns held in memory beside the features (``user``, ``item``); empty for a stream."""

    @property
    def source(self) -> str:
        """A name for error messages."""

    @property
    def in_memory(self) -> bool:
        """Whether the rows are in memory, to split, subset or cut to fewer tasks."""

    def in_memory_rows(self) -> Optional[MultiTaskData]:
        """The rows as :class:`MultiTaskData` when they are in memory, else None."""

    def __len__(self) -> int:
        """The number of rows."""

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        """The number of batches each of ``world_size`` ranks yields."""

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, start: int = 0) -> Iterator[MultiTaskBatch]:
        """This rank's batches; ``drop_last=False`` pads the last one with masked-out rows."""

    def label_means(self) -> torch.Tensor:
        """``[T]`` mean of each task's present labels (NaN where a task has none)."""


@dataclass
class LoadedData:
    """A dataset's train and test splits, and what ranking and recommendations need of it.

    Args:
        train: the training rows, in memory or streamed.
        test: the test rows, in memory.
        info: what the run reports about the data (``{"dataset": ..., "rows": ...}``).
        item_titles: titles by item index (None: not known).
        candidates: rows for arbitrary (user, item) index pairs, for ranking the catalogue
            (None: not available).
        user_ids: the dataset's own id of each user index (None: the indices are the ids).
        item_ids: the dataset's own id of each item index (None: the indices are the ids).
    """

    train: BatchSource
    test: MultiTaskData
    info: Dict[str, object] = field(default_factory=dict)
    item_titles: Optional[List[str]] = None
    candidates: Optional[CandidateRows] = None
    user_ids: Optional[torch.Tensor] = None
    item_ids: Optional[torch.Tensor] = None


class DatasetReader(Protocol):
    """A dataset by name (a member of ``torchrec_fusion.data.registry.DATASETS``): a class with an
    ``Options`` dataclass (the ``data:`` section of a run config) and a static ``load``."""

    @staticmethod
    def load(options: Any, seed: int) -> LoadedData:
        """The train and test splits; ``seed`` seeds any random split or generation."""
