"""Streaming metrics against the exact reference (``task_metrics``) on the same predictions: batch by
batch in one process, summed over ranks, through the sharded model at world size 1 and 2, and in
the training loop (streamed each epoch, exact where the predictions are kept).

Tolerance: every metric but the AUC is the same sum as the exact one (relative 1e-9); the binned
AUC is within its own bound (``auc_error_bound``) of the exact one, and that bound is below 1e-3
for predictions spread as a model's are."""

import math
from typing import Any, Dict, List, Optional

import pytest
import torch
from test_loop import _config, _started
from torchrec.metrics.calibration import compute_calibration
from torchrec.metrics.ne import compute_ne, get_ne_states

from torchrec_fusion.distributed.launcher import launch
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.evaluation.streaming import StreamingMetrics
from torchrec_fusion.modules.model import FUSED_TASK
from torchrec_fusion.tasks import TaskKind, TaskSpec
from torchrec_fusion.training import loop as loop_module
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.evaluate import evaluate, evaluate_metrics
from torchrec_fusion.training.loop import TrainLoop
from torchrec_fusion.training.session import start
from torchrec_fusion.training.state import TrainState

TASKS = [TaskSpec("click"), TaskSpec("rating", "regression"), TaskSpec("genre", "multiclass", num_classes=5),
         TaskSpec("empty")]
AUC_TOLERANCE = 1e-3


def _data(n: int = 5000, seed: int = 0) -> Dict[str, Dict[str, torch.Tensor]]:
    """Predictions and labels with some signal, NaN (absent) labels, ties, and a task never labelled."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g)
    click = (torch.rand(n, generator=g) < torch.sigmoid(2 * z)).float()
    click[torch.rand(n, generator=g) < 0.2] = math.nan
    p_click = torch.sigmoid(z + 0.8 * torch.randn(n, generator=g)).round(decimals=3)  # ties
    rating = 3 + z + 0.5 * torch.randn(n, generator=g)
    genre = torch.randint(0, 5, (n,), generator=g).float()
    logits = torch.randn(n, 5, generator=g) + 2 * torch.nn.functional.one_hot(genre.long(), 5)
    preds = {"click": p_click, "rating": 3 + z, "genre": logits.softmax(1), "empty": torch.rand(n, generator=g)}
    labels = {"click": click, "rating": rating, "genre": genre, "empty": torch.full((n,), math.nan)}
    return {"preds": preds, "labels": labels}


def _streamed(preds: Dict[str, torch.Tensor], labels: Dict[str, torch.Tensor], cuts: List[int]) -> StreamingMetrics:
    m = StreamingMetrics(TASKS)
    for lo, hi in zip([0] + cuts, cuts + [len(labels["click"])]):  # uneven batches
        m.update({k: v[lo:hi] for k, v in preds.items()}, {k: v[lo:hi] for k, v in labels.items()})
    return m


def assert_close_metrics(streamed: Dict[str, Dict[str, float]], exact: Dict[str, Dict[str, float]],
                         auc_tolerance: Optional[Dict[str, float]] = None) -> None:
    """Equal metric names and counts, the same sums; AUCs within ``auc_tolerance[task]`` (default
    :data:`AUC_TOLERANCE`)."""
    assert streamed.keys() == exact.keys()
    for task, m in exact.items():
        assert streamed[task].keys() == m.keys(), task
        assert streamed[task]["count"] == m["count"]
        for name, v in m.items():
            if name == "auc":
                tolerance = (auc_tolerance or {}).get(task, AUC_TOLERANCE) + 1e-12
                assert abs(streamed[task][name] - v) <= tolerance, (task, streamed[task][name], v)
            else:
                assert streamed[task][name] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), (task, name)


def test_streamed_batches_match_the_exact_metrics() -> None:
    d = _data()
    m = _streamed(d["preds"], d["labels"], [1, 700, 701, 3000])
    exact = task_metrics(TASKS, d["preds"], d["labels"])
    out = m.compute()
    assert_close_metrics(out, exact)
    bound = m.auc_error_bound("click")
    assert 0 < bound < AUC_TOLERANCE and abs(out["click"]["auc"] - exact["click"]["auc"]) <= bound + 1e-12
    assert set(out["click"]) == {"count", "auc", "logloss", "ne", "calibration"}
    assert set(out["rating"]) == {"count", "mse", "rmse", "mae"}
    assert set(out["genre"]) == {"count", "accuracy", "cross_entropy"}
    assert out["empty"] == {"count": 0} and out["click"]["count"] == int((~d["labels"]["click"].isnan()).sum())
    assert 0.5 < out["click"]["auc"] < 1 and 0.5 < out["genre"]["accuracy"] < 1  # the data has signal


def test_ne_and_calibration_are_torchrecs() -> None:
    d = _data(seed=1)
    y, p = d["labels"]["click"], d["preds"]["click"]
    keep = ~y.isnan()
    y, p = y[keep].double(), p[keep].double()
    states = get_ne_states(y, p.clone(), torch.ones_like(y), 1e-12)
    ne = compute_ne(states["cross_entropy_sum"], states["weighted_num_samples"], states["pos_labels"],
                    states["neg_labels"], 1e-12)
    out = _streamed(d["preds"], d["labels"], [2500]).compute()["click"]
    assert out["ne"] == pytest.approx(float(ne), rel=1e-9)
    assert out["calibration"] == pytest.approx(float(compute_calibration(p.sum(), y.sum())), rel=1e-9)
    assert 0 < out["ne"] < 1  # better than predicting the base rate


def test_binned_auc_stays_within_its_bound_when_predictions_crowd_one_bin() -> None:
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(2000, generator=g) < 0.3).float()
    p = 0.5 + 1e-5 * (torch.randn(2000, generator=g) + y)  # all within a few bins: the exact AUC is ~0.76
    m = StreamingMetrics([TaskSpec("click")])
    m.update({"click": p}, {"click": y})
    exact = task_metrics([TaskSpec("click")], {"click": p}, {"click": y})["click"]["auc"]
    bound = m.auc_error_bound("click")
    assert bound > 0.05 and abs(m.compute()["click"]["auc"] - exact) <= bound + 1e-12
    one_class = StreamingMetrics([TaskSpec("click")])
    one_class.update({"click": p}, {"click": torch.ones(2000)})
    out = one_class.compute()["click"]
    assert math.isnan(out["auc"]) and math.isnan(out["ne"]) and out["count"] == 2000


def test_states_summed_over_ranks_equal_one_pass() -> None:
    d = _data(seed=3)
    halves = [_streamed({t: v[i::2] for t, v in d["preds"].items()}, {t: v[i::2] for t, v in d["labels"].items()},
                        [100]) for i in range(2)]  # each rank's rows
    whole = _streamed(d["preds"], d["labels"], [])
    torch.testing.assert_close(halves[0].state() + halves[1].state(), whole.state(), rtol=1e-12, atol=1e-9)


def _both_paths(config: TrainConfig) -> Dict[str, Any]:
    """On each rank: the exact metrics of the gathered predictions and the streamed ones."""
    started = start(config)
    s, data = started.session, started.prepared.eval
    tasks = list(s.model.tasks) + [FUSED_TASK]
    exact_gates, gates = GateStats(), GateStats()
    preds, labels = evaluate(s.pipeline, s.dmp, data, started.ctx, config.eval_batch_size, exact_gates)
    streamed = evaluate_metrics(s.pipeline, s.dmp, data, started.ctx, config.eval_batch_size, tasks, gates)
    return {"exact": task_metrics(tasks, preds, labels), "streamed": streamed, "rows": len(data),
            "gates": (exact_gates.result(), gates.result()), "preds": preds, "labels": labels, "tasks": tasks}


@pytest.mark.parametrize("world_size", [1, 2])
def test_sharded_model_streams_the_exact_metrics(world_size: int) -> None:
    # 300 test rows in batches of 37 per rank: the last batch of each rank is padding in part
    config = TrainConfig.make(dataset="synthetic", synthetic_rows=1500, embedding_dim=8, expert_layer_sizes=[8],
                              tower_layer_sizes=[4], num_experts=2, fusion="weighted", fusion_normalizer="logit",
                              eval_batch_size=37,
                              progress=False, verbose=False, seed=5)
    out = launch(_both_paths, world_size, config)[0]
    assert out["exact"]["ctr"]["count"] == out["rows"] == 300 and out["exact"]["cvr"]["count"] < 300
    # the ranks' sums add up to one pass over every gathered prediction: the same binned AUC too
    one_pass = StreamingMetrics(out["tasks"])
    one_pass.update(out["preds"], out["labels"])
    assert_close_metrics(out["streamed"], one_pass.compute(), auc_tolerance={t.name: 1e-12 for t in out["tasks"]})
    # an untrained model's predictions crowd a few bins: its AUCs are within their (wide) bounds
    bounds = {t.name: one_pass.auc_error_bound(t.name) for t in out["tasks"] if t.kind == TaskKind.BINARY}
    assert_close_metrics(out["streamed"], out["exact"], auc_tolerance=bounds)
    assert out["gates"][0] == out["gates"][1]


def test_the_loop_streams_each_epoch_and_keeps_exact_predictions_last(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[str] = []
    for name in ("evaluate", "evaluate_metrics"):
        real = getattr(loop_module, name)
        monkeypatch.setattr(loop_module, name, lambda *a, _f=real, _n=name, **k: calls.append(_n) or _f(*a, **k))
    lines: List[str] = []
    config = _config(epochs=2)
    streamed = TrainLoop(config, _started(config), TrainState(), lines.append)
    streamed.run()
    assert calls == ["evaluate_metrics"] * 2 and not streamed.predictions
    assert "eval_samples/s=" in lines[0] and streamed.eval_samples_per_second > 0
    calls.clear()
    config = _config(epochs=2, keep_predictions=True)
    kept = TrainLoop(config, _started(config), TrainState(), print)
    kept.run()
    assert calls == ["evaluate_metrics", "evaluate"]
    tasks = kept.session.module.tasks
    assert kept.state.history[-1].tasks == task_metrics(tasks, kept.predictions, kept.labels)
    one_pass = StreamingMetrics(tasks)  # the same model (same seed, no dropout): the same predictions
    one_pass.update(kept.predictions, kept.labels)
    assert_close_metrics(streamed.state.history[-1].tasks, one_pass.compute(), {t.name: 1e-12 for t in tasks})
    bounds = {t.name: one_pass.auc_error_bound(t.name) for t in tasks if t.kind == TaskKind.BINARY}
    assert_close_metrics(streamed.state.history[-1].tasks, kept.state.history[-1].tasks, bounds)
