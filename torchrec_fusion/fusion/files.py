"""Post-hoc fusion of the score files that separate runs write (``train --save-scores``).

A score file is a CSV with the key columns ``user`` and ``item`` (or ``row``), one
``label:<task>`` column per task (empty where the label is absent) and one
``score:<task>`` column per score. Files are joined on their keys; scores are
fused within each user's rows (rank aggregation needs lists) and the fused score
is evaluated against a binary label, globally (AUC) and per user over the listed
rows (NDCG@K, HR@K, MRR).
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from torchrec_fusion.evaluation.metrics import auc
from torchrec_fusion.evaluation.ranking import group_positions, ranking_metrics
from torchrec_fusion.fusion.rank_aggregation import RANK_FUSIONS, aggregate

FILE_FUSIONS = sorted(RANK_FUSIONS)  # every registered rank / score fusion (``weighted`` among them)


@dataclass
class ScoreFile:
    """One run's scores: ``keys`` ``[R, 2]`` (user, item), ``labels`` and ``scores`` by name."""

    path: str
    keys: torch.Tensor
    labels: Dict[str, torch.Tensor]
    scores: Dict[str, torch.Tensor]


def write_scores(path: str, keys: Dict[str, torch.Tensor], labels: Dict[str, torch.Tensor],
                 scores: Dict[str, torch.Tensor]) -> None:
    """Writes a score file (``keys``: ``user``/``item`` columns or ``row``)."""
    cols = {**keys, **{f"label:{t}": v for t, v in labels.items()},
            **{f"score:{t}": v for t, v in scores.items()}}
    n = {len(v) for v in cols.values()}
    if len(n) != 1:
        raise ValueError(f"score file columns differ in length: { {k: len(v) for k, v in cols.items()} }")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*(v.tolist() for v in cols.values())):
            w.writerow("" if isinstance(x, float) and math.isnan(x) else x for x in row)


def read_scores(path: str) -> ScoreFile:
    """Reads a score file; a missing file, missing columns or a non-numeric / non-finite score is
    an error naming the file (and line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no score file {path}")
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty score file")
    header, body = rows[0], rows[1:]
    if not any(h.startswith("score:") for h in header):
        raise ValueError(f"{path}: no score:<name> column in {header}")
    key_cols: List[str] = [c for c in ("user", "item") if c in header] or (["row"] if "row" in header else [])
    if not key_cols:
        raise ValueError(f"{path}: needs key columns user and item (or row)")
    cols: Dict[str, List[float]] = {h: [] for h in header}
    for line, r in enumerate(body, 2):
        if len(r) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(r)}")
        for h, x in zip(header, r):
            try:
                cols[h].append(float(x) if x != "" else math.nan)
            except ValueError:
                raise ValueError(f"{path}:{line}: column {h!r} value {x!r} is not a number") from None
            if h.startswith("score:") and not math.isfinite(cols[h][-1]):
                raise ValueError(f"{path}:{line}: score {h[6:]!r} is {x or 'empty'}; scores must be finite")
    keys = torch.stack([torch.tensor(cols[c], dtype=torch.float64).long() for c in key_cols], 1)
    if keys.size(1) == 1:
        keys = torch.cat([torch.zeros_like(keys), keys], 1)  # one group: ranking over all rows
    labels = {h[6:]: torch.tensor(v) for h, v in cols.items() if h.startswith("label:")}
    scores = {h[6:]: torch.tensor(v, dtype=torch.float64) for h, v in cols.items() if h.startswith("score:")}
    return ScoreFile(str(path), keys, labels, scores)


def align(files: Sequence[ScoreFile]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Joins files on their keys: (keys ``[R, 2]``, labels of the first file, scores named
    ``<file stem>:<score>``). The files must hold the same set of keys."""
    base = files[0]
    order0 = torch.argsort(base.keys[:, 0] * (int(base.keys[:, 1].max()) + 1) + base.keys[:, 1], stable=True)
    keys = base.keys[order0]
    labels = {k: v[order0] for k, v in base.labels.items()}
    scores: Dict[str, torch.Tensor] = {}
    stems = [Path(f.path).parent.name or Path(f.path).stem for f in files]
    if len(set(stems)) < len(stems):
        stems = [f"{i}" for i in range(len(files))]
    for f, stem in zip(files, stems):
        if f.keys.shape != base.keys.shape:
            raise ValueError(f"{f.path} has {len(f.keys)} rows, {base.path} has {len(base.keys)}: "
                             "score files must cover the same (user, item) rows")
        order = torch.argsort(f.keys[:, 0] * (int(f.keys[:, 1].max()) + 1) + f.keys[:, 1], stable=True)
        if not torch.equal(f.keys[order], keys):
            raise ValueError(f"{f.path} and {base.path} cover different (user, item) rows")
        scores.update({f"{stem}:{k}": v[order] for k, v in f.scores.items()})
    return keys, labels, scores


def _padded(values: torch.Tensor, row: torch.Tensor, col: torch.Tensor, shape: Tuple[int, int],
            fill: float) -> torch.Tensor:
    out = torch.full(shape, fill, dtype=values.dtype)
    out[row, col] = values
    return out


def fuse_scores(keys: torch.Tensor, scores: Dict[str, torch.Tensor], method: str,
                weights: Optional[Sequence[float]] = None, options: Optional[Mapping[str, Any]] = None
                ) -> torch.Tensor:
    """The fused score of each row: fusion ``method`` of
    :data:`~torchrec_fusion.fusion.rank_aggregation.RANK_FUSIONS` within each user's rows (``weighted``:
    a weighted sum of per-user z-scores), with ``weights`` where it takes them and its ``options``
    (rrf: ``{"k": 60.0}``)."""
    row, col, shape = group_positions(keys[:, 0])
    lists = [_padded(s, row, col, shape, math.nan) for s in scores.values()]
    return aggregate(method, lists, weights, options)[row, col]


def evaluate_scores(keys: torch.Tensor, label: torch.Tensor, scores: Dict[str, torch.Tensor],
                    k: int = 10) -> Dict[str, Dict[str, float]]:
    """Per score: AUC against ``label`` and per-user NDCG@k / HR@k / MRR over the listed rows."""
    keep = ~label.isnan()
    keys, label = keys[keep], label[keep]
    row, col, shape = group_positions(keys[:, 0])
    positives = _padded(label, row, col, shape, 0.0) == 1
    out = {}
    for name, s in scores.items():
        s = s[keep]
        m = ranking_metrics(_padded(s, row, col, shape, math.nan), positives, (k,))
        out[name] = {"auc": auc(s, label), **m.mean, "users": m.num_users}
    return out


def fuse_files(paths: Sequence[str], method: str, label: str, select: Optional[Sequence[str]] = None,
               weights: Optional[Sequence[float]] = None, k: int = 10, options: Optional[Mapping[str, Any]] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Dict[str, float]]]:
    """Reads, joins and fuses score files: (keys, fused score, metrics of each score and ``fused``);
    ``options`` are the fusion method's (see :func:`fuse_scores`)."""
    keys, labels, scores = align([read_scores(p) for p in paths])
    if label not in labels:
        raise ValueError(f"no label:{label} column in {paths[0]}; labels are {sorted(labels)}")
    if select:
        unknown = [s for s in select if s not in scores]
        if unknown:
            raise ValueError(f"unknown score(s) {unknown}; the files hold {sorted(scores)}")
        scores = {s: scores[s] for s in select}
    if len(scores) < 2:
        raise ValueError(f"fusion needs at least two scores, got {sorted(scores)}")
    fused = fuse_scores(keys, scores, method, weights, options)
    report = evaluate_scores(keys, labels[label], {**scores, "fused": fused}, k)
    return keys, fused, report
