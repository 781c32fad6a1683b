"""One explanation per row, as plain data: every score's attributions to each feature and, within each
multi-id bag, to each id; each task's gate mixture; the fusion's per-task contributions."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.explain.attributions import (
    DEFAULT_STEPS,
    FUSED,
    Attribution,
    attribute,
    feature_names,
    fusion_contributions,
)
from torchrec_fusion.explain.bags import bag_shares
from torchrec_fusion.explain.experts import gate_mixtures
from torchrec_fusion.modules.model import MultiTaskTrain
from torchrec_fusion.tasks import TaskKind

IdLabel = Callable[[int], Dict[str, Any]]  # an id of a feature's table to what a reader knows it by


@dataclass
class Vocabulary:
    """What a reader sees instead of indices: the dense columns' names, per sparse feature how to
    show an id (``{"id": 1, "title": "Toy Story (1995)"}``), and the bags that hold the user's own
    past items (their ids, summed over those bags, are the history items that moved a score)."""

    dense_names: Optional[Sequence[str]] = None
    ids: Dict[str, IdLabel] = field(default_factory=dict)
    history: Sequence[str] = ()

    def label(self, feature: str, index: int) -> Dict[str, Any]:
        return self.ids[feature](index) if feature in self.ids else {"id": index}


def _unit(train: MultiTaskTrain, score: str) -> str:
    kinds = {t.name: t.kind for t in train.tasks}
    return "value" if kinds.get(score) == TaskKind.REGRESSION else "logit"


def _ranked(pairs: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    return dict(sorted(pairs, key=lambda p: -abs(p[1])))


def history_items(bags: Dict[str, List[Dict[str, Any]]], history: Sequence[str]) -> List[Dict[str, Any]]:
    """The items of the history bags with their attributions summed over those bags (an item in both
    ``user_history`` and ``user_liked`` counts once), highest first.

    Example::

        bags = {"user_history": [{"id": 7, "attribution": 0.1}], "user_liked": [{"id": 7, "attribution": 0.2},
                {"id": 3, "attribution": -0.1}]}
        top = history_items(bags, ["user_history", "user_liked"])
        assert [i["id"] for i in top] == [7, 3] and abs(top[0]["attribution"] - 0.3) < 1e-12
    """
    merged: Dict[Any, Dict[str, Any]] = {}
    for feature in history:
        for item in bags.get(feature, []):
            key = item["id"]
            if key in merged:
                merged[key]["attribution"] += item["attribution"]
            else:
                merged[key] = dict(item)
    return sorted(merged.values(), key=lambda i: -i["attribution"])


Shares = Dict[str, List[List[Tuple[int, float]]]]  # per bag feature, per row, each id's share (bag_shares)


def _score_entry(train: MultiTaskTrain, name: str, a: Attribution, r: int, names: Tuple[List[str], List[str]],
                 vocab: Vocabulary, shares: Shares) -> Dict[str, Any]:
    dense_names, sparse_names = names
    features = list(zip(dense_names, a.dense[r].tolist())) + list(zip(sparse_names, a.features[r].tolist()))
    entry: Dict[str, Any] = {"value": float(a.value[r]), "baseline": float(a.baseline[r]), "unit": _unit(train, name),
                             "completeness_gap": float(a.delta[r]), "steps": a.steps, "features": _ranked(features)}
    bags: Dict[str, List[Dict[str, Any]]] = {}
    for f, per_row in shares.items():
        bags[f] = sorted(({**vocab.label(f, i), "attribution": s} for i, s in per_row[r]),
                         key=lambda x: -x["attribution"])
    entry["bags"] = bags
    if vocab.history:
        entry["history"] = history_items(bags, vocab.history)
    return entry


def explain_rows(train: MultiTaskTrain, dense: torch.Tensor, kjt: KeyedJaggedTensor,
                 vocab: Optional[Vocabulary] = None, steps: int = DEFAULT_STEPS) -> List[Dict[str, Any]]:
    """One explanation per row of ``(dense, kjt)`` from a single-process model: per score (each task's,
    each chain's and ``"fused"``), its value, the baseline's, and the attributions to every feature
    (largest first) and to every id of every bag feature (a feature some row has several ids of, or a
    history bag); per task with a gate, its mixture over the experts; with a fusion head, each task's
    contribution to the fused score (``"fusion"``).

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec_fusion.modules.model import MultiTaskModel
        from torchrec_fusion.tasks import TaskSpec
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        train = MultiTaskTrain(MultiTaskModel(ebc, 1, [TaskSpec("like")], arch="mmoe",
                                              arch_kwargs={"num_experts": 2, "expert_layer_sizes": [4]})).eval()
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=torch.tensor([3]), lengths=torch.tensor([1]))
        (e,) = explain_rows(train, torch.rand(1, 1), kjt)
        assert set(e["scores"]["like"]["features"]) == {"dense_0", "user"}
        assert set(e["gates"]["like"]) == {"expert 0", "expert 1"}
    """
    vocab = vocab or Vocabulary()
    train.eval()
    attributions = attribute(train, dense, kjt, steps=steps)
    names = feature_names(train, dense.size(1), vocab.dense_names)
    lengths = {f: kjt[f].lengths() for f in names[1]}
    bag_features = [f for f in names[1] if f in vocab.history or (len(lengths[f]) and int(lengths[f].max()) > 1)]
    gates = gate_mixtures(train, dense, kjt)
    fusion = fusion_contributions(train, dense, kjt, steps) if FUSED in attributions else None
    shares = {n: {f: bag_shares(train, kjt, a, f) for f in bag_features} for n, a in attributions.items()}
    out: List[Dict[str, Any]] = []
    for r in range(dense.size(0)):
        row: Dict[str, Any] = {"scores": {n: _score_entry(train, n, a, r, names, vocab, shares[n])
                                          for n, a in attributions.items()},
                               "gates": {t: {e: float(w[r]) for e, w in g.items()} for t, g in gates.items()}}
        if fusion is not None:
            row["fusion"] = _ranked([(t, float(c[r])) for t, c in fusion.items()])
        out.append(row)
    return out


__all__ = ["Vocabulary", "explain_rows", "history_items"]
