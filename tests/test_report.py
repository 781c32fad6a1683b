"""The run report: report.md links valid PNGs, and only the sections whose data exist."""

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List

from torchrec_fusion.evaluation.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gates(epoch: int, collapse: bool) -> Dict[str, Any]:
    share = [0.55 + 0.12 * epoch, 0.2, 0.15, 0.1]
    share[0] = 1 - sum(share[1:]) if not collapse else 0.97
    out = {}
    for t, w in (("click", share), ("rating", [0.25, 0.25, 0.3, 0.2])):
        w = [v / sum(w) for v in w]
        out[t] = {"mean_weight": w, "entropy": 1.0, "normalised_entropy": 0.9 if t == "rating" else 0.3,
                  "dominant_expert": 0, "dominant_share": max(w), "collapsed": t == "click" and collapse}
    return out


def full_result() -> Dict[str, Any]:
    """3 epochs, 2 tasks, MMoE gates over 4 experts, learnt fusion weights, ranking, per-task step losses."""
    history: List[Dict[str, Any]] = []
    for e in range(1, 4):
        history.append({
            "epoch": e, "step": 100 * e, "train_loss": 1.5 - 0.1 * e,
            "tasks": {"click": {"count": 1000, "auc": 0.6 + 0.05 * e, "logloss": 0.7 - 0.02 * e},
                      "rating": {"count": 1000, "rmse": 1.2 - 0.1 * e, "mae": 0.9 - 0.05 * e}},
            "gates": _gates(e, collapse=e == 3),
            "task_weights": {"click": 1.0 + 0.1 * e, "rating": 1.0 - 0.1 * e},
            "fused": {"count": 1000, "auc": 0.65 + 0.05 * e, "logloss": 0.65, "method": "weighted",
                      "weights": {"click": 0.5 + 0.1 * e, "rating": 0.5 - 0.1 * e}},
        })
    steps = [1.6 - 0.001 * i + 0.05 * math.sin(i) for i in range(300)]
    return {
        "tasks": history[-1]["tasks"], "gates": history[-1]["gates"], "task_weights": history[-1]["task_weights"],
        "fused": history[-1]["fused"], "samples_per_second": 12345.6, "world_size": 2, "eval_split": "validation",
        "train_seconds": 3.2, "steps": 300, "history": history, "step_losses": steps,
        "step_task_losses": {"click": [s / 2 for s in steps], "rating": [s * 0.6 for s in steps]},
        "ranking": {"click": {"hr@10": 0.1, "ndcg@10": 0.05, "users": 100},
                    "rrf": {"hr@10": 0.12, "ndcg@10": 0.06, "users": 100}},
        "plan": "sharding plan:\n  t_user: table_wise, 1 shard(s) on ranks [0]\n  t_item: row_wise on ranks [0, 1]",
        "data": {"dataset": "synthetic"},
        "config": {"arch": "mmoe", "balancing": "uncertainty", "fusion": "weighted", "epochs": 3},
    }


def minimal_result() -> Dict[str, Any]:
    """1 epoch, shared bottom (no gates), no fusion, no ranking, no plan."""
    tasks = {"click": {"count": 10, "auc": 0.7, "logloss": 0.6}}
    return {"tasks": tasks, "gates": {}, "task_weights": {"click": 1.0}, "fused": {}, "samples_per_second": 100.0,
            "world_size": 1, "history": [{"epoch": 1, "train_loss": 0.6, "tasks": tasks, "gates": {},
                                          "task_weights": {"click": 1.0}}],
            "step_losses": [0.7, 0.6, 0.5], "ranking": {},
            "config": {"arch": "shared_bottom", "balancing": "fixed", "fusion": "none", "epochs": 1}}


def check_report(out: Path) -> str:
    """report.md exists and every image it links is a valid, non-trivial PNG; returns the markdown."""
    md_path = out / "report.md"
    assert md_path.is_file()
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    for link in links:
        assert not Path(link).is_absolute()
        png = out / link
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, link
        try:
            from PIL import Image
        except ImportError:
            continue
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG" and min(im.size) >= 200
    assert sorted(p.name for p in (out / "report").glob("*.png")) == sorted(Path(link).name for link in links)
    return md


def test_full_report(tmp_path: Path) -> None:
    path = write_report(full_result(), str(tmp_path))
    assert path == str(tmp_path / "report.md")
    md = check_report(tmp_path)
    assert md.startswith("# Run report: mmoe, balancing uncertainty, fusion weighted")
    for section in ("## Final metrics (validation)", "## Sharding plan", "```\nsharding plan:",
                    "## Ranking (full catalogue)", "| rrf |", "12,346 samples/s", "world size: 2",
                    "| fused (weighted) |", "Collapsed at the end: click", "epochs: 3\n", "steps: 300"):
        assert section in md, section
    assert "users" not in md and "count" not in md  # only float metrics in the tables
    for name in ("loss", "metrics", "gates", "task_weights", "fusion_weights"):
        assert f"(report/{name}.png)" in md


def test_minimal_report_leaves_out_missing_sections(tmp_path: Path) -> None:
    stale = tmp_path / "report" / "gates.png"  # an earlier run's figure in the same folder goes
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    md = check_report(Path(write_report(minimal_result(), str(tmp_path))).parent)
    for present in ("## Final metrics", "(report/loss.png)", "(report/metrics.png)", "(report/task_weights.png)"):
        assert present in md, present
    for absent in ("gates.png", "fusion_weights.png", "## Sharding plan", "## Ranking", "fused"):
        assert absent not in md, absent
    assert not stale.exists()


def test_run_stopped_inside_an_epoch(tmp_path: Path) -> None:
    r = full_result()  # max_steps=250: the last evaluation is at epoch 2.5, without an epoch loss
    r["history"][2].update(epoch=2.5, step=250, train_loss=float("nan"))
    r["step_losses"] = r["step_losses"][:250]
    md = check_report(Path(write_report(r, str(tmp_path))).parent)
    assert "epochs: 2.5\n" in md and "(report/gates.png)" in md


def test_nan_and_odd_input_still_give_a_report(tmp_path: Path) -> None:
    r = full_result()
    nan = float("nan")
    r["step_losses"][5:50] = [nan] * 45
    r["step_losses"][60] = float("inf")
    r["history"][1]["tasks"]["click"]["auc"] = nan
    r["history"][0]["gates"]["click"]["mean_weight"] = [nan] * 4
    r["history"][2]["train_loss"] = nan
    r["history"][1]["fused"]["weights"] = None
    r["history"].append("not an epoch")
    r["tasks"]["rating"]["rmse"] = nan
    r["config"] = None
    r["plan"] = 42
    md = check_report(Path(write_report(json.loads(json.dumps(r)), str(tmp_path))).parent)
    assert "| nan |" in md  # the final rmse
    assert "(report/loss.png)" in md and "(report/gates.png)" in md
    for odd in ({}, None, {"history": None, "step_losses": "x", "tasks": [], "ranking": {"a": 1}},
                {"history": [{"epoch": 1, "gates": {"a": {"mean_weight": []}}}]}):
        out = tmp_path / f"odd{len(list(tmp_path.iterdir()))}"
        check_report(Path(write_report(odd, str(out))).parent)  # type: ignore[arg-type]


def test_report_of_a_real_training_run(tmp_path: Path) -> None:
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.trainer import train

    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=4000, epochs=2, batch_size=256, world_size=1,
                               progress=False, verbose=False))
    md = check_report(Path(write_report(r.to_dict(), str(tmp_path))).parent)
    assert md.startswith("# Run report: mmoe, balancing fixed, fusion none")
    for present in ("## Final metrics", "## Sharding plan", "gates.png", "task_weights.png", "metrics.png"):
        assert present in md, present
    assert "fusion_weights.png" not in md


def test_demo_writes_report_with_every_figure(tmp_path) -> None:
    """`make demo`'s own arguments (read from the Makefile), on fewer rows: report.md and all its PNGs."""
    import re
    import shlex
    from pathlib import Path

    from torchrec_fusion.cli import main

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = shlex.split(re.search(r"^DEMO_ARGS \?= (.*)$", makefile, re.M).group(1))
    out = tmp_path / "demo"
    assert main(["train", *demo, "--synthetic-rows", "6000", "--batch-size", "512", "--epochs", "2",
                 "--output-dir", str(out),
                 "--no-progress", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    for png in ("loss", "metrics", "gates", "task_weights", "fusion_weights"):
        assert f"report/{png}.png" in report
        assert (out / "report" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _two_epochs() -> Dict[str, Any]:
    """The issue's run: 2 epochs, an RMSE from 0.492 to 0.479, an AUC from 0.55 to 0.75, fixed equal weights."""
    history = [{"epoch": e, "train_loss": 0.7 - 0.1 * e,
                "tasks": {"click": {"auc": a, "logloss": 0.6}, "rating": {"rmse": r}},
                "task_weights": {"click": 1.0, "rating": 1.0}}
               for e, a, r in ((1, 0.55, 0.492), (2, 0.75, 0.479))]
    return {"history": history, "tasks": history[-1]["tasks"], "step_losses": [0.7, 0.6, 0.5, 0.45],
            "config": {"arch": "mmoe", "balancing": "fixed", "fusion": "none"}}


def test_plots_read_true(tmp_path: Path) -> None:
    from torchrec_fusion.evaluation import report

    r = _two_epochs()
    x = [1.0, 2.0]
    fig = report._metrics_figure(r["history"], x)
    assert fig is not None
    axes = {ax.get_title(): ax for ax in fig.axes}
    # a wide spread starts at 0; a narrow one stays zoomed and says so, in the title and the axis label
    assert axes["auc"].get_ylim()[0] == 0 and axes["logloss"].get_ylim()[0] == 0
    rmse = axes["rmse [zoomed]"]
    assert rmse.get_ylim()[0] > 0.4 and "not from 0" in rmse.get_ylabel()
    # two epochs are two points, not a line
    assert all(line.get_linestyle() == "None" and line.get_marker() == "o" for line in axes["auc"].get_lines())
    # equal fixed weights: each task its own marker and size, so both stay visible; the title says they are equal
    weights = report._weights_figure(report._by_epoch(r["history"], lambda e: e.get("task_weights")), x, "w")
    assert weights is not None
    ax = weights.axes[0]
    lines = ax.get_lines()
    assert ax.get_title() == "w (all equal)" and len({ln.get_marker() for ln in lines}) == 2
    assert lines[0].get_markersize() > lines[1].get_markersize()
    # longer runs are lines
    long = [{**r["history"][0], "epoch": e} for e in range(1, 9)]
    fig = report._metrics_figure(long, [float(e) for e in range(1, 9)])
    assert fig is not None and fig.axes[0].get_lines()[0].get_linestyle() == "-"
    md = check_report(Path(write_report(r, str(tmp_path))).parent)
    captions = [line for line in md.splitlines() if line.startswith("*")]
    assert len(captions) == 3 and all("Look for" in c for c in captions)  # loss, metrics, task weights
