"""Unit tests of the plain (unsharded) modules."""

import pytest
import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.losses import LossBalancer, task_losses
from torchrec_fusion.modules import (
    MMoEArch,
    MultiTaskArch,
    MultiTaskModel,
    MultiTaskModule,
    MultiTaskTrain,
    SharedBottomArch,
)
from torchrec_fusion.modules.ensemble import DLRMMember, ModelEnsemble
from torchrec_fusion.tasks import TaskSpec

TASKS = [TaskSpec("click", "binary"), TaskSpec("rating", "regression"), TaskSpec("genre", "multiclass", num_classes=3)]


def _ebc() -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_user", embedding_dim=8, num_embeddings=20, feature_names=["user"]),
        EmbeddingBagConfig(name="t_tags", embedding_dim=8, num_embeddings=30, feature_names=["tags"]),
    ])


def _batch(b: int = 6) -> MultiTaskBatch:
    g = torch.Generator().manual_seed(0)
    tag_lens = torch.tensor([0, 1, 2, 3, 1, 0][:b])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "tags"],
        values=torch.cat([torch.randint(0, 20, (b,), generator=g),
                          torch.randint(0, 30, (int(tag_lens.sum()),), generator=g)]),
        lengths=torch.cat([torch.ones(b, dtype=torch.long), tag_lens]),
    )
    labels = torch.stack([torch.randint(0, 2, (b,), generator=g).float(), torch.rand(b, generator=g) * 5,
                          torch.randint(0, 3, (b,), generator=g).float()], 1)
    return MultiTaskBatch(torch.rand(b, 3, generator=g), kjt, labels, torch.ones(b, 3, dtype=torch.bool),
                          tuple(t.name for t in TASKS))


@pytest.mark.parametrize("arch", ["shared_bottom", "mmoe"])
def test_output_shapes_and_gradients_reach_every_part(arch: str) -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(_ebc(), 3, TASKS, arch=arch)
    b = _batch()
    out = model(b.dense_features, b.sparse_features)
    assert out["click"].shape == (6,) and out["rating"].shape == (6,) and out["genre"].shape == (6, 3)
    loss, (detached, preds, labels) = MultiTaskTrain(model)(b)
    assert not detached.requires_grad and set(preds) == set(labels) == {"click", "rating", "genre"}
    assert torch.allclose(preds["genre"].sum(1), torch.ones(6))
    assert ((preds["click"] > 0) & (preds["click"] < 1)).all()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_mmoe_gates_are_distributions_one_per_task() -> None:
    arch = MMoEArch(10, ["a", "b"], num_experts=5, expert_layer_sizes=[7])
    out = arch(torch.randn(4, 10))
    gates = arch.gate_weights()
    assert set(out) == set(gates) == {"a", "b"} and out["a"].shape == (4, 7)
    for w in gates.values():
        assert w.shape == (4, 5) and (w >= 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(4))
    # the output is the gate-weighted sum of the experts
    x = torch.randn(3, 10)
    expert_out = []
    for e in range(5):  # each expert on its own, as a plain Linear + ReLU
        w, b = arch.experts.expert_layer(e, 0)
        expert_out.append(torch.relu(torch.nn.functional.linear(x, w, b)))
    expect = (arch.gate("b", x).unsqueeze(2) * torch.stack(expert_out, 1)).sum(1)
    torch.testing.assert_close(arch(x)["b"], expect)
    torch.testing.assert_close(arch.gate_weights()["b"], arch.gate("b", x))


def test_shared_bottom_shares_one_representation() -> None:
    arch = SharedBottomArch(6, ["a", "b"], bottom_layer_sizes=[5])
    out = arch(torch.randn(2, 6))
    assert out["a"] is out["b"] and arch.gate_weights() is None


def test_masked_labels_add_no_loss_and_no_gradient() -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(_ebc(), 3, TASKS, arch="mmoe")
    b = _batch()
    b.masks[:, 1] = torch.tensor([True, True, False, False, False, False])
    b.labels[2:, 1] = 1e6  # absent labels: any value must be ignored
    out = model(b.dense_features, b.sparse_features)
    losses = task_losses(TASKS, out, b.labels, b.masks)
    torch.testing.assert_close(losses["rating"], ((out["rating"][:2] - b.labels[:2, 1]) ** 2).mean())
    b.masks[:, 0] = False  # an all-masked task: loss 0 and no gradient, not NaN
    loss, (_, _, labels) = MultiTaskTrain(model)(b)
    assert torch.isfinite(loss) and labels["click"].isnan().all()
    click_only = task_losses(TASKS, model(b.dense_features, b.sparse_features), b.labels, b.masks)["click"]
    assert click_only.item() == 0.0


def test_feature_arch_indexes_embeddings_by_name_not_position() -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(_ebc(), 3, TASKS, arch="shared_bottom")
    b = _batch()
    ref = model(b.dense_features, b.sparse_features)
    # the same features with the keys in the other order give the same outputs
    kjt = b.sparse_features
    swapped = KeyedJaggedTensor.from_lengths_sync(
        keys=["tags", "user"],
        values=torch.cat([kjt["tags"].values(), kjt["user"].values()]),
        lengths=torch.cat([kjt["tags"].lengths(), kjt["user"].lengths()]),
    )
    out = model(b.dense_features, swapped)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])


def test_task_spec_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown kind 'ranking'"):
        TaskSpec("x", "ranking")
    with pytest.raises(ValueError, match="duplicate task names"):
        MultiTaskModel(_ebc(), 3, [TaskSpec("a"), TaskSpec("a")])
    with pytest.raises(ValueError, match="unknown architecture 'moe'"):
        MultiTaskModel(_ebc(), 3, TASKS, arch="moe")
    with pytest.raises(KeyError, match="no task 'ctr'"):
        _batch().label("ctr")


def test_embedding_l2_penalty_is_added_in_training_only() -> None:
    torch.manual_seed(0)
    b = _batch()
    plain = MultiTaskModel(_ebc(), 3, TASKS, arch="shared_bottom")
    reg = MultiTaskModel(_ebc(), 3, TASKS, arch="shared_bottom", embedding_l2=0.5)
    reg.load_state_dict(plain.state_dict())
    loss_plain, _ = MultiTaskTrain(plain)(b)
    loss_reg, _ = MultiTaskTrain(reg)(b)
    pooled = reg.feature_arch.sparse_arch(b.sparse_features)  # B x F x D
    torch.testing.assert_close(loss_reg - loss_plain, 0.5 * pooled.pow(2).sum(dim=(1, 2)).mean())
    reg.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(MultiTaskTrain(reg)(b)[0], MultiTaskTrain(plain)(b)[0])


def test_the_model_families_declare_their_abstract_methods() -> None:
    assert MultiTaskModule.__abstractmethods__ == {"feature_dim", "forward_with_features", "label_columns",
                                                   "regularization", "gate_weights", "shared_parameters"}
    assert MultiTaskArch.__abstractmethods__ == {"forward"}
    assert LossBalancer.__abstractmethods__ == {"forward", "task_weights"}
    for cls in (MultiTaskModel, ModelEnsemble, DLRMMember):
        assert issubclass(cls, MultiTaskModule) and not cls.__abstractmethods__


def test_a_dlrm_member_trains_alone_in_multitask_train() -> None:
    torch.manual_seed(0)
    member = DLRMMember(DLRM(_ebc(), 3, [8], [8, 1]), TASKS[0])
    assert member.label_columns() is None and member.feature_dim == 0
    b = _batch()
    one = MultiTaskBatch(b.dense_features, b.sparse_features, b.labels[:, :1], b.masks[:, :1], ("click",))
    loss, (_, preds, _) = MultiTaskTrain(member)(one)
    loss.backward()
    assert torch.isfinite(loss) and preds["click"].shape == (6,)
    assert all(p.grad is not None for p in member.dlrm.over_arch.parameters())
