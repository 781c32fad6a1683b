"""Where a table's rows are: its files (paths, globs, folders) and their format, the stable
string hash of string ids, and the seeded per-row coin of the train/test split."""

import glob
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

__all__ = ["fnv1a_64", "held_out_mask", "expand_files", "suffix_format", "is_str", "is_list", "is_numeric"]

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

