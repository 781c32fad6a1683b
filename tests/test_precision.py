"""bf16 autocast of the dense part, and the fused ReLU + dropout of the experts and towers."""

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.modules.architectures.base import StackedExperts, relu_dropout
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.tasks import TaskSpec

TASKS = [TaskSpec("like", "binary"), TaskSpec("rating", "regression")]


def _model(precision: str, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_user", embedding_dim=16, num_embeddings=50, feature_names=["user"]),
        EmbeddingBagConfig(name="t_item", embedding_dim=16, num_embeddings=40, feature_names=["item"]),
    ])
    return MultiTaskModel(ebc, 3, TASKS, arch="mmoe", arch_kwargs={"num_experts": 3, "expert_layer_sizes": [32, 16]},
                          dense_arch_layer_sizes=[16], tower_layer_sizes=[8], interaction=False, dropout=0.0,
                          precision=precision)


def _inputs(b: int = 64):
    g = torch.Generator().manual_seed(1)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.cat([torch.randint(0, 50, (b,), generator=g),
                                                 torch.randint(0, 40, (b,), generator=g)]),
        lengths=torch.ones(2 * b, dtype=torch.int64))
    return torch.rand(b, 3, generator=g), kjt


def test_bf16_outputs_are_fp32_and_close_to_fp32_model() -> None:
    fp32, bf16 = _model("fp32").eval(), _model("bf16").eval()
    bf16.load_state_dict(fp32.state_dict())
    dense, kjt = _inputs()
    a, b = fp32(dense, kjt), bf16(dense, kjt)
    for t in ("like", "rating"):
        assert b[t].dtype == torch.float32
        assert not torch.equal(a[t], b[t])  # the products really ran in bfloat16
        torch.testing.assert_close(b[t], a[t], rtol=0.05, atol=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(w.dtype == torch.float32 for w in bf16.gate_weights().values())


def test_bf16_trains_with_fp32_gradients() -> None:
    torch.manual_seed(0)
    model = MultiTaskTrain(_model("bf16"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dense, kjt = _inputs(256)
    y = torch.stack([(dense[:, 0] > 0.5).float(), 3 * dense[:, 1]], 1)
    from torchrec_fusion.data.batch import MultiTaskBatch

    batch = MultiTaskBatch(dense, kjt, y, torch.ones_like(y, dtype=torch.bool), ("like", "rating"))
    losses = []
    for _ in range(40):
        loss, (_, preds, _) = model(batch)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or (p.grad.dtype == torch.float32 and p.grad.isfinite().all())
                   for p in model.parameters())
        opt.step()
        losses.append(float(loss))
    assert preds["like"].dtype == torch.float32
    assert losses[-1] < 0.5 * losses[0], losses


def test_unknown_precision_is_an_error() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        _model("fp8")


def test_relu_dropout_forward_and_backward() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 300, requires_grad=True)
    y = relu_dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y != 0
    scale = 1 / 0.7
    torch.testing.assert_close(y[kept], x[kept] * scale)
    assert (x[kept] > 0).all()
    torch.testing.assert_close(x.grad, torch.where(kept, g * scale, torch.zeros_like(g)))
    active = (x > 0).sum()
    assert abs(float(kept.sum() / active) - 0.7) < 0.01  # each active unit kept with probability 1 - p
    assert torch.equal(relu_dropout(x, 0.3, training=False), torch.relu(x))


def test_stacked_experts_with_dropout_match_each_expert() -> None:
    """Every expert unit is either dropped (0) or its own MLP's value / (1 - p) given the kept
    units of the layer before; in eval, exactly each expert's MLP."""
    torch.manual_seed(0)
    experts = StackedExperts(12, num_experts=3, layer_sizes=[20, 6], dropout=0.5)
    x = torch.rand(64, 12)
    experts.eval()
    out = experts(x)
    for e in range(3):
        (w0, b0), (w1, b1) = experts.expert_layer(e, 0), experts.expert_layer(e, 1)
        torch.testing.assert_close(out[:, e], torch.relu(torch.relu(x @ w0.T + b0) @ w1.T + b1))
    experts.train()
    y = experts(x)
    assert y.shape == (64, 3, 6) and (y >= 0).all() and 0.05 < float((y == 0).float().mean()) < 0.95


def test_auto_precision_reads_the_cpu_flags(tmp_path, monkeypatch) -> None:
    from torchrec_fusion.training import precision as p

    intel = tmp_path / "cpuinfo"
    intel.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\nprocessor\t: 1\n")
    assert p.cpu_flags(str(intel)) >= {"avx2", "avx512f"} and not p.native_bf16(p.cpu_flags(str(intel)))
    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: fpu avx512f amx_tile amx_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd bf16 i8mm\n")
    assert p.native_bf16(p.cpu_flags(str(amx))) and p.native_bf16(p.cpu_flags(str(arm)))
    assert p.cpu_flags(str(tmp_path / "absent")) == set()  # not Linux: fp32
    # the CPU's capability mocked: no native bf16 falls back to fp32, native picks bf16; asked wins
    monkeypatch.setattr(p, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "avx512f"})
    assert p.resolve_precision("auto", "cpu")[0] == "fp32"
    assert p.resolve_precision("bf16", "cpu") == ("bf16", "asked")
    assert p.resolve_precision("auto", "cuda")[0] == "fp32"
    monkeypatch.setattr(p, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512f", "avx512_bf16"})
    assert p.resolve_precision("auto", "cpu")[0] == "bf16"
    assert p.resolve_precision("fp32", "cpu")[0] == "fp32"


@pytest.mark.parametrize("flags,expected", [({"avx2"}, "fp32"), ({"amx_bf16"}, "bf16")])
def test_default_config_builds_the_resolved_precision(monkeypatch, flags, expected) -> None:
    from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
    from torchrec_fusion.training import precision as p
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.factory import build_train_model

    monkeypatch.setattr(p, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    config = TrainConfig.make(device="cpu")
    assert config.precision == "auto"
    train, _ = make_synthetic(SyntheticConfig(num_rows=64, seed=0))
    assert build_train_model(config, train, device="cpu").model.precision == expected
