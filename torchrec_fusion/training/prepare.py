"""The rows a run trains and evaluates on: the dataset's splits, the tasks kept, a validation split
carved from train when asked, history bags built from the training rows, and candidate rows."""

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.history import InteractionHistory
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.data.types import BatchSource, LoadedData
from torchrec_fusion.tasks import TaskSpec, select_tasks
from torchrec_fusion.training.config import TrainConfig

CandidateRows = Callable[[torch.Tensor, torch.Tensor], MultiTaskData]


@dataclasses.dataclass
class PreparedData:
    """The rows a run trains and evaluates on, and how to build candidate rows for ranking."""

    train: BatchSource
    eval: BatchSource
    eval_split: str
    info: Dict[str, Any]
    candidates: Optional[CandidateRows] = None
    splits: Dict[str, BatchSource] = dataclasses.field(default_factory=dict)  # train, test (, validation)
    loaded: Optional[LoadedData] = None


def _keep_tasks(source: BatchSource, keep: Optional[List[TaskSpec]]) -> BatchSource:
    """``source`` with only the tasks ``keep`` (in memory rows only: a stream keeps its spec's tasks)."""
    data = source.in_memory_rows()
    if keep is None or data is None:
        return source
    cols = [data.task_names.index(t.name) for t in keep]
    data.tasks, data.labels, data.masks = list(keep), data.labels[:, cols], data.masks[:, cols]
    data.weights = None if data.weights is None else data.weights[:, cols]
    return data


def _candidates(loaded: LoadedData, keep: Optional[List[TaskSpec]],
                history: Optional[InteractionHistory]) -> Optional[CandidateRows]:
    make = loaded.candidates
    if make is None:
        return None

    def candidates(user: torch.Tensor, item: torch.Tensor) -> MultiTaskData:
        rows = make(user, item)
        _keep_tasks(rows, keep)
        return history.add_to(rows) if history is not None else rows

    return candidates


def prepare_data(config: TrainConfig) -> PreparedData:
    """The dataset's train split, and its test split or a validation split carved from
    train (``eval_split`` says which); history bags and candidate rows from the training
    rows only."""
    loaded = load_dataset(config.dataset, config.member_options("dataset"), config.seed)
    keep = select_tasks(loaded.train.tasks, config.tasks) if config.tasks else None
    train: BatchSource = loaded.train
    if not train.in_memory and (keep is not None or config.validation_fraction > 0):
        raise ValueError("a streamed table (stream: true) trains every task of its spec on all its train rows: "
                         "drop --tasks / --validation-fraction, or list fewer tasks and a test file in the spec")
    train = _keep_tasks(train, keep)
    splits: Dict[str, BatchSource] = {"test": _keep_tasks(loaded.test, keep)}
    split = "test"
    rows = train.in_memory_rows()
    if config.validation_fraction > 0 and rows is not None:  # the test split is then never read by training
        train, splits["validation"] = rows.split(config.validation_fraction, config.seed)
        rows, split = train, "validation"
    splits["train"] = train
    history = None
    if config.history_length > 0 and rows is not None and {"user", "item"} <= set(rows.extras):
        history = InteractionHistory(rows, config.history_length, config.seed)  # from the training rows only
        for d in splits.values():
            if (in_memory := d.in_memory_rows()) is not None:
                history.add_to(in_memory)
    return PreparedData(train, splits[split], split, loaded.info, _candidates(loaded, keep, history), splits, loaded)
