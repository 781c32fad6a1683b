"""The local launcher: results and errors come back from the spawned ranks in memory."""

import os

import pytest
import torch

from torchrec_fusion.distributed.launcher import init_distributed, launch


def _tensors(scale: float) -> dict:
    ctx = init_distributed("cpu")
    return {"rank": ctx.rank, "t": torch.arange(6.0).view(2, 3) * scale + ctx.rank}


def _fails_on_rank_1() -> int:
    ctx = init_distributed("cpu")
    if ctx.rank == 1:
        raise KeyError("rank 1's own error")
    return ctx.rank


def _dies_on_rank_1() -> int:
    ctx = init_distributed("cpu")
    if ctx.rank == 1:
        os._exit(3)  # killed: no result, no error sent
    return ctx.rank


def test_results_with_tensors_come_back_in_rank_order() -> None:
    out = launch(_tensors, 2, 2.0)
    assert [r["rank"] for r in out] == [0, 1]
    assert torch.equal(out[1]["t"], torch.arange(6.0).view(2, 3) * 2.0 + 1)


def test_a_ranks_own_error_is_raised() -> None:
    with pytest.raises(KeyError, match="rank 1's own error"):
        launch(_fails_on_rank_1, 2)


def test_a_killed_rank_is_an_error_not_a_hang() -> None:
    with pytest.raises(Exception, match="exit|ended without a result"):
        launch(_dies_on_rank_1, 2)
