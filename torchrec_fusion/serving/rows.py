"""Rows of a scoring request, checked against the exported model's schema and turned into the
tensors of TorchRec's inference input (a dense tensor and a ``KeyedJaggedTensor``).

A row is ``{"dense": [floats], "sparse": {feature: [ids]}}``; a feature left out is an empty bag.
Every error names the field that is wrong (``rows[3].sparse.item[0]``), so a client can fix it.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

MAX_BAG = 4096  # ids per feature of one row


class RowError(ValueError):
    """A request's rows that do not fit the model; ``field`` names where (``rows[0].dense``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class EncodedRows:
    """Checked rows as tensors: ``dense [B, D]`` and, per feature, the ids of every row and the rows'
    bag lengths; several of them concatenate into one forward (:meth:`cat`)."""

    dense: torch.Tensor
    values: Dict[str, torch.Tensor]
    lengths: Dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.dense.size(0)

    @staticmethod
    def cat(parts: Sequence["EncodedRows"]) -> "EncodedRows":
        if len(parts) == 1:
            return parts[0]
        keys = list(parts[0].values)
        return EncodedRows(torch.cat([p.dense for p in parts]),
                           {k: torch.cat([p.values[k] for p in parts]) for k in keys},
                           {k: torch.cat([p.lengths[k] for p in parts]) for k in keys})

    def kjt(self) -> KeyedJaggedTensor:
        """The rows' ``KeyedJaggedTensor`` (keys in the model's feature order)."""
        keys = list(self.values)
        return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat([self.values[k] for k in keys]),
                                                   torch.cat([self.lengths[k] for k in keys]))


class RowEncoder:
    """Checks rows against the model's features (names, table sizes) and dense width, and encodes them.

    Example::

        enc = RowEncoder(["user", "genres"], {"user": 10, "genres": 5}, num_dense=1)
        rows = enc.encode([{"dense": [0.5], "sparse": {"user": [3], "genres": [1, 4]}}, {"dense": [1.0]}])
        assert rows.kjt().lengths().tolist() == [1, 0, 2, 0]
        try:
            enc.encode([{"dense": [0.5], "sparse": {"user": [10]}}])
        except RowError as e:
            assert e.field == "rows[0].sparse.user[0]"
    """

    def __init__(self, feature_names: Sequence[str], num_embeddings: Mapping[str, int], num_dense: int) -> None:
        self.feature_names = list(feature_names)
        self.num_embeddings = dict(num_embeddings)
        self.num_dense = num_dense

    def _dense(self, i: int, dense: Optional[Sequence[float]]) -> List[float]:
        values = list(dense or [])
        if len(values) != self.num_dense:
            raise RowError(f"rows[{i}].dense", f"{len(values)} values, the model takes {self.num_dense}")
        return values

    def _ids(self, i: int, name: str, ids: Sequence[int]) -> Sequence[int]:
        if len(ids) > MAX_BAG:
            raise RowError(f"rows[{i}].sparse.{name}", f"{len(ids)} ids, at most {MAX_BAG} per feature")
        size = self.num_embeddings[name]
        for j, v in enumerate(ids):
            if not 0 <= v < size:
                raise RowError(f"rows[{i}].sparse.{name}[{j}]", f"id {v} is out of range: table {name!r} has "
                                                                f"{size} rows (ids 0..{size - 1})")
        return ids

    def encode(self, rows: Sequence[Mapping[str, object]]) -> EncodedRows:
        """The rows as tensors; a row that does not fit is a :class:`RowError` naming its field."""
        dense: List[List[float]] = []
        values: Dict[str, List[int]] = {f: [] for f in self.feature_names}
        lengths: Dict[str, List[int]] = {f: [] for f in self.feature_names}
        for i, row in enumerate(rows):
            dense.append(self._dense(i, row.get("dense")))  # type: ignore[arg-type]  # checked by the request model
            sparse: Mapping[str, Sequence[int]] = row.get("sparse") or {}  # type: ignore[assignment]
            unknown = sorted(set(sparse) - set(self.feature_names))
            if unknown:
                raise RowError(f"rows[{i}].sparse.{unknown[0]}", f"unknown feature; the model's features are "
                                                                 f"{self.feature_names}")
            for f in self.feature_names:
                ids = self._ids(i, f, sparse.get(f, ()))
                values[f].extend(ids)
                lengths[f].append(len(ids))
        return EncodedRows(torch.tensor(dense, dtype=torch.float32).view(len(rows), self.num_dense),
                           {f: torch.tensor(v, dtype=torch.long) for f, v in values.items()},
                           {f: torch.tensor(v, dtype=torch.long) for f, v in lengths.items()})
