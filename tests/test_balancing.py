"""Loss balancers: uncertainty weighting (Kendall et al.) and Dynamic Weight Average (Liu et al.)."""

import inspect
import math
from typing import Dict, List

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_fusion.losses import BALANCERS, build_balancer
from torchrec_fusion.losses.balancing import DynamicWeightAverage, UncertaintyWeighting
from torchrec_fusion.modules import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.registry import options_dict
from torchrec_fusion.tasks import TaskSpec


def _t(**losses: float) -> Dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in losses.items()}


def test_registry() -> None:
    assert {"fixed", "uncertainty", "dwa"} <= set(BALANCERS)
    assert isinstance(build_balancer("uncertainty", [TaskSpec("a")]), UncertaintyWeighting)
    assert isinstance(build_balancer("dwa", [TaskSpec("a")], window=5), DynamicWeightAverage)


def test_uncertainty_loss_formula_and_start() -> None:
    tasks = [TaskSpec("c", "binary"), TaskSpec("r", "regression", loss_weight=0.25)]
    b = UncertaintyWeighting(tasks)
    # starts where the effective weights are the loss_weights
    assert b.task_weights() == pytest.approx({"c": 1.0, "r": 0.25})
    with torch.no_grad():
        b.log_variance.copy_(torch.tensor([0.3, -0.7]))
    got = b(_t(c=2.0, r=3.0))
    expect = math.exp(-0.3) * 2.0 + 0.15 + 0.5 * math.exp(0.7) * 3.0 - 0.35
    assert got.item() == pytest.approx(expect, rel=1e-6)
    assert b.task_weights() == pytest.approx({"c": math.exp(-0.3), "r": 0.5 * math.exp(0.7)})
    with pytest.raises(ValueError, match="loss_weight > 0"):
        UncertaintyWeighting([TaskSpec("a", loss_weight=0.0)])


def test_uncertainty_reaches_the_closed_form_optimum_for_fixed_losses() -> None:
    tasks = [TaskSpec("r_small", "regression"), TaskSpec("r_big", "regression"), TaskSpec("c", "binary")]
    losses = _t(r_small=0.05, r_big=4.0, c=0.3)
    b = UncertaintyWeighting(tasks)
    opt = torch.optim.Adam(b.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        b(losses).backward()
        opt.step()
    var = b.log_variance.detach().exp()
    # regression: exp(s) = L; classification: exp(s) = 2 L; effective weight 1 / (2 L) for both
    torch.testing.assert_close(var, torch.tensor([0.05, 4.0, 0.6]), rtol=1e-3, atol=0)
    w = b.task_weights()
    assert w == pytest.approx({k: 1 / (2 * v.item()) for k, v in losses.items()}, rel=1e-3)
    assert w["r_big"] < w["c"] < w["r_small"]


def test_uncertainty_learns_the_label_noise_of_two_regression_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    w_true = torch.randn(4, 2, generator=g)
    noise = torch.tensor([0.1, 1.0])  # task "quiet" has 10x less label noise than "noisy"
    y = x @ w_true + torch.randn(512, 2, generator=g) * noise
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    b = UncertaintyWeighting([TaskSpec("quiet", "regression"), TaskSpec("noisy", "regression")])
    opt = torch.optim.Adam(list(model.parameters()) + list(b.parameters()), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        mse = ((model(x) - y) ** 2).mean(0)
        b({"quiet": mse[0], "noisy": mse[1]}).backward()
        opt.step()
    mse = ((model(x) - y) ** 2).mean(0).detach()
    var = b.log_variance.detach().exp()
    torch.testing.assert_close(var, mse, rtol=0.01, atol=0)  # the optimum exp(s_t) = L_t
    torch.testing.assert_close(var, noise**2, rtol=0.2, atol=0)  # ... which is the label noise
    w = b.task_weights()
    assert w["noisy"] < w["quiet"] / 20


def test_uncertainty_parameters_live_in_the_training_wrapper() -> None:
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
    tasks = [TaskSpec("a"), TaskSpec("b", "regression")]
    train = MultiTaskTrain(MultiTaskModel(ebc, 1, tasks, arch="shared_bottom"), build_balancer("uncertainty", tasks))
    assert "balancer.log_variance" in dict(train.named_parameters())
    assert "balancer.log_variance" in train.state_dict()


def _feed(b: DynamicWeightAverage, steps: List[Dict[str, float]]) -> List[Dict[str, float]]:
    out = []
    for losses in steps:
        b(_t(**losses))
        out.append(b.task_weights())
    return out


def _decay(n: int, fast: float = 0.8, slow: float = 0.97) -> List[Dict[str, float]]:
    return [{"fast": 2.0 * fast**i, "slow": 1.0 * slow**i} for i in range(n)]


def test_dwa_equal_weights_until_two_windows_then_favours_the_slower_task() -> None:
    b = DynamicWeightAverage([TaskSpec("fast"), TaskSpec("slow")], window=3, temperature=2.0)
    weights = _feed(b, _decay(12))
    assert all(w == {"fast": 1.0, "slow": 1.0} for w in weights[:5])
    for w in weights[5:]:
        assert w["slow"] > w["fast"] and w["fast"] + w["slow"] == pytest.approx(2.0)
    # exactly the paper's formula over the window means
    means = [[sum(_decay(12)[i][k] for i in range(j * 3, j * 3 + 3)) / 3 for k in ("fast", "slow")] for j in (2, 3)]
    r = torch.tensor(means[1]) / torch.tensor(means[0])
    expect = 2 * torch.softmax(r / 2.0, 0)
    assert weights[-1] == pytest.approx({"fast": expect[0].item(), "slow": expect[1].item()}, rel=1e-5)
    # the loss is sum_t w_t L_t with the current weights, no gradient through them
    la, lb = torch.tensor(0.5, requires_grad=True), torch.tensor(0.25, requires_grad=True)
    loss = b({"fast": la, "slow": lb})
    w = b.task_weights()
    assert loss.item() == pytest.approx(w["fast"] * 0.5 + w["slow"] * 0.25, rel=1e-6)
    loss.backward()
    assert la.grad.item() == pytest.approx(w["fast"]) and lb.grad.item() == pytest.approx(w["slow"])


def test_dwa_three_tasks_sum_and_loss_weights() -> None:
    tasks = [TaskSpec("a"), TaskSpec("b"), TaskSpec("c")]
    b = DynamicWeightAverage(tasks, window=2)
    steps = [{"a": 1.0 * 0.5**i, "b": 1.0 * 0.9**i, "c": 1.0 * 1.1**i} for i in range(10)]
    w = _feed(b, steps)[-1]
    assert sum(w.values()) == pytest.approx(3.0) and w["c"] > w["b"] > w["a"]
    scaled = DynamicWeightAverage([TaskSpec("a", loss_weight=2.0), TaskSpec("b"), TaskSpec("c")], window=2)
    ws = _feed(scaled, steps)[-1]
    assert ws == pytest.approx({"a": 2 * w["a"], "b": w["b"], "c": w["c"]})


def test_dwa_state_survives_state_dict_and_eval_does_not_update() -> None:
    tasks = [TaskSpec("fast"), TaskSpec("slow")]
    steps = _decay(14)
    a = DynamicWeightAverage(tasks, window=4)
    _feed(a, steps[:10])  # two complete windows and one half done
    b = DynamicWeightAverage(tasks, window=4)
    b.load_state_dict(a.state_dict())
    assert b.task_weights() == a.task_weights()
    assert _feed(a, steps[10:]) == _feed(b, steps[10:])
    assert a.task_weights() != {"fast": 1.0, "slow": 1.0}
    state = {k: v.clone() for k, v in a.state_dict().items()}
    a.eval()
    _feed(a, steps)
    assert all(torch.equal(state[k], v) for k, v in a.state_dict().items())


# today's defaults, per balancer (fixed and uncertainty take no options)
BALANCER_DEFAULTS = {
    "fixed": {},
    "uncertainty": {},
    "dwa": {"window": 100, "temperature": 2.0},
    "gradnorm": {"alpha": 1.5},
    "pcgrad": {"seed": 0},
}


@pytest.mark.parametrize("name", sorted(BALANCER_DEFAULTS))
def test_balancer_options_defaults_are_todays_and_the_constructors(name: str) -> None:
    assert set(BALANCERS) == set(BALANCER_DEFAULTS)
    expected = BALANCER_DEFAULTS[name]
    assert options_dict(BALANCERS.options(name)) == expected
    params = inspect.signature(BALANCERS[name]).parameters
    assert {n: params[n].default for n in expected} == expected
    assert set(params) == {"tasks", *expected}  # every knob of the constructor is an option
    assert type(build_balancer(name, [TaskSpec("a"), TaskSpec("b")])) is BALANCERS[name]


@pytest.mark.parametrize("name, options, message", [
    ("dwa", {"windw": 5}, r"unknown option\(s\) \['windw'\]; known: \['temperature', 'window'\]"),
    ("dwa", {"window": 2.5}, r"window: expected an integer"),
    ("dwa", {"temperature": "hot"}, r"temperature: expected a number"),
    ("gradnorm", {"alpha": None}, r"alpha: expected a number"),
    ("pcgrad", {"seed": True}, r"seed: expected an integer"),
    ("fixed", {"seed": 1}, r"unknown option\(s\) \['seed'\]; known: none"),
    ("uncertainty", {"window": 1}, r"unknown option\(s\) \['window'\]"),
])
def test_unknown_or_mistyped_balancer_options_are_value_errors(name: str, options: Dict[str, object],
                                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_balancer(name, [TaskSpec("a")], options=options)


def test_unknown_balancer_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown loss balancing 'dwb'; choose one of \['dwa'"):
        build_balancer("dwb", [TaskSpec("a")])


def test_dwa_options_change_the_weights() -> None:
    tasks, steps = [TaskSpec("fast"), TaskSpec("slow")], _decay(6)

    def last(options: Dict[str, object]) -> Dict[str, float]:
        return _feed(build_balancer("dwa", tasks, options=options), steps)[-1]

    sharp, even = last({"window": 1, "temperature": 0.5}), last({"window": 1, "temperature": 8.0})
    assert sharp["slow"] > even["slow"] > 1.0 > even["fast"] > sharp["fast"]
    # windows of 4 steps: fewer than two complete in 6 steps, so the weights are still even
    assert last({"window": 4}) == {"fast": 1.0, "slow": 1.0} != last({"window": 1})
