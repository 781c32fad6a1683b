"""Early stopping on a validation metric: which epoch is the best so far, and when to stop.

Everything is read from the run's history of evaluations (one per finished epoch), so a resumed run
knows its best epoch and its patience left without any state of its own.
"""

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

from torchrec_fusion.tasks import TaskKind, TaskSpec
from torchrec_fusion.training.state import Evaluation

# metric -> True when higher is better (each task kind's metrics, as evaluation.metrics.task_metrics names them)
HIGHER_IS_BETTER: Dict[str, bool] = {"auc": True, "accuracy": True, "logloss": False, "ne": False, "rmse": False,
                                     "mse": False, "mae": False, "cross_entropy": False}
KIND_METRICS: Dict[TaskKind, Sequence[str]] = {TaskKind.BINARY: ("auc", "logloss", "ne"),
                                               TaskKind.REGRESSION: ("rmse", "mae", "mse"),
                                               TaskKind.MULTICLASS: ("accuracy", "cross_entropy")}
FUSED = "fused"


@dataclasses.dataclass(frozen=True)
class StopMetric:
    """A task's metric (``ctr:auc``, ``rating:rmse``; ``fused:auc`` for the fused score).

    Example::

        m = StopMetric.parse("rating:rmse")
        assert (m.task, m.name, m.higher_is_better) == ("rating", "rmse", False)
        assert m.better(0.9, 1.0) and not m.better(1.0, 1.0) and m.better(0.9, None)
    """

    task: str
    name: str

    @classmethod
    def parse(cls, text: str) -> "StopMetric":
        task, sep, name = text.partition(":")
        if not sep or not task or name not in HIGHER_IS_BETTER:
            raise ValueError(f"--early-stopping {text!r}: expected TASK:METRIC, METRIC one of "
                             f"{sorted(HIGHER_IS_BETTER)} (e.g. ctr:auc, rating:rmse, fused:auc)")
        return cls(task, name)

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.name]

    def __str__(self) -> str:
        return f"{self.task}:{self.name}"

    def check(self, tasks: Sequence[TaskSpec], fused: bool) -> None:
        """The task exists in the run and has this metric (the fused score is binary)."""
        kinds = {t.name: t.kind for t in tasks}
        if fused:
            kinds[FUSED] = TaskKind.BINARY
        if self.task not in kinds:
            raise ValueError(f"--early-stopping {self}: no task {self.task!r} in this run; tasks: {sorted(kinds)}")
        allowed = KIND_METRICS[kinds[self.task]]
        if self.name not in allowed:
            raise ValueError(f"--early-stopping {self}: {self.task!r} is a {kinds[self.task].value} task; its "
                             f"metrics are {list(allowed)}")

    def value(self, entry: Evaluation) -> float:
        """This metric in ``entry`` (NaN when the evaluation had no scored row)."""
        metrics = entry.fused if self.task == FUSED else entry.tasks.get(self.task)
        v = (metrics or {}).get(self.name)
        return float(v) if isinstance(v, (int, float)) else math.nan

    def better(self, value: float, than: Optional[float]) -> bool:
        """Whether ``value`` strictly improves on ``than`` (None: nothing yet); NaN never does."""
        if math.isnan(value):
            return False
        return than is None or (value > than if self.higher_is_better else value < than)


def epoch_ends(history: Sequence[Evaluation]) -> List[Evaluation]:
    """The evaluations made at the end of an epoch (not a final one after a stop inside an epoch)."""
    return [e for e in history if float(e.epoch).is_integer()]


def best_epoch(history: Sequence[Evaluation], metric: StopMetric) -> Optional[Evaluation]:
    """The epoch-end evaluation with the best ``metric`` (the earliest of equals), or None."""
    best: Optional[Evaluation] = None
    for e in epoch_ends(history):
        if metric.better(metric.value(e), None if best is None else metric.value(best)):
            best = e
    return best


def should_stop(history: Sequence[Evaluation], metric: StopMetric, patience: int) -> bool:
    """Whether ``patience`` epochs have ended since the best one (or since the start, without any)."""
    ends = epoch_ends(history)
    best = best_epoch(history, metric)
    last = ends[-1].epoch if ends else 0.0
    return last - (best.epoch if best is not None else 0.0) >= patience


def summary(history: Sequence[Evaluation], metric: StopMetric, patience: int, epochs: int, split: str,
            checkpoint: Optional[str]) -> Dict[str, Any]:
    """The best epoch as ``metrics.json`` records it: the metric, its value, the epoch and step, its
    metrics on ``split``, the ``checkpoint`` holding it, and whether training stopped early."""
    best = best_epoch(history, metric)
    ends = epoch_ends(history)
    out: Dict[str, Any] = {"metric": str(metric), "higher_is_better": metric.higher_is_better, "split": split,
                           "patience": patience, "epochs_run": int(ends[-1].epoch) if ends else 0,
                           "stopped_early": bool(ends) and ends[-1].epoch < epochs
                           and should_stop(history, metric, patience)}
    if best is None:
        return {**out, "epoch": None, "value": None, "checkpoint": None}
    return {**out, "epoch": int(best.epoch), "step": best.step, "value": metric.value(best), "checkpoint": checkpoint,
            "tasks": best.tasks, **({"fused": best.fused} if best.fused is not None else {})}
