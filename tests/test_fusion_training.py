"""The fusion head inside the model wrapper and the sharded training loop."""

from dataclasses import dataclass, field
from typing import Dict, List

import pytest
import torch
from test_models import TASKS, _batch, _ebc

from torchrec_fusion.fusion.head import TRAINABLE_FUSIONS, FusionHead
from torchrec_fusion.fusion.trainable import GatedHead, StackingHead, TrainableFusion, WeightedHead
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


def test_trainable_registry_lists_its_members_and_their_options() -> None:
    assert dict(TRAINABLE_FUSIONS) == {"weighted": WeightedHead, "gated": GatedHead, "stacking": StackingHead}
    assert TRAINABLE_FUSIONS.options("weighted") == WeightedHead.Options("zscore", None)
    assert TRAINABLE_FUSIONS.options("gated").hidden == TRAINABLE_FUSIONS.options("stacking").hidden == [32]
    assert sorted(n for n, m in TRAINABLE_FUSIONS.items() if m.takes_weights) == ["weighted"]


def test_options_mapping_and_legacy_keywords_build_the_same_head() -> None:
    torch.manual_seed(0)
    a = FusionHead("gated", ["a", "b"], 3, {"normalizer": "minmax", "hidden": [4]})
    torch.manual_seed(0)
    b = FusionHead("gated", ["a", "b"], 3, normalizer="minmax", hidden=(4,), weights=None)  # None: left out
    assert a.fusion.options == b.fusion.options == GatedHead.Options("minmax", [4])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    fixed = FusionHead("weighted", ["a", "b"], options={"weights": [2, 1]})
    assert fixed.describe() == {"method": "weighted", "weights": {"a": 2.0, "b": 1.0}}
    assert FusionHead("stacking", ["a", "b"], 3).describe() == {"method": "stacking"}


def test_fusion_head_option_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown trainable fusion 'best'; choose one of \['gated', 'stacking'"):
        FusionHead("best", ["a", "b"])
    with pytest.raises(ValueError, match=r"fusion 'stacking' options: unknown option\(s\) \['depth'\]"):
        FusionHead("stacking", ["a", "b"], options={"depth": 2})
    with pytest.raises(ValueError, match=r"fusion 'weighted' options.normalizer: expected a string"):
        FusionHead("weighted", ["a", "b"], normalizer=1)
    with pytest.raises(ValueError, match="unknown normalizer 'softmax'"):
        FusionHead("weighted", ["a", "b"], normalizer="softmax")
    with pytest.raises(ValueError, match=r"fusion 'gated' takes no weights; these do: \['weighted'\]"):
        FusionHead("gated", ["a", "b"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="'hidden' given both"):
        FusionHead("gated", ["a", "b"], options={"hidden": [4]}, hidden=[8])


class ToyFusion(TrainableFusion):
    """The largest normalised prediction, times a learnt temperature."""

    @dataclass(frozen=True)
    class Options:
        temperature: float = 1.0
        skip: List[str] = field(default_factory=list)

    def __init__(self, task_names: List[str], context_dim: int, options: Options) -> None:
        super().__init__(task_names, context_dim, options)
        self.temperature = torch.nn.Parameter(torch.tensor(options.temperature))

    def forward(self, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        kept = [preds[t] for t in self.task_names if t not in self.options.skip]
        return self.temperature * torch.stack(kept, -1).amax(-1)


def test_a_new_trainable_fusion_is_one_class_and_one_register_line() -> None:
    TRAINABLE_FUSIONS.register("toy", ToyFusion)
    try:
        head = FusionHead("toy", ["a", "b"], options={"temperature": 2, "skip": ["b"]})
        out = head({"a": torch.tensor([.25, .5]), "b": torch.tensor([1., 1.])}, torch.zeros(2, 0))
        assert out.tolist() == [.5, 1.] and head.weights() is None and head.describe() == {"method": "toy"}
        out.sum().backward()
        assert head.fusion.temperature.grad is not None
        with pytest.raises(ValueError, match=r"unknown option\(s\) \['hidden'\]; known: \['skip', 'temperature'\]"):
            FusionHead("toy", ["a", "b"], hidden=[4])
        with pytest.raises(ValueError, match="'toy' takes no weights"):
            FusionHead("toy", ["a", "b"], weights=[1.0, 1.0])
    finally:
        del TRAINABLE_FUSIONS["toy"]


@pytest.mark.parametrize("fusion", ["weighted", "stacking"])
def test_fused_model_trains_sharded_over_two_processes(fusion: str) -> None:
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=6000, synthetic_scale=0.05, epochs=2, world_size=2,
                          batch_size=64, fusion=fusion, fusion_target="ctr", progress=False, verbose=False,
                          dropout=0.0))
    assert r["fused"]["count"] == r["tasks"]["ctr"]["count"] == 1200
    assert r["fused"]["auc"] > 0.6, r["fused"]
    # anchored on its target, the learnt fusion starts as ctr's own score and must not end below it
    assert r["fused"]["auc"] >= r["tasks"]["ctr"]["auc"] - 1e-3, (r["fused"]["auc"], r["tasks"]["ctr"]["auc"])
    if fusion == "weighted":
        w = r["fused"]["weights"]
        assert set(w) == {"ctr", "cvr", "watch_time", "ctcvr"} and abs(sum(w.values()) - 1) < 1e-5
        assert all(v >= 0 for v in w.values())


def test_ensemble_of_two_models_with_own_tables_trains_under_one_dmp() -> None:
    """An MMoE and TorchRec's DLRM, each with its own EmbeddingBagCollection, planned and sharded
    together by one DMP over 2 processes, trained in one loop and fused by a stacking head."""
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=6000, synthetic_scale=0.05, epochs=2, world_size=2,
                          batch_size=64, ensemble=["mmoe", "dlrm"], fusion="stacking", fusion_target="ctr",
                          tasks=["ctr", "watch_time"], progress=False, verbose=False, dropout=0.0))
    plan = r["plan"]
    for member in ("mmoe", "dlrm"):
        assert f"members.{member}." in plan and f"{member}_t_user:" in plan, plan
    assert plan.count("table_wise") + plan.count("column_wise") + plan.count("data_parallel") >= 12
    assert set(r["tasks"]) == {"mmoe_ctr", "mmoe_watch_time", "dlrm_ctr"}
    assert r["fused"]["count"] == r["tasks"]["dlrm_ctr"]["count"] == 1200
    assert r["fused"]["auc"] > 0.6 and r["tasks"]["dlrm_ctr"]["auc"] > 0.6


@pytest.mark.parametrize("method", ["weighted", "gated", "stacking"])
def test_an_anchored_fusion_starts_as_its_target(method: str) -> None:
    """Untrained, the fused probability is the target's own; fixed weights are never anchored."""
    torch.manual_seed(0)
    head = FusionHead(method, ["click", "rating"], context_dim=3, anchor="click")
    preds = {"click": torch.rand(16) * 0.98 + 0.01, "rating": 1 + 4 * torch.rand(16)}
    assert torch.allclose(torch.sigmoid(head(preds, torch.randn(16, 3))), preds["click"], atol=1e-5)
    assert FusionHead("weighted", ["click", "rating"], anchor="click", weights=[1.0, 1.0]).anchor is None
    with pytest.raises(ValueError, match="anchor 'cvr'"):
        FusionHead(method, ["click", "rating"], context_dim=3, anchor="cvr")
