"""Exact per-task metrics over a whole evaluation split (not per-batch approximations)."""

from typing import Dict, Sequence

import torch

from torchrec_fusion.tasks import TaskKind, TaskSpec


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


def log_loss(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def rmse(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((preds.double() - labels.double()) ** 2).mean().sqrt())


def task_metrics(tasks: Sequence[TaskSpec], preds: Dict[str, torch.Tensor],
                 labels: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Per task: AUC and log-loss (binary), RMSE and MAE (regression), accuracy and
    cross-entropy (multiclass). Rows whose label is NaN (absent) are skipped."""
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
            m.update(auc=auc(p, y), logloss=log_loss(p, y))
        elif t.kind == TaskKind.REGRESSION:
            m.update(rmse=rmse(p, y), mae=float((p.double() - y.double()).abs().mean()))
        else:
            idx = y.long()
            m.update(accuracy=float((p.argmax(1) == idx).double().mean()),
                     cross_entropy=float(-p.double().clamp_min(1e-12).log().gather(1, idx[:, None]).mean()))
        out[t.name] = m
    return out
