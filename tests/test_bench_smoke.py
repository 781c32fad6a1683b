"""The benchmark suite (``python -m benchmarks.run``) runs end to end at its --quick sizes and writes
every section with positive numbers. No speed or memory threshold here: the targets are reported
by the benchmark itself (docs/performance.md), never asserted in a timed test."""

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import ML100K

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = {"ours", "ours_fusion", "ours_matched", "dlrm", "peers", "plain"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_suite_writes_every_section(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert (out / "bench.txt").read_text().startswith("== machine ==")
    for section in ("machine", "bandwidth", "comparison", "profile", "scaling", "datapath", "roofline", "movielens",
                    "small_tables"):
        assert section in report, section
    assert _positive(report["bandwidth"]["reference_bytes_per_s"])
    assert _positive(report["wall_seconds"])

    comp = report["comparison"]
    seen = {(r["contender"], r["world_size"]) for r in comp["results"]}
    assert seen == {(c, ws) for c in CONTENDERS for ws in (1, 2)}
    for r in comp["results"]:
        for key in ("train_samples_per_s", "train_median_samples_per_s", "eval_samples_per_s", "train_ms_per_step"):
            assert _positive(r[key]), (r["contender"], r["world_size"], key)
    for ws in ("ws1", "ws2"):
        for key in ("ours_over_peers_train", "ours_over_plain_train", "fusion_step_time_over_dlrm",
                    "matched_step_time_over_dlrm"):
            assert _positive(comp["ratios"][ws][key]), (ws, key)

    for p in report["profile"]:
        assert _positive(p["wall_ms_per_step"]) and sum(p["ms_per_step"].values()) > 0

    scaling = report["scaling"]["results"]
    assert {r["contender"] for r in scaling} == {"ours", "peers", "plain"}
    assert {r["world_size"] for r in scaling if r["contender"] == "ours"} == {1, 2}
    for r in scaling:
        assert _positive(r["train_samples_per_s"])
        assert all(_positive(v) for v in r["peak_rss_per_rank"] + r["floor_per_rank"])

    assert report["datapath"] and all(_positive(d["batches_per_s"]) for d in report["datapath"])
    rows = report["roofline"]["rows"]
    assert rows and all(_positive(x["embedding_bytes_per_s"]) and _positive(x["fraction_of_bandwidth"]) for x in rows)

    ml = report["movielens"]
    if (ML100K / "u.data").exists():
        assert _positive(ml["samples_per_second"]) and _positive(ml["cli_defaults"]["samples_per_second"])
        assert any(d["source"].startswith("movielens") and _positive(d["loader_over_train"])
                   for d in report["datapath"])
    else:
        assert "skipped" in ml
    assert report["targets"] and all(isinstance(t["met"], bool) for t in report["targets"])
    _check_small_tables(report["small_tables"])


def _check_small_tables(small):
    """Every configuration ran, learned something (AUC above chance on the held-out rows) and has a ratio."""
    seen = {(s["contender"], s["world_size"]) for s in small["summary"]}
    assert seen == {("plain", 1), ("plain_bf16", 1), ("ours", 1), ("ours", 2)}
    for s in small["summary"]:
        assert _positive(s["samples_per_s"]) and _positive(s["ratio_to_plain"]), s
        assert _positive(s["ratio_to_plain_bf16"]), s
        assert all(0.5 < s["auc"][t] <= 1.0 for t in ("income", "marital")), s
    assert {s["precision"] for s in small["summary"] if s["contender"] == "plain_bf16"} == {"bf16"}
    assert {r["precision"] for r in small["runs"] if r["contender"] == "ours"} <= {"bf16", "fp32"}
    assert small["plain_by_batch_size"] and all(_positive(v) for v in small["plain_by_batch_size"].values())
    assert any(r.get("profile") for r in small["runs"] if r["contender"] == "ours")


def test_cuda_variant_says_when_cuda_is_missing(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # a CUDA host runs the suite itself: `python -m benchmarks.run --device cuda`
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", "cuda", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "CUDA is unavailable" in proc.stderr
    assert not (tmp_path / "bench.json").exists()
