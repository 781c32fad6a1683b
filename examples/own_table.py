"""Your own table in, a trained run, metrics and recommendations out, from Python.

Writes a small Parquet file of (user, item, tags, hour, click, watch_seconds, purchase) events,
describes its columns in a ``table`` spec, trains MMoE with a fused score over 2 CPU processes,
evaluates the run's checkpoint at another world size and recommends items to two users.

Run: ``python examples/own_table.py [OUT]`` (default ``runs/own_table``). The same spec in YAML
goes under ``table:`` in a ``train --config`` file.
"""

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import evaluate_run, recommend
from torchrec_fusion.training.trainer import train


def write_events(path: str, rows: int, users: int = 500, items: int = 200, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, users, rows), rng.integers(0, items, rows)
    affinity = rng.normal(0, 1.5, users)[user] + rng.normal(0, 1.5, items)[item]
    click = (rng.random(rows) < 1 / (1 + np.exp(-affinity))).astype(np.int64)
    purchase = [float(rng.random() < 0.3) if c else None for c in click]  # known only after a click
    pq.write_table(pa.table({
        "user_id": user, "item_id": item, "hour": rng.integers(0, 24, rows).astype(float),
        "tags": pa.array([[int(i % 17), int(i % 5) + 17] for i in item], pa.list_(pa.int64())),
        "click": click, "watch_seconds": np.where(click == 1, 30 + 10 * affinity, 0.0),
        "purchase": pa.array(purchase, pa.float64()),
    }), path)


def main(out: str = "runs/own_table", rows: int = 50_000, epochs: int = 3) -> dict:
    import os

    os.makedirs(out, exist_ok=True)
    write_events(f"{out}/events.parquet", rows)
    table = {
        "train": f"{out}/events.parquet", "test_fraction": 0.2,
        "sparse": {"user_id": {}, "item_id": {}, "tags": {"multi_valued": True, "pooling": "mean"}},
        "dense": ["hour"],
        "tasks": [{"name": "click"}, {"name": "watch", "column": "watch_seconds", "kind": "regression"},
                  {"name": "purchase"}],
        "user_column": "user_id", "item_column": "item_id", "item_features": ["item_id", "tags"],
    }
    # the table spec is the "table" dataset's option: TrainConfig.make routes it into the config's data section
    result = train(TrainConfig.make(dataset="table", table=table, arch="mmoe", fusion="weighted", epochs=epochs,
                                    batch_size=256, world_size=2, history_length=0, output_dir=out, progress=False))
    again = evaluate_run(out, world_size=1)  # the 2-rank checkpoint, resharded onto one process
    recs = recommend(out, users=[3, 7], k=5)
    for r in recs:
        print(f"user {r['user']}: " + ", ".join(f"{it['item']} ({it['score']:.2f})" for it in r["items"]))
    return {"train": result.tasks, "evaluate": again["tasks"], "recommend": recs}


if __name__ == "__main__":
    main(*sys.argv[1:2])
