"""Streaming per-task metrics: a few sums per task, updated batch by batch on the device where the
predictions are, then summed over the ranks once (:meth:`StreamingMetrics.state` is one flat float64
tensor: one ``all_reduce``, done by the caller) instead of gathering every prediction on one rank.

Binary tasks: AUC from two histograms of the prediction's logit (positives, negatives;
:data:`AUC_BINS` equal bins over the clamped logit), NE, log-loss and calibration; regression: MSE,
RMSE, MAE; multiclass: accuracy and cross-entropy; each with its ``count`` of labelled rows. Rows
whose label is NaN (absent, or padding) are skipped, as :func:`~.metrics.task_metrics` does, and
every metric but the AUC is the same sum as there. The binned AUC gives every (positive, negative)
pair inside one bin half credit; the exact AUC gives it 0, 1/2 or 1, so the two differ by at most
:meth:`StreamingMetrics.auc_error_bound` (half the share of such pairs). Measured on ml-100k's 20,000
test rows over the 25 epochs of ``configs/movielens-100k.yaml``: within 3e-7 of the exact AUC (the bound,
3e-4, also counts tied bf16 predictions, which cost nothing); predictions crowded into a few bins (an
untrained model) widen both.

Why not TorchRec's ``RecMetricModule``: its AUC keeps every prediction in its state and gathers
them all at compute time (the cost this module removes), and it has no multiclass accuracy or
cross-entropy. Why not ``torchmetrics``: its binned
``BinaryAUROC`` compares each prediction with every threshold (rows x bins work per batch), and
each metric object synchronises its own states. NE follows TorchRec's definition
(``torchrec.metrics.ne.compute_ne``: the cross-entropy over that of predicting the base rate).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from torchrec_fusion.evaluation.metrics import EPS, normalized_entropy
from torchrec_fusion.tasks import TaskKind, TaskSpec

AUC_BINS = 1 << 16  # per binary task: 2 x 65536 float64 (1 MiB); bins 0.0005 wide in logit
LOGIT_MAX = math.log((1 - EPS) / EPS)  # the logit of a prediction clamped as log-loss clamps it

_SUMS = {TaskKind.BINARY: 4, TaskKind.REGRESSION: 3, TaskKind.MULTICLASS: 3}  # the scalar sums per kind


class StreamingMetrics:
    """Per-task metric states over any number of batches (and, summed, ranks).

    Example::

        m = StreamingMetrics([TaskSpec("click"), TaskSpec("rating", "regression")])
        m.update({"click": torch.tensor([0.2, 0.7, 0.9]), "rating": torch.tensor([3.0, 4.0, 1.0])},
                 {"click": torch.tensor([0.0, 1.0, float("nan")]), "rating": torch.tensor([3.0, 5.0, 1.0])})
        out = m.compute()
        assert out["click"]["auc"] == 1.0 and out["click"]["count"] == 2
        assert abs(out["rating"]["mse"] - 1 / 3) < 1e-12
    """

    def __init__(self, tasks: Sequence[TaskSpec], device: Optional[torch.device] = None,
                 bins: int = AUC_BINS) -> None:
        self.tasks, self.bins = list(tasks), bins
        self._slices: Dict[str, Tuple[int, int]] = {}
        start = 0
        for t in self.tasks:
            size = _SUMS[t.kind] + (2 * bins if t.kind == TaskKind.BINARY else 0)
            self._slices[t.name] = (start, start + size)
            start += size
        self._state = torch.zeros(start, dtype=torch.float64, device=device)

    def state(self) -> torch.Tensor:
        """Every task's sums in one flat float64 tensor (sum it over ranks in place to combine them)."""
        return self._state

    def _of(self, name: str) -> torch.Tensor:
        lo, hi = self._slices[name]
        return self._state[lo:hi]

    @torch.no_grad()
    def update(self, preds: Dict[str, torch.Tensor], labels: Dict[str, torch.Tensor]) -> None:
        """Adds one batch: binary and regression predictions ``[B]`` (probabilities for binary),
        multiclass class probabilities ``[B, C]``; labels ``[B]``, NaN where absent."""
        for t in self.tasks:
            y = labels[t.name].to(self._state.device, torch.float64).flatten()
            keep = ~torch.isnan(y)
            p = preds[t.name].to(self._state.device, torch.float64)
            p, y = (p.reshape(y.numel(), -1) if t.kind == TaskKind.MULTICLASS else p.flatten())[keep], y[keep]
            s = self._of(t.name)
            if t.kind == TaskKind.BINARY:
                self._update_binary(s, p, y)
            elif t.kind == TaskKind.REGRESSION:
                d = p - y
                s[:3] += torch.stack([d.new_tensor(float(y.numel())), (d * d).sum(), d.abs().sum()])
            else:
                idx = y.long()
                ce = -p.clamp_min(1e-12).log().gather(1, idx[:, None]).sum()
                s[:3] += torch.stack([ce.new_tensor(float(y.numel())), (p.argmax(1) == idx).double().sum(), ce])

    def _update_binary(self, s: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> None:
        p = p.clamp(EPS, 1 - EPS)
        ce = -(y * p.log() + (1 - y) * (1 - p).log()).sum()
        s[:4] += torch.stack([ce.new_tensor(float(y.numel())), y.sum(), p.sum(), ce])
        at = ((torch.logit(p) + LOGIT_MAX) * (self.bins / (2 * LOGIT_MAX))).long().clamp_(0, self.bins - 1)
        s[4:].index_add_(0, at + (y > 0.5).long() * self.bins, torch.ones_like(p))  # O(rows), not O(bins)

    def _histograms(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (positives, negatives) per logit bin of binary task ``name``."""
        h = self._of(name)[4:].cpu()
        return h[self.bins:], h[:self.bins]

    def auc_error_bound(self, name: str) -> float:
        """The most the binned AUC of binary task ``name`` can differ from the exact one: half the
        share of (positive, negative) pairs that share a bin."""
        pos, neg = self._histograms(name)
        n_pairs = float(pos.sum()) * float(neg.sum())
        return 0.5 * float((pos * neg).sum()) / n_pairs if n_pairs else math.nan

    def _auc(self, name: str) -> float:
        pos, neg = self._histograms(name)
        n_pairs = float(pos.sum()) * float(neg.sum())
        if not n_pairs:
            return math.nan
        below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
        return float((pos * (below + 0.5 * neg)).sum()) / n_pairs

    def compute(self) -> Dict[str, Dict[str, float]]:
        """Per task, the metrics :func:`~.metrics.task_metrics` reports, with the same names."""
        out: Dict[str, Dict[str, float]] = {}
        for t in self.tasks:
            sums: List[float] = self._of(t.name)[:_SUMS[t.kind]].tolist()
            n = sums[0]
            m: Dict[str, float] = {"count": int(n)}
            if n > 0 and t.kind == TaskKind.BINARY:
                _, pos, sum_p, ce = sums
                m.update(auc=self._auc(t.name), logloss=ce / n, ne=normalized_entropy(ce, n, pos),
                         calibration=sum_p / pos if pos > 0 else math.nan)
            elif n > 0 and t.kind == TaskKind.REGRESSION:
                m.update(mse=sums[1] / n, rmse=math.sqrt(sums[1] / n), mae=sums[2] / n)
            elif n > 0:
                m.update(accuracy=sums[1] / n, cross_entropy=sums[2] / n)
            out[t.name] = m
        return out
