"""The MovieLens files parsed: ratings (vectorised numpy), movies and users (small side files).

A malformed line raises ``ValueError`` naming ``path:line``; users and items are indexed
``0..n-1`` in raw-id order.
"""

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from torchrec_fusion.data.dataset import SparseColumn

__all__ = ["ItemTable", "UserTable", "read_ratings", "unique_ids", "lookup_ids", "read_items_100k",
           "read_items_1m", "read_items_csv", "read_users_100k", "read_users_1m"]

# ml-1m age codes; ml-100k ages are bucketed onto them with the same lower bounds
_AGE_BOUNDS = np.array([18, 25, 35, 45, 50, 56])
_NUM_AGE_BUCKETS = len(_AGE_BOUNDS) + 1
_MAX_TABLE = 1 << 26  # raw ids below this are mapped through a dense lookup table
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")

# (line, raw id, title, year or None, genre indices)
_ItemRow = Tuple[int, int, str, Optional[int], List[int]]
# (line, raw id, age, gender, occupation, zip)
_UserRow = Tuple[int, int, int, str, Union[str, int], str]


@dataclass
class ItemTable:
    """The movies, sorted by raw id: an item index is a position here."""

    ids: np.ndarray  # sorted raw ids
    titles: List[str]
    year: np.ndarray  # float32 standardised year per item, 0 where unknown
    genres: SparseColumn  # genre bag per item
    num_genres: int
    path: Path


@dataclass
class UserTable:
    """The users, sorted by raw id, with their features when the variant has a user file."""

    ids: np.ndarray  # sorted raw ids
    path: Optional[Path]
    age: Optional[np.ndarray] = None  # years (ml-100k) or age code (ml-1m)
    columns: Optional[Dict[str, Tuple[np.ndarray, int]]] = None  # feature -> (index, vocab size)


# ----------------------------------------------------------------------------- ratings


def read_ratings(path: Path, sep: str, header: bool = False) -> Tuple[np.ndarray, np.ndarray, Path]:
    """Parses ``user, item, rating, timestamp`` lines into ``[N, 4]`` float64 values
    and the 1-based line number of each row; validates ids, timestamps and ratings."""
    vals, lines = _read_numeric(path, sep, 4, header)
    ints = vals[:, [0, 1, 3]]
    bad = (ints != np.floor(ints)).any(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}:{lines[i]}: user id, item id and timestamp must be integers, got {vals[i].tolist()}"
        )
    bad = ~np.isfinite(vals[:, 2])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}:{lines[i]}: rating {vals[i, 2]} is not a finite number")
    return vals, lines, path


def _read_numeric(
    path: Path, sep: str, ncols: int, header: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a file of ``ncols`` numeric fields per line, vectorised.

    Blank lines are skipped. Returns ``[N, ncols]`` float64 values and the 1-based
    line numbers of the rows. A line with the wrong number of fields or a field
    that is not a number raises ``ValueError`` naming ``path:line``.
    """
    data = path.read_bytes()
    byte_sep = b"\t" if sep == "::" else sep.encode()
    if sep == "::":
        data = data.replace(b"::", b"\t")
    if not data.endswith(b"\n"):
        data += b"\n"
    x = np.frombuffer(data, np.uint8)
    # separators and newlines in file order: a line's field count is 1 + the
    # number of separators between its newline and the previous one
    marks = np.flatnonzero((x == byte_sep[0]) | (x == 10))
    is_newline = x[marks] == 10
    newline_at = np.flatnonzero(is_newline)
    num_fields = np.diff(newline_at, prepend=-1)  # separators + 1
    ends = marks[is_newline]
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (x[starts] == 13))
    keep = ~blank
    if header:
        keep[0] = False
    wrong = keep & (num_fields != ncols)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise _field_count_error(path, i + 1, ncols, sep, int(num_fields[i]))
    line_numbers = np.flatnonzero(keep) + 1
    body = data[int(starts[1]) :] if header and len(starts) > 1 else (b"" if header else data)
    if not byte_sep.isspace():
        body = body.translate(bytes.maketrans(byte_sep, b" "))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            vals = np.fromstring(body, dtype=np.float64, sep=" ")
    except (ValueError, DeprecationWarning):
        vals = None
    if vals is None or vals.size != line_numbers.size * ncols:
        _raise_first_non_numeric(path, data, byte_sep, header)
    return vals.reshape(-1, ncols), line_numbers


def _raise_first_non_numeric(path: Path, data: bytes, sep: bytes, header: bool) -> NoReturn:
    """Slow path: scans lines in Python to report the first non-numeric field."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if (header and number == 1) or not line.strip():
            continue
        for j, value in enumerate(line.split(sep), 1):
            try:
                float(value)
            except ValueError:
                text = value.decode("latin-1")
                raise ValueError(f"{path}:{number}: field {j} ({text!r}) is not a number") from None
    raise ValueError(f"{path}: could not parse the file as numbers")


def unique_ids(raw: np.ndarray) -> np.ndarray:
    """Sorted distinct ids (a presence table when the ids are small non-negative ints)."""
    if raw.size and raw.min() >= 0 and raw.max() < _MAX_TABLE:
        return np.flatnonzero(np.bincount(raw)).astype(np.int64)
    return np.unique(raw)


def _field_count_error(path: Path, line: int, expected: int, sep: str, got: int) -> ValueError:
    name = {"\t": "tab", ",": "comma"}.get(sep, repr(sep))
    return ValueError(f"{path}:{line}: expected {expected} {name}-separated fields, got {got}")


def lookup_ids(
    ids: np.ndarray, raw: np.ndarray, what: str, side: Optional[Path], path: Path, lines: np.ndarray
) -> np.ndarray:
    """Maps raw ids to their index in the sorted array ``ids``; an unknown id raises
    ``ValueError`` naming the ratings file and line and the ``side`` file."""
    if len(ids) and ids[0] >= 0 and ids[-1] < _MAX_TABLE:  # a direct table beats a binary search
        table = np.full(int(ids[-1]) + 1, -1, dtype=np.int64)
        table[ids] = np.arange(len(ids))
        idx = table[raw.clip(0, len(table) - 1)]
        bad = (idx < 0) | (raw < 0) | (raw >= len(table))
    else:
        idx = np.searchsorted(ids, raw).clip(max=max(len(ids) - 1, 0))
        bad = (ids[idx] != raw) if len(ids) else np.ones(len(raw), dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}:{lines[i]}: {what} id {int(raw[i])} is not in {side}")
    return np.asarray(idx, dtype=np.int64)



# ----------------------------------------------------------------------------- side files


def _split_lines(path: Path, sep: str, nfields: int, encoding: str) -> List[Tuple[int, List[str]]]:
    """Non-blank lines of a small side file as ``(line number, fields)``."""
    rows = []
    with open(path, encoding=encoding, newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != nfields:
                raise _field_count_error(path, number, nfields, sep, len(fields))
            rows.append((number, fields))
    return rows


def _int(path: Path, number: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}:{number}: {what} {text!r} is not an integer") from None


def _year_from_title(title: str) -> Optional[int]:
    m = _YEAR_IN_TITLE.search(title)
    return int(m.group(1)) if m else None


def _sorted_ids(path: Path, ids: Sequence[int], lines: Sequence[int], what: str) -> np.ndarray:
    """The order that sorts ``ids``; a duplicate id raises naming its line."""
    raw = np.asarray(ids, dtype=np.int64)
    order = np.argsort(raw, kind="stable")
    dup = np.flatnonzero(raw[order][1:] == raw[order][:-1])
    if dup.size:
        i = order[dup[0] + 1]
        raise ValueError(f"{path}:{lines[i]}: duplicate {what} id {int(raw[i])}")
    return order


def _make_items(path: Path, rows: Sequence[_ItemRow], num_genres: int) -> ItemTable:
    """Sorts ``(line, id, title, year, genre indices)`` rows by id into an :class:`ItemTable`."""
    order = _sorted_ids(path, [r[1] for r in rows], [r[0] for r in rows], "item")
    rows = [rows[i] for i in order]
    years = np.array([np.nan if r[3] is None else r[3] for r in rows], dtype=np.float64)
    lengths = torch.tensor([len(r[4]) for r in rows], dtype=torch.int64)
    genres = SparseColumn(
        torch.tensor([g for r in rows for g in r[4]], dtype=torch.int64),
        torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]),
    )
    return ItemTable(
        ids=np.array([r[1] for r in rows], dtype=np.int64),
        titles=[r[2] for r in rows],
        year=np.where(np.isnan(years), 0.0, (years - 1990.0) / 20.0).astype(np.float32),
        genres=genres,
        num_genres=num_genres,
        path=path,
    )


def read_items_100k(path: Path) -> ItemTable:
    rows = []
    for number, f in _split_lines(path, "|", 24, "latin-1"):
        flags = f[5:]
        if any(g not in ("0", "1") for g in flags):
            raise ValueError(f"{path}:{number}: genre flags must be 0 or 1, got {'|'.join(flags)}")
        date = f[2].strip()
        year = int(date[-4:]) if date[-4:].isdigit() else _year_from_title(f[1])
        genres = [g for g, v in enumerate(flags) if v == "1"]
        rows.append((number, _int(path, number, f[0], "item id"), f[1], year, genres))
    return _make_items(path, rows, 19)


def _named_genre_items(path: Path, raw: Sequence[Tuple[int, int, str, str]]) -> ItemTable:
    """Items whose genres are ``|``-joined names (ml-1m, ml-20m, ml-25m); the genre
    vocabulary is the sorted set of names, ``(no genres listed)`` an empty bag."""
    names = [[g for g in genres.split("|") if g and g != "(no genres listed)"] for *_, genres in raw]
    vocab = {g: k for k, g in enumerate(sorted({g for gs in names for g in gs}))}
    rows = [
        (number, item, title, _year_from_title(title), [vocab[g] for g in gs])
        for (number, item, title, _), gs in zip(raw, names)
    ]
    return _make_items(path, rows, len(vocab))


def read_items_1m(path: Path) -> ItemTable:
    rows = _split_lines(path, "::", 3, "latin-1")  # MovieID::Title::Genres
    return _named_genre_items(path, [(n, _int(path, n, f[0], "item id"), f[1], f[2]) for n, f in rows])


def read_items_csv(path: Path) -> ItemTable:
    raw = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        head = next(reader, None)
        if head is None or [h.strip() for h in head] != ["movieId", "title", "genres"]:
            raise ValueError(f"{path}:1: expected the header movieId,title,genres, got {head}")
        for f in reader:
            number = reader.line_num
            if not f:
                continue
            if len(f) != 3:
                raise _field_count_error(path, number, 3, ",", len(f))
            raw.append((number, _int(path, number, f[0], "item id"), f[1], f[2]))
    return _named_genre_items(path, raw)


def _make_users(path: Path, rows: Sequence[_UserRow]) -> UserTable:
    """Sorts ``(line, id, age, gender, occupation, zip)`` rows by id and indexes the
    user features: age bucket, gender (M 0, F 1), occupation and zip prefix
    (vocabularies sorted)."""
    for number, _, _, gender, _, _ in rows:
        if gender not in ("M", "F"):
            raise ValueError(f"{path}:{number}: gender must be M or F, got {gender!r}")
    order = _sorted_ids(path, [r[1] for r in rows], [r[0] for r in rows], "user")
    rows = [rows[i] for i in order]
    age = np.array([r[2] for r in rows], dtype=np.int64)
    columns = {
        "age": (np.searchsorted(_AGE_BOUNDS, age, side="right").astype(np.int64), _NUM_AGE_BUCKETS),
        "gender": (np.array([r[3] == "F" for r in rows], dtype=np.int64), 2),
    }
    for name, values in (("occupation", [r[4] for r in rows]), ("zip", [r[5].strip()[:3] for r in rows])):
        vocab, index = np.unique(np.array(values), return_inverse=True)
        columns[name] = (index.reshape(-1).astype(np.int64), len(vocab))
    return UserTable(ids=np.array([r[1] for r in rows], dtype=np.int64), path=path, age=age, columns=columns)


def read_users_100k(path: Path) -> UserTable:
    rows = _split_lines(path, "|", 5, "latin-1")  # id|age|gender|occupation|zip
    return _make_users(
        path,
        [
            (n, _int(path, n, f[0], "user id"), _int(path, n, f[1], "age"), f[2], f[3], f[4])
            for n, f in rows
        ],
    )


def read_users_1m(path: Path) -> UserTable:
    rows = _split_lines(path, "::", 5, "latin-1")  # UserID::Gender::Age::Occupation::Zip-code
    return _make_users(
        path,
        [
            (
                n,
                _int(path, n, f[0], "user id"),
                _int(path, n, f[2], "age"),
                f[1],
                _int(path, n, f[3], "occupation"),
                f[4],
            )
            for n, f in rows
        ],
    )
