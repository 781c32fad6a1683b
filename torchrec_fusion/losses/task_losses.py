"""Per-task losses that honour label masks and sample weights."""

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from torchrec_fusion.tasks import TaskKind, TaskSpec


def masked_mean(values: torch.Tensor, mask: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of ``values`` over rows where ``mask`` is set (weighted); 0 when no row is."""
    w = mask.to(values.dtype) if weight is None else mask.to(values.dtype) * weight
    return (values * w).sum() / w.sum().clamp_min(1e-12)


def task_loss(task: TaskSpec, output: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss of one task: BCE on logits, MSE, or cross-entropy; absent labels add nothing."""
    if task.kind == TaskKind.BINARY:
        per_row = F.binary_cross_entropy_with_logits(output, label, reduction="none")
    elif task.kind == TaskKind.REGRESSION:
        per_row = (output - label) ** 2
    else:
        per_row = F.cross_entropy(output, label.long() * mask.long(), reduction="none")
    return masked_mean(per_row, mask, weight)


def task_losses(tasks: Sequence[TaskSpec], outputs: Dict[str, torch.Tensor], labels: torch.Tensor,
                masks: torch.Tensor, weights: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``{task: loss}`` for stacked ``[B, T]`` labels, masks and optional weights: the same values
    as :func:`task_loss` per task, with the binary tasks computed together (one BCE over their
    ``[B, T_binary]`` logits) and the regression tasks together, so that four tasks cost about
    the ops of one."""
    w = masks.to(labels.dtype) if weights is None else masks.to(labels.dtype) * weights
    denom = w.sum(0).clamp_min(1e-12)  # [T]
    out: Dict[str, torch.Tensor] = {}
    for kind in (TaskKind.BINARY, TaskKind.REGRESSION):
        cols = [j for j, t in enumerate(tasks) if t.kind == kind]
        if not cols:
            continue
        x = torch.stack([outputs[tasks[j].name] for j in cols], 1)  # [B, T_kind]
        y = labels[:, cols]
        per_row = F.binary_cross_entropy_with_logits(x, y, reduction="none") if kind == TaskKind.BINARY \
            else (x - y) ** 2
        per_task = (per_row * w[:, cols]).sum(0) / denom[cols]
        for i, j in enumerate(cols):  # indexed, not unbound: TorchRec's pipeline fx-traces this
            out[tasks[j].name] = per_task[i]
    for j, t in enumerate(tasks):
        if t.kind == TaskKind.MULTICLASS:
            out[t.name] = task_loss(t, outputs[t.name], labels[:, j], masks[:, j],
                                    None if weights is None else weights[:, j])
    return {t.name: out[t.name] for t in tasks}
