"""Retrieval losses: a softmax over candidate items, sampled with log-Q correction or over the full catalogue.

**Candidate layout** of :func:`sampled_softmax_loss`: ``C >= B`` columns. Column ``i < B`` holds the
item of batch row ``i`` (its item tower vector): it is anchor row ``i``'s positive and every other
row's in-batch negative. Columns ``B..C-1`` are extra sampled negatives, shared by all rows.

**Log-Q correction** (Yi et al. 2019, "Sampling-bias-corrected neural modeling for large corpus item
recommendations"): in-batch candidates are drawn by the data (popular items are negatives far more
often than under a full softmax), so each logit is lowered by the log of the share of candidate slots
its item is expected to get (:func:`mixture_log_q`), and the sampled softmax estimates the full one.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.losses.task_losses import masked_mean
from torchrec_fusion.tasks import TaskSpec

_TINY = torch.finfo(torch.float32).tiny  # the floor of q: log q stays finite


def _masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore: Optional[torch.Tensor],
                          anchor_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of ``logits`` [B, C] against columns ``target`` [B], the ``ignore`` cells at
    ``-inf`` (never the target's), averaged over the anchor rows (0 when there are none)."""
    if ignore is not None:
        cols = torch.arange(logits.size(1), device=logits.device)
        logits = logits.masked_fill(ignore & (cols.unsqueeze(0) != target.unsqueeze(1)), float("-inf"))
    per_row = F.cross_entropy(logits, target, reduction="none")
    mask = torch.ones_like(per_row, dtype=torch.bool) if anchor_mask is None else anchor_mask
    return masked_mean(per_row, mask)


def sampled_softmax_loss(user: torch.Tensor, candidates: torch.Tensor, candidate_ids: torch.Tensor,
                         positive_ids: torch.Tensor, log_q: torch.Tensor, anchor_mask: Optional[torch.Tensor] = None,
                         temperature: float = 1.0, seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The sampled softmax cross-entropy of each anchor row's own item among the candidates.

    ``logits = user @ candidates.T / temperature - log_q``; row ``i``'s target is column ``i`` (see the
    module's candidate layout). A column ``j != i`` holding row ``i``'s positive item (an *accidental
    hit*: the same item in another row, or drawn as a negative) is masked to ``-inf``: it would teach
    the model to push the positive down. So is a cell of ``seen`` (items the user interacted with
    elsewhere: not negatives, as in the full-catalogue recipe).

    Args:
        user: ``[B, d]`` user vectors.
        candidates: ``[C, d]`` candidate item vectors, ``C >= B``, laid out as described.
        candidate_ids: ``[C]`` item id of each candidate.
        positive_ids: ``[B]`` item id of each row (``candidate_ids[:B]``, as a rule).
        log_q: ``[C]`` finite log sampling share of each candidate's item (:func:`mixture_log_q`);
            zeros: no correction.
        anchor_mask: ``[B]`` bool, the rows whose item is a positive (an observed interaction); others
            only lend their item as a negative. None: every row.
        temperature: divides the dot products, not the correction.
        seen: optional ``[B, C]`` bool, True where candidate ``j`` must not be a negative of row ``i``
            (column ``i`` is never masked).

    Returns the mean loss over the anchors; 0, with a zero gradient, when there are none.

    Example::

        user, items = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2)
        loss = sampled_softmax_loss(user, items, torch.tensor([5, 6]), torch.tensor([5, 6]), torch.zeros(2))
        assert torch.isclose(loss, torch.log1p(torch.exp(torch.tensor(-1.0))))
    """
    b = user.size(0)
    if not is_fx_symbolic_tracing() and candidates.size(0) < b:
        raise ValueError(f"the first {b} candidates must be the rows' own items, got {candidates.size(0)}")
    logits = user @ candidates.T / temperature - log_q.unsqueeze(0)
    hits = positive_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)  # [B, C]
    ignore = hits if seen is None else hits | seen
    return _masked_cross_entropy(logits, torch.arange(b, device=user.device), ignore, anchor_mask)


def mixture_log_q(candidate_ids: torch.Tensor, in_batch_probs: torch.Tensor, sampler_probs: Optional[torch.Tensor],
                  batch_size: int, num_sampled: int) -> torch.Tensor:
    """``[C]``: ``log q(item)`` of each candidate, the expected share of candidate slots its item gets.

    Of the ``B + S`` candidate slots (``B = batch_size`` in-batch, ``S = num_sampled`` drawn by the
    sampler; ``B * K`` with ``K`` per row), each in-batch slot holds item ``j`` with probability
    ``p_data(j)`` (its share of the batch rows) and each sampled slot with ``p_sampler(j)``; item ``j``
    is expected in ``B p_data(j) + S p_sampler(j)`` slots, so its share is
    ``q(j) = (B p_data(j) + S p_sampler(j)) / (B + S)``. Yi et al. subtract ``log q(j)`` (with in-batch
    candidates only: ``log p_data(j)``) from the logit. A zero ``q`` is clamped to the smallest normal
    float32, to keep the logits finite.

    Args:
        candidate_ids: ``[C]`` item ids.
        in_batch_probs: ``[N]`` share of each item among the rows that fill the in-batch columns
            (the training rows' item counts over their sum).
        sampler_probs: ``[N]`` the sampler's probability of each item; None: no sampled columns.
        batch_size: ``B``.
        num_sampled: ``S``, the sampled columns (0 without ``sampler_probs``).

    Example::

        p_data, p_sampler = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
        q = mixture_log_q(torch.tensor([0, 2]), p_data, p_sampler, batch_size=2, num_sampled=2).exp()
        assert torch.allclose(q, torch.tensor([0.375, 0.25]))
    """
    q = in_batch_probs.double() * batch_size
    if sampler_probs is not None and num_sampled > 0:
        q = q + sampler_probs.double() * num_sampled
    q = q / (batch_size + (num_sampled if sampler_probs is not None else 0))
    return q[candidate_ids.long()].clamp_min(_TINY).log().to(in_batch_probs.dtype)


def full_softmax_loss(user: torch.Tensor, item_vectors: torch.Tensor, positive_ids: torch.Tensor,
                      seen: Optional[torch.Tensor] = None, anchor_mask: Optional[torch.Tensor] = None,
                      temperature: float = 1.0) -> torch.Tensor:
    """The softmax cross-entropy of each anchor row's item over the whole catalogue (small catalogues).

    Every item is a candidate, with no sampling and so no correction. ``seen`` (``[B, N]`` bool: the
    row's user's other interacted items) is masked out of the negatives, the row's own positive never.

    Args:
        user: ``[B, d]`` user vectors.
        item_vectors: ``[N, d]`` the item tower over the catalogue, row ``j`` item id ``j``.
        positive_ids: ``[B]`` each row's item id.
        seen: optional ``[B, N]`` bool mask of items that are not negatives.
        anchor_mask: ``[B]`` bool, the rows whose item is a positive; None: every row.
        temperature: divides the dot products.

    Example::

        user, items = torch.tensor([[2.0, 0.0]]), torch.eye(2)
        seen = torch.tensor([[False, True]])
        assert full_softmax_loss(user, items, torch.tensor([0]), seen) == 0
    """
    logits = user @ item_vectors.T / temperature
    return _masked_cross_entropy(logits, positive_ids.long(), seen, anchor_mask)


class RetrievalLoss(nn.Module):
    """A retrieval head's loss over a training batch: each observed row's user vector against every
    row's item vector (the batch's other items are in-batch negatives; with sampled negatives in the
    batch their rows' items too), a softmax with the log-Q correction (:func:`sampled_softmax_loss`).

    Args:
        log_q_table: ``[N]`` ``log q(item)`` of every item id (:func:`mixture_log_q` over ``arange(N)``).
        item_feature: the sparse feature holding each row's item id (one id per row).
        weight: the loss's weight in the total loss.
        temperature: divides the logits.
        interaction: the entire-space task whose label 1 marks the observed rows (the anchors); a
            batch without it anchors every row with any label.

    Example::

        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        from torchrec_fusion.data.batch import MultiTaskBatch
        from torchrec_fusion.tasks import TaskSpec
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["item"], values=torch.tensor([0, 1, 2]),
                                                  lengths=torch.tensor([1, 1, 1]))
        batch = MultiTaskBatch(torch.zeros(3, 0), kjt, torch.ones(3, 1), torch.ones(3, 1, dtype=torch.bool),
                               ("like",))
        loss = RetrievalLoss(torch.log(torch.full((3,), 1 / 3)))
        assert loss(torch.eye(3), torch.eye(3), batch, [TaskSpec("like")]).item() > 0
    """

    log_q_table: torch.Tensor

    def __init__(self, log_q_table: torch.Tensor, item_feature: str = "item", weight: float = 1.0,
                 temperature: float = 1.0, interaction: str = "interaction") -> None:
        super().__init__()
        self.register_buffer("log_q_table", log_q_table.float())
        self.item_feature, self.weight, self.temperature, self.interaction = (
            item_feature, weight, temperature, interaction)

    def forward(self, user: torch.Tensor, item: torch.Tensor, batch: MultiTaskBatch,
                tasks: Sequence[TaskSpec]) -> torch.Tensor:
        jagged = batch.sparse_features[self.item_feature]  # one id per row (padding rows: none, id -1)
        lengths = jagged.lengths()
        ids = torch.full_like(lengths, -1).index_put_((lengths.nonzero().squeeze(1),), jagged.values().long())
        names = [t.name for t in tasks]
        if self.interaction in names:
            j = names.index(self.interaction)
            anchors = batch.masks[:, j] & (batch.labels[:, j] == 1)
        else:
            anchors = batch.masks.any(1)
        anchors = anchors & (ids >= 0)
        log_q = self.log_q_table[ids.clamp_min(0)]
        return sampled_softmax_loss(user, item, ids, ids, log_q, anchors, self.temperature)
