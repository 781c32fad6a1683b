"""The rows a run trains and evaluates on: the dataset's splits, the tasks kept, a validation split
(the dataset's own, or carved from train when asked), history bags built from the training rows, and
candidate rows; and any other file of a table run's spec, read as those splits are."""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.history import InteractionHistory
from torchrec_fusion.data.negatives import NegativeSampledData, NegativeSampler, with_interaction
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.data.tabular import read_table_file
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
    # other rows made like the splits: tasks kept, history bags, the interaction task (see read_file)
    like_splits: Optional[Callable[[MultiTaskData], MultiTaskData]] = None


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


def _own_validation(config: TrainConfig, loaded: LoadedData, keep: Optional[List[TaskSpec]]) -> Optional[BatchSource]:
    """The dataset's own validation rows (a table spec's ``validation`` files), if it has them."""
    own: Optional[MultiTaskData] = getattr(loaded, "validation", None)  # TableData's; any dataset may add it
    if own is not None and config.validation_fraction > 0:
        raise ValueError("the table spec names validation files and --validation-fraction would carve a second "
                         "validation split from train: use one of them")
    return None if own is None else _keep_tasks(own, keep)


def _like_splits(keep: Optional[List[TaskSpec]], history: Optional[InteractionHistory],
                 negatives: bool) -> Callable[[MultiTaskData], MultiTaskData]:
    """Makes other rows as the splits were made: the tasks kept, the history bags, the interaction task."""
    def made(rows: MultiTaskData) -> MultiTaskData:
        _keep_tasks(rows, keep)  # in place
        if history is not None:
            history.add_to(rows)
        return with_interaction(rows) if negatives else rows

    return made


def prepare_data(config: TrainConfig) -> PreparedData:
    """The dataset's train and test splits, and a validation split (the dataset's own, or carved
    from train by ``validation_fraction``): the run evaluates on it when there is one, else on test
    (``eval_split`` says which). History bags and candidate rows from the training rows only."""
    loaded = load_dataset(config.dataset, config.member_options("dataset"), config.seed)
    keep = select_tasks(loaded.train.tasks, config.tasks) if config.tasks else None
    train: BatchSource = loaded.train
    if not train.in_memory and (keep is not None or config.validation_fraction > 0):
        raise ValueError("a streamed table (stream: true) trains every task of its spec on all its train rows: "
                         "drop --tasks / --validation-fraction (a validation file in the spec works), or list "
                         "fewer tasks and a test file in the spec")
    train = _keep_tasks(train, keep)
    splits: Dict[str, BatchSource] = {"test": _keep_tasks(loaded.test, keep)}
    if (own := _own_validation(config, loaded, keep)) is not None:
        splits["validation"] = own
    rows = train.in_memory_rows()
    if config.validation_fraction > 0 and rows is not None:  # the test split is then never read by training
        train, splits["validation"] = rows.split(config.validation_fraction, config.seed)
        rows = train
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
    split = "validation" if "validation" in splits else "test"
    return PreparedData(train, splits[split], split, loaded.info, candidates, splits, loaded,
                        _like_splits(keep, history, config.negatives > 0))


def read_file(config: TrainConfig, prepared: PreparedData, path: str) -> MultiTaskData:
    """The rows of ``path`` read with the run's table spec and its tables' sizes, made as the run's
    splits were (so a finished run scores them as it scored its test split)."""
    if config.dataset != "table" or prepared.like_splits is None:
        raise ValueError(f"--data reads a file with the run's table spec (dataset: table); this run's dataset is "
                         f"{config.dataset!r}: choose one of its splits with --split")
    spec = config.member_options("dataset")["table"]
    return prepared.like_splits(read_table_file(spec, path, prepared.splits["train"].num_embeddings))
