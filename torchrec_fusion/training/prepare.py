"""The rows a run trains and evaluates on: the dataset's splits, the tasks kept, a validation split
carved from train when asked, history bags built from the training rows, and candidate rows."""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.history import InteractionHistory
from torchrec_fusion.data.negatives import NegativeSampledData, NegativeSampler, with_interaction
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.data.types import BatchSource, CandidateRows, LoadedData
from torchrec_fusion.tasks import TaskSpec, select_tasks
from torchrec_fusion.training.config import TrainConfig


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


def _with_negatives(config: TrainConfig, rows: Optional[MultiTaskData], candidates: Optional[CandidateRows],
                    splits: Dict[str, BatchSource]) -> Tuple[BatchSource, Optional[CandidateRows]]:
    """The training rows with ``config.negatives`` sampled items per row (an ``interaction`` task
    added to every split and to the candidate rows, so that they share one task list)."""
    if rows is None or candidates is None:
        raise ValueError("--negatives needs training rows in memory (not stream: true) and a dataset that can "
                         "build rows for any (user, item) pair: movielens, synthetic, or a table with "
                         "user_column, item_column and item_features")
    sampler = NegativeSampler.from_data(rows, config.negatives, config.negative_sampling, config.negative_alpha,
                                        config.seed)
    train = NegativeSampledData(rows, candidates, sampler)
    for name, split in splits.items():
        if (in_memory := split.in_memory_rows()) is not None:
            splits[name] = with_interaction(in_memory)

    def with_task(user: torch.Tensor, item: torch.Tensor) -> MultiTaskData:
        return with_interaction(candidates(user, item))

    return train, with_task


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
        history = InteractionHistory(rows, config.history_length, config.seed,  # from the training rows only
                                     liked=config.history_liked)
        for d in splits.values():
            if (in_memory := d.in_memory_rows()) is not None:
                history.add_to(in_memory)
    candidates = _candidates(loaded, keep, history)
    if config.negatives > 0:
        train, candidates = _with_negatives(config, rows, candidates, splits)
    return PreparedData(train, splits[split], split, loaded.info, candidates, splits, loaded)
