"""The model, explained: global feature importance per score and how much each task leans on each expert,
over a seeded sample of rows (a few hundred: cheap enough to run after every training run)."""

from typing import Any, Dict, Optional, Sequence

import torch

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.explain.attributions import FUSED, attribute, feature_names, fusion_contributions
from torchrec_fusion.explain.experts import gate_mixtures
from torchrec_fusion.modules.model import MultiTaskTrain

SAMPLE_ROWS, SAMPLE_STEPS = 256, 16


def _mean_abs(values: Dict[str, torch.Tensor]) -> Dict[str, float]:
    means = {k: float(v.abs().mean()) for k, v in values.items()}
    return dict(sorted(means.items(), key=lambda kv: -kv[1]))


def global_importance(train: MultiTaskTrain, rows: MultiTaskData, sample: int = SAMPLE_ROWS,
                      steps: int = SAMPLE_STEPS, seed: int = 0, dense_names: Optional[Sequence[str]] = None
                      ) -> Dict[str, Any]:
    """Over ``sample`` rows of ``rows`` (a seeded choice): per score, each feature's mean absolute
    attribution (largest first, in the score's units: see
    :mod:`~torchrec_fusion.explain.attributions`); per task with a gate, its mean weight on each
    expert; with a fusion head, each task's mean absolute contribution to the fused score; and the
    completeness reached (the largest ``|sum of attributions - (score - baseline)|`` over the rows,
    relative to the mean ``|score - baseline|``).

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        from torchrec_fusion.training.factory import build_train_model
        from torchrec_fusion.training.config import TrainConfig
        rows, _ = make_synthetic(SyntheticConfig(num_rows=64))
        config = TrainConfig(arch="mmoe", embedding_dim=4, dense_arch_layer_sizes=[4], tower_layer_sizes=[4],
                             arch_options={"num_experts": 2, "expert_layer_sizes": [4]})
        train = build_train_model(config, rows, device="cpu").eval()
        result = global_importance(train, rows, sample=8, steps=4)
        assert set(result["scores"]) == set(rows.task_names) and result["rows"] == 8
    """
    train.eval()
    idx = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:sample]
    batch = rows.make_batch(idx.sort().values)
    dense, kjt = batch.dense_features.float(), batch.sparse_features
    attributions = attribute(train, dense, kjt, steps=steps, max_steps=steps)  # a fixed grid: no refinement
    dense_cols, sparse = feature_names(train, dense.size(1), dense_names)
    scores, completeness = {}, {}
    for name, a in attributions.items():
        per_feature = {**dict(zip(dense_cols, a.dense.unbind(1))), **dict(zip(sparse, a.features.unbind(1)))}
        scores[name] = _mean_abs(per_feature)
        gap = float((a.value - a.baseline).abs().mean())
        completeness[name] = float(a.delta.abs().max()) / gap if gap > 0 else 0.0
    out: Dict[str, Any] = {"rows": len(idx), "steps": {n: a.steps for n, a in attributions.items()},
                           "baseline": "zero input (empty bags, dense features 0)", "scores": scores,
                           "completeness": completeness,
                           "experts": {t: {e: float(w.mean()) for e, w in g.items()}
                                       for t, g in gate_mixtures(train, dense, kjt).items()}}
    if FUSED in attributions:
        fusion = fusion_contributions(train, dense, kjt, steps)
        assert fusion is not None
        out["fusion"] = _mean_abs(fusion)
    return out


__all__ = ["SAMPLE_ROWS", "global_importance"]
