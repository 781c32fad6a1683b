"""Task specifications shared by data, models, losses and metrics."""

from dataclasses import dataclass
from enum import StrEnum
from typing import List, Sequence


class TaskKind(StrEnum):
    """How a task's head output is read: a logit, a value, or class logits."""

    BINARY = "binary"
    REGRESSION = "regression"
    MULTICLASS = "multiclass"


@dataclass(frozen=True)
class TaskSpec:
    """One supervised task of a multi-task model.

    Args:
        name: unique task name; predictions, labels and metrics are keyed by it.
        kind: ``binary`` (one logit, BCE), ``regression`` (one value, MSE) or
            ``multiclass`` (``num_classes`` logits, cross-entropy).
        loss_weight: fixed weight of this task's loss in the total loss.
        num_classes: number of classes, for ``multiclass`` only.

    Example::

        TaskSpec("like", "binary"), TaskSpec("rating", "regression", loss_weight=0.5)
    """

    name: str
    kind: TaskKind = TaskKind.BINARY
    loss_weight: float = 1.0
    num_classes: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TaskKind(self.kind))
        except ValueError:
            raise ValueError(
                f"task {self.name!r}: unknown kind {self.kind!r}; "
                f"expected one of {[k.value for k in TaskKind]}"
            ) from None
        if not self.name or not str(self.name).isidentifier():
            raise ValueError(f"task name must be an identifier, got {self.name!r}")
        if self.kind == TaskKind.MULTICLASS and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2")
        if self.kind != TaskKind.MULTICLASS and self.num_classes != 1:
            raise ValueError(f"task {self.name!r}: num_classes is for multiclass tasks only")
        if not self.loss_weight >= 0:
            raise ValueError(f"task {self.name!r}: loss_weight must be >= 0")

    @property
    def output_dim(self) -> int:
        """Width of this task's head output."""
        return self.num_classes if self.kind == TaskKind.MULTICLASS else 1


def check_tasks(tasks: Sequence[TaskSpec]) -> List[TaskSpec]:
    """Validates a task list: non-empty, unique names."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("at least one task is needed")
    names = [t.name for t in tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate task names: {sorted(dup)}")
    return tasks


def select_tasks(tasks: Sequence[TaskSpec], names: Sequence[str]) -> List[TaskSpec]:
    """Returns the tasks named in ``names``, in that order; unknown names are an error."""
    by_name = {t.name: t for t in tasks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown task name(s) {unknown}; this dataset has {list(by_name)}")
    return [by_name[n] for n in names]
