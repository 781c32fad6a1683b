"""Criteo's raw click logs (TSV) as multi-task data, read with TorchRec's own Criteo reader.

Rows are ``label, I1..I13, C1..C26``, tab-separated, empty where a value is missing,
as in the Kaggle Display Advertising Challenge (``train.txt``) and the Criteo 1TB
Click Logs (``day_0`` ...). They are read with TorchRec 1.8's
:class:`torchrec.datasets.criteo.CriteoIterDataPipe` (``row_mapper=None``: the split
TSV fields; it needs iopath, not torchdata), named with TorchRec's
``DEFAULT_INT_NAMES`` and ``DEFAULT_CAT_NAMES``, and preprocessed as DLRM does:

* dense: ``log(max(x, 0) + 1)`` of the 13 integers, missing values 0;
* sparse: each categorical's hex value (missing: 0, as TorchRec's
  ``BinaryCriteoUtils.tsv_to_npys`` maps it) modulo the feature's ``num_embeddings``;
* one binary task, ``click``.

``BinaryCriteoUtils.tsv_to_npys`` itself is not used: it writes ``.npy`` files and
shifts the dense values by the file's minimum before the log (``x - min + 2``), so a
row's features would depend on the rest of its file. The reader is Python (TorchRec's
``csv.reader``); for the full data sets convert the TSV to Parquet once and load it
with :func:`torchrec_fusion.data.tabular.load_tabular` (``stream: true``).

Example::

    import tempfile
    path = tempfile.mkdtemp() + "/day_0"
    with open(path, "w") as f:
        f.write("1\\t5" + "\\t" * 12 + "\\t68fd1e64" + "\\t" * 25 + "\\n")
        f.write("0\\t-1" + "\\t3" * 12 + "\\t" * 26 + "\\n")
    d = read_criteo([path], num_embeddings=1000)
    assert d.labels[:, 0].tolist() == [1.0, 0.0] and d.sparse["cat_0"].values.tolist() == [0x68FD1E64 % 1000, 0]
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchrec.datasets.criteo import (
    CAT_FEATURE_COUNT,
    DEFAULT_CAT_NAMES,
    DEFAULT_INT_NAMES,
    INT_FEATURE_COUNT,
    CriteoIterDataPipe,
)

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import LoadedData
from torchrec_fusion.tasks import TaskKind, TaskSpec

__all__ = ["CriteoReader", "load_criteo", "read_criteo", "criteo_files", "CRITEO_TASKS"]

CRITEO_TASKS = (TaskSpec("click", TaskKind.BINARY),)
_FIELDS = 1 + INT_FEATURE_COUNT + CAT_FEATURE_COUNT
NumEmbeddings = Union[int, Sequence[int], Mapping[str, int]]


def criteo_files(path_or_dir: Union[str, Path]) -> List[str]:
    """A file, or a folder's files (sorted) whose first line has the 40 Criteo fields."""
    p = Path(path_or_dir)
    if p.is_file():
        return [str(p)]
    if not p.is_dir():
        raise FileNotFoundError(f"no Criteo file or folder {p}")
    files = []
    for f in sorted(p.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                if fh.readline(1 << 16).rstrip(b"\r\n").count(b"\t") == _FIELDS - 1:
                    files.append(str(f))
    if not files:
        raise FileNotFoundError(f"no Criteo TSV file in {p}: no file's first line has {_FIELDS} tab-separated fields")
    return files


def _sizes(num_embeddings: NumEmbeddings) -> List[int]:
    if isinstance(num_embeddings, Mapping):
        unknown = sorted(set(num_embeddings) - set(DEFAULT_CAT_NAMES))
        if unknown:
            raise ValueError(f"num_embeddings: unknown feature(s) {unknown}; features are {DEFAULT_CAT_NAMES}")
        sizes = [num_embeddings.get(k, 100_000) for k in DEFAULT_CAT_NAMES]
    elif isinstance(num_embeddings, int):
        sizes = [num_embeddings] * CAT_FEATURE_COUNT
    else:
        sizes = list(num_embeddings)
        if len(sizes) != CAT_FEATURE_COUNT:
            raise ValueError(f"num_embeddings: {len(sizes)} sizes given, Criteo has {CAT_FEATURE_COUNT} features")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s <= 0]
    if bad:
        raise ValueError(f"num_embeddings must be positive integers, got {bad}")
    return sizes


def _convert(rows: List[List[str]], lines: List[int], path: str,
             sizes: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, log dense and bucketed ids of a chunk of split TSV rows."""
    try:
        a = np.array(rows, dtype=str)
        a[a == ""] = "0"
        label = a[:, 0].astype(np.int64)
        ints = a[:, 1 : 1 + INT_FEATURE_COUNT].astype(np.int64)
        cats = np.array([int(x, 16) for x in a[:, 1 + INT_FEATURE_COUNT :].ravel()], np.int64)
    except ValueError:
        for row, line in zip(rows, lines):  # slow path, to name the line
            for j, x in enumerate(row):
                try:
                    int(x or "0", 16 if j > INT_FEATURE_COUNT else 10)
                except ValueError:
                    kind = "a label" if j == 0 else "an integer" if j <= INT_FEATURE_COUNT else "a hex categorical"
                    raise ValueError(f"{path}:{line}: field {j + 1} is {x!r}, expected {kind} value") from None
        raise
    if ((label != 0) & (label != 1)).any():
        i = int(np.flatnonzero((label != 0) & (label != 1))[0])
        raise ValueError(f"{path}:{lines[i]}: label is {label[i]}, expected 0 or 1")
    dense = torch.log1p(torch.from_numpy(np.maximum(ints, 0)).float())
    ids = torch.from_numpy(cats.reshape(len(rows), CAT_FEATURE_COUNT) % np.array(sizes, np.int64))
    return torch.from_numpy(label).float(), dense, ids


def read_criteo(paths: Iterable[str], num_embeddings: NumEmbeddings = 100_000, max_rows: Optional[int] = None,
                chunk_rows: int = 65536) -> MultiTaskData:
    """Criteo TSV rows as :class:`MultiTaskData`, in file order.

    Args:
        paths: the TSV files.
        num_embeddings: table size of every categorical feature: one int, 26 ints,
            or a mapping from ``cat_0``..``cat_25`` to sizes (others: 100000).
        max_rows: read at most this many rows.
        chunk_rows: rows converted to tensors at a time.

    Raises:
        ValueError: a line without 40 fields or with a bad value (``path:line``).
    """
    sizes, paths = _sizes(num_embeddings), list(paths)
    limit = math.inf if max_rows is None else max_rows
    parts, n = [], 0
    for path in paths:
        rows: List[List[str]] = []
        lines: List[int] = []
        for line, row in enumerate(CriteoIterDataPipe([path], row_mapper=None), 1):
            if n + len(rows) >= limit:
                break
            if len(row) != _FIELDS:
                raise ValueError(f"{path}:{line}: {len(row)} fields, expected {_FIELDS} "
                                 f"(label, {INT_FEATURE_COUNT} integer, {CAT_FEATURE_COUNT} categorical)")
            rows.append(row)
            lines.append(line)
            if len(rows) == chunk_rows:
                parts.append(_convert(rows, lines, path, sizes))
                n, rows, lines = n + len(rows), [], []
        if rows:
            parts.append(_convert(rows, lines, path, sizes))
            n += len(rows)
    if not parts:
        raise ValueError(f"no Criteo rows in {paths}")
    label, dense, ids = (torch.cat(x) for x in zip(*parts))
    return MultiTaskData(
        dense=dense,
        sparse={name: SparseColumn(ids[:, j].contiguous()) for j, name in enumerate(DEFAULT_CAT_NAMES)},
        num_embeddings=dict(zip(DEFAULT_CAT_NAMES, sizes)),
        tasks=list(CRITEO_TASKS),
        labels=label[:, None],
        masks=torch.ones(len(label), 1, dtype=torch.bool),
        source="criteo",
    )


def load_criteo(path_or_dir: Union[str, Path], num_embeddings: NumEmbeddings = 100_000, test_fraction: float = 0.1,
                seed: int = 0, max_rows: Optional[int] = None) -> LoadedData:
    """Criteo TSV rows (a file, or every Criteo file of a folder) split into train and test.

    Args:
        path_or_dir: a TSV file, or a folder whose Criteo files are all read, in name order.
        num_embeddings: table size(s) of the categorical features, as in :func:`read_criteo`.
        test_fraction: share of rows in the seeded random test split.
        seed: seed of the split.
        max_rows: read at most this many rows (over all files).

    Returns:
        :class:`LoadedData` with ``info = {"dataset": "criteo", "files": [...], "rows": n}``.
    """
    files = criteo_files(path_or_dir)
    data = read_criteo(files, num_embeddings, max_rows)
    train, test = data.split(test_fraction, seed)
    train.source, test.source = "criteo/train", "criteo/test"
    info = {"dataset": "criteo", "files": files, "rows": len(data), "dense_names": list(DEFAULT_INT_NAMES)}
    return LoadedData(train, test, info)


class CriteoReader:
    """Dataset ``criteo``: :func:`load_criteo` of ``data_dir`` (a TSV file or a folder of them),
    split by the run's seed."""

    @dataclass(frozen=True)
    class Options:
        """``data_dir``: a Criteo TSV file or a folder of them (required)."""

        data_dir: Optional[str] = field(default=None, metadata={"help": "a Criteo TSV file or a folder of them"})

    @staticmethod
    def load(options: "CriteoReader.Options", seed: int) -> LoadedData:
        if not options.data_dir:
            raise ValueError("--dataset criteo needs --data-dir, a Criteo TSV file or a folder of them")
        return load_criteo(options.data_dir, seed=seed)
