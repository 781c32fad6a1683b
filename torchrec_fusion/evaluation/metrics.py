"""Exact per-task metrics over a whole evaluation split (not per-batch approximations): the reference
the streaming metrics (:mod:`torchrec_fusion.evaluation.streaming`) are tested against."""

import math
from typing import Dict, Sequence

import torch

from torchrec_fusion.tasks import TaskKind, TaskSpec

EPS = 1e-7  # predictions are clamped to [EPS, 1 - EPS] in log-loss (and NE)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores given half credit).

    Example::

        assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0., 0., 1., 1.])) == 0.75
    """
    scores, labels = scores.double().flatten(), labels.double().flatten()
    n_pos = float(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    # average rank of each run of tied scores
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = avg_rank[inverse]
    pos_rank_sum = float((ranks * labels[order]).sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(probs: torch.Tensor, labels: torch.Tensor, eps: float = EPS) -> float:
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def normalized_entropy(ce_sum: float, count: float, positives: float) -> float:
    """NE as TorchRec defines it (``torchrec.metrics.ne.compute_ne``): the summed cross-entropy over
    that of always predicting the base rate ``positives / count``; below 1 beats the base rate.
    NaN when every label is the same (the base rate then has no entropy).

    Example::

        assert normalized_entropy(0.0, 4, 2) == 0.0
        assert abs(normalized_entropy(4 * math.log(2), 4, 2) - 1.0) < 1e-12
    """
    q = positives / count if count else math.nan
    if not 0 < q < 1:
        return math.nan
    return ce_sum / (-count * (q * math.log(q) + (1 - q) * math.log(1 - q)))


def rmse(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((preds.double() - labels.double()) ** 2).mean().sqrt())


def task_metrics(tasks: Sequence[TaskSpec], preds: Dict[str, torch.Tensor],
                 labels: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Per task: AUC, log-loss, NE and calibration (sum of predictions over sum of labels; binary),
    MSE, RMSE and MAE (regression), accuracy and cross-entropy (multiclass). Rows whose label is NaN
    (absent) are skipped."""
    out: Dict[str, Dict[str, float]] = {}
    for t in tasks:
        y, p = labels[t.name], preds[t.name]
        keep = ~torch.isnan(y)
        y, p = y[keep], p[keep]
        m: Dict[str, float] = {"count": int(keep.sum())}
        if y.numel() == 0:
            out[t.name] = m
            continue
        if t.kind == TaskKind.BINARY:
            ll, pos = log_loss(p, y), float(y.double().sum())
            m.update(auc=auc(p, y), logloss=ll, ne=normalized_entropy(ll * y.numel(), y.numel(), pos),
                     calibration=float(p.double().sum()) / pos if pos > 0 else math.nan)
        elif t.kind == TaskKind.REGRESSION:
            r = rmse(p, y)
            m.update(mse=r * r, rmse=r, mae=float((p.double() - y.double()).abs().mean()))
        else:
            idx = y.long()
            m.update(accuracy=float((p.argmax(1) == idx).double().mean()),
                     cross_entropy=float(-p.double().clamp_min(1e-12).log().gather(1, idx[:, None]).mean()))
        out[t.name] = m
    return out
