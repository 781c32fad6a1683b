"""Users' own tables (Parquet or CSV) as multi-task data, in memory or streamed from disk.

The ``table`` section of a run config says which columns are id features, dense
features, labels, users and items: :class:`TableSpec`, whose module
(:mod:`torchrec_fusion.data.tabular_spec`) lists the keys.

Files are read with pyarrow chunk by chunk (``ParquetFile.iter_batches``, the
streaming ``pyarrow.csv.open_csv`` reader with explicit column types); each chunk
becomes tensors at once, so memory holds tensors, never a whole Arrow table
(:mod:`torchrec_fusion.data.tabular_columns`). With ``stream: true`` the train rows stay
on disk and are read batch by batch (:class:`TableStream`).
Errors name the spec key, or the column, the file and the row (0-based data row;
a CSV header is not counted).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torchrec_fusion.data.candidates import candidate_builder
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.tabular_columns import TableColumns
from torchrec_fusion.data.tabular_files import expand_files, fnv1a_64, suffix_format
from torchrec_fusion.data.tabular_spec import FORMATS, SparseOptions, TableSpec, TaskColumn
from torchrec_fusion.data.tabular_stream import TableStream, scan_num_embeddings
from torchrec_fusion.data.types import BatchSource, LoadedData

__all__ = ["TableSpec", "SparseOptions", "TaskColumn", "TableStream", "TableReader", "TableData", "load_tabular",
           "read_table_file", "fnv1a_64"]


@dataclass
class TableData(LoadedData):
    """A table's splits, with the rows of the spec's ``validation`` files (None: it names none)."""

    validation: Optional[MultiTaskData] = None


class TableReader:
    """Dataset ``table``: :func:`load_tabular` of the ``table`` spec, split by the run's seed when
    it names no test files; candidate rows (from the training rows) when those are in memory and
    the spec names users, items and item features."""

    @dataclass(frozen=True)
    class Options:
        """``table``: the table spec, the keys of :class:`TableSpec` (required)."""

        table: Optional[Dict[str, Any]] = None

    @staticmethod
    def load(options: "TableReader.Options", seed: int) -> LoadedData:
        if not options.table:
            raise ValueError("dataset 'table' needs a 'table' section in the config: the columns of your files "
                             "(see torchrec_fusion.data.tabular.TableSpec)")
        spec = TableSpec.from_dict(options.table)
        loaded = load_tabular(spec, seed)
        rows = loaded.train.in_memory_rows()  # a streamed train split has no rows to copy
        if rows is not None and {"user", "item"} <= set(rows.extras) and spec.item_features:
            loaded.candidates = candidate_builder(rows, list(spec.item_features))
        return loaded


def load_tabular(spec: Union[TableSpec, Mapping[str, Any]], seed: int = 0) -> TableData:
    """Reads the train (and test, validation) files of ``spec`` into train and test (and validation) splits.

    Args:
        spec: a :class:`TableSpec`, or the run config's ``table`` section as a dict.
        seed: seed of the train/test split when the spec gives no ``test`` files.

    Returns:
        :class:`TableData` with ``info = {"dataset": "table", "files": [...], "rows": n, ...}``;
        with ``stream: true`` its ``train`` is a :class:`TableStream` (test and validation rows in memory).

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
    train_files = expand_files(spec.train, "train")
    test_files = expand_files(spec.test, "test") if spec.test else []
    val_files = expand_files(spec.validation, "validation") if spec.validation else []
    fmt = _format(spec, train_files + test_files + val_files)
    columns = TableColumns(spec, fmt)
    for path in train_files + test_files + val_files:
        columns.check_file(path)
    info: Dict[str, object] = {"dataset": "table", "format": fmt, "files": train_files + test_files + val_files}
    train: BatchSource
    if spec.stream:
        train, test, validation = _streamed(columns, train_files, test_files, seed, val_files)
    else:
        train, test, validation = _in_memory(columns, train_files, test_files, seed, val_files)
    n_val = 0 if validation is None else len(validation)
    if validation is not None and n_val == 0:
        raise ValueError(f"table spec: validation: {val_files} hold no row")
    info.update(rows=len(train) + len(test) + n_val, train_rows=len(train), test_rows=len(test), stream=spec.stream,
                **({"validation_rows": n_val} if validation is not None else {}))
    return TableData(train, test, info, validation=validation)


def _format(spec: TableSpec, files: List[str]) -> str:
    """The spec's format, or the one the file names' suffixes agree on."""
    if spec.format is not None:
        return spec.format
    found = {suffix_format(f) for f in files}
    fmt = found.pop() if len(found) == 1 else None
    if fmt is None:
        raise ValueError(f"table spec: format: cannot tell it from the file names {files}; "
                         f"set format to one of {list(FORMATS)}")
    return fmt


def _streamed(columns: TableColumns, train_files: List[str], test_files: List[str], seed: int,
              val_files: List[str]) -> Tuple[TableStream, MultiTaskData, Optional[MultiTaskData]]:
    """The train rows as a :class:`TableStream`; the test rows (test files, or the rows the
    stream holds out) and the validation files' rows in memory."""
    spec = columns.spec
    if columns.fmt != "parquet":
        raise ValueError("table spec: stream: streaming reads Parquet files only (row groups); "
                         "convert the CSV files to Parquet or set stream: false")
    columns.num_embeddings.update(scan_num_embeddings(columns, train_files + test_files + val_files))
    n_emb = {k: int(v or 1) for k, v in columns.num_embeddings.items()}
    train = TableStream(spec, train_files, n_emb, None if test_files else (spec.test_fraction, seed))
    validation = columns.concat([p for f in val_files for p in columns.read(f)], "table/validation") \
        if val_files else None
    if test_files:
        return train, columns.concat([p for f in test_files for p in columns.read(f)], "table/test"), validation
    return train, train.held_out_rows(), validation


def _in_memory(columns: TableColumns, train_files: List[str], test_files: List[str], seed: int,
               val_files: List[str]) -> Tuple[MultiTaskData, MultiTaskData, Optional[MultiTaskData]]:
    """The train, test and validation rows in memory (test: the test files, or a seeded share of
    train), the ``num_embeddings`` not in the spec inferred over all three."""
    train_parts = [p for f in train_files for p in columns.read(f)]
    test_parts = [p for f in test_files for p in columns.read(f)]
    val_parts = [p for f in val_files for p in columns.read(f)]
    for k, v in columns.num_embeddings.items():  # inferred over train, test and validation
        if v is None:
            columns.num_embeddings[k] = max([p.num_embeddings[k] for p in train_parts + test_parts + val_parts],
                                            default=1)
    data = columns.concat(train_parts, "table/train")
    del train_parts
    validation = columns.concat(val_parts, "table/validation") if val_files else None
    if test_files:
        return data, columns.concat(test_parts, "table/test"), validation
    if len(data) < 2:
        raise ValueError(f"{train_files}: {len(data)} row(s) cannot be split into train and test")
    train, test = data.split(columns.spec.test_fraction, seed)
    train.source, test.source = "table/train", "table/test"
    return train, test, validation


def read_table_file(spec: Union[TableSpec, Mapping[str, Any]], path: str,
                    num_embeddings: Mapping[str, int]) -> MultiTaskData:
    """The rows of ``path`` (a path, glob or folder) read with ``spec``'s columns and a trained model's
    table sizes ``num_embeddings`` (an id outside them is an error naming the column, file and row,
    unless the spec maps it: modulo or hash), so that a finished run can score any such file."""
    spec = spec if isinstance(spec, TableSpec) else TableSpec.from_dict(spec)
    files = expand_files([path], "--data")
    columns = TableColumns(spec, _format(spec, files))
    columns.num_embeddings.update({k: int(num_embeddings[k]) for k in spec.sparse})
    for f in files:
        columns.check_file(f)
    rows = columns.concat([p for f in files for p in columns.read(f)], path)
    if len(rows) == 0:
        raise ValueError(f"{path}: no row to score")
    return rows
