"""The CLI end to end: 2 sharded CPU ranks, metrics.json, and the MovieLens quality bar."""

import json
from pathlib import Path

from conftest import ML100K, needs_ml100k

from torchrec_fusion.cli import main
from torchrec_fusion.distributed.launcher import cpu_cores
from torchrec_fusion.training.config import read_config_file


def test_train_synthetic_two_ranks_writes_metrics(tmp_path: Path, capfd) -> None:
    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--synthetic-rows", "20000", "--arch", "shared_bottom",
                 "--world-size", "2", "--epochs", "2", "--batch-size", "512", "--output-dir", str(out), "--quiet"])
    assert code == 0
    printed = capfd.readouterr().out  # fd level: the ranks are child processes
    assert "epoch 2/2" in printed  # --quiet hides the progress bars, never the metrics
    # threads shared among the ranks, and the plan as a summary (every table: --verbose)
    assert f"threads: {max(1, cpu_cores() // 2)} per rank ({cpu_cores()} core(s) / 2 local rank(s)" in printed
    assert "table(s) on 2 rank(s)" in printed and "table bytes per rank" in printed and "rank 1 " in printed
    assert "shard(s) on ranks" not in printed and "--verbose" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["samples_per_second"] > 0 and len(m["history"]) == 2
    assert set(m["tasks"]) == {"ctr", "cvr", "watch_time", "ctcvr"}
    assert set(m["tasks"]["ctr"]) >= {"auc", "logloss"} and "rmse" in m["tasks"]["watch_time"]
    assert m["tasks"]["ctr"]["count"] == 4000 and m["tasks"]["cvr"]["count"] < 4000  # cvr only where clicked
    assert m["tasks"]["ctr"]["auc"] > 0.7  # the planted structure is learned
    assert set(m["explain"]["scores"]) >= {"ctr", "cvr"}  # the model explained (--no-explain: not)


def test_no_explain_leaves_the_explanation_out(tmp_path: Path) -> None:
    assert main(["train", "--dataset", "synthetic", "--synthetic-rows", "2000", "--batch-size", "256", "--epochs", "1",
                 "--output-dir", str(tmp_path), "--quiet", "--no-report", "--no-explain"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert "explain" not in m and m["config"]["explain"] is False


@needs_ml100k
def test_movielens_defaults_reach_the_quality_bar(tmp_path: Path) -> None:
    """The README's MovieLens command with the CLI defaults (u1 split, 2 CPU ranks, MMoE)."""
    code = main(["train", "--dataset", "movielens", "--data-dir", str(ML100K), "--world-size", "2",
                 "--output-dir", str(tmp_path), "--no-progress", "--quiet"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["arch"] == "mmoe" and m["eval_split"] == "test" and m["tasks"]["rating"]["count"] == 20000
    assert m["tasks"]["rating"]["rmse"] < 0.93, m["tasks"]
    assert m["tasks"]["like"]["auc"] > 0.79, m["tasks"]
    # gate introspection: one distribution over the 4 experts per task, and the task weights
    for task in ("like", "rating"):
        g = m["gates"][task]
        assert len(g["mean_weight"]) == 4 and abs(sum(g["mean_weight"]) - 1) < 1e-4
        assert 0 <= g["normalised_entropy"] <= 1 and isinstance(g["collapsed"], bool)
    assert m["task_weights"] == {"like": 1.0, "rating": 1.0}
    assert m["config"]["batch_size"] == 4096 and m["config"]["precision"] in ("bf16", "fp32")  # auto, as it ran
    # `make movielens`'s config only places the data: the rest of it is these defaults
    config = read_config_file(str(Path(__file__).resolve().parents[1] / "configs" / "movielens-100k.yaml"))
    assert set(config) == {"dataset", "data", "world_size", "output_dir"}
    # the trained run answers for MovieLens user 1 (raw id): titles shown, movies they rated left out
    from torchrec_fusion.training.inference import recommend

    recs = recommend(str(tmp_path), [1], k=10)
    rated = {int(line.split("\t")[1]) for name in ("u1.base", "u1.test")
             for line in (ML100K / name).read_text().splitlines() if line.split("\t")[0] == "1"}
    items = recs[0]["items"]
    assert recs[0]["user"] == 1 and recs[0]["by"] == "like" and len(items) == 10
    assert not {it["item"] for it in items} & rated and all(it["title"] for it in items)
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)


def test_saved_config_alone_repeats_the_run_and_toml_works(tmp_path: Path, capfd) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "synthetic"\nsynthetic_rows = 3000\nsynthetic-scale = 0.05\nepochs = 1\n'
                    'batch_size = 128\narch = "ple"\nbalancing = "dwa"\nreport = false\nseed = 5\n')
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--config", str(toml), "--output-dir", str(first), "--quiet", "--threads", "1",
                 "--verbose"]) == 0
    printed = capfd.readouterr().out
    assert "threads: 1 per rank (--threads)" in printed and "shard(s) on ranks [0]" in printed  # the whole plan
    # the resolved config of the first run, and nothing else, gives the same run again
    assert main(["train", "--config", str(first / "config.yaml"), "--output-dir", str(second), "--quiet"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert a["config"]["arch"] == "ple" and a["config"]["seed"] == 5 and a["tasks"] == b["tasks"]
    assert a["config"]["threads"] == b["config"]["threads"] == 1
    assert a["step_losses"] == b["step_losses"]


def test_config_file_errors_are_clear(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: synthetic\nepochz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err

