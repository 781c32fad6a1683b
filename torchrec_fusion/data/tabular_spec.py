"""The ``table`` section of a run config: where a user's files are and which of their columns are
id features, dense features, labels, users and items (YAML; TOML has the same keys)::

    dataset: table
    table:
      train: data/train-*.parquet      # a path, a glob, a folder or a list of them
      test: data/test.parquet          # optional; else test_fraction (0.1) of train, split by seed
      validation: data/valid.parquet   # optional: evaluated after every epoch (early stopping), never test
      sparse:
        user_id: {}                    # num_embeddings inferred: max id + 1 over train, test, validation
        item_id: {num_embeddings: 50000, out_of_range: modulo}
        tags: {multi_valued: true, pooling: mean}      # list<int>, or "3|17|5" strings
        city: {num_embeddings: 4096, out_of_range: hash}   # string ids, FNV-1a 64 hashed
      dense: [age, clicks_7d]          # nulls read as 0
      dense_transform: log1p           # optional: log(1 + max(x, 0)), for counts
      tasks:
        - {name: click, kind: binary}                  # a null label masks the row out of the task
        - {name: watch_time, column: seconds, kind: regression, weight: 0.5}
        - {name: genre, kind: multiclass, num_classes: 20}
      user_column: user_id             # kept as extras "user"/"item" (ranking, recommendations):
      item_column: item_id             #   the model's ids when the column is also a sparse feature
      item_features: [item_id, tags]   # describe the item when scoring (user, item) candidates
                                       #   (default: the item column); the rest come from the user's row
      chunk_rows: 65536                # rows per chunk read and converted at a time
      stream: false                    # true: train rows are read from disk batch by batch (Parquet)

Every key is checked when the spec is built; an error names the key at fault.
"""

import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, cast

from torchrec_fusion.tasks import TaskKind, TaskSpec, check_tasks

__all__ = ["TableSpec", "SparseOptions", "TaskColumn", "FORMATS", "POOLINGS", "OUT_OF_RANGE"]

FORMATS = ("parquet", "csv")
POOLINGS = ("sum", "mean")
OUT_OF_RANGE = ("error", "modulo", "hash")


def _fail(key: str, msg: str) -> NoReturn:
    raise ValueError(f"table spec: {key}: {msg}")


def _check_keys(d: Any, allowed: Sequence[str], key: str) -> None:
    if not isinstance(d, Mapping):
        _fail(key, f"expected a mapping, got {type(d).__name__} {d!r}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        _fail(key, f"unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _choice(value: Any, choices: Sequence[Optional[str]], key: str) -> Any:
    if value not in choices:
        _fail(key, f"must be one of {list(choices)}, got {value!r}")
    return value


def _str_list(value: Any, key: str) -> List[str]:
    value = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
        _fail(key, f"expected a string or a list of strings, got {value!r}")
    return [os.fspath(v) for v in value]


@dataclass(frozen=True)
class SparseOptions:
    """How one id column becomes an embedding-bag feature (named after the column).

    Args:
        num_embeddings: table size; ``None``: max id + 1 over train and test.
        multi_valued: a bag of ids per row: a Parquet ``list<int>`` column, or a
            string of ids joined by ``separator`` (CSV).
        separator: joins the ids of a multi-valued string cell.
        pooling: ``"sum"`` or ``"mean"``.
        out_of_range: ``"error"`` (an id ``>= num_embeddings`` is an error naming the
            column, id, file and row), ``"modulo"`` (``id % num_embeddings``) or
            ``"hash"`` (``fnv1a_64(str(id)) % num_embeddings``, for string ids).
    """

    num_embeddings: Optional[int] = None
    multi_valued: bool = False
    separator: str = "|"
    pooling: str = "sum"
    out_of_range: str = "error"

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]], key: str) -> "SparseOptions":
        d = {} if d is None else d
        _check_keys(d, [f.name for f in fields(cls)], key)
        o = cls(**d)
        if o.num_embeddings is not None and not (_is_int(o.num_embeddings) and o.num_embeddings > 0):
            _fail(f"{key}.num_embeddings", f"must be a positive integer, got {o.num_embeddings!r}")
        if not isinstance(o.multi_valued, bool):
            _fail(f"{key}.multi_valued", f"must be true or false, got {o.multi_valued!r}")
        if not (isinstance(o.separator, str) and o.separator):
            _fail(f"{key}.separator", f"must be a non-empty string, got {o.separator!r}")
        _choice(o.pooling, POOLINGS, f"{key}.pooling")
        _choice(o.out_of_range, OUT_OF_RANGE, f"{key}.out_of_range")
        if o.out_of_range != "error" and o.num_embeddings is None:
            _fail(f"{key}.num_embeddings", f"is required with out_of_range: {o.out_of_range}")
        return o


@dataclass(frozen=True)
class TaskColumn:
    """A task and its label column: ``kind`` and ``num_classes`` as in :class:`TaskSpec`,
    ``weight`` its loss weight; ``column`` defaults to ``name``."""

    name: str
    column: str = ""
    kind: str = "binary"
    weight: float = 1.0
    num_classes: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "TaskColumn":
        _check_keys(d, [f.name for f in fields(cls)], key)
        if not isinstance(d.get("name"), str):
            _fail(f"{key}.name", f"a task needs a name (a string), got {d.get('name')!r}")
        t = cls(**{**d, "column": d.get("column") or d["name"]})
        if not isinstance(t.column, str):
            _fail(f"{key}.column", f"must be a column name, got {t.column!r}")
        if not _is_number(t.weight):
            _fail(f"{key}.weight", f"must be a number, got {t.weight!r}")
        if not _is_int(t.num_classes):
            _fail(f"{key}.num_classes", f"must be an integer, got {t.num_classes!r}")
        try:
            t.spec()
        except ValueError as e:
            _fail(key, str(e))
        return t

    def spec(self) -> TaskSpec:
        # TaskSpec turns the kind's name into a TaskKind, naming the task when the kind is unknown
        return TaskSpec(self.name, cast(TaskKind, self.kind), float(self.weight), self.num_classes)


@dataclass
class TableSpec:
    """Where a table is and what its columns mean; see the module docstring for the keys.

    Build it with :meth:`from_dict` from the run config's ``table`` section; the
    constructor validates and normalises every field, naming the key at fault.

    Example::

        spec = TableSpec.from_dict({"train": "rows.parquet", "sparse": {"user": {}, "tags": {"multi_valued": True}},
                                    "dense": ["age"], "tasks": [{"name": "click"}]})
        assert spec.sparse["tags"].multi_valued and spec.tasks[0].column == "click" and spec.test_fraction == 0.1
    """

    train: List[str]
    tasks: List[TaskColumn]
    sparse: Dict[str, SparseOptions] = field(default_factory=dict)
    dense: List[str] = field(default_factory=list)
    format: Optional[str] = None
    test: Optional[List[str]] = None
    validation: Optional[List[str]] = None
    test_fraction: float = 0.1
    dense_transform: Optional[str] = None
    user_column: Optional[str] = None
    item_column: Optional[str] = None
    chunk_rows: int = 65536
    stream: bool = False
    delimiter: Optional[str] = None  # CSV only; default "," ("\t" for .tsv files)
    # sparse columns that describe the item (taken from the item's rows when scoring candidate items
    # for a user; all others from the user's last row); default: the item column
    item_features: Optional[List[str]] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TableSpec":
        _check_keys(d, [f.name for f in fields(cls)], "table")
        for key in ("train", "tasks"):
            if key not in d:
                _fail(key, "is required")
        return cls(**d)

    def __post_init__(self) -> None:
        self.train = _str_list(self.train, "train")
        self.test = None if self.test is None else _str_list(self.test, "test")
        self.validation = None if self.validation is None else _str_list(self.validation, "validation")
        if not self.train:
            _fail("train", "names no file")
        if not isinstance(self.tasks, (list, tuple)) or not self.tasks:
            _fail("tasks", f"expected a non-empty list of tasks, got {self.tasks!r}")
        self.tasks = [t if isinstance(t, TaskColumn) else TaskColumn.from_dict(t, f"tasks[{i}]")
                      for i, t in enumerate(self.tasks)]
        try:
            check_tasks([t.spec() for t in self.tasks])
        except ValueError as e:
            _fail("tasks", str(e))
        sparse = self.sparse or {}
        if isinstance(sparse, (list, tuple)):
            sparse = dict.fromkeys(_str_list(sparse, "sparse"))
        if not isinstance(sparse, Mapping) or not all(isinstance(k, str) for k in sparse):
            _fail("sparse", f"expected a mapping from column names to options, got {sparse!r}")
        self.sparse = {str(k): v if isinstance(v, SparseOptions) else SparseOptions.from_dict(v, f"sparse.{k}")
                       for k, v in sparse.items()}
        self.dense = _str_list(self.dense or [], "dense")
        if len(set(self.dense)) < len(self.dense):
            _fail("dense", f"lists a column twice: {self.dense}")
        if not self.sparse and not self.dense:
            _fail("sparse", "no feature: give at least one sparse or dense column")
        _choice(self.format, (None, *FORMATS), "format")
        _choice(self.dense_transform, (None, "log1p"), "dense_transform")
        if not _is_number(self.test_fraction) or not 0 < self.test_fraction < 1:
            _fail("test_fraction", f"must be a number in (0, 1), got {self.test_fraction!r}")
        if not _is_int(self.chunk_rows) or self.chunk_rows <= 0:
            _fail("chunk_rows", f"must be a positive integer, got {self.chunk_rows!r}")
        if not isinstance(self.stream, bool):
            _fail("stream", f"must be true or false, got {self.stream!r}")
        for key in ("user_column", "item_column"):
            c = getattr(self, key)
            if c is not None and not isinstance(c, str):
                _fail(key, f"must be a column name, got {c!r}")
            if c in self.sparse and self.sparse[c].multi_valued:
                _fail(key, f"{c!r} is a multi_valued sparse column; users and items need one id per row")
        if self.delimiter is not None and not (isinstance(self.delimiter, str) and len(self.delimiter) == 1):
            _fail("delimiter", f"must be one character, got {self.delimiter!r}")
        if self.item_features is None:
            self.item_features = [self.item_column] if self.item_column in self.sparse else []
        self.item_features = _str_list(self.item_features, "item_features")
        unknown = sorted(set(self.item_features) - set(self.sparse))
        if unknown:
            _fail("item_features", f"{unknown} are not sparse columns of the spec")
        labels = {t.column for t in self.tasks}
        for other, cols in (("dense", set(self.dense)), ("a task's label", labels)):
            both = sorted(set(self.sparse) & cols)
            if both:
                _fail("sparse", f"column(s) {both} are listed both as sparse and as {other}")
