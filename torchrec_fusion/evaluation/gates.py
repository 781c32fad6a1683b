"""Gate introspection: how each task spreads its weight over the experts."""

import math
from typing import Dict, Optional

import torch


class GateStats:
    """Accumulates, per task, the mean gate weight on each expert and the mean
    entropy of the gate rows; :meth:`result` flags gates collapsed onto one expert.

    Example::

        stats = GateStats()
        stats.update({"like": torch.tensor([[0.9, 0.1], [0.7, 0.3]])})
        r = stats.result()["like"]
        assert r["mean_weight"] == [0.8, 0.2] and r["dominant_expert"] == 0
    """

    def __init__(self, collapse_share: float = 0.9) -> None:
        self.collapse_share = collapse_share
        self.weight_sum: Dict[str, torch.Tensor] = {}
        self.entropy_sum: Dict[str, torch.Tensor] = {}
        self.rows: Dict[str, torch.Tensor] = {}

    def update(self, gates: Optional[Dict[str, torch.Tensor]], keep: Optional[torch.Tensor] = None) -> None:
        """Adds a batch of gate rows ``{task: [B, E]}``; ``keep`` (``[B]`` bool) drops padding rows."""
        for task, w in (gates or {}).items():
            w = w.detach().double()
            if keep is not None:
                w = w[keep]
            ent = -(w * w.clamp_min(1e-12).log()).sum(1)
            for acc, v in ((self.weight_sum, w.sum(0)), (self.entropy_sum, ent.sum()),
                           (self.rows, torch.tensor(float(w.size(0)), dtype=torch.float64))):
                acc[task] = acc[task] + v if task in acc else v

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The sums as one flat tensor per task, for an all-reduce across ranks."""
        return {t: torch.cat([self.weight_sum[t], self.entropy_sum[t].view(1), self.rows[t].view(1)])
                for t in self.weight_sum}

    def load_tensors(self, flat: Dict[str, torch.Tensor]) -> None:
        for t, v in flat.items():
            self.weight_sum[t], self.entropy_sum[t], self.rows[t] = v[:-2], v[-2], v[-1]

    def result(self) -> Dict[str, Dict[str, object]]:
        out: Dict[str, Dict[str, object]] = {}
        for t, s in self.weight_sum.items():
            n = float(self.rows[t])
            if n == 0:
                continue
            mean = (s / n).tolist()
            top = max(range(len(mean)), key=mean.__getitem__)
            max_ent = math.log(len(mean)) if len(mean) > 1 else 1.0
            ent = float(self.entropy_sum[t]) / n
            out[t] = {
                "mean_weight": [round(x, 6) for x in mean],
                "entropy": ent,
                "normalised_entropy": ent / max_ent,
                "dominant_expert": top,
                "dominant_share": mean[top],
                "collapsed": mean[top] >= self.collapse_share,
            }
        return out
