"""Feature arch: pooled embeddings and dense features into one vector per sample."""

from typing import Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.models.dlrm import DenseArch, InteractionArch, SparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


def join_features(dense: torch.Tensor, pooled: torch.Tensor, interaction_arch: Optional[nn.Module] = None
                  ) -> torch.Tensor:
    """The feature vector of :class:`FeatureArch` from the dense projection ``[B, d]`` and the pooled
    embeddings ``[B, F, D]`` in ``feature_names`` order: both, and with an ``InteractionArch``, their
    pairwise dot products. Everything that starts after the lookup (the explanations, the traced
    serving module) joins them here, so it cannot drift from the model.

    Example::

        out = join_features(torch.ones(2, 3), torch.ones(2, 4, 3), InteractionArch(4))
        assert out.shape == (2, 3 + 4 * 3 + 5 * 4 // 2)
    """
    parts = [dense, pooled.flatten(1)]
    if interaction_arch is not None:
        parts.append(interaction_arch(dense, pooled)[:, dense.size(1):])
    return torch.cat(parts, dim=1)


class FeatureArch(nn.Module):
    """Looks up the sparse features, projects the dense ones, and joins them.

    The output concatenates the dense projection, every pooled embedding
    (indexed by feature name, never by position), and, with
    ``interaction=True``, the pairwise dot products of all of them (TorchRec's
    DLRM ``InteractionArch``): the dot products give a matrix-factorisation
    signal that an MLP alone learns poorly.

    Args:
        embedding_bag_collection: the EBC; all tables share one ``embedding_dim``.
        dense_in_features: width of the dense feature tensor.
        dense_arch_layer_sizes: hidden sizes of the dense MLP; the output width
            is the embedding dim.
        interaction: add pairwise dot products.
        embedding_l2: weight of an L2 penalty on the looked-up embeddings
            (``sum_f mean_batch ||e_f||^2``), kept in ``penalty`` after each
            forward. It regularises rows as often as they are seen, as in
            matrix factorisation, and works with fused optimizers, whose own
            weight decay the CPU kernels of FBGEMM ignore.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_user", embedding_dim=4, num_embeddings=10,
                               feature_names=["user"])])
        arch = FeatureArch(ebc, dense_in_features=2)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
        assert arch(torch.rand(2, 2), kjt).shape == (2, arch.out_features)
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: Sequence[int] = (),
        interaction: bool = True,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        dims = {c.embedding_dim for c in embedding_bag_collection.embedding_bag_configs()}
        if len(dims) != 1:
            raise ValueError(f"all tables must share one embedding_dim, got {sorted(dims)}")
        self.sparse_arch = SparseArch(embedding_bag_collection)
        d, f = self.sparse_arch.D, self.sparse_arch.F
        self.dense_arch = DenseArch(dense_in_features, list(dense_arch_layer_sizes) + [d])
        self.interaction_arch = InteractionArch(f) if interaction else None
        self.out_features: int = d + f * d + ((f + 1) * f // 2 if interaction else 0)
        self.embedding_l2 = embedding_l2
        self.penalty: torch.Tensor = torch.zeros(())

    def _in_feature_order(self, pooled_kt: KeyedTensor, pooled: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooled embeddings ``[B, F * D]`` in ``feature_names`` order: the KeyedTensor's own
        block when its keys come in that order (one tensor, no copy), else its columns by key (a
        sharded EBC orders its columns its own way)."""
        if not is_fx_symbolic_tracing() and pooled_kt.keys() == self.feature_names:
            return cast(torch.Tensor, pooled_kt.values())
        return torch.cat([pooled[name] for name in self.feature_names], dim=1)

    @property
    def feature_names(self) -> List[str]:
        return cast(List[str], self.sparse_arch.sparse_feature_names)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return self.forward_pooled(dense_features, sparse_features)[0]

    def forward_pooled(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor,
                       dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The feature vector and the pooled embedding of each feature by name (one EBC lookup for
        both: a retrieval head reads the pooled embeddings). With ``dtype`` (the dense part's
        autocast dtype) the feature vector comes in it; without interactions the embeddings are cast
        once, as one block, before the join (a mixed-dtype ``torch.cat`` is slow on CPU)."""
        dense = self.dense_arch(dense_features)
        if self.interaction_arch is None:
            pooled_kt = self.sparse_arch.embedding_bag_collection(sparse_features)
            pooled: Dict[str, torch.Tensor] = pooled_kt.to_dict()
            embeddings = self._in_feature_order(pooled_kt, pooled)
            if self.embedding_l2 and self.training:
                self.penalty = self.embedding_l2 * embeddings.pow(2).sum(1).mean()
            if dtype is not None:
                dense, embeddings = dense.to(dtype), embeddings.to(dtype)
            return torch.cat([dense, embeddings], dim=1), pooled
        sparse = self.sparse_arch(sparse_features)  # B x F x D, in feature_names order
        if self.embedding_l2 and self.training:
            self.penalty = self.embedding_l2 * sparse.pow(2).sum(dim=(1, 2)).mean()
        pooled = {name: sparse[:, i] for i, name in enumerate(self.feature_names)}
        out = join_features(dense, sparse, self.interaction_arch)
        return (out if dtype is None else out.to(dtype)), pooled
