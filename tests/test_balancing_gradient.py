"""GradNorm and PCGrad: known effects on small problems, the model wiring, and sharded training."""

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.losses import FixedWeights, build_balancer
from torchrec_fusion.losses.balancing.pcgrad import project_conflicting
from torchrec_fusion.modules import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train

REG = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]


def test_pcgrad_leaves_agreeing_gradients_alone_and_projects_conflicts() -> None:
    g = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    torch.testing.assert_close(project_conflicting(g, torch.tensor([1, 0])), g.sum(0))
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
    out = project_conflicting(g, torch.tensor([0, 1, 2]))
    # by hand: g1 (conflicts with g2): [1,0,0] - (-1/2)[-1,1,0] = [0.5,0.5,0]; then g1.g3 = -0.5 < 0:
    #   - (-0.5/2)[0,-1,1] = [0.5,0.25,0.25]
    # g2: vs g1 dot -1 -> [-1,1,0] + [1,0,0] = [0,1,0]; vs g3 dot -1 -> [0,1,0] + 0.5[0,-1,1] = [0,0.5,0.5]
    # g3: vs g1 dot 0; vs g2 dot -1 -> [0,-1,1] + 0.5[-1,1,0] = [-0.5,-0.5,1]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 1.75]))


def test_gradnorm_gives_the_task_with_the_larger_gradient_the_smaller_weight() -> None:
    theta = torch.nn.Parameter(torch.zeros(2))
    b = build_balancer("gradnorm", REG, alpha=0.0)  # alpha 0: equalise w_t * ||grad L_t||
    b.bind(lambda: [theta])
    opt = torch.optim.Adam([theta, b.task_weight_param], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        losses = {"a": 100 * (theta[0] - 1) ** 2 + 1, "b": (theta[1] - 1) ** 2 + 1}
        b(losses).backward()
        opt.step()
    w = b.task_weights()
    assert w["b"] > 3 * w["a"], w
    with torch.no_grad():  # weights are renormalised to sum to the number of tasks before each step
        b({"a": torch.tensor(1.0, requires_grad=True), "b": torch.tensor(1.0, requires_grad=True)})
    assert abs(sum(b.task_weights().values()) - 2) < 1e-5


def _model_and_batch(arch: str = "mmoe"):
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t_u", embedding_dim=4, num_embeddings=10,
                                                            feature_names=["u"])])
    kwargs = {"num_experts": 2, "expert_layer_sizes": [8]} if arch == "mmoe" else {"bottom_layer_sizes": [8]}
    model = MultiTaskModel(ebc, 2, REG, arch=arch, arch_kwargs=kwargs, tower_layer_sizes=[4])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["u"], values=torch.arange(8) % 10,
                                              lengths=torch.ones(8, dtype=torch.long))
    labels = torch.stack([torch.full((8,), 3.0), torch.full((8,), -3.0)], 1)
    batch = MultiTaskBatch(torch.randn(8, 2), kjt, labels, torch.ones(8, 2, dtype=torch.bool), ("a", "b"))
    return model, batch


def test_pcgrad_in_the_model_changes_only_the_shared_gradients() -> None:
    model, batch = _model_and_batch("shared_bottom")
    # identical towers and mirrored targets: the two tasks' shared gradients are opposite, so
    # PCGrad projects each onto the other's normal plane and both become 0 (the plain sum is -g_a)
    model.towers.towers["b"].load_state_dict(model.towers.towers["a"].state_dict())
    model.towers.heads["b"].load_state_dict(model.towers.heads["a"].state_dict())
    with torch.no_grad():  # b's residuals are -2 x a's, row by row: g_b = -2 g_a exactly
        batch.labels[:, 1] = 3 * model(batch.dense_features, batch.sparse_features)["a"] - 2 * batch.labels[:, 0]
    grads = {}
    for name, balancer in (("fixed", FixedWeights(REG)), ("pcgrad", build_balancer("pcgrad", REG))):
        model.zero_grad()
        loss, _ = MultiTaskTrain(model, balancer)(batch)
        loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    shared = {n for n, p in model.named_parameters() if any(p is q for q in model.shared_parameters())}
    assert shared and all(n.startswith(("task_arch", "feature_arch.dense_arch")) for n in shared)
    for n in grads["fixed"]:
        if n in shared:
            assert grads["pcgrad"][n].abs().max() < 1e-6, n
        else:  # towers and embeddings keep the plain gradient
            torch.testing.assert_close(grads["pcgrad"][n], grads["fixed"][n])
    assert max(grads["fixed"][n].abs().max() for n in shared) > 1e-3


def test_gradient_balancers_are_inert_in_eval() -> None:
    model, batch = _model_and_batch()
    train = MultiTaskTrain(model, build_balancer("gradnorm", REG)).eval()
    with torch.no_grad():
        loss, _ = train(batch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch, balancing", [("mmoe", "pcgrad"), ("shared_bottom", "gradnorm")])
def test_gradient_balancing_trains_sharded_with_fused_embeddings(arch: str, balancing: str) -> None:
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=4000, synthetic_scale=0.05, epochs=1, world_size=2,
                               batch_size=64, arch=arch, balancing=balancing, progress=False, verbose=False))
    assert all(torch.isfinite(torch.tensor(r["step_losses"])))
    assert r["tasks"]["ctr"]["auc"] > 0.55
    if balancing == "gradnorm":
        w = r["task_weights"]
        assert abs(sum(w.values()) - len(w)) < 1e-4 and len({round(v, 4) for v in w.values()}) > 1, w



@pytest.mark.parametrize("alpha, gap", [(0.0, 9.0), (2.0, 13 / 9 + 2 / 9)])
def test_gradnorm_alpha_option_sets_the_target_norms(alpha: float, gap: float) -> None:
    theta = torch.nn.Parameter(torch.ones(2))
    b = build_balancer("gradnorm", REG, options={"alpha": alpha})
    b.bind(lambda: [theta])
    b({"a": (theta**2).sum(), "b": 10 * theta.sum()})  # the first losses: 2 and 20
    with torch.no_grad():
        theta.mul_(0.5)
    loss = b({"a": (theta**2).sum(), "b": 10 * theta.sum()})
    # losses 0.5 and 10 (ratios 1/4 and 1/2: r = [2/3, 4/3]); w = [1, 1]; G = [1, 10] sqrt(2), mean 5.5 sqrt(2);
    # target = 5.5 sqrt(2) r^alpha: alpha 0 -> |1 - 5.5| + |10 - 5.5| = 9; alpha 2 -> |1 - 22/9| + |10 - 88/9|
    assert loss.item() == pytest.approx(0.5 + 10 + gap * 2**0.5, rel=1e-5)


def test_pcgrad_seed_option_sets_the_projection_order() -> None:
    # three gradients 120 degrees apart, each in conflict with the other two: the order matters
    dirs = torch.tensor([[1.0, 0.0], [-0.5, 0.75**0.5], [-0.5, -(0.75**0.5)]]) * torch.tensor([[1.0], [2.0], [3.0]])
    tasks = [TaskSpec(t, "regression") for t in "abc"]

    def grads(seed: int) -> torch.Tensor:
        theta = torch.nn.Parameter(torch.zeros(2))
        b = build_balancer("pcgrad", tasks, options={"seed": seed})
        b.bind(lambda: [theta])
        out = []
        for _ in range(4):
            theta.grad = None
            b({t: theta @ d for t, d in zip("abc", dirs)}).backward()
            out.append(theta.grad.clone())
        return torch.stack(out)

    assert torch.equal(grads(0), grads(0)) and torch.equal(grads(7), grads(7))
    assert not torch.equal(grads(0), grads(7))
