"""The fused ranking score: weighted log forms, weights fitted on held-out rankings."""

import pytest
import torch

from torchrec_fusion.evaluation.ranking import ndcg
from torchrec_fusion.fusion.ranking_weights import fit_ranking_weights, fuse_ranking, log_form
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.evaluate import FUSED_RANKING, derived_scores


def _scores(seed: int = 0):
    """Two noisy views of one latent preference, and a pure-noise score; positives from the latent."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(200, 80, generator=g)
    positives = latent.topk(5, dim=1).indices.tolist()
    scores = {"a": latent + 1.2 * torch.randn(200, 80, generator=g),
              "b": latent + 1.2 * torch.randn(200, 80, generator=g),
              "noise": torch.randn(200, 80, generator=g)}
    return scores, positives


def test_fit_is_never_below_the_best_single_score_and_combines_views():
    scores, positives = _scores()
    singles = {n: ndcg(s, positives, 10)[1] for n, s in scores.items()}
    weights, value = fit_ranking_weights(scores, positives, k=10)
    assert value >= max(singles.values())
    # two independent noisy views of the same preference: their sum ranks better than either
    assert value > max(singles.values()) + 0.02
    assert weights["a"] > 0 and weights["b"] > 0
    assert abs(ndcg(fuse_ranking(scores, weights), positives, 10)[1] - value) < 1e-9


def test_fitted_weights_generalise_to_fresh_rankings():
    scores, positives = _scores(0)
    weights, _ = fit_ranking_weights(scores, positives, k=10)
    test, test_pos = _scores(1)
    fused = ndcg(fuse_ranking(test, weights), test_pos, 10)[1]
    assert fused > max(ndcg(s, test_pos, 10)[1] for s in test.values())


def test_fit_honours_excluded_items():
    scores, positives = _scores()
    seen = torch.zeros(200, 80, dtype=torch.bool)
    seen[:, :10] = True
    weights, value = fit_ranking_weights(scores, positives, k=10, exclude=seen)
    assert abs(ndcg(fuse_ranking(scores, weights), positives, 10, exclude=seen)[1] - value) < 1e-9


def test_fuse_ranking_errors():
    s = {"a": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        fuse_ranking(s, {"b": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        fuse_ranking(s, {"a": 0.0})
    assert torch.equal(fuse_ranking(s, {"a": 1.0, "b": 0.0}), s["a"])  # an absent score weighted 0 is fine


def test_derived_scores_chain_and_fused():
    p_like = torch.tensor([[0.5, 0.25]])
    scores = {"retrieval": torch.tensor([[1.0, 2.0]]), "like": p_like, "rating": torch.tensor([[4.0, 3.0]])}
    config = TrainConfig.make(ranking_fusion={"retrieval": 1.0, "like": 0.5, "rating": 0.1})
    out = derived_scores(scores, config, regression=["rating"])
    assert torch.allclose(out["retrieval_x_like"], scores["retrieval"] + p_like.log())
    expected = scores["retrieval"] + 0.5 * log_form(p_like, True) + 0.1 * scores["rating"]
    assert torch.allclose(out[FUSED_RANKING], expected)
    assert FUSED_RANKING not in derived_scores(scores, TrainConfig.make(), regression=["rating"])


def test_ranking_fusion_config_is_checked():
    with pytest.raises(ValueError, match="ranking_fusion"):
        TrainConfig.make(ranking_fusion={"like": "much"})
