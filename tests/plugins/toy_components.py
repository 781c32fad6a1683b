"""Toy components added from outside the package, as a user would: each is a class with its own
``Options``, and each joins its family with one registry line at the bottom. A run config names
this module under ``plugins:`` so that every rank imports it."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import LoadedData
from torchrec_fusion.fusion.trainable import TrainableFusion, running_normalizer
from torchrec_fusion.losses.balancing.base import LossBalancer
from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp
from torchrec_fusion.tasks import TaskKind, TaskSpec


class TwinTowerArch(MultiTaskArch):
    """Every task gets its own MLP of ``width`` units, ``depth`` layers deep."""

    @dataclass(frozen=True)
    class Options:
        width: int = 8
        depth: int = 1

    def __init__(self, in_features: int, task_names: Sequence[str], width: int = 8, depth: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__(in_features, task_names)
        self.towers = nn.ModuleDict({t: mlp(in_features, [width] * depth, dropout) for t in task_names})
        self.out_features = width

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {t: tower(features) for t, tower in self.towers.items()}


class PowerWeights(LossBalancer):
    """Weights each task by ``scale ** position``: the first task 1, the next ``scale``..."""

    @dataclass(frozen=True)
    class Options:
        scale: float = 0.5

    def __init__(self, tasks: Sequence[TaskSpec], scale: float = 0.5) -> None:
        super().__init__(tasks)
        self.register_buffer("weights", torch.tensor([scale ** i for i in range(len(tasks))]))

    def forward(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * losses[t] for t, w in zip(self.task_names, self.weights))  # type: ignore[return-value]

    def task_weights(self) -> Dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist()))


class CoinFlips:
    """Rows whose ``click`` label is 1 exactly when the user's id is even, plus a ``score`` label."""

    @dataclass(frozen=True)
    class Options:
        rows: int = 2000
        users: int = 40
        items: List[int] = field(default_factory=lambda: [30])

    @staticmethod
    def _split(o: "CoinFlips.Options", seed: int, n: int, name: str) -> MultiTaskData:
        g = torch.Generator().manual_seed(seed + (0 if name == "train" else 1))
        user = torch.randint(0, o.users, (n,), generator=g)
        item = torch.randint(0, o.items[0], (n,), generator=g)
        click = (user % 2 == 0).float()
        labels = torch.stack([click, click * 2 + torch.rand(n, generator=g)], 1)
        tasks = [TaskSpec("click", TaskKind.BINARY), TaskSpec("score", TaskKind.REGRESSION)]
        return MultiTaskData(torch.rand(n, 2, generator=g), {"user": SparseColumn(user), "item": SparseColumn(item)},
                             {"user": o.users, "item": o.items[0]}, tasks, labels,
                             torch.ones(n, 2, dtype=torch.bool), extras={"user": user, "item": item}, source=name)

    @staticmethod
    def load(options: Any, seed: int) -> LoadedData:
        train = CoinFlips._split(options, seed, options.rows, "train")
        test = CoinFlips._split(options, seed, options.rows // 4, "test")
        return LoadedData(train, test, {"dataset": "coin_flips", "rows": options.rows})


class MaxFusion(TrainableFusion):
    """The fused logit is ``temperature`` times the largest z-scored task prediction."""

    @dataclass(frozen=True)
    class Options:
        temperature: float = 1.0

    def __init__(self, task_names: Sequence[str], context_dim: int, options: Any) -> None:
        super().__init__(task_names, context_dim, options)
        self.norm = running_normalizer("zscore", len(self.task_names))
        self.temperature = options.temperature

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([preds[t] for t in self.task_names], 1)
        return self.temperature * self.norm(scores).amax(1)


# the one registry line each component needs
from torchrec_fusion.data.registry import DATASETS  # noqa: E402
from torchrec_fusion.fusion.head import TRAINABLE_FUSIONS  # noqa: E402
from torchrec_fusion.losses import BALANCERS  # noqa: E402
from torchrec_fusion.modules.architectures import ARCHITECTURES  # noqa: E402

ARCHITECTURES.register("twin_tower", TwinTowerArch, replace=True)
BALANCERS.register("power", PowerWeights, replace=True)
DATASETS.register("coin_flips", CoinFlips, replace=True)
TRAINABLE_FUSIONS.register("max", MaxFusion, replace=True)
