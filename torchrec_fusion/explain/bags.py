"""A bag's attribution split over its ids ("because you liked X").

A pooled embedding is linear in the vectors of its ids: ``sum_i w_i e_i`` (sum pooling, ``w_i`` the
per-id weight, 1 without) or ``sum_i e_i / n`` (mean pooling). Its integrated-gradients attribution
from the zero baseline is ``pooled . g`` (``g``: the path-averaged gradient on it), so id ``i``'s share
``w_i e_i . g`` (or ``e_i . g / n``) is exact: the shares of a bag sum to the feature's attribution.
"""

from typing import List, Tuple

import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.explain.attributions import Attribution, task_model
from torchrec_fusion.modules.model import MultiTaskTrain


def _table(train: MultiTaskTrain, feature: str) -> Tuple[torch.Tensor, PoolingType]:
    """The embedding table (``[N, D]``) that ``feature`` looks up, and its pooling."""
    ebc = task_model(train).feature_arch.sparse_arch.embedding_bag_collection
    for config in ebc.embedding_bag_configs():
        if feature in config.feature_names:
            weight: torch.Tensor = ebc.embedding_bags[config.name].weight
            return weight, config.pooling
    raise ValueError(f"no embedding table looks up feature {feature!r}")


def bag_shares(train: MultiTaskTrain, kjt: KeyedJaggedTensor, attribution: Attribution, feature: str
               ) -> List[List[Tuple[int, float]]]:
    """Per row of ``kjt``, each id of its ``feature`` bag (in bag order) and that id's share of the
    feature's attribution in ``attribution`` (see the module docstring).

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec_fusion.explain.attributions import attribute
        from torchrec_fusion.modules.model import MultiTaskModel
        from torchrec_fusion.tasks import TaskSpec
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t_h", embedding_dim=4, num_embeddings=9,
                                     feature_names=["history"], pooling=PoolingType.MEAN)])
        train = MultiTaskTrain(MultiTaskModel(ebc, 1, [TaskSpec("like")], arch="shared_bottom")).eval()
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["history"], values=torch.tensor([1, 5, 7]),
                                                  lengths=torch.tensor([3]))
        a = attribute(train, torch.zeros(1, 1), kjt, scores=["like"])["like"]
        shares = bag_shares(train, kjt, a, "history")[0]
        assert [i for i, _ in shares] == [1, 5, 7]
        assert abs(sum(s for _, s in shares) - float(a.features[0, 0])) < 1e-5
    """
    weight, pooling = _table(train, feature)
    if pooling not in (PoolingType.SUM, PoolingType.MEAN):
        raise ValueError(f"feature {feature!r}: a bag splits over its ids under sum or mean pooling, not {pooling}")
    jt = kjt[feature]
    ids, lengths, w = jt.values().long(), jt.lengths().long(), jt.weights_or_none()
    rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    vectors = weight.detach()[ids].float()
    if w is not None:
        vectors = vectors * w.float().unsqueeze(1)
    if pooling == PoolingType.MEAN:
        vectors = vectors / lengths.clamp_min(1)[rows].unsqueeze(1).float()
    f = task_model(train).feature_arch.feature_names.index(feature)
    shares = (vectors * attribution.pooled_grads[rows, f]).sum(1)
    out: List[List[Tuple[int, float]]] = []
    sizes: List[int] = lengths.tolist()
    for row_ids, row_shares in zip(torch.split(ids, sizes), torch.split(shares, sizes)):
        out.append(list(zip(row_ids.tolist(), row_shares.tolist())))
    return out


__all__ = ["bag_shares"]
