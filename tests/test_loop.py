"""The training loop on its own: no launcher, no process group, no DMP (a stand-in pipeline steps a
plain model), so its bookkeeping (epochs, max_steps, checkpoint cadence, resume, NaN) is tested
directly."""

import copy
import math
import os
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import torch
from torch import nn

from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.training import loop as loop_module
from torchrec_fusion.training.checkpoint import step_name
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.factory import build_train_model
from torchrec_fusion.training.loop import TrainLoop
from torchrec_fusion.training.prepare import PreparedData
from torchrec_fusion.training.session import Session, Started
from torchrec_fusion.training.state import TrainState

CTX = DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")


class _Pipeline:
    """What the loop needs of TrainPipelineSparseDist: ``progress(it)`` runs one batch (a training
    step in train mode) and returns ``(loss, predictions, labels)``."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, nan_at: int = -1) -> None:
        self.module, self.optimizer, self.calls, self.nan_at = module, optimizer, 0, nan_at

    def progress(self, it: Iterator[Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        batch = next(it)
        if not self.module.training:
            with torch.no_grad():
                loss, (_, preds, labels) = self.module(batch)
            return loss, preds, labels
        self.calls += 1
        self.optimizer.zero_grad()
        loss, (_, preds, labels) = self.module(batch)
        loss.backward()
        self.optimizer.step()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss.detach(), preds, labels


class _Wrapped(nn.Module):
    """Holds the training module as DMP does (``.module``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _config(**kw: Any) -> TrainConfig:
    base = dict(dataset="synthetic", epochs=3, batch_size=50, embedding_dim=8, dropout=0.0, num_experts=2,
                expert_layer_sizes=[8], tower_layer_sizes=[4], history_length=0, progress=False, verbose=False)
    return TrainConfig.make(**{**base, **kw})


DATA = make_synthetic(SyntheticConfig(num_rows=500, table_sizes={"user": 50, "item": 40, "category": 5},
                                      num_tags=20, seed=1))


def _started(config: TrainConfig, nan_at: int = -1, state: Any = None) -> Started:
    torch.manual_seed(0)
    train, test = DATA
    model = build_train_model(config, train, device="cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    session = Session(model, _Wrapped(model), optimizer, _Pipeline(model, optimizer, nan_at), plan=None)  # type: ignore[arg-type]
    prepared = PreparedData(train, test, "test", {"dataset": "synthetic"}, splits={"train": train, "test": test})
    return Started(CTX, prepared, session)


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """Checkpoints the loop writes, kept in memory: the step, the state payload, model and optimizer."""
    out: List[Dict[str, Any]] = []

    def save_checkpoint(root: str, step: int, model: nn.Module, optimizer: Any, state: Dict[str, Any],
                        keep: int = 2, extra: Any = None) -> str:
        out.append({"step": step, "payload": {**copy.deepcopy(state), "step": step},
                    "model": copy.deepcopy(model.module.state_dict()),
                    "optimizer": copy.deepcopy(optimizer.state_dict())})
        path = os.path.join(root, step_name(step))
        os.makedirs(path, exist_ok=True)
        return path

    monkeypatch.setattr(loop_module, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(loop_module, "describe_plan", lambda plan: "")
    return out


def test_whole_epochs_evaluated_after_each() -> None:
    config = _config()
    loop = TrainLoop(config, _started(config), TrainState(), print)
    loop.run()
    spe = len(DATA[0]) // 50
    assert loop.state.step == 3 * spe and len(loop.state.step_losses) == 3 * spe
    assert [e.epoch for e in loop.state.history] == [1, 2, 3]
    assert [e.step for e in loop.state.history] == [spe, 2 * spe, 3 * spe]
    assert all(math.isfinite(e.train_loss) for e in loop.state.history)
    assert set(loop.state.step_task_losses) == set(DATA[0].task_names)
    assert all(len(v) == 3 * spe for v in loop.state.step_task_losses.values())
    assert loop.state.history[-1].tasks["ctr"]["count"] == len(DATA[1])
    assert loop.samples_per_second > 0


def test_max_steps_stops_inside_an_epoch(saved: List[Dict[str, Any]], tmp_path: Any) -> None:
    config = _config(max_steps=11, output_dir=str(tmp_path))
    loop = TrainLoop(config, _started(config), TrainState(), print)
    loop.run()
    spe = len(DATA[0]) // 50
    assert loop.state.step == 11 and len(loop.state.step_losses) == 11
    assert loop.state.history[-1].epoch == pytest.approx(11 / spe)
    final = saved[-1]["payload"]
    assert final["step"] == 11 and final["epoch"] == 11 // spe and final["batch_in_epoch"] == 11 % spe
    assert len(final["epoch_losses"]) == 11 % spe and len(final["step_losses"]) == (11 // spe) * spe


def test_checkpoint_cadence_and_exact_resume(saved: List[Dict[str, Any]], tmp_path: Any) -> None:
    config = _config(checkpoint_every=4, output_dir=str(tmp_path))
    straight = TrainLoop(config, _started(config), TrainState(), print)
    straight.run()
    spe = len(DATA[0]) // 50
    steps = [c["step"] for c in saved]
    assert steps == list(range(4, 3 * spe + 1, 4)) + ([3 * spe] if (3 * spe) % 4 else [])
    mid = next(c for c in saved if c["step"] % spe)  # a checkpoint inside an epoch
    assert mid["payload"]["batch_in_epoch"] == mid["step"] % spe and mid["payload"]["epoch"] == mid["step"] // spe
    resumed = TrainLoop(config, _started(config, state=mid), TrainState.from_payload(mid["payload"]), print)
    resumed.run()
    assert resumed.state.step == straight.state.step
    torch.testing.assert_close(torch.tensor(resumed.state.step_losses), torch.tensor(straight.state.step_losses))
    assert [e.epoch for e in resumed.state.history] == [1, 2, 3]


def test_nan_loss_is_an_error_naming_the_epoch() -> None:
    config = _config()
    loop = TrainLoop(config, _started(config, nan_at=13), TrainState(), print)
    with pytest.raises(FloatingPointError, match="NaN/inf in epoch 2"):
        loop.run()


def test_state_payload_round_trip() -> None:
    config = _config(epochs=1)
    loop = TrainLoop(config, _started(config), TrainState(), print)
    loop.run()
    payload = {**loop.state.to_payload(), "step": loop.state.step}
    again = TrainState.from_payload(payload)
    assert again == loop.state and again.evaluated_at == loop.state.step
    assert again.history[0]["tasks"] == loop.state.history[0].tasks  # read by JSON field name too
