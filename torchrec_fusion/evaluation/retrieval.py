"""Exact top-N retrieval by dot product: FAISS (``faiss-cpu``) when installed, chunked ``torch.topk`` otherwise.

On a large catalogue, ranking every item with the full multi-task model is too costly: the retrieval
towers' vectors pick the top-N candidates, and only those are ranked. Both backends are exact
(``IndexFlatIP`` is exhaustive), so they agree with scoring every item, ties aside.
"""

import importlib
from typing import Any, Callable, Optional, Tuple, Union

import torch

# an exclusion mask: [U, N] bool, or a function of (first user, end user) giving [end - first, N] bool
Exclude = Union[torch.Tensor, Callable[[int, int], torch.Tensor]]

_BACKENDS = ("auto", "torch", "faiss")


def faiss_module() -> Optional[Any]:
    """The ``faiss`` module, or None when it is not installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def _chunk_mask(exclude: Optional[Exclude], start: int, end: int) -> Optional[torch.Tensor]:
    if exclude is None:
        return None
    mask = exclude[start:end] if isinstance(exclude, torch.Tensor) else exclude(start, end)
    return mask.bool()


def _torch_chunk(users: torch.Tensor, items: torch.Tensor, k: int, mask: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    scores = users @ items.T
    if mask is not None:
        scores = scores.masked_fill(mask.to(scores.device), float("-inf"))
    top = torch.topk(scores, k, dim=1)
    return top.values, top.indices


def _faiss_chunk(index: Any, users: torch.Tensor, k: int, num_items: int, mask: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Searches ``k`` plus the most items any user of the chunk excludes, then drops the excluded
    ones, keeping FAISS's order: the first ``k`` left are the top ``k`` allowed."""
    extra = int(mask.sum(1).max()) if mask is not None and mask.numel() else 0
    fetch = min(k + extra, num_items)
    d, i = index.search(users.detach().float().cpu().contiguous().numpy(), fetch)
    scores, ids = torch.from_numpy(d), torch.from_numpy(i).long()
    drop = ids < 0
    if mask is not None:
        drop |= mask.cpu().gather(1, ids.clamp_min(0))
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices[:, :k]
    scores, ids, drop = scores.gather(1, order), ids.gather(1, order), drop.gather(1, order)
    return scores.masked_fill(drop, float("-inf")), ids


class ItemIndex:
    """The item vectors ready to search, built once for many :func:`top_k` calls (a FAISS
    ``IndexFlatIP`` copies the ``[N, d]`` vectors into its own storage).

    Args:
        item_vecs: ``[N, d]`` item vectors, row ``j`` item ``j``.
        backend: as :func:`top_k`'s.
    """

    def __init__(self, item_vecs: torch.Tensor, backend: str = "auto") -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"top_k backend must be one of {list(_BACKENDS)}, got {backend!r}")
        faiss = faiss_module() if backend != "torch" else None
        if backend == "faiss" and faiss is None:
            raise ValueError("top_k backend 'faiss' needs the faiss-cpu package (pip install faiss-cpu)")
        self.item_vecs = item_vecs
        self.faiss: Optional[Any] = None
        if faiss is not None:
            self.faiss = faiss.IndexFlatIP(item_vecs.size(1))
            self.faiss.add(item_vecs.detach().float().cpu().contiguous().numpy())

    def __len__(self) -> int:
        return self.item_vecs.size(0)


def top_k(user_vecs: torch.Tensor, item_vecs: Union[torch.Tensor, ItemIndex], k: int,
          exclude: Optional[Exclude] = None, backend: str = "auto", users_per_chunk: int = 1024
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` items of highest ``user . item`` for each user, best first.

    Args:
        user_vecs: ``[U, d]`` user vectors.
        item_vecs: ``[N, d]`` item vectors, row ``j`` item ``j``, or an :class:`ItemIndex` of them
            (built once for many calls; its backend is then used, ``backend`` is ignored).
        k: the items per user (at most ``N`` are returned).
        exclude: items never returned (a user's seen items): ``[U, N]`` bool, or a function of
            ``(start, end)`` giving the rows of users ``start..end-1``, so that no ``[U, N]`` mask
            need exist at once.
        backend: ``"faiss"`` (``IndexFlatIP``, exact; a ``ValueError`` if not installed), ``"torch"``
            (a chunked matrix product and ``torch.topk``), or ``"auto"``: FAISS when it imports.
        users_per_chunk: users scored at once (bounds the ``[chunk, N]`` scores and mask).

    Returns ``(scores [U, k'], items [U, k'])``, ``k' = min(k, N)``, float scores and int64 ids on
    ``user_vecs``' device; where a user has fewer than ``k'`` allowed items, the missing slots hold
    score ``-inf`` and item ``-1``.

    Example::

        users, items = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
        scores, ids = top_k(users, items, 2, exclude=torch.tensor([[True, False, False]]), backend="torch")
        assert ids.tolist() == [[1, 2]] and scores.tolist() == [[2.0, 1.0]]
    """
    index = item_vecs if isinstance(item_vecs, ItemIndex) else ItemIndex(item_vecs, backend)
    num_items, k = len(index), min(k, len(index))
    scores, ids = [], []
    for start in range(0, user_vecs.size(0), users_per_chunk):
        end = min(start + users_per_chunk, user_vecs.size(0))
        mask = _chunk_mask(exclude, start, end)
        if index.faiss is None:
            s, i = _torch_chunk(user_vecs[start:end], index.item_vecs, k, mask)
        else:
            s, i = _faiss_chunk(index.faiss, user_vecs[start:end], k, num_items, mask)
        scores.append(s.float().to(user_vecs.device))
        ids.append(i.masked_fill(s.isneginf(), -1).to(user_vecs.device))
    if not scores:
        empty = torch.empty(0, k, device=user_vecs.device)
        return empty, empty.long()
    return torch.cat(scores), torch.cat(ids)
