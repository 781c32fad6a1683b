"""A config that cannot work is refused before any process starts or any data is read."""

import time
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from torchrec_fusion.cli import main
from torchrec_fusion.distributed.launcher import DistContext, cpu_cores
from torchrec_fusion.training import trainer
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.preflight import declared_tasks, preflight
from torchrec_fusion.training.session import set_threads

TABLE = {"train": "missing.csv", "sparse": ["user", "item"],
         "tasks": [{"name": "click"}, {"name": "seconds", "kind": "regression"}]}


def _names(**config: Any) -> Any:
    tasks = declared_tasks(TrainConfig.make(**config))
    return None if tasks is None else [(t.name, t.kind.value) for t in tasks]


def test_each_dataset_declares_its_tasks_without_reading_files() -> None:
    assert _names() == [("ctr", "binary"), ("cvr", "binary"), ("watch_time", "regression"), ("ctcvr", "binary")]
    assert _names(dataset="movielens", data_dir="/nowhere") == [("like", "binary"), ("rating", "regression")]
    assert _names(dataset="criteo", data_dir="/nowhere") == [("click", "binary")]
    assert _names(dataset="table", data={"table": TABLE}) == [("click", "binary"), ("seconds", "regression")]
    assert _names(dataset="table") is None  # no spec: the reader says what is missing when it loads
    assert _names(tasks=["ctcvr", "ctr"]) == [("ctcvr", "binary"), ("ctr", "binary")]
    assert _names(dataset="movielens", negatives=2)[-1] == ("interaction", "binary")


BAD = [
    ({"arch": "esmm"}, "--arch esmm needs exactly two binary tasks"),  # the synthetic data's four tasks
    ({"arch": "esmm", "tasks": ["ctr", "watch_time"]}, "watch_time (regression)"),
    ({"dataset": "movielens", "arch": "esmm"}, "rating (regression)"),
    ({"arch": "esmm", "chain": ["ctr", "watch_time"]}, "its tasks must be binary"),
    ({"arch": "aitm", "chain": ["ctr", "buy"]}, "unknown task(s) ['buy']"),
    ({"fusion": "weighted", "fusion_target": "watch_time"}, "fusion target must be a binary task"),
    ({"task_weights": {"click": 0.5}}, "task_weights: unknown task(s) ['click']"),
    ({"dataset": "movielens", "ranking_eval": True, "ranking_relevance": "rating"}, "--ranking-relevance rating"),
    ({"dataset": "movielens", "history_liked": "rating"}, "--history-liked rating"),
    ({"tasks": ["like"]}, "unknown task name(s) ['like']"),
    ({"arch": "mmoe", "num_experts": 0}, "num_experts >= 1"),
    ({"dataset": "table", "data": {"table": TABLE}, "arch": "esmm"}, "seconds (regression)"),
    ({"retrieval": True, "history_length": 0}, "--history-length"),
]


@pytest.mark.parametrize("config,message", BAD, ids=[m for _, m in BAD])
def test_configs_that_cannot_work_are_refused(config: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as e:
        preflight(TrainConfig.make(**config))
    assert message in str(e.value)


@pytest.mark.parametrize("config", [
    {}, {"arch": "esmm", "tasks": ["ctr", "ctcvr"]}, {"arch": "esmm", "chain": ["ctr", "ctcvr"]},
    {"dataset": "movielens", "negatives": 2, "arch": "aitm", "chain": ["interaction", "like"]},
    {"ensemble": ["mmoe", "dlrm"], "fusion": "weighted", "fusion_target": "ctr"},
    {"dataset": "movielens", "ranking_eval": True, "retrieval": True, "fusion": "gated"},
])
def test_configs_that_can_work_pass_and_leave_the_rng_alone(config: Dict[str, Any]) -> None:
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    preflight(TrainConfig.make(**config))
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize("args,message", [
    (["--arch", "esmm"], "esmm"),
    (["--arch", "esmm", "--tasks", "ctr", "watch_time"], "watch_time (regression)"),
    (["--dataset", "movielens", "--data-dir", "/nowhere", "--arch", "esmm"], "rating (regression)"),
    (["--fusion", "stacking", "--fusion-target", "watch_time"], "fusion target"),
])
def test_bad_architecture_and_tasks_fail_fast_without_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str], args: Any,
                                                                message: str) -> None:
    def no_launch(*a: Any, **k: Any) -> Any:
        raise AssertionError("a process was started")

    monkeypatch.setattr(trainer, "launch", no_launch)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main(["train", *args, "--output-dir", str(out), "--world-size", "2"]) == 2
    assert time.perf_counter() - start < 2.0
    assert message in capsys.readouterr().err and not out.exists()


def test_threads_default_to_the_cores_shared_among_the_local_ranks() -> None:
    before = torch.get_num_threads()
    try:
        ctx = DistContext(0, 4, 0, 2, torch.device("cpu"), "gloo")
        assert set_threads(None, ctx) == max(1, cpu_cores() // 2) == torch.get_num_threads()
        assert set_threads(3, ctx) == 3 == torch.get_num_threads()
        big = DistContext(0, 64, 0, 4 * cpu_cores(), torch.device("cpu"), "gloo")
        assert set_threads(None, big) == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        TrainConfig.make(threads=0)
