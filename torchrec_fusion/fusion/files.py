"""Post-hoc fusion of the score files that separate runs write (``train --save-scores``).

A score file is a CSV with the key columns ``user`` and ``item`` and, optionally, ``row`` (integer ids, read
exactly as int64), or ``row`` alone (then all its rows form one list), one ``label:<task>`` column per task
(empty where the label is absent) and one ``score:<task>`` column per score; other columns are ignored.
``row`` is the row of the evaluated split (:func:`write_scores` numbers the rows): it tells apart repeated
impressions of one (user, item) pair. A key, ``row`` where there is one, else (user, item), appears at most
once per file; files with rows must agree on each row's (user, item) (the same split).

Files are joined on their keys as ranx joins runs: a row one file lacks is a candidate that run did not
return (NaN, "not listed", in :mod:`~torchrec_fusion.fusion.rank_aggregation`: no term in RRF / CombSUM,
left out of MAX/MIN/MED/ANZ, Borda's spread points). Scores are fused within each user's rows (rank
aggregation needs lists) and evaluated against a binary label, globally (AUC) and per user (NDCG@K, HR@K,
recall@K, MRR), each score on the same rows: a positive a run did not return is a miss for it (AUC: tied
below everything it returned).
"""

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from torchrec_fusion.evaluation.metrics import auc
from torchrec_fusion.evaluation.ranking import _hr, _mrr, _ndcg, _per_user, _recall, group_positions, sorted_relevance
from torchrec_fusion.fusion.rank_aggregation import RANK_FUSIONS, aggregate

FILE_FUSIONS = sorted(RANK_FUSIONS)  # every registered rank / score fusion (``weighted`` among them)
KEY_COLUMNS = ("user", "item", "row")
_ID = re.compile(r"[+-]?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class ScoreFile:
    """One run's scores: ``keys`` int64 ``[R, 3]`` (user, item, row; 0 in a column the file lacks: a file
    keyed by row alone is one list), ``labels`` and ``scores`` (float64) by name, and its key columns."""

    path: str
    keys: torch.Tensor
    labels: Dict[str, torch.Tensor]
    scores: Dict[str, torch.Tensor]
    key_columns: Tuple[str, ...] = ("user", "item")


def write_scores(path: str, keys: Dict[str, torch.Tensor], labels: Dict[str, torch.Tensor],
                 scores: Dict[str, torch.Tensor], number_rows: bool = True) -> None:
    """Writes a score file (``keys``: ``user``/``item`` columns and/or ``row``), published by rename. With
    ``number_rows`` and no ``row`` key, ``row`` is each row's position (the rows are those of a split)."""
    if number_rows and keys and "row" not in keys:
        keys = {**keys, "row": torch.arange(len(next(iter(keys.values()))))}
    cols = {**keys, **{f"label:{t}": v for t, v in labels.items()},
            **{f"score:{t}": v for t, v in scores.items()}}
    n = {len(v) for v in cols.values()}
    if len(n) != 1:
        raise ValueError(f"score file columns differ in length: { {k: len(v) for k, v in cols.items()} }")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*(v.tolist() for v in cols.values())):
            w.writerow("" if isinstance(x, float) and math.isnan(x) else x for x in row)
    os.replace(path + ".tmp", path)


def _key_columns(path: str, header: List[str]) -> Tuple[str, ...]:
    """The key columns of a header, checked with its score columns; errors name the file."""
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ValueError(f"{path}: column(s) {repeated} appear more than once")
    if not any(h.startswith("score:") for h in header):
        raise ValueError(f"{path}: no score:<name> column in {header}")
    if "score:" in header or "label:" in header:
        raise ValueError(f"{path}: a score: or label: column without a name")
    if {"user", "item"} <= set(header):
        return ("user", "item", "row") if "row" in header else ("user", "item")
    if "user" in header or "item" in header:
        has, lacks = ("user", "item") if "user" in header else ("item", "user")
        raise ValueError(f"{path}: has a {has!r} column but no {lacks!r} column; score files are keyed by "
                         "user and item (or by row alone: one list)")
    if "row" in header:
        return ("row",)
    raise ValueError(f"{path}: needs key columns user and item (or row)")


def _cell(path: str, line: int, column: str, x: str) -> float:
    """One value: an id as an exact int64, a label (empty = absent, NaN) or a finite score."""
    where = f"{path}:{line}: column {column!r}"
    if not column.startswith(("label:", "score:")):
        if not _ID.fullmatch(x.strip()) or not _INT64[0] <= int(x) <= _INT64[1]:
            raise ValueError(f"{where} value {x!r} is not an integer id (int64)")
        return int(x)
    try:
        v = float(x) if x != "" else math.nan
    except ValueError:
        raise ValueError(f"{where} value {x!r} is not a number") from None
    if column.startswith("score:") and not math.isfinite(v):
        raise ValueError(f"{path}:{line}: score {column[6:]!r} is {x or 'empty'}; scores must be finite")
    return v


def read_scores(path: str) -> ScoreFile:
    """Reads a score file. A missing file, a header without rows, missing or repeated columns, a
    non-integer id, a repeated key, a non-numeric label or a non-finite score is an error naming the file
    (and line)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no score file {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty score file")
        key_cols = _key_columns(path, header)
        used = [(i, h) for i, h in enumerate(header) if h in key_cols or h.startswith(("label:", "score:"))]
        cols: Dict[str, List[Any]] = {h: [] for _, h in used}
        seen: Dict[Tuple[Any, ...], int] = {}
        for r in reader:
            line = reader.line_num
            if not r:
                continue
            if len(r) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(r)}")
            for i, h in used:
                cols[h].append(_cell(path, line, h, r[i]))
            key = (cols["row"][-1],) if "row" in cols else (cols["user"][-1], cols["item"][-1])
            if key in seen:
                what = f"row {key[0]}" if len(key) == 1 else f"(user, item) {key}"
                raise ValueError(f"{path}:{line}: {what} repeats line {seen[key]}; a key appears once per file"
                                 + ("" if len(key) == 1 else " (a row column tells repeated impressions apart)"))
            seen[key] = line
    if not seen:
        raise ValueError(f"{path}: a header but no rows")
    zeros = [0] * len(seen)
    keys = torch.tensor([cols.get(c, zeros) for c in KEY_COLUMNS], dtype=torch.int64).T.contiguous()
    labels = {h[6:]: torch.tensor(v, dtype=torch.float64) for h, v in cols.items() if h.startswith("label:")}
    scores = {h[6:]: torch.tensor(v, dtype=torch.float64) for h, v in cols.items() if h.startswith("score:")}
    return ScoreFile(str(path), keys, labels, scores, key_cols)


def key_text(key: torch.Tensor, key_columns: Sequence[str]) -> str:
    """A row's key ``[3]`` as its file names it, e.g. ``user 1, item 10``.

    Example::

        assert key_text(torch.tensor([1, 10, 0]), ("user", "item")) == "user 1, item 10"
    """
    return ", ".join(f"{c} {v}" for c, v in zip(KEY_COLUMNS, key.tolist()) if c in key_columns)


def _merge_label(out: torch.Tensor, at: torch.Tensor, v: torch.Tensor, name: str, keys: torch.Tensor,
                 f: ScoreFile, first: str) -> None:
    """Fills ``out[at]`` with ``v`` where it is absent; a different value already there is an error."""
    have = out[at]
    clash = ~have.isnan() & ~v.isnan() & (have != v)
    if clash.any():
        i = int(clash.nonzero()[0])
        raise ValueError(f"label:{name} of {key_text(keys[at[i]], f.key_columns)} is {v[i].item()} in {f.path} "
                         f"but {have[i].item()} in {first}")
    out[at] = torch.where(have.isnan(), v, have)


def _check_rows(files: Sequence[ScoreFile], keys: torch.Tensor) -> None:
    """Each row number must name one (user, item) in all files (files scoring the same split)."""
    rows, counts = torch.unique(keys[:, 2], return_counts=True)
    if (counts > 1).any():
        row = int(rows[counts > 1][0])
        clash = keys[keys[:, 2] == row][:2]
        where = [next(f.path for f in files if (f.keys == k).all(1).any()) for k in clash]
        raise ValueError(f"row {row} is (user, item) {tuple(clash[0, :2].tolist())} in {where[0]} but "
                         f"{tuple(clash[1, :2].tolist())} in {where[1]}: the files score different splits")


def align(files: Sequence[ScoreFile]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Joins files on their keys: (keys ``[R, 3]``, the union of the files' rows in (user, item, row) order;
    labels, merged over the files, which must agree; scores named ``<run folder>:<score>``, NaN where that
    file lacks the row: the run did not return it)."""
    for f in files[1:]:
        if f.key_columns != files[0].key_columns:
            raise ValueError(f"{f.path} is keyed by {f.key_columns}, {files[0].path} by {files[0].key_columns}")
    keys, inverse = torch.unique(torch.cat([f.keys for f in files]), dim=0, return_inverse=True)
    if len(files[0].key_columns) == 3:
        _check_rows(files, keys)
    at = inverse.split([len(f.keys) for f in files])
    stems = [Path(f.path).parent.name or Path(f.path).stem for f in files]
    if len(set(stems)) < len(stems):
        stems = [f"{i}" for i in range(len(files))]
    labels: Dict[str, torch.Tensor] = {}
    scores: Dict[str, torch.Tensor] = {}
    first: Dict[str, str] = {}
    for f, stem, idx in zip(files, stems, at):
        for name, v in f.labels.items():
            out = labels.setdefault(name, torch.full((len(keys),), math.nan, dtype=torch.float64))
            _merge_label(out, idx, v, name, keys, f, first.setdefault(name, f.path))
        for name, v in f.scores.items():
            scores[f"{stem}:{name}"] = torch.full((len(keys),), math.nan, dtype=torch.float64).index_put_((idx,), v)
    return keys, labels, scores


def _padded(values: torch.Tensor, row: torch.Tensor, col: torch.Tensor, shape: Tuple[int, int],
            fill: float) -> torch.Tensor:
    out = torch.full(shape, fill, dtype=values.dtype)
    out[row, col] = values
    return out


def fuse_scores(keys: torch.Tensor, scores: Dict[str, torch.Tensor], method: str,
                weights: Optional[Sequence[float]] = None, options: Optional[Mapping[str, Any]] = None,
                norm: str = "auto") -> torch.Tensor:
    """The fused score of each row: fusion ``method`` of
    :data:`~torchrec_fusion.fusion.rank_aggregation.RANK_FUSIONS` within each user's rows (``weighted``:
    a weighted sum of per-user z-scores), with ``weights`` where it takes them, its ``options`` (rrf:
    ``{"k": 60.0}``) and ``norm`` (``auto``: the method's own; ``none``: raw scores). NaN = not returned."""
    row, col, shape = group_positions(keys[:, 0])
    lists = [_padded(s, row, col, shape, math.nan) for s in scores.values()]
    return aggregate(method, lists, weights, options, norm)[row, col]


def _first_hit(rel: torch.Tensor, npos: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    """Reciprocal rank of the first positive; 0 when the score listed none of the user's positives."""
    return torch.where((rel > 0).any(-1), _mrr(rel, npos, k), 0.0)


def evaluate_scores(keys: torch.Tensor, label: torch.Tensor, scores: Dict[str, torch.Tensor],
                    k: int = 10) -> Dict[str, Dict[str, float]]:
    """Per score, on the rows with a label: AUC (rows the score lacks, NaN, tied lowest) and per-user
    HR@k, NDCG@k, recall@k, MRR (a positive the score lacks is a miss); ``rows``: the rows it scores."""
    keep = ~label.isnan()
    keys, label = keys[keep], label[keep]
    row, col, shape = group_positions(keys[:, 0])
    positives = _padded(label, row, col, shape, 0.0) == 1
    npos = positives.sum(-1)
    out = {}
    for name, s in scores.items():
        s = s[keep]
        rel, _ = sorted_relevance(_padded(s, row, col, shape, math.nan), positives)
        m = {f"{n}@{k}": _per_user(fn, rel, npos, k)[1]
             for n, fn in (("hr", _hr), ("ndcg", _ndcg), ("recall", _recall))}
        m["mrr"] = _per_user(_first_hit, rel, npos, None)[1]
        out[name] = {"auc": auc(s.nan_to_num(-math.inf), label), **m, "users": int((npos > 0).sum()),
                     "rows": int((~s.isnan()).sum())}
    return out


def _selected(scores: Dict[str, torch.Tensor], select: Optional[Sequence[str]],
              weights: Optional[Sequence[float]]) -> Dict[str, torch.Tensor]:
    if select:
        unknown = [s for s in select if s not in scores]
        if unknown:
            raise ValueError(f"unknown score(s) {unknown}; the files hold {sorted(scores)}")
        if len(set(select)) < len(select):
            raise ValueError(f"a score is selected twice: {list(select)}")
        scores = {s: scores[s] for s in select}
    if len(scores) < 2:
        raise ValueError(f"fusion needs at least two scores, got {sorted(scores)}")
    if weights is not None and len(weights) != len(scores):
        raise ValueError(f"{len(weights)} weights for {len(scores)} scores {list(scores)}: give one per score")
    return scores


class FusedFiles(NamedTuple):
    """What :func:`fuse_files` gives: the rows' keys ``[R, 3]`` (user, item, row), their fused score ``[R]``,
    the metrics of each score and ``fused``, and the files' key columns (the others are 0 in ``keys``;
    ``("row",)``: one list)."""

    keys: torch.Tensor
    fused: torch.Tensor
    report: Dict[str, Dict[str, float]]
    key_columns: Tuple[str, ...]


def fuse_files(paths: Sequence[str], method: str, label: str, select: Optional[Sequence[str]] = None,
               weights: Optional[Sequence[float]] = None, k: int = 10, options: Optional[Mapping[str, Any]] = None,
               norm: str = "auto") -> FusedFiles:
    """Reads, joins and fuses score files over the rows at least one selected score lists; ``options`` and
    ``norm`` as in :func:`fuse_scores`."""
    if k < 1:
        raise ValueError(f"the cutoff k must be >= 1, got {k}")
    files = [read_scores(p) for p in paths]
    keys, labels, scores = align(files)
    if label not in labels:
        raise ValueError(f"no label:{label} column in {list(paths)}; labels are {sorted(labels)}")
    y = labels[label]
    bad = ~y.isnan() & (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"label:{label} must be 0 or 1 (or empty), got {y[bad][0].item()} at "
                         f"{key_text(keys[bad][0], files[0].key_columns)}")
    scores = _selected(scores, select, weights)
    listed = ~torch.stack([s.isnan() for s in scores.values()]).all(0)
    keys, y, scores = keys[listed], y[listed], {n: s[listed] for n, s in scores.items()}
    if norm == "logit":
        outside = [n for n, s in scores.items() if ((s < 0) | (s > 1)).any()]
        if outside:
            raise ValueError(f"norm 'logit' takes probabilities; {outside} have scores outside [0, 1]")
    fused = fuse_scores(keys, scores, method, weights, options, norm)
    return FusedFiles(keys, fused, evaluate_scores(keys, y, {**scores, "fused": fused}, k), files[0].key_columns)
