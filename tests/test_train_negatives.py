"""Training with sampled negatives: the entire-space ``interaction`` task beside the rated-row tasks."""

import math

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train


def test_negatives_train_sharded_and_rated_tasks_stay_on_observed_rows() -> None:
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=4000, synthetic_scale=0.05, epochs=2, world_size=2,
                               batch_size=64, negatives=3, negative_sampling="popularity", negative_alpha=0.75,
                               history_length=8, progress=False, verbose=False, report=False))
    assert set(r.step_task_losses) == {"ctr", "cvr", "watch_time", "ctcvr", "interaction"}
    assert all(math.isfinite(v) for v in r.step_task_losses["interaction"])
    assert r.tasks["ctr"]["count"] == 800  # the test rows: every one observed, none sampled
    assert r.tasks["interaction"]["count"] == 0  # one-class on observed rows: not scored there
    assert r.config["negatives"] == 3 and r.samples_per_second > 0


def test_negatives_need_candidate_rows(tmp_path) -> None:
    """A table without user/item columns has no rows to build for a sampled item."""
    import pytest

    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(200)))
    spec = {"train": str(tmp_path / "t.csv"), "test_fraction": 0.2, "sparse": {"a": {}}, "tasks": [{"name": "y"}]}
    with pytest.raises(ValueError, match="--negatives needs"):
        train(TrainConfig.make(dataset="table", negatives=2, table=spec, progress=False, verbose=False))


def test_retrieval_head_trains_sharded_with_negatives_and_is_ranked() -> None:
    # every item of the small catalogue has training rows (candidate rows copy an item's features from one)
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=12000, synthetic_scale=0.02, epochs=1, world_size=2,
                               batch_size=128, negatives=2, history_length=16, history_liked="ctr", retrieval=True,
                               retrieval_layer_sizes=[16], ranking_eval=True, ranking_relevance="ctr",
                               progress=False, verbose=False, report=False))
    assert all(math.isfinite(v) for v in r.step_task_losses["retrieval"])
    assert {"retrieval", "retrieval_x_ctr", "ctr", "interaction", "popularity", "ease"} <= set(r.ranking)
    assert r.ranking["retrieval"]["users"] > 0
