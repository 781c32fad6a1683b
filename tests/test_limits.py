"""Limits before allocation: tables against this machine's memory (one stray id of 10^12 in a 400-row
CSV is refused naming its feature, before the model is built), ranks against the cores."""

import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from torchrec_fusion.cli import main
from torchrec_fusion.distributed.launcher import (
    MAX_RANKS_PER_CORE,
    check_world_size,
    cpu_cores,
    init_distributed,
    launch,
)
from torchrec_fusion.training.limits import (
    TableMemoryError,
    available_memory,
    check_table_memory,
    check_tables_fit,
    table_sizes,
)

GiB = 2**30


def test_table_bytes_count_the_optimizer_state_and_ensemble_copies() -> None:
    rows = {"user": 1000, "item": 10}
    assert table_sizes(rows, 8, "sgd")[0].bytes == 1000 * 8 * 4
    assert table_sizes(rows, 8, "rowwise_adagrad")[0].bytes == 1000 * 8 * 4 + 1000 * 4
    assert table_sizes(rows, 8, "adam")[0].bytes == 3 * 1000 * 8 * 4
    two = table_sizes(rows, 8, "adagrad", copies=2)
    assert [s.feature for s in two] == ["user", "item"] and two[0].bytes == 2 * 2 * 1000 * 8 * 4


def test_memory_check_refuses_warns_or_passes() -> None:
    sizes = table_sizes({"user": 100_000_001, "item": 30}, 32, "rowwise_adagrad")  # 12.8 GB + 0.4 GB
    need = sum(s.bytes for s in sizes)
    with pytest.raises(TableMemoryError, match=r"feature 'user', has 100,000,001 rows x 32.*num_embeddings"):
        check_table_memory(sizes, available=8 * GiB)
    assert "feature 'user'" in (check_table_memory(sizes, available=need + 1) or "")  # fits, barely: a warning
    assert check_table_memory(sizes, available=4 * need) is None
    assert check_table_memory(sizes, available=need // 2 + 1, share=0.25) is None  # this host holds a quarter
    assert check_table_memory(sizes, available=None) is None  # unknown: no verdict
    assert (available_memory() or 1) > 0


def _refuses_together(rows: int) -> str:
    ctx = init_distributed("cpu")
    try:
        check_tables_fit({"user": rows}, 8, "sgd", 1, ctx.device, ctx.world_size, ctx.local_world_size, ctx.is_main)
    except TableMemoryError as e:
        return f"rank {ctx.rank}: {e}"
    return f"rank {ctx.rank}: fits"


def test_both_ranks_refuse_with_rank_0s_measure() -> None:
    out = launch(_refuses_together, 2, 10**13)
    assert [o.split(":")[0] for o in out] == ["rank 0", "rank 1"] and all("'user'" in o for o in out)


def test_a_stray_huge_id_is_refused_before_any_table_is_built(tmp_path: Path, capsys) -> None:
    rows = ["user,item,click"] + [f"{10**12 if i == 7 else i % 50},{i % 30},{i % 2}" for i in range(400)]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    config = {"dataset": "table", "history_length": 0, "embedding_dim": 8, "epochs": 1,
              "table": {"train": str(tmp_path / "events.csv"), "test_fraction": 0.2,
                        "sparse": {"user": {}, "item": {}}, "tasks": [{"name": "click", "kind": "binary"}]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "feature 'user', has 1,000,000,000,001 rows x 8" in err and "out_of_range: hash" in err
    assert not out.exists()  # nothing written: the folder made for the lock is gone again


def test_world_size_against_the_cores() -> None:
    assert check_world_size(2, "cpu", cores=2) is None
    assert "share the cores" in (check_world_size(3, "cpu", cores=2) or "")
    assert check_world_size(MAX_RANKS_PER_CORE * 2, "cpu", cores=2) is not None
    with pytest.raises(ValueError, match="at most 8"):
        check_world_size(MAX_RANKS_PER_CORE * 2 + 1, "cpu", cores=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        check_world_size(0, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="one GPU per rank; this machine has 0"):
            check_world_size(1, "cuda")


def _never_runs() -> None:
    raise AssertionError("a rank started")


def test_too_many_ranks_are_refused_before_any_process_starts() -> None:
    n = MAX_RANKS_PER_CORE * cpu_cores() + 1
    with pytest.raises(ValueError, match=f"--world-size {n} starts {n} processes"):
        launch(_never_runs, n, device="cpu")
    assert multiprocessing.active_children() == []
