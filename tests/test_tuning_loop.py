"""The tuning loop a user runs on their own table: train/validation/test Parquet files, the
validation file evaluated every epoch, early stopping on a validation metric, the best epoch kept as
the ``best`` checkpoint, and that checkpoint scored once on the test file."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from torchrec_fusion.cli import main
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.prepare import prepare_data

USERS, ITEMS = 100, 40


def _write_files(folder) -> dict:
    """Train (800 rows), validation and test (300 each): two binary tasks driven by user and item
    biases and a dense feature, learnt in a couple of epochs and overfitted soon after."""
    rng = np.random.default_rng(0)
    bu, bi = rng.normal(0, 1, USERS), rng.normal(0, 1, ITEMS)
    paths = {}
    for name, n in (("train", 800), ("valid", 300), ("test", 300)):
        u, i, x = rng.integers(0, USERS, n), rng.integers(0, ITEMS, n), rng.normal(size=(n, 2))
        a = bu[u] + bi[i] + 0.5 * x[:, 0]
        ctr = (rng.random(n) < 1 / (1 + np.exp(-a))).astype(np.int64)
        cvr = (rng.random(n) < 1 / (1 + np.exp(1 - a))).astype(np.int64)
        paths[name] = str(folder / f"{name}.parquet")
        pq.write_table(pa.table({"user": u, "item": i, "x0": x[:, 0], "x1": x[:, 1], "ctr": ctr, "cvr": cvr}),
                       paths[name])
    return paths


def _config(paths: dict, validation: bool = True, **values) -> dict:
    table = {"train": paths["train"], "test": paths["test"], **({"validation": paths["valid"]} if validation else {}),
             # sizes given: the same tables whichever files the spec names
             "sparse": {"user": {"num_embeddings": USERS}, "item": {"num_embeddings": ITEMS}},
             "dense": ["x0", "x1"], "tasks": [{"name": "ctr"}, {"name": "cvr"}]}
    return {"dataset": "table", "table": table, "arch": "mmoe", "batch_size": 64, "embedding_dim": 8,
            "history_length": 0, "report": False, "embedding_lr": 0.3, "dense_lr": 0.01, **values}


def _train(tmp_path, name: str, config: dict, *flags: str) -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / name
    assert main(["train", "--config", str(path), "--output-dir", str(out), "--no-progress", *flags]) == 0
    return json.loads((out / "metrics.json").read_text())


def _same(a: dict, b: dict) -> None:
    for task in ("ctr", "cvr"):
        for k in ("auc", "logloss", "count"):
            assert a[task][k] == pytest.approx(b[task][k], rel=1e-5, abs=1e-6), (task, k)


def test_early_stopping_keeps_the_best_epoch_and_scores_the_test_file_once(tmp_path, capsys) -> None:
    paths = _write_files(tmp_path)
    run = _config(paths, epochs=12, early_stopping="ctr:logloss", patience=2, keep_checkpoints=1)
    metrics = _train(tmp_path, "tune", run)
    printed = capsys.readouterr().out
    assert "train=800 validation=300" in printed and "final (validation)" in printed
    assert metrics["eval_split"] == "validation" and metrics["data"]["validation_rows"] == 300

    # the best epoch is the one with the lowest validation log-loss; training stopped `patience` epochs later
    losses = [e["tasks"]["ctr"]["logloss"] for e in metrics["history"]]
    best = metrics["best"]
    assert best["epoch"] == int(np.argmin(losses)) + 1 and best["value"] == min(losses)
    assert best["split"] == "validation" and best["metric"] == "ctr:logloss"
    assert best["stopped_early"] and best["epochs_run"] == len(losses) == best["epoch"] + 2 < 12
    assert "early stopping: no better validation ctr:logloss in 2 epoch(s)" in printed

    # `best` holds that epoch, beside `latest`, and pruning (keep_checkpoints: 1) left it alone
    ckpts = tmp_path / "tune" / "checkpoints"
    best_dir = ckpts / f"best_step_{best['step']:09d}"
    assert (ckpts / "best").read_text() == best_dir.name and best["checkpoint"] == str(best_dir)
    assert json.loads((best_dir / "state.json").read_text())["step"] == best["step"] < metrics["steps"]
    assert not (ckpts / f"step_{best['step']:09d}").exists()  # pruned; the best is its own folder

    # evaluate --checkpoint best: the validation metrics of the best epoch again
    assert main(["evaluate", "--run", str(tmp_path / "tune"), "--checkpoint", "best"]) == 0
    on_val = json.loads((tmp_path / "tune" / "evaluation_validation.json").read_text())
    assert on_val["step"] == best["step"]
    _same(on_val["tasks"], best["tasks"])

    # ... and on the test file, once: the test metrics of that epoch, i.e. those of the same model
    # trained for exactly best-epoch epochs and evaluated on test by the trainer
    assert main(["evaluate", "--run", str(tmp_path / "tune"), "--checkpoint", "best", "--data", paths["test"]]) == 0
    on_test = json.loads((tmp_path / "tune" / "evaluation_file_test.json").read_text())
    assert on_test["split"] == "data" and on_test["data"] == paths["test"] and on_test["rows"] == 300
    again = _train(tmp_path, "again", _config(paths, validation=False, epochs=best["epoch"]))
    assert again["eval_split"] == "test" and again["steps"] == best["step"]
    _same(on_test["tasks"], again["tasks"])
    assert on_test["tasks"]["ctr"]["logloss"] != pytest.approx(metrics["tasks"]["ctr"]["logloss"])  # not the last

    # a resumed run that had stopped early stays stopped
    resumed = _train(tmp_path, "tune", run, "--resume", "auto")
    assert resumed["steps"] == metrics["steps"] and resumed["best"]["epoch"] == best["epoch"]


def test_validation_file_and_fraction_conflict_and_early_stopping_needs_validation(tmp_path, capsys) -> None:
    paths = _write_files(tmp_path)
    config = TrainConfig.from_dict(_config(paths))
    prepared = prepare_data(config)
    assert prepared.eval_split == "validation" and len(prepared.splits["validation"]) == 300
    with pytest.raises(ValueError, match="validation files and --validation-fraction"):
        prepare_data(TrainConfig.from_dict(_config(paths, validation_fraction=0.2)))
    assert main(["train", "--dataset", "synthetic", "--early-stopping", "ctr:precision", "--output-dir",
                 str(tmp_path / "x")]) != 0
    assert "expected TASK:METRIC" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
    cfg = tmp_path / "no_val.yaml"
    cfg.write_text(yaml.safe_dump(_config(paths, validation=False, epochs=1, early_stopping="ctr:auc")))
    assert main(["train", "--config", str(cfg), "--no-progress"]) != 0
    assert "chooses the epoch on a validation split" in capsys.readouterr().err
