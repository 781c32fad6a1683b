"""The multi-task batch that flows through ``TrainPipelineSparseDist``."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class MultiTaskBatch(Pipelineable):  # type: ignore[misc]  # torchrec is untyped
    """A batch of dense features, sparse features and per-task supervision.

    Labels, masks and weights are stacked column-wise, one column per task, in
    the order of ``task_names``; a task's column is reached by name with
    :meth:`label`, :meth:`mask` and :meth:`weight`.

    Args:
        dense_features: ``[B, D]`` float tensor.
        sparse_features: KeyedJaggedTensor of the id features.
        labels: ``[B, T]`` float tensor (class index as float for multiclass).
        masks: ``[B, T]`` bool tensor, True where the task's label is present.
        task_names: the T task names, in column order.
        weights: optional ``[B, T]`` float sample weights.

    Example::

        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user"], values=torch.tensor([3, 5]), lengths=torch.tensor([1, 1]))
        b = MultiTaskBatch(torch.zeros(2, 1), kjt, torch.tensor([[1.0], [0.0]]),
                           torch.ones(2, 1, dtype=torch.bool), ("like",))
        assert b.label("like").tolist() == [1.0, 0.0]
    """

    dense_features: torch.Tensor
    sparse_features: KeyedJaggedTensor
    labels: torch.Tensor
    masks: torch.Tensor
    task_names: Tuple[str, ...]
    weights: Optional[torch.Tensor] = None

    def _col(self, name: str) -> int:
        try:
            return self.task_names.index(name)
        except ValueError:
            raise KeyError(f"no task {name!r} in batch; tasks are {list(self.task_names)}") from None

    def label(self, name: str) -> torch.Tensor:
        return self.labels[:, self._col(name)]

    def mask(self, name: str) -> torch.Tensor:
        return self.masks[:, self._col(name)]

    def weight(self, name: str) -> Optional[torch.Tensor]:
        return None if self.weights is None else self.weights[:, self._col(name)]

    @property
    def batch_size(self) -> int:
        return self.dense_features.size(0)

    def to(self, device: torch.device, non_blocking: bool = False) -> "MultiTaskBatch":
        return MultiTaskBatch(
            self.dense_features.to(device=device, non_blocking=non_blocking),
            self.sparse_features.to(device=device, non_blocking=non_blocking),
            self.labels.to(device=device, non_blocking=non_blocking),
            self.masks.to(device=device, non_blocking=non_blocking),
            self.task_names,
            None if self.weights is None else self.weights.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense_features.record_stream(stream)
        self.sparse_features.record_stream(stream)
        self.labels.record_stream(stream)
        self.masks.record_stream(stream)
        if self.weights is not None:
            self.weights.record_stream(stream)

    def pin_memory(self) -> "MultiTaskBatch":
        return MultiTaskBatch(
            self.dense_features.pin_memory(),
            self.sparse_features.pin_memory(),
            self.labels.pin_memory(),
            self.masks.pin_memory(),
            self.task_names,
            None if self.weights is None else self.weights.pin_memory(),
        )
