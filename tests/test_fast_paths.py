"""The batched fast paths give what the per-task code they replace gives: towers stacked into one
baddbmm per layer, and the task losses computed per kind."""

import copy

import pytest
import torch

from torchrec_fusion.losses.task_losses import task_loss, task_losses
from torchrec_fusion.modules.towers import TaskTowers
from torchrec_fusion.tasks import TaskSpec

TASKS = [TaskSpec("a"), TaskSpec("r", "regression"), TaskSpec("b"), TaskSpec("c", "multiclass", num_classes=3),
         TaskSpec("r2", "regression")]


def _per_task(towers: TaskTowers, rep):
    out = {}
    for name, tower in towers.towers.items():
        y = towers.heads[name](tower(rep[name]))
        out[name] = y.squeeze(1) if y.size(1) == 1 else y
    return out


@pytest.mark.parametrize("tasks", [TASKS, TASKS[:3]], ids=["mixed-heads", "same-heads"])
@pytest.mark.parametrize("layers", [[16, 8], [], [4]])
def test_stacked_towers_match_each_tower_and_its_gradients(tasks, layers) -> None:
    torch.manual_seed(0)
    towers = TaskTowers(8, tasks, layers, dropout=0.3).eval()
    ref = copy.deepcopy(towers)
    rep = {t.name: torch.randn(32, 8) for t in tasks}
    got, want = towers(rep), _per_task(ref, rep)
    g = {n: torch.randn_like(v) for n, v in want.items()}
    sum((got[n] * g[n]).sum() for n in got).backward()
    sum((want[n] * g[n]).sum() for n in want).backward()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(towers.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_stacked_towers_train_with_dropout() -> None:
    torch.manual_seed(0)
    towers = TaskTowers(8, TASKS[:3], [64], dropout=0.5).train()
    rep = {t.name: torch.randn(256, 8) for t in TASKS[:3]}
    a, b = towers(rep), towers(rep)
    assert all(v.shape == (256,) for v in a.values())
    assert not torch.equal(a["a"], b["a"])  # fresh masks every step
    towers.eval()
    assert torch.equal(towers(rep)["r"], towers(rep)["r"])


@pytest.mark.parametrize("weighted", [False, True])
def test_task_losses_per_kind_equal_each_task_loss(weighted: bool) -> None:
    torch.manual_seed(0)
    b = 64
    outputs = {"a": torch.randn(b), "r": torch.randn(b), "b": torch.randn(b), "c": torch.randn(b, 3),
               "r2": torch.randn(b)}
    labels = torch.stack([torch.randint(0, 2, (b,)).float(), torch.randn(b), torch.randint(0, 2, (b,)).float(),
                          torch.randint(0, 3, (b,)).float(), torch.randn(b)], 1)
    masks = torch.rand(b, 5) > 0.3
    masks[:, 2] = False  # a task without labels in this batch: loss 0
    weights = torch.rand(b, 5) if weighted else None
    got = task_losses(TASKS, outputs, labels, masks, weights)
    assert list(got) == [t.name for t in TASKS] and float(got["b"]) == 0.0
    for j, t in enumerate(TASKS):
        want = task_loss(t, outputs[t.name], labels[:, j], masks[:, j], None if weights is None else weights[:, j])
        torch.testing.assert_close(got[t.name], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_dropout_mask_in_the_input_dtype(dtype) -> None:
    """The fused ReLU + dropout keeps its mask in ``x``'s dtype: its output and gradient are
    ``relu(x) * kept * (1 / (1 - p))`` in that dtype (the scale not rounded to it), the kept share is
    ``1 - p`` of the active units."""
    from torchrec_fusion.modules.architectures.base import ReluDropout

    torch.manual_seed(0)
    x = torch.randn(2000, 64).to(dtype).requires_grad_()
    y = ReluDropout(0.25)(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert y.dtype == dtype and x.grad.dtype == dtype
    assert torch.equal(y[kept], x[kept] * (1 / 0.75)) and bool((x[kept] > 0).all())
    assert torch.equal(x.grad, kept.to(dtype) * (1 / 0.75))
    assert abs(float(kept.sum()) / float((x > 0).sum()) - 0.75) < 0.02


def _feature_arch(names, interaction=False):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from torchrec_fusion.modules.features import FeatureArch

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_{n}", embedding_dim=4, num_embeddings=10,
                                                            feature_names=[n]) for n in names])
    return FeatureArch(ebc, dense_in_features=3, interaction=interaction)


def test_feature_vector_by_key_in_any_column_order_and_cast_once() -> None:
    """The feature vector is the dense projection then each feature's pooled embedding by name,
    whatever the order of the (sharded) KeyedTensor's columns; with a dtype it comes in that dtype."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

    arch = _feature_arch(["a", "b", "c"])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "c"], values=torch.tensor([1, 2, 3, 4, 5, 6]),
                                              lengths=torch.ones(6, dtype=torch.long))
    dense = torch.rand(2, 3)
    out, pooled = arch.forward_pooled(dense, kjt)
    want = torch.cat([arch.dense_arch(dense)] + [pooled[n] for n in "abc"], 1)
    torch.testing.assert_close(out, want)
    shuffled = KeyedTensor.from_tensor_list(["c", "a", "b"], [pooled[n] for n in "cab"])
    torch.testing.assert_close(arch._in_feature_order(shuffled, shuffled.to_dict()), want[:, 4:])
    low, _ = arch.forward_pooled(dense, kjt, torch.bfloat16)
    assert low.dtype == torch.bfloat16 and torch.equal(low, want.to(torch.bfloat16))


def test_retain_freed_memory_is_glibc_only_and_can_be_turned_off(monkeypatch) -> None:
    import platform

    from torchrec_fusion.training.allocator import retain_freed_memory

    assert retain_freed_memory() == (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("TORCHREC_FUSION_MALLOC", "default")
    assert retain_freed_memory() is False


def test_feature_vector_with_interactions_comes_in_the_asked_dtype() -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    arch = _feature_arch(["a", "b"], interaction=True)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4]),
                                              lengths=torch.ones(4, dtype=torch.long))
    dense = torch.rand(2, 3)
    full, _ = arch.forward_pooled(dense, kjt)
    low, _ = arch.forward_pooled(dense, kjt, torch.bfloat16)
    assert full.dtype == torch.float32 and low.dtype == torch.bfloat16 and torch.equal(low, full.to(torch.bfloat16))
