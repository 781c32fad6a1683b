"""PLE/CGC, ESMM, AITM and the single-task baseline: shapes, gradients, gates, hand computations."""

import inspect
import math
from typing import Dict, List, Sequence

import pytest
import torch
import torch.nn.functional as F
from torchrec.distributed.train_pipeline.tracing import Tracer
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.losses import task_losses
from torchrec_fusion.modules import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.modules.architectures import (
    ARCHITECTURES,
    AITMArch,
    CGCArch,
    ESMMArch,
    PLEArch,
    SingleTaskArch,
    build_architecture,
)
from torchrec_fusion.modules.architectures.esmm import ctcvr_logit
from torchrec_fusion.registry import options_dict
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig

TASKS = [TaskSpec("click", "binary"), TaskSpec("rating", "regression"), TaskSpec("genre", "multiclass", num_classes=3)]
ESMM_TASKS = [TaskSpec("click", "binary"), TaskSpec("ctcvr", "binary")]
SMALL = {
    "ple": {"num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1, "expert_layer_sizes": [12, 8]},
    "cgc": {"num_shared_experts": 1, "num_task_experts": 2, "expert_layer_sizes": [8]},
    "esmm": {"task_layer_sizes": [12, 8]},
    "aitm": {"task_layer_sizes": [12, 8]},
    "single_task": {"task_layer_sizes": [12, 8]},
}
NEW = sorted(SMALL)


def _tasks(arch: str) -> List[TaskSpec]:
    return ESMM_TASKS if arch == "esmm" else TASKS


def _ebc() -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_user", embedding_dim=8, num_embeddings=20, feature_names=["user"]),
        EmbeddingBagConfig(name="t_tags", embedding_dim=8, num_embeddings=30, feature_names=["tags"]),
    ])


def _batch(tasks: Sequence[TaskSpec], b: int = 8) -> MultiTaskBatch:
    g = torch.Generator().manual_seed(0)
    tag_lens = torch.tensor([0, 1, 2, 3, 1, 0, 2, 1][:b])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "tags"],
        values=torch.cat([torch.randint(0, 20, (b,), generator=g),
                          torch.randint(0, 30, (int(tag_lens.sum()),), generator=g)]),
        lengths=torch.cat([torch.ones(b, dtype=torch.long), tag_lens]),
    )
    cols = {"binary": lambda: torch.randint(0, 2, (b,), generator=g).float(),
            "regression": lambda: torch.rand(b, generator=g) * 5,
            "multiclass": lambda: torch.randint(0, 3, (b,), generator=g).float()}
    labels = torch.stack([cols[t.kind.value]() for t in tasks], 1)
    return MultiTaskBatch(torch.rand(b, 3, generator=g), kjt, labels, torch.ones(b, len(tasks), dtype=torch.bool),
                          tuple(t.name for t in tasks))


def _model(arch: str) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(_ebc(), 3, _tasks(arch), arch=arch, arch_kwargs=SMALL[arch], tower_layer_sizes=[16])


def test_registry_and_config_build_every_new_arch() -> None:
    assert {"ple", "cgc", "esmm", "aitm", "single_task"} <= set(ARCHITECTURES)
    for name in NEW:
        arch = build_architecture(name, 10, ["a", "b"], options=TrainConfig.make(arch=name).member_options("arch"))
        out = arch(torch.randn(3, 10))
        assert set(out) == {"a", "b"} and out["a"].shape == (3, arch.out_features)
    ple = TrainConfig.make(arch="ple", num_levels=3).member_options("arch")
    assert len(build_architecture("ple", 10, ["a"], options=ple).levels) == 3
    cgc = TrainConfig.make(arch="cgc").member_options("arch")
    assert len(build_architecture("cgc", 10, ["a"], options=cgc).levels) == 1


@pytest.mark.parametrize("arch", NEW)
def test_shapes_and_every_parameter_gets_a_gradient(arch: str) -> None:
    model = _model(arch)
    b = _batch(_tasks(arch))
    out = model(b.dense_features, b.sparse_features)
    for t in _tasks(arch):
        assert out[t.name].shape == ((8, 3) if t.kind.value == "multiclass" else (8,))
    loss, (_, preds, labels) = MultiTaskTrain(model)(b)
    assert set(preds) == set(labels) == {t.name for t in _tasks(arch)}
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize("arch", NEW)
def test_a_masked_task_contributes_nothing(arch: str) -> None:
    model = _model(arch)
    tasks = _tasks(arch)
    b = _batch(tasks)
    off = tasks[-1].name
    b.masks[:, -1] = False
    b.labels[:, -1] = 1e6  # absent labels: any value is ignored
    b.masks[4:, 0] = False
    b.labels[4:, 0] = 7.0
    loss, (_, _, labels) = MultiTaskTrain(model)(b)
    assert torch.isfinite(loss) and labels[off].isnan().all()
    out = model(b.dense_features, b.sparse_features)
    losses = task_losses(tasks, out, b.labels, b.masks)
    assert losses[off].item() == 0.0
    torch.testing.assert_close(loss, sum(losses[t.name] for t in tasks[:-1]))
    torch.testing.assert_close(losses[tasks[0].name],
                               F.binary_cross_entropy_with_logits(out[tasks[0].name][:4], b.labels[:4, 0]))
    loss.backward()
    for p in list(model.towers.towers[off].parameters()) + list(model.towers.heads[off].parameters()):
        assert p.grad is None or not p.grad.any()
    assert model.towers.heads[tasks[0].name].weight.grad.any()


@pytest.mark.parametrize("arch", NEW)
def test_model_forward_traces_like_the_sparse_dist_pipeline(arch: str) -> None:
    """TrainPipelineSparseDist fx-traces the model with the arch, towers and features as leaves:
    ``combine_outputs`` runs on proxies, so it must not branch on tensor values."""
    graph = Tracer(leaf_modules=["feature_arch", "task_arch", "towers"]).trace(_model(arch))
    assert any(n.op == "call_module" and n.target == "task_arch" for n in graph.nodes)


def _by_hand_level(level, inputs: Dict[str, torch.Tensor], shared: torch.Tensor):
    """One extraction level written out expert by expert, for comparison."""
    shared_out = [e(shared) for e in level.shared_experts]
    own = {t: [e(inputs[t]) for e in level.task_experts[t]] for t in inputs}
    out = {}
    for t in inputs:
        w = torch.softmax(level.task_gates[t](inputs[t]), 1)
        experts = own[t] + shared_out
        out[t] = sum(w[:, i : i + 1] * experts[i] for i in range(len(experts)))
    nxt = None
    if level.shared_gate is not None:
        every = [e for t in inputs for e in own[t]] + shared_out
        w = torch.softmax(level.shared_gate(shared), 1)
        nxt = sum(w[:, i : i + 1] * every[i] for i in range(len(every)))
    return out, nxt


def test_ple_one_level_is_cgc_by_hand_and_two_levels_route_the_shared_gate() -> None:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    x = torch.randn(5, 10)
    ple1 = PLEArch(10, names, num_levels=1, num_shared_experts=2, num_task_experts=2, expert_layer_sizes=[7, 6])
    assert ple1.levels[0].shared_gate is None
    expect, _ = _by_hand_level(ple1.levels[0], dict.fromkeys(names, x), x)
    out = ple1(x)
    cgc = CGCArch(10, names, num_shared_experts=2, num_task_experts=2, expert_layer_sizes=[7, 6])
    cgc.load_state_dict(ple1.state_dict())
    for t in names:
        torch.testing.assert_close(out[t], expect[t])
        torch.testing.assert_close(cgc(x)[t], expect[t])

    ple2 = PLEArch(10, names, num_levels=2, num_shared_experts=2, num_task_experts=1, expert_layer_sizes=[6])
    h, s = _by_hand_level(ple2.levels[0], dict.fromkeys(names, x), x)
    assert s is not None and s.shape == (5, 6)
    expect, none = _by_hand_level(ple2.levels[1], h, s)
    assert none is None
    out = ple2(x)
    for t in names:
        torch.testing.assert_close(out[t], expect[t])
    # the stored gates are the last level's: own experts first, then shared
    gates = ple2.gate_weights()
    torch.testing.assert_close(gates["b"], torch.softmax(ple2.levels[1].task_gates["b"](h["b"]), 1))


@pytest.mark.parametrize("arch, width", [("ple", 2 + 1), ("cgc", 1 + 2), ("aitm", 2)])
def test_gate_rows_are_distributions(arch: str, width: int) -> None:
    torch.manual_seed(0)
    a = build_architecture(arch, 10, ["a", "b", "c"], **SMALL[arch])
    a(torch.randn(6, 10) * 5)
    gates = a.gate_weights()
    assert set(gates) == ({"b", "c"} if arch == "aitm" else {"a", "b", "c"})
    for w in gates.values():
        assert w.shape == (6, width) and (w >= 0).all() and not w.requires_grad
        torch.testing.assert_close(w.sum(1), torch.ones(6))


def test_aitm_transfers_along_the_task_order() -> None:
    torch.manual_seed(0)
    arch = AITMArch(10, ["imp", "click", "buy"], task_layer_sizes=[9], attention_dim=4)
    x = torch.randn(5, 10)
    out = arch(x)
    torch.testing.assert_close(out["imp"], arch.task_mlps["imp"](x))
    for prev, t in [("imp", "click"), ("click", "buy")]:
        p, q = arch.transfers[t](out[prev]), arch.task_mlps[t](x)
        ait = arch.ait[t]
        logits = torch.stack([(ait.h1(u) * ait.h2(u)).sum(1) / math.sqrt(4) for u in (p, q)], 1)
        w = torch.softmax(logits, 1)
        torch.testing.assert_close(arch.gate_weights()[t], w)
        torch.testing.assert_close(out[t], w[:, :1] * ait.h3(p) + w[:, 1:] * ait.h3(q))
    # the last task's loss reaches the first task's MLP through the transfers
    out["buy"].sum().backward()
    assert arch.task_mlps["imp"][0].weight.grad.any()


def test_single_task_shares_no_dense_parameter() -> None:
    torch.manual_seed(0)
    arch = SingleTaskArch(6, ["a", "b"], task_layer_sizes=[5])
    out = arch(torch.randn(3, 6))
    out["a"].sum().backward()
    assert arch.task_mlps["a"][0].weight.grad.any() and arch.task_mlps["b"][0].weight.grad is None
    assert arch.gate_weights() is None


def _reference_ctcvr_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit(s(a) s(b)) in float64 via log p - log1mexp(log p), independently of the arch's formula."""
    log_p = F.logsigmoid(a.double()) + F.logsigmoid(b.double())
    log1mexp = torch.where(log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
    return log_p - log1mexp


def test_esmm_ctcvr_output_is_the_product_of_probabilities() -> None:
    grid = torch.linspace(-30, 30, 61)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    a, b = a.flatten(), b.flatten()
    ref = _reference_ctcvr_logit(a, b)
    # float64: exact to 1e-6 over the whole grid, extreme logits included
    torch.testing.assert_close(ctcvr_logit(a.double(), b.double()), ref, rtol=0, atol=1e-6)
    # float32 (training precision): finite everywhere, exact to float32 rounding
    a32, b32 = a.clone().requires_grad_(), b.clone().requires_grad_()
    y = ctcvr_logit(a32, b32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-5)
    y.sum().backward()
    assert torch.isfinite(a32.grad).all() and torch.isfinite(b32.grad).all()
    # mid-range: the naive formula agrees
    mid = a.abs().le(8) & b.abs().le(8)
    naive = torch.logit(torch.sigmoid(a[mid].double()) * torch.sigmoid(b[mid].double()))
    torch.testing.assert_close(ref[mid], naive, rtol=0, atol=1e-6)


def test_esmm_model_outputs_ctr_and_ctcvr_and_keeps_pcvr() -> None:
    model = _model("esmm")
    b = _batch(ESMM_TASKS)
    heads = model.towers(model.task_arch(model.feature_arch(b.dense_features, b.sparse_features)))
    out = model(b.dense_features, b.sparse_features)
    torch.testing.assert_close(out["click"], heads["click"])
    p = torch.sigmoid(heads["click"].double()) * torch.sigmoid(heads["ctcvr"].double())
    torch.testing.assert_close(torch.sigmoid(out["ctcvr"].double()), p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.task_arch.cvr_probability(), torch.sigmoid(heads["ctcvr"]).detach())
    with pytest.raises(ValueError, match="exactly two binary tasks"):
        ESMMArch(4, ["a", "b", "c"])


@pytest.mark.parametrize("arch, balancing", [("ple", "uncertainty"), ("cgc", "fixed"), ("aitm", "dwa"),
                                             ("single_task", "fixed"), ("esmm", "fixed")])
def test_trains_sharded_over_two_processes(arch: str, balancing: str) -> None:
    from torchrec_fusion.training.trainer import train

    # ESMM: a click task and the click-and-convert label over every impression
    tasks = ["ctr", "ctcvr"] if arch == "esmm" else None
    sizes = {"expert_layer_sizes": [16]} if arch in ("ple", "cgc") else {"task_layer_sizes": [16]}
    result = train(TrainConfig.make(dataset="synthetic", synthetic_rows=3000, synthetic_scale=0.05, epochs=1,
                                    world_size=2, batch_size=64, arch=arch, balancing=balancing, embedding_dim=8,
                                    tower_layer_sizes=[8], tasks=tasks, progress=False, verbose=False, **sizes))
    assert result["world_size"] == 2 and len(result["step_losses"]) > 10
    assert all(math.isfinite(v) for v in result["step_losses"])
    for task in tasks or ("ctr", "cvr", "watch_time", "ctcvr"):
        assert all(math.isfinite(v) for v in result["tasks"][task].values())


# today's defaults (those the CLI has always used), per architecture
ARCH_DEFAULTS = {
    "mmoe": {"num_experts": 4, "expert_layer_sizes": [64]},
    "ple": {"num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1, "expert_layer_sizes": [128, 64]},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 1, "expert_layer_sizes": [128, 64]},
    "shared_bottom": {"bottom_layer_sizes": [128, 64]},
    "single_task": {"task_layer_sizes": [128, 64]},
    "esmm": {"task_layer_sizes": [128, 64], "chain": [], "chain_loss_weight": 1.0},
    "aitm": {"task_layer_sizes": [128, 64], "attention_dim": None, "chain": [], "chain_loss_weight": 1.0},
}


def _constructor_defaults(cls: type, names: Sequence[str]) -> Dict[str, object]:
    params = inspect.signature(cls).parameters
    return {n: list(d) if isinstance(d := params[n].default, tuple) else d for n in names}


@pytest.mark.parametrize("name", sorted(ARCH_DEFAULTS))
def test_arch_options_defaults_are_todays_and_the_constructors(name: str) -> None:
    assert set(ARCHITECTURES) == set(ARCH_DEFAULTS)
    expected = ARCH_DEFAULTS[name]
    assert options_dict(ARCHITECTURES.options(name)) == expected
    assert _constructor_defaults(ARCHITECTURES[name], list(expected)) == expected
    # built from the defaults: the same modules as built with those options spelt out
    torch.manual_seed(0)
    built = build_architecture(name, 10, ["a", "b"], dropout=0.1)
    torch.manual_seed(0)
    explicit = ARCHITECTURES[name](10, ["a", "b"], dropout=0.1, **expected)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
    assert built.out_features == 64


def test_arch_options_merge_with_keywords_and_reach_the_model() -> None:
    ple = build_architecture("ple", 10, ["a"], options={"num_levels": 3}, num_shared_experts=1)
    assert len(ple.levels) == 3 and len(ple.levels[0].shared_experts) == 1
    model = MultiTaskModel(_ebc(), 3, TASKS, arch="mmoe", arch_kwargs={"num_experts": 3, "dropout": 0.25})
    assert model.task_arch.num_experts == 3 and model.task_arch.experts.act.p == 0.25


@pytest.mark.parametrize("name, options, message", [
    ("mmoe", {"experts": 3}, r"unknown option\(s\) \['experts'\]"),
    ("mmoe", {"num_experts": "4"}, r"num_experts: expected an integer"),
    ("mmoe", {"num_experts": 2.0}, r"num_experts: expected an integer"),
    ("mmoe", {"expert_layer_sizes": [64, "x"]}, r"expert_layer_sizes\[1\]: expected an integer"),
    ("shared_bottom", {"bottom_layer_sizes": 64}, r"bottom_layer_sizes: expected a list"),
    ("cgc", {"num_levels": 2}, r"unknown option\(s\) \['num_levels'\]"),
    ("aitm", {"attention_dim": "wide"}, r"attention_dim: expected an integer"),
])
def test_unknown_or_mistyped_arch_options_are_value_errors(name: str, options: Dict[str, object],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_architecture(name, 10, ["a", "b"], options=options)
    with pytest.raises(ValueError, match=message):
        MultiTaskModel(_ebc(), 3, ESMM_TASKS, arch=name, arch_kwargs=options)


def test_unknown_architecture_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'moe'; choose one of \['aitm'"):
        build_architecture("moe", 10, ["a"])


def test_aitm_attention_dim_option_sets_the_attention_width() -> None:
    arch = build_architecture("aitm", 8, ["a", "b", "c"], options={"task_layer_sizes": [16], "attention_dim": 4})
    for t in ("b", "c"):
        ait = arch.ait[t]
        assert ait.h1.out_features == ait.h2.out_features == 4 and ait.h3.out_features == 16
        assert ait.scale == pytest.approx(0.5)
    default = build_architecture("aitm", 8, ["a", "b"], options={"task_layer_sizes": [16]})
    assert default.ait["b"].h1.out_features == 16  # the representation width
    with pytest.raises(ValueError, match="attention_dim >= 1"):
        build_architecture("aitm", 8, ["a", "b"], options={"attention_dim": 0})
