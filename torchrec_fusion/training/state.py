"""The training loop's state, which is also the checkpoint's payload, and the typed result of a run."""

import dataclasses
import math
from typing import Any, Dict, List, Optional

import torch

Metrics = Dict[str, Dict[str, Any]]


@dataclasses.dataclass
class Evaluation:
    """One evaluation of the model on the run's held-out split (after an epoch, or at the end)."""

    epoch: float
    step: int
    tasks: Metrics
    gates: Dict[str, Any]
    task_weights: Dict[str, float]
    train_loss: float = math.nan
    fused: Optional[Dict[str, Any]] = None

    def __getitem__(self, key: str) -> Any:
        """Read access by the JSON field name, as the dicts of earlier versions were read."""
        return self.to_dict()[key]

    def to_dict(self) -> Dict[str, Any]:
        out = {"epoch": self.epoch, "step": self.step, "train_loss": self.train_loss, "tasks": self.tasks,
               "gates": self.gates, "task_weights": self.task_weights}
        return {**out, "fused": self.fused} if self.fused is not None else out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Evaluation":
        return cls(epoch=d["epoch"], step=d.get("step", -1), tasks=d.get("tasks", {}), gates=d.get("gates", {}),
                   task_weights=d.get("task_weights", {}), train_loss=d.get("train_loss", math.nan),
                   fused=d.get("fused"))


@dataclasses.dataclass
class TrainState:
    """Where training stands: the position, the evaluations so far and the losses per step. It is
    what a checkpoint's ``state.json`` holds (plus the config and plan), so a resume continues from
    exactly here; ``epoch_losses`` are the losses of the epoch in progress."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: List[Evaluation] = dataclasses.field(default_factory=list)
    step_losses: List[float] = dataclasses.field(default_factory=list)
    step_task_losses: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    epoch_losses: List[float] = dataclasses.field(default_factory=list)
    epoch_task_losses: Dict[str, List[float]] = dataclasses.field(default_factory=dict)

    @property
    def evaluated_at(self) -> int:
        """The step of the last evaluation (-1: none yet)."""
        return self.history[-1].step if self.history else -1

    def to_payload(self) -> Dict[str, Any]:
        """The JSON of this state (the checkpoint's ``state.json`` adds the step and world size)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "history": [e.to_dict() for e in self.history], "step_losses": self.step_losses,
                "step_task_losses": self.step_task_losses, "epoch_losses": self.epoch_losses,
                "epoch_task_losses": self.epoch_task_losses}

    @classmethod
    def from_payload(cls, d: Dict[str, Any]) -> "TrainState":
        return cls(step=d.get("step", 0), epoch=d.get("epoch", 0), batch_in_epoch=d.get("batch_in_epoch", 0),
                   history=[Evaluation.from_dict(e) for e in d.get("history", [])],
                   step_losses=list(d.get("step_losses", [])),
                   step_task_losses={k: list(v) for k, v in d.get("step_task_losses", {}).items()},
                   epoch_losses=list(d.get("epoch_losses", [])),
                   epoch_task_losses={k: list(v) for k, v in d.get("epoch_task_losses", {}).items()})

    def finish_epoch(self) -> None:
        """Moves the losses of the epoch in progress into the run's per-step losses."""
        self.step_losses += self.epoch_losses
        for k, v in self.epoch_task_losses.items():
            self.step_task_losses.setdefault(k, []).extend(v)
        self.epoch_losses, self.epoch_task_losses = [], {}


@dataclasses.dataclass
class RunResult:
    """What a training run returns and writes to ``OUT/metrics.json`` (:meth:`to_dict`), and what
    its report is drawn from. ``tasks`` are the last evaluation's; with early stopping, ``best`` is
    the best epoch (:func:`~torchrec_fusion.training.early_stopping.summary`). ``predictions``/``labels``
    (and the ranking's score matrices) are kept only with ``keep_predictions`` and never written."""

    tasks: Metrics
    gates: Dict[str, Any]
    task_weights: Dict[str, float]
    fused: Dict[str, Any]
    samples_per_second: float
    world_size: int
    eval_split: str
    train_seconds: float
    steps: int
    history: List[Evaluation]
    step_losses: List[float]
    step_task_losses: Dict[str, List[float]]
    ranking: Dict[str, Dict[str, float]]
    plan: str
    data: Dict[str, Any]
    config: Dict[str, Any]
    checkpoint: Optional[str]
    best: Optional[Dict[str, Any]] = None
    predictions: Optional[Dict[str, torch.Tensor]] = None
    labels: Optional[Dict[str, torch.Tensor]] = None
    ranking_scores: Optional[Dict[str, torch.Tensor]] = None
    ranking_task: Any = None

    def __getitem__(self, key: str) -> Any:
        """Read access by field name (``result["tasks"]``), as the dict earlier versions returned."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready fields (``metrics.json``): everything but the kept tensors."""
        skip = {"predictions", "labels", "ranking_scores", "ranking_task"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["history"] = [e.to_dict() for e in self.history]
        return out
