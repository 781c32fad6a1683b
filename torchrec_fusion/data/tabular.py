"""Users' own tables (Parquet or CSV) as multi-task data, in memory or streamed from disk.

The ``table`` section of a run config says which columns are id features, dense
features, labels, users and items (YAML; TOML has the same keys)::

    dataset: table
    table:
      train: data/train-*.parquet      # a path, a glob, a folder or a list of them
      test: data/test.parquet          # optional; else test_fraction (0.1) of train, split by seed
      sparse:
        user_id: {}                    # num_embeddings inferred: max id + 1 over train and test
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

Files are read with pyarrow chunk by chunk (``ParquetFile.iter_batches``, the
streaming ``pyarrow.csv.open_csv`` reader with explicit column types); each chunk
becomes tensors at once, so memory holds tensors, never a whole Arrow table.
Errors name the spec key, or the column, the file and the row (0-based data row;
a CSV header is not counted).
"""

import glob
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, List, Mapping, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.sources import LoadedData
from torchrec_fusion.tasks import TaskKind, TaskSpec, check_tasks

__all__ = ["TableSpec", "SparseOptions", "TaskColumn", "TableStream", "load_tabular", "fnv1a_64"]

FORMATS = ("parquet", "csv")
POOLINGS = ("sum", "mean")
OUT_OF_RANGE = ("error", "modulo", "hash")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv", ".tsv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


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
        return TaskSpec(self.name, self.kind, float(self.weight), self.num_classes)


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
            sparse = {name: None for name in _str_list(sparse, "sparse")}
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


def fnv1a_64(strings: Union[pa.Array, Sequence[str]]) -> np.ndarray:
    """64-bit FNV-1a of each string's UTF-8 bytes, vectorised: the same value in
    every run and on every machine (unlike Python's salted ``hash``).

    Example::

        assert fnv1a_64(["a", ""]).tolist() == [0xAF63DC4C8601EC8C, 0xCBF29CE484222325]
    """
    a = strings.cast(pa.large_string()) if isinstance(strings, pa.Array) else pa.array(strings, pa.large_string())
    if a.null_count:
        raise ValueError("fnv1a_64: null strings cannot be hashed")
    offsets = np.frombuffer(a.buffers()[1], np.int64)[a.offset : a.offset + len(a) + 1]
    data = np.frombuffer(a.buffers()[2], np.uint8) if a.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(a), _FNV_OFFSET, dtype=np.uint64)
    for j in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > j)
        h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def _held_out(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each global row index is a test row: a seeded SplitMix64 coin per row."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % (1 << 64))
    z = rows.astype(np.uint64) + mix
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _expand(patterns: List[str], key: str) -> List[str]:
    """Files of paths, globs and folders (a folder: its files with a known suffix), sorted per entry."""
    files: List[str] = []
    for p in patterns:
        p = os.path.expanduser(p)
        if any(c in p for c in "*?["):
            hits = sorted(h for h in glob.glob(p, recursive=True) if os.path.isfile(h))
        elif os.path.isdir(p):
            hits = sorted(os.path.join(p, f) for f in os.listdir(p) if _suffix_format(f) is not None)
        else:
            hits = [p] if os.path.isfile(p) else []
        if not hits:
            raise FileNotFoundError(f"table spec: {key}: no file matches {p!r}")
        files += hits
    return files


def _suffix_format(path: str) -> Optional[str]:
    name = path.lower()
    for c in _COMPRESSED:
        name = name[: -len(c)] if name.endswith(c) else name
    return _SUFFIXES.get(os.path.splitext(name)[1])


class _Columns:
    """The columns a spec reads from each file, and their conversion to tensors."""

    def __init__(self, spec: TableSpec, fmt: str) -> None:
        self.spec, self.fmt = spec, fmt
        self.tasks = [t.spec() for t in spec.tasks]
        self.num_embeddings: Dict[str, Optional[int]] = {k: o.num_embeddings for k, o in spec.sparse.items()}
        self.pooling = {k: o.pooling for k, o in spec.sparse.items()}
        ids = [c for c in (spec.user_column, spec.item_column) if c]
        self.needed = list(dict.fromkeys([*spec.sparse, *spec.dense, *(t.column for t in spec.tasks), *ids]))

    def role(self, c: str) -> str:
        if c in self.spec.sparse:
            return "sparse column"
        if c in self.spec.dense:
            return "dense column"
        tasks = [t.name for t in self.spec.tasks if t.column == c]
        return f"label column (task {tasks[0]!r})" if tasks else "id column"

    def check_file(self, path: str) -> None:
        """Missing columns and, for Parquet, column types; raises ``ValueError``."""
        if self.fmt == "csv":
            names, types = self._csv_header(path), None
        else:
            schema = pq.ParquetFile(path).schema_arrow
            names, types = schema.names, {f.name: f.type for f in schema}
        missing = [c for c in self.needed if c not in names]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {missing}; its columns are {list(names)}")
        for c in self.needed if types else ():
            t = types[c]
            base = t.value_type if pa.types.is_dictionary(t) else t
            o = self.spec.sparse.get(c)
            if o is None:
                integer = self.role(c) == "id column"
                if not (pa.types.is_integer(base) if integer else _numeric(base)):
                    raise ValueError(f"{self.role(c)} {c!r} in {path} has type {t}; it must be "
                                     f"{'integer' if integer else 'numeric'}")
                continue
            inner = base.value_type if _is_list(base) else base
            hashed = o.out_of_range == "hash"
            if _is_list(base) and not o.multi_valued:
                raise ValueError(f"sparse column {c!r} in {path} is a list column ({t}); set multi_valued: true")
            if o.multi_valued and _is_str(base):
                continue  # ids joined by the separator
            if o.multi_valued and not _is_list(base):
                raise ValueError(f"sparse column {c!r} in {path} has type {t}; a multi_valued column must be a "
                                 f"list of ids or a string of ids joined by {o.separator!r}")
            if not (pa.types.is_integer(inner) or (hashed and _is_str(inner))):
                raise ValueError(f"sparse column {c!r} in {path} has type {t}; ids must be integers >= 0 "
                                 "(string ids need out_of_range: hash and num_embeddings)")

    def _csv_header(self, path: str) -> List[str]:
        with pa.input_stream(path, compression="detect") as f:
            head = f.read(1 << 20).split(b"\n", 1)[0]
        try:
            return pacsv.read_csv(pa.BufferReader(head + b"\n"), parse_options=self._parse_options(path)).schema.names
        except pa.ArrowInvalid as e:
            raise ValueError(f"{path}: cannot read a CSV header: {e}") from None

    def _parse_options(self, path: str) -> pacsv.ParseOptions:
        tsv = os.path.splitext(path.lower().replace(".gz", ""))[1] == ".tsv"
        return pacsv.ParseOptions(delimiter=self.spec.delimiter or ("\t" if tsv else ","))

    def csv_types(self) -> Dict[str, pa.DataType]:
        types = {c: pa.float64() for c in self.needed}
        for c in (self.spec.user_column, self.spec.item_column):
            if c:
                types[c] = pa.int64()
        for c, o in self.spec.sparse.items():
            types[c] = pa.string() if o.multi_valued or o.out_of_range == "hash" else pa.int64()
        return types

    def record_batches(self, path: str) -> Iterator[pa.RecordBatch]:
        """The file's rows in record batches of at most ``chunk_rows`` rows, needed columns only."""
        n = self.spec.chunk_rows
        if self.fmt == "parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=n, columns=self.needed)
            return
        names = self._csv_header(path)
        convert = pacsv.ConvertOptions(column_types=self.csv_types(), include_columns=self.needed)
        try:
            reader = pacsv.open_csv(path, parse_options=self._parse_options(path), convert_options=convert)
            for rb in reader:
                for i in range(0, rb.num_rows, n):
                    yield rb.slice(i, n)
        except pa.ArrowInvalid as e:
            m = re.search(r"column #(\d+)", str(e))
            c = names[int(m.group(1))] if m and int(m.group(1)) < len(names) else None
            what = f"{self.role(c)} {c!r}" if c else "a column"
            hint = ("; ids must be integers >= 0 (string ids need out_of_range: hash)"
                    if c in self.spec.sparse else "")
            raise ValueError(f"{path}: {what} holds a value of the wrong type ({e}){hint}") from None

    def ids(self, a: pa.Array, name: str, rows: np.ndarray, path: str) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
        """The ids of one chunk of a sparse column, with per-row lengths (``None``: one id
        per row). Nulls and empty strings are no id (an empty bag)."""
        o, n_emb, n = self.spec.sparse[name], self.num_embeddings[name], len(a)
        if pa.types.is_dictionary(a.type):
            a = a.dictionary_decode()
        joined = o.multi_valued and _is_str(a.type)
        if joined:
            a = pc.split_pattern(a, o.separator)
        parents = pc.list_parent_indices(a).to_numpy() if _is_list(a.type) else None
        flat = pc.list_flatten(a) if _is_list(a.type) else a
        keep = flat.is_valid()
        if _is_str(flat.type):
            keep = pc.and_kleene(keep, pc.not_equal(flat, ""))
        if flat.null_count or not pc.all(keep).as_py():
            mask = keep.to_numpy(zero_copy_only=False)
            parents = (np.arange(n) if parents is None else parents)[mask]
            flat = flat.filter(keep)
        if o.out_of_range == "hash":
            h = fnv1a_64(flat if _is_str(flat.type) else flat.cast(pa.string()))
            ids = (h % np.uint64(n_emb)).astype(np.int64)
        else:
            try:
                ids = np.array(flat.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                what = f"strings joined by {o.separator!r} " if joined else ""
                raise ValueError(f"sparse column {name!r} in {path}: {what}{e}; ids must be integers >= 0 "
                                 "(string ids need out_of_range: hash)") from None
            bad = ids < 0 if n_emb is None or o.out_of_range == "modulo" else (ids < 0) | (ids >= n_emb)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                row = rows[j if parents is None else parents[j]]
                why = "is negative; ids must be integers >= 0" if ids[j] < 0 else (
                    f"is outside [0, num_embeddings={n_emb}); raise num_embeddings or set out_of_range: modulo")
                raise ValueError(f"sparse column {name!r}: id {ids[j]} in {path} row {row} {why}")
            if o.out_of_range == "modulo":
                ids %= n_emb
        lengths = None if parents is None else np.bincount(parents, minlength=n)
        return torch.from_numpy(ids), lengths

    def labels(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[n, T]`` labels (0 where absent) and masks (False where the label is null or NaN)."""
        y = np.zeros((rb.num_rows, len(self.tasks)), np.float32)
        m = np.zeros(y.shape, bool)
        for j, (t, tc) in enumerate(zip(self.tasks, self.spec.tasks)):
            v = rb.column(tc.column).cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            present = ~np.isnan(v)
            bad = present & np.isinf(v)
            if t.kind == TaskKind.BINARY:
                bad |= present & (v != 0) & (v != 1)
            elif t.kind == TaskKind.MULTICLASS:
                bad |= present & ((v < 0) | (v >= t.num_classes) | (v != np.round(v)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                want = {TaskKind.BINARY: "0 or 1", TaskKind.MULTICLASS: f"a class in 0..{t.num_classes - 1}"}
                raise ValueError(f"label column {tc.column!r} (task {t.name!r}) in {path} row {rows[i]} is {v[i]}; "
                                 f"expected {want.get(t.kind, 'a finite number')} or null")
            y[:, j], m[:, j] = np.where(present, v, 0), present
        return torch.from_numpy(y), torch.from_numpy(m)

    def dense(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> torch.Tensor:
        x = np.zeros((rb.num_rows, len(self.spec.dense)), np.float32)
        for j, c in enumerate(self.spec.dense):
            v = rb.column(c).cast(pa.float64(), safe=False).fill_null(0).to_numpy(zero_copy_only=False)
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise ValueError(f"dense column {c!r} in {path} row {rows[i]} is {v[i]}; expected a finite number")
            x[:, j] = v
        out = torch.from_numpy(x)
        return torch.log1p(out.clamp_min(0)) if self.spec.dense_transform == "log1p" else out

    def convert(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> MultiTaskData:
        """One chunk as :class:`MultiTaskData`; ``rows`` are the file rows of ``rb``'s rows."""
        sparse: Dict[str, SparseColumn] = {}
        n_emb: Dict[str, int] = {}
        for name in self.spec.sparse:
            ids, lengths = self.ids(rb.column(name), name, rows, path)
            offsets = None if lengths is None else torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
            sparse[name] = SparseColumn(ids, offsets)
            n_emb[name] = self.num_embeddings[name] or (int(ids.max()) + 1 if ids.numel() else 1)
        extras: Dict[str, torch.Tensor] = {}
        for key, c in (("user", self.spec.user_column), ("item", self.spec.item_column)):
            if not c:
                continue
            col = sparse.get(c)
            if col is not None and col.offsets is None:
                extras[key] = col.values  # the ids the model sees (after modulo or hash)
                continue
            v = rb.column(c)
            bad = np.flatnonzero(col.lengths() != 1 if col is not None else ~v.is_valid().to_numpy(zero_copy_only=False))
            if len(bad):
                raise ValueError(f"{key}_column {c!r} in {path} row {rows[bad[0]]} must hold one id, got "
                                 f"{v[int(bad[0])].as_py()!r}")
            extras[key] = torch.from_numpy(v.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64))
        labels, masks = self.labels(rb, rows, path)
        return MultiTaskData(self.dense(rb, rows, path), sparse, n_emb, list(self.tasks), labels, masks,
                             extras=extras, source=path, pooling=dict(self.pooling))

    def empty(self, source: str) -> MultiTaskData:
        t = len(self.tasks)
        return MultiTaskData(torch.zeros(0, len(self.spec.dense)),
                             {k: SparseColumn(torch.zeros(0, dtype=torch.int64)) for k in self.spec.sparse},
                             {k: v or 1 for k, v in self.num_embeddings.items()}, list(self.tasks),
                             torch.zeros(0, t), torch.zeros(0, t, dtype=torch.bool),
                             extras={k: torch.zeros(0, dtype=torch.int64) for k, c in
                                     (("user", self.spec.user_column), ("item", self.spec.item_column)) if c},
                             source=source, pooling=dict(self.pooling))

    def concat(self, parts: List[MultiTaskData], source: str) -> MultiTaskData:
        """The parts' rows as one dataset, with the final ``num_embeddings``."""
        if not parts:
            return self.empty(source)
        sparse = {}
        for name in self.spec.sparse:
            cols = [p.sparse[name] for p in parts]
            offsets = None
            if any(c.offsets is not None for c in cols):
                lengths = torch.cat([c.lengths() for c in cols])
                offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            sparse[name] = SparseColumn(torch.cat([c.values for c in cols]), offsets)
        n_emb = {k: v or max(p.num_embeddings[k] for p in parts) for k, v in self.num_embeddings.items()}
        return MultiTaskData(torch.cat([p.dense for p in parts]), sparse, n_emb, list(self.tasks),
                             torch.cat([p.labels for p in parts]), torch.cat([p.masks for p in parts]),
                             extras={k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras},
                             source=source, pooling=dict(self.pooling))

    def read(self, path: str) -> Iterator[MultiTaskData]:
        row = 0
        for rb in self.record_batches(path):
            yield self.convert(rb, np.arange(row, row + rb.num_rows), path)
            row += rb.num_rows


class TableStream:
    """Parquet rows read from disk batch by batch, with :class:`MultiTaskData`'s batch interface.

    Row counts come from the Parquet metadata. In training (``drop_last=True``) rank
    ``r`` of ``W`` reads only the contiguous rows ``[r*N//W, (r+1)*N//W)``, row group
    by row group, shuffled (``shuffle=True``) by row-group order and within a buffer of
    ``chunk_rows`` rows. With ``drop_last=False`` (evaluation) global batch ``i`` holds
    rows ``[i*G, (i+1)*G)`` in file order, ``G = batch_size * W``, rank ``r`` taking its
    ``r``-th slice and padding with masked-out rows, exactly as ``MultiTaskData.batches``
    does, so that gathering the ranks' batches restores the row order (each rank then
    reads every row group). Every rank yields exactly :meth:`num_batches` batches.

    Built by :func:`load_tabular` for ``stream: true``.

    Args:
        spec: the table spec (its ``train`` entries are not read here).
        files: Parquet files, in row order.
        num_embeddings: every sparse feature's table size.
        held_out: ``(fraction, seed)``: leave out the rows of a seeded per-row coin
            (the test rows), or ``None`` to keep every row.
        source: a name for error messages.
    """

    def __init__(self, spec: TableSpec, files: List[str], num_embeddings: Mapping[str, int],
                 held_out: Optional[Tuple[float, int]] = None, source: str = "table/train") -> None:
        self._cols = _Columns(spec, "parquet")
        missing = sorted(set(spec.sparse) - set(num_embeddings))
        if missing:
            raise ValueError(f"{source}: no num_embeddings for the sparse column(s) {missing}")
        self._cols.num_embeddings.update(num_embeddings)
        self.files, self._held, self.source = list(files), held_out, source
        self.tasks: List[TaskSpec] = list(self._cols.tasks)
        self.num_embeddings: Dict[str, int] = {k: int(num_embeddings[k]) for k in spec.sparse}
        self.pooling: Dict[str, str] = dict(self._cols.pooling)
        segs = []  # file, row group, first row in the file, first global row, rows, kept rows
        start = 0
        for f, path in enumerate(self.files):
            md, in_file = pq.ParquetFile(path).metadata, 0
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                kept = n - int(self._held_mask(start, n).sum()) if held_out else n
                segs.append((f, g, in_file, start, n, kept))
                start, in_file = start + n, in_file + n
        self._segs = np.array(segs, dtype=np.int64).reshape(-1, 6)
        self._first = np.concatenate([[0], np.cumsum(self._segs[:, 5])])  # first kept row of each segment
        self._label_means: Optional[torch.Tensor] = None

    def _held_mask(self, start: int, n: int) -> np.ndarray:
        fraction, seed = self._held  # type: ignore[misc]
        return _held_out(np.arange(start, start + n), fraction, seed)

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def feature_names(self) -> List[str]:
        return list(self._cols.spec.sparse)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    @property
    def num_dense(self) -> int:
        return len(self._cols.spec.dense)

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        g = batch_size * world_size
        return len(self) // g if drop_last else -(-len(self) // g)

    def _parts(self, order: np.ndarray, select: Callable[[np.ndarray], np.ndarray], held: bool = False,
               columns: Optional[List[str]] = None) -> Iterator[Tuple[pa.RecordBatch, np.ndarray, str]]:
        """Record batches of the rows chosen by ``select`` (over kept-row indices), or of
        the held-out rows when ``held``; with their file rows and file."""
        files: Dict[int, pq.ParquetFile] = {}
        for s in order:
            f, g, in_file, start, n, _ = (int(v) for v in self._segs[s])
            if held:
                pos = np.flatnonzero(self._held_mask(start, n))
            else:
                k = int(self._segs[s, 5])
                chosen = select(np.arange(self._first[s], self._first[s] + k))
                if not chosen.any():
                    continue
                kept = np.flatnonzero(~self._held_mask(start, n)) if self._held else np.arange(n)
                pos = kept[chosen]
            if not len(pos):
                continue
            pf = files.setdefault(f, pq.ParquetFile(self.files[f]))
            p0 = 0
            for rb in pf.iter_batches(batch_size=self._cols.spec.chunk_rows, row_groups=[g],
                                      columns=columns or self._cols.needed):
                m = rb.num_rows
                lo, hi = np.searchsorted(pos, [p0, p0 + m])
                local = pos[lo:hi] - p0
                if len(local):
                    yield (rb if len(local) == m else rb.take(pa.array(local))), in_file + p0 + local, self.files[f]
                p0 += m

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, start: int = 0) -> Iterator[MultiTaskBatch]:
        """This rank's batches of ``batch_size`` rows, exactly :meth:`num_batches` of them;
        ``start`` skips the first batches (a resumed epoch)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        n, b, g = len(self), batch_size, batch_size * world_size
        total = self.num_batches(batch_size, world_size, drop_last)
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        select: Callable[[np.ndarray], np.ndarray] = (
            (lambda t: (t >= lo) & (t < hi)) if drop_last else (lambda t: (t % g >= rank * b) & (t % g < (rank + 1) * b)))
        order = np.arange(len(self._segs))
        mix = seed * 100003 + epoch
        if shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(mix)).numpy()
        gen = torch.Generator().manual_seed(mix * 1009 + rank)
        buf: List[MultiTaskData] = []
        size, done, cap = 0, 0, max(self._cols.spec.chunk_rows, b)

        def perm(k: int) -> torch.Tensor:
            return torch.randperm(k, generator=gen) if shuffle else torch.arange(k)

        for rb, rows, path in self._parts(order, select):
            buf.append(self._cols.convert(rb, rows, path))
            size += rb.num_rows
            if size < cap:
                continue
            data = self._cols.concat(buf, self.source)
            idx = perm(size)
            full = min(size // b, total - done)
            for i in range(full):
                if done >= start:
                    yield data.make_batch(idx[i * b : (i + 1) * b])
                done += 1
            if done == total:
                return
            rest = idx[full * b :]
            buf, size = [data.subset(rest)], len(rest)
        data = self._cols.concat(buf, self.source)
        idx = perm(size)
        while done < total:
            piece = idx[:b]
            if drop_last and len(piece) < b:
                raise RuntimeError(f"{self.source}: rank {rank} ran out of rows after {done} of {total} batches")
            if done >= start:
                yield data.make_batch(piece, pad_to=b)
            idx, done = idx[b:], done + 1

    def held_out_rows(self, source: str = "table/test") -> MultiTaskData:
        """The rows this stream leaves out (its test split), in memory."""
        if self._held is None:
            raise ValueError(f"{self.source}: no rows are held out")
        parts = [self._cols.convert(rb, rows, path)
                 for rb, rows, path in self._parts(np.arange(len(self._segs)), lambda t: t, held=True)]
        return self._cols.concat(parts, source)

    def label_means(self) -> torch.Tensor:
        """``[T]`` mean of each task's present labels over the stream's rows (NaN where a
        task has none), like ``MultiTaskData.label_means``; one pass over the label columns."""
        if self._label_means is None:
            cols = list(dict.fromkeys(t.column for t in self._cols.spec.tasks))
            total = torch.zeros(len(self.tasks), dtype=torch.float64)
            count = torch.zeros(len(self.tasks), dtype=torch.float64)
            everything = np.arange(len(self._segs))
            for rb, rows, path in self._parts(everything, lambda t: np.ones(len(t), bool), columns=cols):
                y, m = self._cols.labels(rb, rows, path)
                total += (y.double() * m).sum(0)
                count += m.sum(0)
            self._label_means = (total / count).float()
        return self._label_means


def _scan_num_embeddings(columns: _Columns, files: List[str]) -> Dict[str, int]:
    """Max id + 1 of every sparse column without ``num_embeddings``, reading only those columns."""
    todo = [k for k, v in columns.num_embeddings.items() if v is None]
    out = {k: 1 for k in todo}
    for path in files if todo else []:
        row = 0
        for rb in pq.ParquetFile(path).iter_batches(batch_size=columns.spec.chunk_rows, columns=todo):
            rows = np.arange(row, row + rb.num_rows)
            for k in todo:
                ids, _ = columns.ids(rb.column(k), k, rows, path)
                if ids.numel():
                    out[k] = max(out[k], int(ids.max()) + 1)
            row += rb.num_rows
    return out


def load_tabular(spec: Union[TableSpec, Mapping[str, Any]], seed: int = 0) -> LoadedData:
    """Reads the train (and test) files of ``spec`` into train and test splits.

    Args:
        spec: a :class:`TableSpec`, or the run config's ``table`` section as a dict.
        seed: seed of the train/test split when the spec gives no ``test`` files.

    Returns:
        :class:`LoadedData` with ``info = {"dataset": "table", "files": [...], "rows": n, ...}``;
        with ``stream: true`` its ``train`` is a :class:`TableStream` (test rows in memory).

    Raises:
        FileNotFoundError: a train or test entry matches no file.
        ValueError: a bad spec (naming the key), missing columns (listing the file's
            columns), a column of the wrong type, an id out of range (naming the
            column, id, file and row), a bad label or dense value.

    Example::

        import tempfile, pyarrow as pa, pyarrow.parquet as pq
        path = tempfile.mkdtemp() + "/rows.parquet"
        pq.write_table(pa.table({"user": [0, 3, 1, 2] * 5, "click": [1, 0, None, 1] * 5}), path)
        d = load_tabular({"train": path, "sparse": {"user": {}}, "tasks": [{"name": "click"}]})
        assert d.train.num_embeddings["user"] == 4 and len(d.train) + len(d.test) == 20
    """
    spec = spec if isinstance(spec, TableSpec) else TableSpec.from_dict(spec)
    train_files = _expand(spec.train, "train")
    test_files = _expand(spec.test, "test") if spec.test else []
    fmt = spec.format
    if fmt is None:
        found = {_suffix_format(f) for f in train_files + test_files}
        if len(found) != 1 or None in found:
            raise ValueError(f"table spec: format: cannot tell it from the file names {train_files + test_files}; "
                             f"set format to one of {list(FORMATS)}")
        fmt = found.pop()
    columns = _Columns(spec, fmt)
    for path in train_files + test_files:
        columns.check_file(path)
    info: Dict[str, object] = {"dataset": "table", "format": fmt, "files": train_files + test_files}
    if spec.stream:
        if fmt != "parquet":
            raise ValueError("table spec: stream: streaming reads Parquet files only (row groups); "
                             "convert the CSV files to Parquet or set stream: false")
        columns.num_embeddings.update(_scan_num_embeddings(columns, train_files + test_files))
        n_emb = {k: int(v or 1) for k, v in columns.num_embeddings.items()}
        train = TableStream(spec, train_files, n_emb, None if test_files else (spec.test_fraction, seed))
        if test_files:
            test = columns.concat([p for f in test_files for p in columns.read(f)], "table/test")
        else:
            test = train.held_out_rows()
        info.update(rows=len(train) + len(test), train_rows=len(train), test_rows=len(test), stream=True)
        return LoadedData(train, test, info)  # type: ignore[arg-type]
    train_parts = [p for f in train_files for p in columns.read(f)]
    test_parts = [p for f in test_files for p in columns.read(f)]
    for k, v in columns.num_embeddings.items():  # inferred over train and test
        if v is None:
            columns.num_embeddings[k] = max([p.num_embeddings[k] for p in train_parts + test_parts], default=1)
    data = columns.concat(train_parts, "table/train")
    del train_parts
    if test_files:
        train, test = data, columns.concat(test_parts, "table/test")
    else:
        if len(data) < 2:
            raise ValueError(f"{train_files}: {len(data)} row(s) cannot be split into train and test")
        train, test = data.split(spec.test_fraction, seed)
        train.source, test.source = "table/train", "table/test"
    info.update(rows=len(train) + len(test), train_rows=len(train), test_rows=len(test), stream=False)
    return LoadedData(train, test, info)
