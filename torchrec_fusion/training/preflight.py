"""The checks a run's config must pass before any process starts or any data is read.

A config that cannot work (ESMM over the four synthetic tasks, a fusion target that is no binary
task, a loss weight for an unknown task) used to fail only after the data was loaded and the
ranks started. Most such faults are visible from the config and the dataset's task list, which
every built-in dataset declares without reading its files: :func:`preflight` builds the model of
the config over those tasks on the meta device (tables unallocated, a stub feature), so the
architecture's, the balancing's and the fusion head's own checks run in this process, in well
under a second.

Example::

    from torchrec_fusion.training.config import TrainConfig

    assert [t.name for t in declared_tasks(TrainConfig.make(dataset="movielens"))] == ["like", "rating"]
    try:
        preflight(TrainConfig.make(arch="esmm"))  # the synthetic data has four tasks
    except ValueError as e:
        assert "esmm" in str(e) and "ctr" in str(e)
"""

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from torchrec_fusion.data.criteo import CRITEO_TASKS, CriteoReader
from torchrec_fusion.data.movielens import MOVIELENS_TASKS, MovieLensReader
from torchrec_fusion.data.negatives import INTERACTION_TASK
from torchrec_fusion.data.registry import DATASETS
from torchrec_fusion.data.synthetic import SYNTHETIC_TASKS, SyntheticReader
from torchrec_fusion.data.tabular import TableReader
from torchrec_fusion.data.tabular_spec import TableSpec
from torchrec_fusion.modules.architectures import ARCHITECTURES, ESMMArch
from torchrec_fusion.tasks import TaskKind, TaskSpec, select_tasks
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.factory import build_train_model

__all__ = ["declared_tasks", "preflight"]


def _table_tasks(options: Mapping[str, Any]) -> Optional[List[TaskSpec]]:
    spec = options.get("table")
    return [t.spec() for t in TableSpec.from_dict(spec).tasks] if spec else None


# the built-in readers' task lists, read from their constants or the table spec (no file is opened)
_DECLARED: Dict[Any, Callable[[Mapping[str, Any]], Optional[Sequence[TaskSpec]]]] = {
    SyntheticReader: lambda options: SYNTHETIC_TASKS,
    MovieLensReader: lambda options: MOVIELENS_TASKS,
    CriteoReader: lambda options: CRITEO_TASKS,
    TableReader: _table_tasks,
}


def declared_tasks(config: TrainConfig) -> Optional[List[TaskSpec]]:
    """The tasks ``config``'s run would train, known before any data is read: the dataset's
    (built-in readers; a plugin reader may declare them with a static ``declared_tasks(options)``),
    those of ``config.tasks`` only, then ``interaction`` with negatives. None when the dataset
    cannot say."""
    reader = DATASETS[config.dataset]
    options = config.member_options("dataset")
    declare = getattr(reader, "declared_tasks", None) or _DECLARED.get(reader)
    found = declare(options) if declare is not None else None
    if found is None:
        return None
    tasks = select_tasks(list(found), config.tasks) if config.tasks else list(found)
    return tasks + [INTERACTION_TASK] if config.negatives > 0 else tasks


@dataclasses.dataclass
class _Schema:
    """What the model factory reads off the data, with the real tasks and one stub feature."""

    tasks: List[TaskSpec]
    feature_names: List[str] = dataclasses.field(default_factory=lambda: ["f"])
    num_embeddings: Dict[str, int] = dataclasses.field(default_factory=lambda: {"f": 1})
    pooling: Dict[str, str] = dataclasses.field(default_factory=dict)
    num_dense: int = 1

    def label_means(self) -> torch.Tensor:
        return torch.full((len(self.tasks),), math.nan)


def _binary(tasks: Sequence[TaskSpec]) -> List[str]:
    return [t.name for t in tasks if t.kind == TaskKind.BINARY]


def _check_tasks(config: TrainConfig, tasks: List[TaskSpec]) -> None:
    """What the config asks of the tasks beyond the model: ESMM's two binary tasks (without a chain),
    the binary tasks of the liked-items bag and of the ranking's relevance."""
    names, binary = [t.name for t in tasks], _binary(tasks)
    for arch in config.ensemble or [config.arch]:
        cls = dict.get(ARCHITECTURES, arch)
        chain = config.member_options("arch", arch).get("chain") if cls is not None else None
        if cls is not None and issubclass(cls, ESMMArch) and not chain and (len(tasks) != 2 or binary != names):
            raise ValueError(f"--arch {arch} needs exactly two binary tasks, click then click-and-convert "
                             f"(e.g. --tasks ctr ctcvr on the synthetic data), or --chain FIRST SECOND; the tasks "
                             f"are {_kinds(tasks)}")
    if config.history_liked is not None and config.history_liked not in binary:
        raise ValueError(f"--history-liked {config.history_liked}: needs a binary task of {_kinds(tasks)}")
    if config.ranking_eval and config.ranking_relevance not in binary:
        raise ValueError(f"--ranking-relevance {config.ranking_relevance}: --ranking-eval needs a binary task of "
                         f"{_kinds(tasks)}")


def _kinds(tasks: Sequence[TaskSpec]) -> str:
    return "[" + ", ".join(f"{t.name} ({t.kind.value})" for t in tasks) + "]"


def preflight(config: TrainConfig) -> None:
    """Refuses (``ValueError``, saying why and what would work) a config that cannot work, before
    any process starts: out-of-range sizes and counts (:meth:`TrainConfig.check`), retrieval without
    user features, and, where the dataset declares its tasks, tasks the architecture, the fusion
    target, the task weights or the chain cannot take. The torch RNG is left as it was."""
    config.check("config")
    if config.retrieval and config.history_length == 0 and not config.retrieval_user_features:
        raise ValueError("--retrieval: the user tower reads the history bags by default, and --history-length 0 "
                         "turns them off; set --history-length > 0 or --retrieval-user-features")
    tasks = declared_tasks(config)
    if tasks is None:
        return
    _check_tasks(config, tasks)
    with torch.random.fork_rng(devices=[]):  # building the model draws initial weights
        try:
            build_train_model(dataclasses.replace(config, retrieval=False), _Schema(tasks), device="meta")
        except (ValueError, KeyError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"this config cannot work with the tasks {_kinds(tasks)}: {message}") from None
