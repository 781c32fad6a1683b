"""A user's own Parquet file, three tasks, trained over 2 processes from a config file, then
evaluated and asked for recommendations: all through the CLI."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from torchrec_fusion.cli import main

USERS, ITEMS, ROWS = 300, 120, 24_000


def _write_table(path) -> pa.Table:
    rng = np.random.default_rng(0)
    pu, qi = rng.normal(size=(USERS, 4)), rng.normal(size=(ITEMS, 4))
    user = rng.integers(0, USERS, ROWS)
    item = rng.integers(0, ITEMS, ROWS)
    bu, bi = rng.normal(0, 1.5, USERS), rng.normal(0, 1.5, ITEMS)
    affinity = bu[user] + bi[item] + 0.5 * (pu[user] * qi[item]).sum(1)
    click = (rng.random(ROWS) < 1 / (1 + np.exp(-affinity))).astype(np.int64)
    watch = np.where(click == 1, 2 + affinity + rng.normal(0, 0.3, ROWS), 0.0)
    buy = (rng.random(ROWS) < 1 / (1 + np.exp(-(affinity - 1)))).astype(float)
    buy_label = pa.array([b if c else None for b, c in zip(buy, click)], pa.float64())  # known after a click only
    genres = [list(rng.choice(12, size=rng.integers(1, 4), replace=False) + 12 * (i % 2)) for i in item]
    table = pa.table({
        "user_id": pa.array(user), "item_id": pa.array(item),
        "genres": pa.array(genres, pa.list_(pa.int64())),
        "hour": pa.array(rng.integers(0, 24, ROWS).astype(float)),
        "click": pa.array(click), "watch_seconds": pa.array(watch), "purchase": buy_label,
    })
    pq.write_table(table, path, row_group_size=5000)
    return table


@pytest.mark.slow
def test_parquet_three_tasks_config_file_evaluate_and_recommend(tmp_path, capsys) -> None:
    table = _write_table(tmp_path / "events.parquet")
    config = {
        "dataset": "table",
        "table": {
            "train": str(tmp_path / "events.parquet"), "test_fraction": 0.2,
            "sparse": {"user_id": {}, "item_id": {}, "genres": {"multi_valued": True, "pooling": "mean"}},
            "dense": ["hour"],
            "tasks": [{"name": "click", "kind": "binary"},
                      {"name": "watch", "column": "watch_seconds", "kind": "regression"},
                      {"name": "purchase", "kind": "binary"}],
            "user_column": "user_id", "item_column": "item_id", "item_features": ["item_id", "genres"],
            "chunk_rows": 4000,
        },
        "arch": "mmoe", "epochs": 4, "batch_size": 128, "embedding_dim": 16, "dropout": 0.0,
        "history_length": 0, "fusion": "weighted", "world_size": 2, "interaction": True,
    }
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    # the flag overrides the file
    assert main(["train", "--config", str(cfg), "--epochs", "3", "--output-dir", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["world_size"] == 2
    assert saved["data"]["table"]["tasks"][2]["name"] == "purchase"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and set(metrics["tasks"]) == {"click", "watch", "purchase"}
    assert metrics["tasks"]["click"]["auc"] > 0.7  # the latent affinity is learnt, not guessed
    assert metrics["tasks"]["purchase"]["count"] < metrics["tasks"]["click"]["count"]  # masked where not clicked
    assert (out / "report.md").exists()
    capsys.readouterr()

    assert main(["evaluate", "--run", str(out), "--world-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "world size 2" in printed and "purchase" in printed and "fused" in printed
    ev = json.loads((out / "evaluation_test.json").read_text())
    for task in ("click", "watch", "purchase"):  # the same checkpoint, the same numbers as at the end of training
        for k, v in metrics["tasks"][task].items():
            assert ev["tasks"][task][k] == pytest.approx(v, rel=1e-5, abs=1e-6)

    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "5", "--by", "click"]) == 0
    printed = capsys.readouterr().out
    assert "user 7 (by click)" in printed and printed.count("click=") == 5 and "purchase=" in printed

    users = tmp_path / "users.txt"
    users.write_text("7\n11\n42\n")
    recs = tmp_path / "recs.csv"
    assert main(["recommend", "--run", str(out), "--users-file", str(users), "--k", "10", "--output", str(recs)]) == 0
    rows = list(csv.DictReader(open(recs)))
    assert [r["user"] for r in rows] == ["7"] * 10 + ["11"] * 10 + ["42"] * 10
    assert set(rows[0]) >= {"user", "rank", "item", "click", "watch", "purchase", "fused"}
    seen = {(int(u), int(i)) for u, i in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist())}
    assert not any((int(r["user"]), int(r["item"])) in seen for r in rows)  # seen items are left out
    fused = [float(r["fused"]) for r in rows[:10]]
    assert fused == sorted(fused, reverse=True)  # ranked by the fused score by default

    # newer interactions in a file the run's spec reads: user 7 has now met his first three items
    top3 = [int(r["item"]) for r in rows[:3]]
    newer = tmp_path / "newer.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([7, 7, 7]), "item_id": pa.array(top3), "genres": pa.array([[1], [2], [3]]),
        "hour": pa.array([1.0, 2.0, 3.0]), "click": pa.array([1, 0, 1]), "watch_seconds": pa.array([3.0, 0.0, 2.5]),
        "purchase": pa.array([1.0, None, 0.0], pa.float64())}), newer)
    recs2 = tmp_path / "recs2.csv"
    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "10", "--data", str(newer),
                 "--output", str(recs2)]) == 0
    after = [int(r["item"]) for r in csv.DictReader(open(recs2))]
    assert not set(top3) & set(after) and after[:7] == [int(r["item"]) for r in rows[3:10]]

    assert main(["recommend", "--run", str(out), "--user", "999999"]) == 2
    assert "unknown user" in capsys.readouterr().err


def test_streamed_parquet_trains_over_two_processes(tmp_path) -> None:
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.trainer import train

    _write_table(tmp_path / "events.parquet")
    table = {"train": str(tmp_path / "events.parquet"), "stream": True, "chunk_rows": 3000,
             "sparse": {"user_id": {}, "item_id": {}, "genres": {"multi_valued": True}}, "dense": ["hour"],
             "tasks": [{"name": "click"}, {"name": "watch", "column": "watch_seconds", "kind": "regression"},
                       {"name": "purchase"}]}
    r = train(TrainConfig.make(dataset="table", table=table, world_size=2, epochs=2, batch_size=128, interaction=True,
                          history_length=0, progress=False, verbose=False, report=False))
    assert r["data"]["stream"] and r["steps"] == 2 * (r["data"]["train_rows"] // 256)
    assert r["tasks"]["click"]["auc"] > 0.75


def test_criteo_tsv_trains_through_the_cli(tmp_path) -> None:
    from pathlib import Path

    criteo = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo-tsv-sample"
    if not criteo.is_dir():
        pytest.skip("../shared/data/criteo-tsv-sample is absent")
    out = tmp_path / "criteo"
    assert main(["train", "--dataset", "criteo", "--data-dir", str(criteo), "--epochs", "1", "--batch-size", "32",
                 "--world-size", "2", "--no-progress", "--quiet", "--no-report", "--output-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["tasks"]) == {"click"} and m["tasks"]["click"]["count"] > 0 and m["world_size"] == 2
