"""Explanations: completeness for every architecture, exactness on a linear model, bags split over their
ids, and the same answer from a world-size-2 checkpoint as from its export."""

import argparse
import json
import os
from typing import Any, Dict

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.cli import main
from torchrec_fusion.data.history import add_history_features
from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.explain.attributions import FUSED, attribute, fusion_contributions, pooled_embeddings, scores_from
from torchrec_fusion.explain.bags import bag_shares
from torchrec_fusion.explain.explanation import explain_rows
from torchrec_fusion.explain.run import explain_pairs, load_explainer
from torchrec_fusion.modules.architectures import ARCHITECTURES
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.serving import export_run
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.factory import build_train_model
from torchrec_fusion.training.inference import load_run
from torchrec_fusion.training.trainer import train

FUSIONS = ["stacking", "gated", "weighted"]


@pytest.fixture(scope="module")
def rows() -> Any:
    tr, te = make_synthetic(SyntheticConfig(num_rows=200))
    return add_history_features(tr, te, max_len=6)[0]


def _model(rows: Any, arch: str, fusion: str) -> MultiTaskTrain:
    """A small fp32 model of ``arch`` with a fusion head, its tables drawn wide enough that the scores
    move with the inputs, and the fusion's normaliser statistics taken from one training batch."""
    torch.manual_seed(0)
    config = TrainConfig(arch=arch, embedding_dim=4, dense_arch_layer_sizes=[4], tower_layer_sizes=[8],
                         fusion=fusion, precision="fp32", interaction=True,
                         tasks=["ctr", "ctcvr"] if arch == "esmm" else None)
    data = rows
    if arch == "esmm":  # exactly two binary tasks
        data = rows.subset(torch.arange(len(rows)))
        keep = [data.task_names.index(t) for t in ("ctr", "ctcvr")]
        data.tasks, data.labels, data.masks = [data.tasks[j] for j in keep], data.labels[:, keep], data.masks[:, keep]
    model = build_train_model(config, data, device="cpu")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.EmbeddingBag):
                nn.init.normal_(m.weight, 0.0, 0.7)
        for name, p in model.named_parameters():
            if "bias" in name or "biases" in name:
                p.fill_(0.1)  # few dead ReLU units
        for head in model.model.towers.heads.values():  # type: ignore[union-attr]
            head.weight.mul_(20.0)  # logits of a few units
        for p in model.fusion.parameters():  # type: ignore[union-attr]
            p.add_(0.3 * torch.randn_like(p))  # away from its start at 0: the fusion moves the fused score too
    model.train()
    model(data.make_batch(torch.arange(64)))
    return model.eval()


def _moving_row(model: MultiTaskTrain, rows: Any) -> int:
    """The first row every score of which differs from the baseline's (a small ReLU tower can be dead
    on a row, its score then the baseline's: completeness would hold trivially)."""
    batch = rows.make_batch(torch.arange(32))
    with torch.no_grad():
        pooled = pooled_embeddings(model.model, batch.sparse_features)  # type: ignore[arg-type]
        at = scores_from(model, batch.dense_features, pooled)
        base = scores_from(model, batch.dense_features * 0, pooled * 0)
    moving = torch.stack([(at[k] - base[k]).abs() > 1e-2 for k in at]).all(0)
    return int(moving.nonzero()[0])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_attributions_sum_to_score_minus_baseline_for_every_architecture(rows: Any, arch: str) -> None:
    fusion = FUSIONS[sorted(ARCHITECTURES).index(arch) % len(FUSIONS)]
    model = _model(rows, arch, fusion)
    batch = rows.make_batch(torch.tensor([_moving_row(model, rows)]))
    dense, kjt = batch.dense_features, batch.sparse_features
    with torch.no_grad():  # the explained scores are the model's own (fp32)
        outputs, _ = model.model.forward_with_features(dense, kjt)
        _, (_, preds, _) = model(batch)
    attributions = attribute(model, dense, kjt)
    assert FUSED in attributions and set(outputs) <= set(attributions)
    for name, a in attributions.items():
        expected = outputs[name] if name != FUSED else torch.logit(preds[FUSED].double()).float()
        torch.testing.assert_close(a.value, expected, rtol=1e-4, atol=1e-4)
        gap = float(a.value[0] - a.baseline[0])
        total = float(a.dense.sum() + a.features.sum())
        assert abs(gap) > 1e-3, (name, gap)  # a score that moves: completeness is not trivially met
        assert abs(total - gap) <= 0.01 * abs(gap), (arch, name, total, gap)
    fused = fusion_contributions(model, dense, kjt)
    assert fused is not None and set(fused) == {*model.fusion.task_names, "context"}
    gap = float(attributions[FUSED].value[0] - attributions[FUSED].baseline[0])
    assert abs(sum(float(c[0]) for c in fused.values()) - gap) <= 0.01 * abs(gap)


def _linear_model() -> MultiTaskTrain:
    """``score = w . [W dense, pooled_a, pooled_h] + c``: shared-bottom without layers, towers without
    hidden layers, no interactions, a dense MLP kept in its linear range (non-negative weights, no bias,
    non-negative inputs)."""
    torch.manual_seed(1)
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_a", embedding_dim=3, num_embeddings=6, feature_names=["a"]),
        EmbeddingBagConfig(name="t_h", embedding_dim=3, num_embeddings=9, feature_names=["h"],
                           pooling=PoolingType.MEAN)])
    model = MultiTaskModel(ebc, 2, [TaskSpec("y", "regression")], arch="shared_bottom",
                           arch_kwargs={"bottom_layer_sizes": []}, dense_arch_layer_sizes=[], tower_layer_sizes=[],
                           interaction=False)
    for m in model.feature_arch.dense_arch.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.abs_()
                m.bias.zero_()
    return MultiTaskTrain(model).eval()


def test_a_linear_score_gets_exactly_its_known_contributions() -> None:
    train = _linear_model()
    model = train.model
    assert isinstance(model, MultiTaskModel)
    dense = torch.tensor([[0.5, 2.0]])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "h"], values=torch.tensor([4, 1, 2, 7]),
                                              lengths=torch.tensor([1, 3]))
    head = model.towers.heads["y"]
    assert isinstance(head, nn.Linear)
    w = head.weight.detach()[0]  # [dense projection (3), a (3), h (3)]
    dense_linear = next(m for m in model.feature_arch.dense_arch.modules() if isinstance(m, nn.Linear))
    tables = model.feature_arch.sparse_arch.embedding_bag_collection.embedding_bags
    e_a, e_h = tables["t_a"].weight.detach(), tables["t_h"].weight.detach()
    known_dense = (w[:3] @ dense_linear.weight.detach()) * dense[0]
    known_h = [float(e_h[i] @ w[6:]) / 3 for i in (1, 2, 7)]
    a = attribute(train, dense, kjt)["y"]
    torch.testing.assert_close(a.dense[0], known_dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.features[0], torch.stack([e_a[4] @ w[3:6], torch.tensor(sum(known_h))]),
                               rtol=1e-5, atol=1e-6)
    shares = bag_shares(train, kjt, a, "h")[0]
    assert [i for i, _ in shares] == [1, 2, 7]
    torch.testing.assert_close(torch.tensor([s for _, s in shares]), torch.tensor(known_h), rtol=1e-5, atol=1e-6)
    assert abs(float(a.delta[0])) < 1e-5
    pooled = pooled_embeddings(model, kjt)
    ig = IntegratedGradients(lambda d, p: scores_from(train, d, p)["y"])  # Captum's, on a fixed grid: exact here
    by_captum = ig.attribute((dense, pooled), baselines=(dense * 0, pooled * 0), n_steps=8)
    torch.testing.assert_close(by_captum[0], a.dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_captum[1].sum(-1), a.features, rtol=1e-5, atol=1e-6)


def test_explanation_of_a_row_names_features_bags_and_experts(rows: Any) -> None:
    model = _model(rows, "mmoe", "weighted")
    batch = rows.make_batch(torch.tensor([3, 9]))
    with torch.no_grad():
        pooled = pooled_embeddings(model.model, batch.sparse_features)  # type: ignore[arg-type]
        assert set(scores_from(model, batch.dense_features, pooled)) == {*rows.task_names, FUSED}
    explained = explain_rows(model, batch.dense_features, batch.sparse_features)
    assert len(explained) == 2
    e = explained[1]
    for s in e["scores"].values():
        assert set(s["features"]) == {f"dense_{j}" for j in range(rows.num_dense)} | set(rows.feature_names)
        lengths = batch.sparse_features["user_history"].lengths()
        assert len(s["bags"]["user_history"]) == int(lengths[1])
        assert abs(sum(i["attribution"] for i in s["bags"]["user_history"]) - s["features"]["user_history"]) < 1e-5
    assert set(e["gates"]) == set(rows.task_names) and abs(sum(e["gates"]["ctr"].values()) - 1) < 1e-5
    assert set(e["fusion"]) == {*rows.task_names, "context"}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: Any) -> str:
    out = str(tmp_path_factory.mktemp("explain") / "run")
    train(TrainConfig.make(dataset="synthetic", synthetic_rows=1500, synthetic_scale=0.05, world_size=2,
                           batch_size=128, epochs=1, embedding_dim=8, arch="mmoe", num_experts=2,
                           expert_layer_sizes=[8], tower_layer_sizes=[4], dense_arch_layer_sizes=[8],
                           history_length=8, fusion="stacking", sharding_type="row_wise", output_dir=out,
                           progress=False, verbose=False))
    return out


def test_a_world_size_2_checkpoint_explains_as_its_export(sharded_run: str) -> None:
    from_run = load_explainer(sharded_run)
    users, items = [int(from_run.prepared.train.extras["user"][0])] * 2, [int(i) for i in
                                                                          from_run.prepared.train.extras["item"][:2]]
    a = explain_pairs(from_run, users, items)
    b = explain_pairs(load_explainer(export=export_run(sharded_run)), users, items)
    assert not torch.distributed.is_initialized()
    assert [e["item"] for e in a] == items and "fused" in a[0]["scores"]
    for x, y in zip(a, b):
        assert x["gates"] == y["gates"] and x["fusion"] == y["fusion"]
        for name, s in x["scores"].items():
            assert s["features"] == y["scores"][name]["features"] and s["bags"] == y["scores"][name]["bags"]


def test_the_run_records_global_importance_and_draws_it(sharded_run: str) -> None:
    with open(os.path.join(sharded_run, "metrics.json")) as f:
        explain: Dict[str, Any] = json.load(f)["explain"]
    assert explain["rows"] == 256 and set(explain["scores"]) >= {"ctr", "cvr", "fused"}
    assert set(explain["experts"]["ctr"]) == {"expert 0", "expert 1"}
    assert all(v >= 0 for v in explain["scores"]["ctr"].values())
    with open(os.path.join(sharded_run, "report.md")) as f:
        report = f.read()
    assert "report/importance.png" in report and "report/experts.png" in report


def test_the_explain_command_prints_and_writes(sharded_run: str, tmp_path: Any, capsys: Any) -> None:
    extras = load_explainer(sharded_run).prepared.train.extras
    user, item = int(extras["user"][0]), int(extras["item"][1])
    assert main(["explain", "--run", sharded_run, "--user", str(user), "--item", str(item)]) == 0
    text = capsys.readouterr().out
    assert f"user {user}, item {item}" in text and "fused:" in text and "gate ctr:" in text
    out = str(tmp_path / "e.json")
    assert main(["explain", "--run", sharded_run, "--user", str(user), "--item", str(item), "--output", out]) == 0
    with open(out) as f:
        (e,) = json.load(f)
    history = e["scores"]["ctr"]["history"]  # the user's past items, summed over the history bags
    assert e["user"] == user and e["item"] == item and history
    assert sorted(h["attribution"] for h in history)[::-1] == [h["attribution"] for h in history]


def test_recommend_explains_each_item_and_evaluate_records_importance(sharded_run: str, capsys: Any) -> None:
    from torchrec_fusion.commands.evaluate import _explain

    user = int(load_explainer(sharded_run).prepared.train.extras["user"][0])
    assert main(["recommend", "--run", sharded_run, "--user", str(user), "--k", "2", "--explain"]) == 0
    text = capsys.readouterr().out
    assert text.count("    fused: ") == 2 and "because of: " in text  # the ranking score of each item, explained
    explain = _explain(argparse.Namespace(run=sharded_run, allow_plugins=False, data_dir=None),
                       {"checkpoint": load_run(sharded_run)[1], "split": "test"})
    assert explain is not None and explain["split"] == "test" and set(explain["fusion"]) >= {"ctr", "context"}
