"""Two-tower retrieval over the shared EBC: a user vector and an item vector per row, scored by dot product.

Each tower sums the pooled embeddings of its features (every table shares one ``embedding_dim``),
read by feature name: a sharded EBC's ``KeyedTensor`` orders its columns its own way. A feature
named in ``sqrt_pooled`` is rescaled from a SUM-pooled bag to ``sum / sqrt(max(len, 1))``: a long
history then counts more than a short one, but not in proportion to its length (the recipe that
beat EASE on ml-100k). An optional MLP follows each tower.

An item bias is folded into the dot product: the item vector gets a trailing ``b(item)`` and the
user vector a trailing 1, so ``user . item = h . v + b``. Scores, the sampled softmax and the
top-N search (FAISS or ``torch.topk``) then need nothing but the two vectors.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.modules.architectures.base import mlp


def tower_mlp(in_features: int, layer_sizes: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU for every size but the last, then a plain Linear to ``layer_sizes[-1]``: the
    output is a free vector for a dot product, not a ReLU-clipped one. Empty: the identity."""
    if not layer_sizes:
        return nn.Sequential()
    hidden = mlp(in_features, layer_sizes[:-1])
    width = layer_sizes[-2] if len(layer_sizes) > 1 else in_features
    return nn.Sequential(*hidden, nn.Linear(width, layer_sizes[-1]))


class RetrievalArch(nn.Module):
    """A user tower and an item tower over pooled embeddings, by feature name.

    Args:
        user_features: the features summed into the user vector (history bags, user id...).
        item_features: the features summed into the item vector (item id, item attributes...).
        embedding_dim: the tables' shared embedding dim.
        layer_sizes: widths of each tower's MLP, the last one the vector's width (no ReLU after it);
            empty: no MLP, the vector is the pooled sum.
        sqrt_pooled: features rescaled by ``1 / sqrt(max(length, 1))`` (their bag length in the KJT).
        item_bias_feature: the item-id feature whose id selects a learned bias (``nn.Embedding(num_items,
            1)``, zero-initialised, dense: data-parallel under DMP, one float per item); None: no bias.
        num_items: the item id range, with ``item_bias_feature``.

    ``forward(pooled, lengths, item_ids)`` returns ``(user [B, out], item [B, out])``; ``pooled`` is
    ``ebc(kjt).to_dict()``, ``lengths`` is :meth:`bag_lengths` (only ``sqrt_pooled`` features are
    read), ``item_ids`` the ``[B]`` ids of ``item_bias_feature`` (:meth:`bias_ids`).

    Example::

        arch = RetrievalArch(["rated"], ["item"], embedding_dim=4, sqrt_pooled=["rated"],
                             item_bias_feature="item", num_items=10)
        pooled = {"rated": torch.ones(2, 4), "item": torch.rand(2, 4)}
        user, item = arch(pooled, {"rated": torch.tensor([4, 0])}, torch.tensor([3, 7]))
        assert user.shape == item.shape == (2, arch.out_features) == (2, 5)
        assert torch.allclose(user[:, :4], torch.tensor([[0.5] * 4, [1.0] * 4]))
        assert torch.allclose(arch.score(user, item), (pooled["rated"] * user[:, :1] * pooled["item"]).sum(1))
    """

    def __init__(self, user_features: Sequence[str], item_features: Sequence[str], embedding_dim: int,
                 layer_sizes: Sequence[int] = (), sqrt_pooled: Sequence[str] = (),
                 item_bias_feature: Optional[str] = None, num_items: int = 0) -> None:
        super().__init__()
        if not user_features or not item_features:
            raise ValueError(f"retrieval needs user and item features, got {list(user_features)} and "
                             f"{list(item_features)}")
        unknown = sorted(set(sqrt_pooled) - set(user_features) - set(item_features))
        if unknown:
            raise ValueError(f"sqrt_pooled features {unknown} are in neither tower")
        if item_bias_feature is not None and num_items < 1:
            raise ValueError(f"an item bias needs num_items >= 1, got {num_items}")
        self.user_features: List[str] = list(user_features)
        self.item_features: List[str] = list(item_features)
        self.sqrt_pooled: List[str] = list(sqrt_pooled)
        self.item_bias_feature = item_bias_feature
        self.user_mlp = tower_mlp(embedding_dim, layer_sizes)
        self.item_mlp = tower_mlp(embedding_dim, layer_sizes)
        self.item_bias: Optional[nn.Embedding] = None
        if item_bias_feature is not None:
            self.item_bias = nn.Embedding(num_items, 1)
            nn.init.zeros_(self.item_bias.weight)
        width = layer_sizes[-1] if layer_sizes else embedding_dim
        self.out_features: int = width + (1 if item_bias_feature is not None else 0)

    def _tower(self, features: Sequence[str], pooled: Mapping[str, torch.Tensor],
               lengths: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sum of ``features``' pooled embeddings, the ``sqrt_pooled`` ones rescaled."""
        total: Optional[torch.Tensor] = None
        for name in features:
            x = pooled[name]
            if name in self.sqrt_pooled:
                x = x * lengths[name].to(x.dtype).clamp_min(1.0).rsqrt().unsqueeze(1)
            total = x if total is None else total + x
        return cast(torch.Tensor, total)

    def user_vectors(self, pooled: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, out]``: the user tower (a trailing 1 with an item bias)."""
        h: torch.Tensor = self.user_mlp(self._tower(self.user_features, pooled, lengths))
        if self.item_bias is None:
            return h
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

    def item_vectors(self, pooled: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor],
                     item_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, out]``: the item tower (a trailing bias of ``item_ids`` with an item bias). Run over
        the whole catalogue's item features, it gives the vectors to export and search."""
        v: torch.Tensor = self.item_mlp(self._tower(self.item_features, pooled, lengths))
        if self.item_bias is None:
            return v
        if item_ids is None:
            raise ValueError(f"an item bias needs the ids of {self.item_bias_feature!r}")
        if item_ids.dim() == 2:  # [2, ids]: the ids and their row (a padding row has none: bias 0)
            bias = torch.zeros(v.size(0), 1, dtype=v.dtype, device=v.device).index_add(
                0, item_ids[1], self.item_bias(item_ids[0]).to(v.dtype))
        else:
            bias = self.item_bias(item_ids.long())
        return torch.cat([v, bias], dim=1)

    def forward(self, pooled: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor],
                item_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(pooled, lengths), self.item_vectors(pooled, lengths, item_ids)

    @staticmethod
    def score(user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``[B]``: the row-wise dot product of user and item vectors."""
        return (user * item).sum(dim=1)

    def bag_lengths(self, kjt: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """The ``[B]`` bag length of each ``sqrt_pooled`` feature of ``kjt``."""
        jagged = kjt.to_dict()
        return {name: cast(torch.Tensor, jagged[name].lengths()) for name in self.sqrt_pooled}

    def bias_ids(self, kjt: KeyedJaggedTensor) -> Optional[torch.Tensor]:
        """``[2, ids]``: the ids of ``item_bias_feature`` and the row of each (padding rows have
        none), or None without an item bias."""
        if self.item_bias_feature is None:
            return None
        jagged = kjt[self.item_bias_feature]
        lengths = cast(torch.Tensor, jagged.lengths())
        rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
        return torch.stack([cast(torch.Tensor, jagged.values()).long(), rows])
