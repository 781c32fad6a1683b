"""Per-task losses that honour label masks and sample weights."""

from typing import Dict, Optional, Sequence, Tuple

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


def chain_labels(first: torch.Tensor, first_mask: torch.Tensor, second: torch.Tensor,
                 second_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The label and mask ``[B]`` of an entire-space chain ``first -> second`` (ESMM's click ->
    conversion): ``first AND second`` on every row where it is known.

    * ``first`` known and 0 (a sampled negative, an unclicked impression): 0, whatever ``second``;
    * ``second`` known: its label (``second`` is P(second | first), observed only where ``first``
      happened, so ``first`` is 1 there even where its own label is masked, as on evaluation rows
      whose one-class ``interaction`` is not scored);
    * otherwise (``first`` 1 or unknown, ``second`` unknown): masked.

    Example::

        y1, m1 = torch.tensor([1., 1., 0., 1., 1.]), torch.tensor([True, True, True, True, False])
        y2, m2 = torch.tensor([1., 0., 0., 0., 1.]), torch.tensor([True, True, False, False, True])
        y, m = chain_labels(y1, m1, y2, m2)
        assert y[m].tolist() == [1., 0., 0., 1.] and m.tolist() == [True, True, True, False, True]
    """
    first_zero = first_mask & (first == 0)
    label = torch.where(first_zero | ~second_mask, torch.zeros_like(second), second)
    return label, first_zero | second_mask


def with_chain_labels(labels: torch.Tensor, masks: torch.Tensor, weights: Optional[torch.Tensor],
                      chains: Sequence[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``[B, T]`` labels, masks and weights with one column per chain ``(first, second)`` (column
    indices) appended: :func:`chain_labels`, weighted as the first task's rows."""
    cols = [chain_labels(labels[:, i], masks[:, i], labels[:, j], masks[:, j]) for i, j in chains]
    y = torch.cat([labels, torch.stack([c[0] for c in cols], 1)], 1)
    m = torch.cat([masks, torch.stack([c[1] for c in cols], 1)], 1)
    w = None if weights is None else torch.cat([weights, weights[:, [i for i, _ in chains]]], 1)
    return y, m, w
