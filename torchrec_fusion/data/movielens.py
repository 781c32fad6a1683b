"""MovieLens readers (ml-100k, ml-1m, ml-20m, ml-25m) producing :class:`MultiTaskData`.

Every variant gives the same tasks, ``like`` (binary, rating >= 4) and ``rating``
(regression), and the id features ``user``, ``item`` and ``genres`` (a bag);
variants with a user file add ``age``, ``gender``, ``occupation`` and ``zip``.
Ratings files are parsed with vectorised numpy (ml-25m has 25M lines); a Python
scan runs only when that fails, to name the first malformed line
(:mod:`torchrec_fusion.data.movielens_files`).

Example::

    ml = load_movielens("../shared/data/ml-100k")          # u1.base / u1.test
    ml.train.num_embeddings["item"] == ml.num_items == 1682
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn, random_split_rows
from torchrec_fusion.data.movielens_files import (
    ItemTable,
    UserTable,
    lookup_ids,
    read_items_1m,
    read_items_100k,
    read_items_csv,
    read_ratings,
    read_users_1m,
    read_users_100k,
    unique_ids,
)
from torchrec_fusion.data.types import LoadedData
from torchrec_fusion.tasks import TaskKind, TaskSpec

__all__ = ["MovieLens", "MovieLensReader", "load_movielens", "MOVIELENS_TASKS", "CANONICAL_SPLITS"]

MOVIELENS_TASKS: Tuple[TaskSpec, ...] = (TaskSpec("like", TaskKind.BINARY), TaskSpec("rating", TaskKind.REGRESSION))
CANONICAL_SPLITS: Tuple[str, ...] = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

# files that identify a variant; ml-20m and ml-25m share one layout
_LAYOUTS: Dict[str, Tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
}
# parsed ratings of one file: [N, 4] values (user, item, rating, timestamp), 1-based line numbers, the file
_Ratings = Tuple[np.ndarray, np.ndarray, Path]


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
    _items: ItemTable = field(repr=False)
    _users: UserTable = field(repr=False)

    @property
    def user_ids(self) -> torch.Tensor:
        """The MovieLens id of each user index (ascending)."""
        return torch.as_tensor(self._users.ids)

    @property
    def item_ids(self) -> torch.Tensor:
        """The MovieLens id of each item index (ascending)."""
        return torch.as_tensor(self._items.ids)

    def candidates(self, user: torch.Tensor, item: torch.Tensor) -> MultiTaskData:
        """Rows for arbitrary (user index, item index) pairs, with the features of the
        ratings rows and no labels (masks all False): candidates to score and rank."""
        return _rows(user.long(), item.long(), self._items, self._users, "candidates")


class MovieLensReader:
    """Dataset ``movielens``: :func:`load_movielens` of ``data_dir`` with ``split``; a random
    split is seeded by the run's seed."""

    @dataclass(frozen=True)
    class Options:
        """``data_dir``: the folder of the official files (required); ``split``: as in :func:`load_movielens`."""

        data_dir: Optional[str] = field(default=None, metadata={
            "help": "the folder of the dataset's files: MovieLens' official files, or Criteo's TSV file(s)"})
        split: str = field(default="auto", metadata={
            "help": "auto (ml-100k: u1.base/u1.test, else random), u1..u5, ua, ub (a canonical ml-100k split) or "
                    "random (a seeded 80/20 split)"})

    @staticmethod
    def load(options: "MovieLensReader.Options", seed: int) -> LoadedData:
        if not options.data_dir:
            raise ValueError("--dataset movielens needs --data-dir, the folder of the official MovieLens files")
        ml = load_movielens(options.data_dir, split=options.split, seed=seed)
        info = {"dataset": ml.variant, "data_dir": str(options.data_dir), "num_items": ml.num_items}
        return LoadedData(ml.train, ml.test, info, ml.item_titles, ml.candidates, ml.user_ids, ml.item_ids)


def load_movielens(
    data_dir: Union[str, "os.PathLike[str]"],
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
    canonical, rating_files = _rating_files(root, variant, split)
    items, users, ratings, variant = _read_variant(root, variant, rating_files)
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


def _rating_files(root: Path, variant: str, split: Optional[str]) -> Tuple[bool, List[str]]:
    """Whether ``split`` is a canonical ml-100k split, and the ratings files to read (base and
    test of that split, or the variant's one ratings file); checks that every file is there."""
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
    for name in [*_LAYOUTS[variant][1:], *rating_files]:
        if not (root / name).is_file():
            what = f"split {split_name!r} of {variant}" if canonical and name in rating_files else variant
            raise FileNotFoundError(f"{what} in {root}: missing file {root / name}")
    return canonical, rating_files


def _read_variant(root: Path, variant: str,
                  rating_files: List[str]) -> Tuple[ItemTable, UserTable, List[_Ratings], str]:
    """The items, users and ratings of ``variant``, and the variant (ml-20m or ml-25m told apart)."""
    if variant == "ml-100k":
        items, users = read_items_100k(root / "u.item"), read_users_100k(root / "u.user")
        return items, users, [read_ratings(root / f, "\t") for f in rating_files], variant
    if variant == "ml-1m":
        items, users = read_items_1m(root / "movies.dat"), read_users_1m(root / "users.dat")
        return items, users, [read_ratings(root / "ratings.dat", "::")], variant
    items = read_items_csv(root / "movies.csv")
    ratings = [read_ratings(root / "ratings.csv", ",", header=True)]
    raw_users = ratings[0][0][:, 0].astype(np.int64)
    users = UserTable(ids=unique_ids(raw_users), path=None)
    return items, users, ratings, _variant_20m_or_25m(root, len(raw_users))


def _variant_20m_or_25m(root: Path, num_ratings: int) -> str:
    name = root.resolve().name.lower()
    if "25m" in name:
        return "ml-25m"
    if "20m" in name:
        return "ml-20m"
    return "ml-25m" if num_ratings > 22_000_000 else "ml-20m"


# ----------------------------------------------------------------------------- rows


def _build(
    vals: np.ndarray, lines: np.ndarray, path: Path, items: ItemTable, users: UserTable, source: str
) -> MultiTaskData:
    """Turns parsed rating rows into a :class:`MultiTaskData`."""
    raw_user, raw_item = vals[:, 0].astype(np.int64), vals[:, 1].astype(np.int64)
    user = torch.from_numpy(lookup_ids(users.ids, raw_user, "user", users.path, path, lines))
    item = torch.from_numpy(lookup_ids(items.ids, raw_item, "item", items.path, path, lines))
    rating = torch.from_numpy(vals[:, 2].astype(np.float32))
    return _rows(user, item, items, users, source, rating, torch.from_numpy(vals[:, 3].astype(np.int64)))


def _rows(user: torch.Tensor, item: torch.Tensor, items: ItemTable, users: UserTable, source: str,
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
    if users.columns is not None and users.age is not None:  # a user file: both are there
        for name, (index, size) in users.columns.items():
            sparse[name] = SparseColumn(torch.from_numpy(index)[user])
            num_embeddings[name] = max(size, 1)
        dense.append(torch.from_numpy((users.age / 50.0).astype(np.float32))[user])
    n, t = len(user), len(MOVIELENS_TASKS)
    labelled = rating is not None
    rating = torch.zeros(n) if rating is None else rating
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
