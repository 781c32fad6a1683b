"""Where a table's rows are: its files (paths, globs, folders) and their format, the stable
string hash of string ids, and the seeded per-row coin of the train/test split."""

import csv
import glob
import io
import os
import re
from typing import Any, Iterator, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["fnv1a_64", "held_out_mask", "expand_files", "suffix_format", "is_str", "is_list", "is_numeric",
           "parquet_file", "parquet_batches", "csv_bad_row", "CSV_NULLS"]

# the CSV cells read as null (a missing label, no id, a dense 0); "nan" is not one: a NaN label is an error
CSV_NULLS = ["", "NA", "N/A", "null", "NULL"]

_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv", ".tsv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


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


def held_out_mask(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each global row index is a test row: a seeded SplitMix64 coin per row."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % (1 << 64))
    z = rows.astype(np.uint64) + mix
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t))


def expand_files(patterns: List[str], key: str) -> List[str]:
    """Files of paths, globs and folders (a folder: its files with a known suffix), sorted per entry."""
    files: List[str] = []
    for p in patterns:
        p = os.path.expanduser(p)
        if any(c in p for c in "*?["):
            hits = sorted(h for h in glob.glob(p, recursive=True) if os.path.isfile(h))
        elif os.path.isdir(p):
            hits = sorted(os.path.join(p, f) for f in os.listdir(p) if suffix_format(f) is not None)
        else:
            hits = [p] if os.path.isfile(p) else []
        if not hits:
            raise FileNotFoundError(f"table spec: {key}: no file matches {p!r}")
        files += hits
    return files


def suffix_format(path: str) -> Optional[str]:
    name = path.lower()
    for c in _COMPRESSED:
        name = name[: -len(c)] if name.endswith(c) else name
    return _SUFFIXES.get(os.path.splitext(name)[1])



def parquet_file(path: str) -> pq.ParquetFile:
    """``path`` opened as Parquet; an unreadable file (truncated, not Parquet) is a ``ValueError`` naming it."""
    try:
        pf = pq.ParquetFile(path)
        _ = pf.schema_arrow  # a damaged footer's schema fails here, not later without the file's name
        return pf
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: e.g. a UnicodeDecodeError of a name
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None


def parquet_batches(path: str, pf: Optional[pq.ParquetFile] = None, **kw: Any) -> Iterator[pa.RecordBatch]:
    """``pf.iter_batches(**kw)`` of the file at ``path``; a damaged page is a ``ValueError`` naming the file."""
    batches = (pf or parquet_file(path)).iter_batches(**kw)
    while True:
        try:
            rb = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ValueError(f"{path}: a damaged Parquet file ({e})") from None
        yield rb


def _parses(cell: str, kind: Optional[pa.DataType]) -> bool:
    if kind is None or cell in CSV_NULLS or pa.types.is_string(kind):
        return True
    if pa.types.is_integer(kind):
        return re.fullmatch(r"[+-]?[0-9]+", cell) is not None and -(2**63) <= int(cell) < 2**63
    try:
        float(cell)
        return True
    except ValueError:
        return False


def csv_bad_row(path: str, delimiter: str, column: Optional[str] = None,
                kind: Optional[pa.DataType] = None) -> Optional[str]:
    """Where the first bad row of a CSV file is ("row R (line L)", R counting data rows from 0): a row
    of the wrong number of cells, or (``column``) one whose cell is no ``kind``. pyarrow's errors name
    neither, so the file is read again, on the error path only. None when no row is found."""
    try:
        with pa.input_stream(path, compression="detect") as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""),
                                delimiter=delimiter)
            header = next(reader)
            j = header.index(column) if column in header else None
            row = 0
            for cells in reader:
                if not cells:
                    continue  # pyarrow skips empty lines
                if len(cells) != len(header) or (j is not None and not _parses(cells[j], kind)):
                    return f"row {row} (line {reader.line_num})"
                row += 1
    except (csv.Error, StopIteration, OSError, pa.ArrowException):
        return None
    return None
