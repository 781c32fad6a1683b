"""MovieLens readers (ml-100k, ml-1m, ml-20m, ml-25m) producing :class:`MultiTaskData`.

Every variant gives the same tasks, ``like`` (binary, rating >= 4) and ``rating``
(regression), and the id features ``user``, ``item`` and ``genres`` (a bag);
variants with a user file add ``age``, ``gender``, ``occupation`` and ``zip``.
Ratings files are parsed with vectorised numpy (ml-25m has 25M lines); a Python
scan runs only when that fails, to name the first malformed line.

Example::

    ml = load_movielens("../shared/data/ml-100k")          # u1.base / u1.test
    ml.train.num_embeddings["item"] == ml.num_items == 1682
"""

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn, random_split_rows
from torchrec_fusion.tasks import TaskSpec

__all__ = ["MovieLens", "load_movielens", "MOVIELENS_TASKS", "CANONICAL_SPLITS"]

MOVIELENS_TASKS: Tuple[TaskSpec, ...] = (TaskSpec("like", "binary"), TaskSpec("rating", "regression"))
CANONICAL_SPLITS: Tuple[str, ...] = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

# files that identify a variant; ml-20m and ml-25m share one layout
_LAYOUTS: Dict[str, Tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
}
# ml-1m age codes; ml-100k ages are bucketed onto them with the same lower bounds
_AGE_BOUNDS = np.array([18, 25, 35, 45, 50, 56])
_NUM_AGE_BUCKETS = len(_AGE_BOUNDS) + 1
_MAX_TABLE = 1 << 26  # raw ids below this are mapped through a dense lookup table
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")


@dataclass
class MovieLens:
    """A loaded MovieLens variant, split into train and test.

    Args:
        train: training rows.
        test: test rows (same features, vocabularies and tasks as ``train``).
        item_titles: movie titles, indexed by item index (the remapped id).
        num_users: number of user indices.
        num_items: number of item indices.
        variant: ``"ml-100k"``, ``"ml-1m"``, ``"ml-20m"`` or ``"ml-25m"``.
    """

    train: MultiTaskData
    test: MultiTaskData
    item_titles: List[str]
    num_users: int
    num_items: int
    variant: str
    _items: Optional["_Items"] = field(default=None, repr=False)
    _users: Optional["_Users"] = field(default=None, repr=False)

    def candidates(self, user: torch.Tensor, item: torch.Tensor) -> MultiTaskData:
        """Rows for arbitrary (user index, item index) pairs, with the features of the
        ratings rows and no labels (masks all False): candidates to score and rank."""
        return _rows(user.long(), item.long(), self._items, self._users, "candidates")


# (line, raw id, title, year or None, genre indices)
_ItemRow = Tuple[int, int, str, Optional[int], List[int]]
# (line, raw id, age, gender, occupation, zip)
_UserRow = Tuple[int, int, int, str, Union[str, int], str]


@dataclass
class _Items:
    ids: np.ndarray  # sorted raw ids
    titles: List[str]
    year: np.ndarray  # float32 standardised year per item, 0 where unknown
    genres: SparseColumn  # genre bag per item
    num_genres: int
    path: Path


@dataclass
class _Users:
    ids: np.ndarray  # sorted raw ids
    path: Optional[Path]
    age: Optional[np.ndarray] = None  # years (ml-100k) or age code (ml-1m)
    columns: Optional[Dict[str, Tuple[np.ndarray, int]]] = None  # feature -> (index, vocab size)


def load_movielens(
    data_dir: Union[str, os.PathLike],
    split: Optional[str] = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MovieLens:
    """Loads a MovieLens directory as multi-task train/test data.

    Args:
        data_dir: folder with the files of one variant, as unpacked from GroupLens.
        split: ``"auto"`` (ml-100k: ``u1.base``/``u1.test`` when present, else a
            random split), one of ``u1``..``u5``, ``ua``, ``ub`` (that canonical
            ml-100k split), or ``None``/``"random"`` (a seeded random split).
        test_fraction: share of rows in the test set of a random split.
        seed: seed of a random split.

    Returns:
        A :class:`MovieLens`; users and items are remapped to ``0..n-1`` in
        raw-id order, over all users and items of the user and movie files.

    Raises:
        FileNotFoundError: no MovieLens files in ``data_dir``, or one of the
            variant's files (or of the requested split) is missing.
        ValueError: a malformed line (the message gives ``path:line``), a rating
            of an unknown user or item, a NaN rating, or an unknown ``split``.
    """
    root = Path(data_dir)
    variant = _detect_variant(root)
    if split not in (None, "random", "auto", *CANONICAL_SPLITS):
        raise ValueError(
            f"unknown split {split!r}; expected 'auto', 'random', None or one of {CANONICAL_SPLITS}"
        )
    has_u1 = (root / "u1.base").is_file() and (root / "u1.test").is_file()
    canonical = split in CANONICAL_SPLITS or (split == "auto" and variant == "ml-100k" and has_u1)
    if canonical and variant != "ml-100k":
        raise ValueError(f"split {split!r} exists for ml-100k only; {root} holds {variant}")
    split_name = "u1" if split == "auto" else split
    rating_files = [f"{split_name}.base", f"{split_name}.test"] if canonical else [_LAYOUTS[variant][0]]
    required = [*_LAYOUTS[variant][1:], *rating_files]
    for name in required:
        if not (root / name).is_file():
            what = f"split {split_name!r} of {variant}" if canonical and name in rating_files else variant
            raise FileNotFoundError(f"{what} in {root}: missing file {root / name}")

    if variant == "ml-100k":
        items, users = _read_items_100k(root / "u.item"), _read_users_100k(root / "u.user")
        ratings = [_read_ratings(root / f, "\t") for f in rating_files]
    elif variant == "ml-1m":
        items, users = _read_items_1m(root / "movies.dat"), _read_users_1m(root / "users.dat")
        ratings = [_read_ratings(root / "ratings.dat", "::")]
    else:
        items = _read_items_csv(root / "movies.csv")
        ratings = [_read_ratings(root / "ratings.csv", ",", header=True)]
        raw_users = ratings[0][0][:, 0].astype(np.int64)
        users = _Users(ids=_unique_ids(raw_users), path=None)
        variant = _variant_20m_or_25m(root, len(raw_users))

    if canonical:
        train, test = (
            _build(vals, lines, path, items, users, source=f"{variant}/{path.name}")
            for vals, lines, path in ratings
        )
    else:
        vals, lines, path = ratings[0]
        train_rows, test_rows = (r.numpy() for r in random_split_rows(len(vals), test_fraction, seed))
        train = _build(vals[train_rows], lines[train_rows], path, items, users, f"{variant}/train")
        test = _build(vals[test_rows], lines[test_rows], path, items, users, f"{variant}/test")
    return MovieLens(train, test, items.titles, len(users.ids), len(items.ids), variant, items, users)


# ----------------------------------------------------------------------------- layout


def _detect_variant(root: Path) -> str:
    for variant, files in _LAYOUTS.items():
        if any((root / f).is_file() for f in files):
            return variant
    looked = "; ".join(f"{'/'.join(files)} ({v})" for v, files in _LAYOUTS.items())
    raise FileNotFoundError(f"no MovieLens data in {root}: looked for {looked}")


def _variant_20m_or_25m(root: Path, num_ratings: int) -> str:
    name = root.resolve().name.lower()
    if "25m" in name:
        return "ml-25m"
    if "20m" in name:
        return "ml-20m"
    return "ml-25m" if num_ratings > 22_000_000 else "ml-20m"


# ----------------------------------------------------------------------------- ratings


def _read_ratings(path: Path, sep: str, header: bool = False) -> Tuple[np.ndarray, np.ndarray, Path]:
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


def _unique_ids(raw: np.ndarray) -> np.ndarray:
    """Sorted distinct ids (a presence table when the ids are small non-negative ints)."""
    if raw.size and raw.min() >= 0 and raw.max() < _MAX_TABLE:
        return np.flatnonzero(np.bincount(raw)).astype(np.int64)
    return np.unique(raw)


def _field_count_error(path: Path, line: int, expected: int, sep: str, got: int) -> ValueError:
    name = {"\t": "tab", ",": "comma"}.get(sep, repr(sep))
    return ValueError(f"{path}:{line}: expected {expected} {name}-separated fields, got {got}")


def _lookup(
    ids: np.ndarray, raw: np.ndarray, what: str, side: Optional[Path], path: Path, lines: np.ndarray
) -> np.ndarray:
    """Maps raw ids to their index in the sorted array ``ids``; an unknown id raises
    ``ValueError`` naming the ratings file and line and the ``side`` file."""
    if len(ids) and 0 <= ids[0] and ids[-1] < _MAX_TABLE:  # a direct table beats a binary search
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
    return idx


# ----------------------------------------------------------------------------- rows


def _build(
    vals: np.ndarray, lines: np.ndarray, path: Path, items: _Items, users: _Users, source: str
) -> MultiTaskData:
    """Turns parsed rating rows into a :class:`MultiTaskData`."""
    raw_user, raw_item = vals[:, 0].astype(np.int64), vals[:, 1].astype(np.int64)
    user = torch.from_numpy(_lookup(users.ids, raw_user, "user", users.path, path, lines))
    item = torch.from_numpy(_lookup(items.ids, raw_item, "item", items.path, path, lines))
    rating = torch.from_numpy(vals[:, 2].astype(np.float32))
    return _rows(user, item, items, users, source, rating, torch.from_numpy(vals[:, 3].astype(np.int64)))


def _rows(user: torch.Tensor, item: torch.Tensor, items: _Items, users: _Users, source: str,
          rating: Optional[torch.Tensor] = None, timestamp: Optional[torch.Tensor] = None) -> MultiTaskData:
    """Rows of (user, item) index pairs with their features; labelled when ``rating`` is given."""
    genre_values, genre_lengths = items.genres.take(item)
    genre_offsets = torch.cat([genre_lengths.new_zeros(1), genre_lengths.cumsum(0)])
    sparse = {
        "user": SparseColumn(user),
        "item": SparseColumn(item),
        "genres": SparseColumn(genre_values, genre_offsets),
    }
    num_embeddings = {
        "user": max(len(users.ids), 1),
        "item": max(len(items.ids), 1),
        "genres": max(items.num_genres, 1),
    }
    dense = [torch.from_numpy(items.year)[item]]
    if users.columns is not None:
        for name, (index, size) in users.columns.items():
            sparse[name] = SparseColumn(torch.from_numpy(index)[user])
            num_embeddings[name] = max(size, 1)
        dense.append(torch.from_numpy((users.age / 50.0).astype(np.float32))[user])
    n, t = len(user), len(MOVIELENS_TASKS)
    labelled = rating is not None
    rating = rating if labelled else torch.zeros(n)
    extras = {"user": user, "item": item, "rating": rating}
    if timestamp is not None:
        extras["timestamp"] = timestamp
    return MultiTaskData(
        dense=torch.stack(dense, 1),
        sparse=sparse,
        num_embeddings=num_embeddings,
        tasks=list(MOVIELENS_TASKS),
        labels=torch.stack([(rating >= 4).float(), rating], 1),
        masks=torch.full((n, t), labelled, dtype=torch.bool),
        extras=extras,
        source=source,
    )


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


def _make_items(path: Path, rows: Sequence[_ItemRow], num_genres: int) -> _Items:
    """Sorts ``(line, id, title, year, genre indices)`` rows by id into an :class:`_Items`."""
    order = _sorted_ids(path, [r[1] for r in rows], [r[0] for r in rows], "item")
    rows = [rows[i] for i in order]
    years = np.array([np.nan if r[3] is None else r[3] for r in rows], dtype=np.float64)
    lengths = torch.tensor([len(r[4]) for r in rows], dtype=torch.int64)
    genres = SparseColumn(
        torch.tensor([g for r in rows for g in r[4]], dtype=torch.int64),
        torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]),
    )
    return _Items(
        ids=np.array([r[1] for r in rows], dtype=np.int64),
        titles=[r[2] for r in rows],
        year=np.where(np.isnan(years), 0.0, (years - 1990.0) / 20.0).astype(np.float32),
        genres=genres,
        num_genres=num_genres,
        path=path,
    )


def _read_items_100k(path: Path) -> _Items:
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


def _named_genre_items(path: Path, raw: Sequence[Tuple[int, int, str, str]]) -> _Items:
    """Items whose genres are ``|``-joined names (ml-1m, ml-20m, ml-25m); the genre
    vocabulary is the sorted set of names, ``(no genres listed)`` an empty bag."""
    names = [[g for g in genres.split("|") if g and g != "(no genres listed)"] for *_, genres in raw]
    vocab = {g: k for k, g in enumerate(sorted({g for gs in names for g in gs}))}
    rows = [
        (number, item, title, _year_from_title(title), [vocab[g] for g in gs])
        for (number, item, title, _), gs in zip(raw, names)
    ]
    return _make_items(path, rows, len(vocab))


def _read_items_1m(path: Path) -> _Items:
    rows = _split_lines(path, "::", 3, "latin-1")  # MovieID::Title::Genres
    return _named_genre_items(path, [(n, _int(path, n, f[0], "item id"), f[1], f[2]) for n, f in rows])


def _read_items_csv(path: Path) -> _Items:
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


def _make_users(path: Path, rows: Sequence[_UserRow]) -> _Users:
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
    return _Users(ids=np.array([r[1] for r in rows], dtype=np.int64), path=path, age=age, columns=columns)


def _read_users_100k(path: Path) -> _Users:
    rows = _split_lines(path, "|", 5, "latin-1")  # id|age|gender|occupation|zip
    return _make_users(
        path,
        [
            (n, _int(path, n, f[0], "user id"), _int(path, n, f[1], "age"), f[2], f[3], f[4])
            for n, f in rows
        ],
    )


def _read_users_1m(path: Path) -> _Users:
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
