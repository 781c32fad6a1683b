"""The fusion head inside the model wrapper and the sharded training loop."""

import pytest
import torch
from test_models import TASKS, _batch, _ebc

from torchrec_fusion.fusion.head import FusionHead
from torchrec_fusion.modules import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train


def test_fusion_trains_only_itself_and_reports_fused_predictions() -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(_ebc(), 3, TASKS, arch="mmoe")
    batch = _batch()
    plain = MultiTaskTrain(model)
    loss, _ = plain(batch)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    head = FusionHead("gated", ["click", "rating"], context_dim=model.feature_arch.out_features)
    fused = MultiTaskTrain(model, fusion=head, fusion_target="click")
    loss, (_, preds, labels) = fused(batch)
    loss.backward()
    for n, p in model.named_parameters():  # the fusion loss never reaches the model
        torch.testing.assert_close(p.grad, ref[n])
    assert all(p.grad is not None for p in head.parameters())
    assert preds["fused"].shape == (6,) and ((preds["fused"] > 0) & (preds["fused"] < 1)).all()
    assert torch.equal(labels["fused"], labels["click"])
    with pytest.raises(ValueError, match="fusion target must be a binary task"):
        MultiTaskTrain(model, fusion=head, fusion_target="rating")


def test_fusion_normaliser_is_frozen_in_eval() -> None:
    head = FusionHead("weighted", ["a", "b"], normalizer="zscore")
    head({"a": torch.randn(64), "b": 5 + torch.randn(64)}, torch.zeros(64, 0))
    stats = {k: v.clone() for k, v in head.state_dict().items()}
    head.eval()
    head({"a": 100 + torch.randn(64), "b": torch.randn(64)}, torch.zeros(64, 0))
    for k, v in head.state_dict().items():
        assert torch.equal(v, stats[k]), k


@pytest.mark.parametrize("fusion", ["weighted", "stacking"])
def test_fused_model_trains_sharded_over_two_processes(fusion: str) -> None:
    r = train(TrainConfig(dataset="synthetic", synthetic_rows=6000, synthetic_scale=0.05, epochs=2, world_size=2,
                          batch_size=64, fusion=fusion, fusion_target="ctr", progress=False, verbose=False,
                          dropout=0.0))
    assert r["fused"]["count"] == r["tasks"]["ctr"]["count"] == 1200
    assert r["fused"]["auc"] > 0.6, r["fused"]
    if fusion == "weighted":
        w = r["fused"]["weights"]
        assert set(w) == {"ctr", "cvr", "watch_time", "ctcvr"} and abs(sum(w.values()) - 1) < 1e-5
        assert all(v >= 0 for v in w.values())


def test_ensemble_of_two_models_with_own_tables_trains_under_one_dmp() -> None:
    """An MMoE and TorchRec's DLRM, each with its own EmbeddingBagCollection, planned and sharded
    together by one DMP over 2 processes, trained in one loop and fused by a stacking head."""
    r = train(TrainConfig(dataset="synthetic", synthetic_rows=6000, synthetic_scale=0.05, epochs=2, world_size=2,
                          batch_size=64, ensemble=["mmoe", "dlrm"], fusion="stacking", fusion_target="ctr",
                          tasks=["ctr", "watch_time"], progress=False, verbose=False, dropout=0.0))
    plan = r["plan"]
    for member in ("mmoe", "dlrm"):
        assert f"members.{member}." in plan and f"{member}_t_user:" in plan, plan
    assert plan.count("table_wise") + plan.count("column_wise") + plan.count("data_parallel") >= 12
    assert set(r["tasks"]) == {"mmoe_ctr", "mmoe_watch_time", "dlrm_ctr"}
    assert r["fused"]["count"] == r["tasks"]["dlrm_ctr"]["count"] == 1200
    assert r["fused"]["auc"] > 0.6 and r["tasks"]["dlrm_ctr"]["auc"] > 0.6
