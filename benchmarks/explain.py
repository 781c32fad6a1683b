"""Explanations: how long one prediction's explanation takes, and how complete it is.

On the ml-100k run of ``configs/movielens-100k.yaml`` with liked-items history bags (trained into
``--run`` first when that folder holds no checkpoint: a few minutes, once), the run's checkpoint is
gathered into this process, then (user, item) pairs of the test split are explained one at a time
(every score's attributions to every feature and history item, the gate mixtures): the time of each
(after one warm-up explanation; each runs on one intra-op thread), and the largest completeness gap
relative to ``|score - baseline|``. The target: under 1 s per explanation.

    python -m benchmarks.explain [--run runs/explain-ml-100k] [--pairs 20] [--threads N] [--json FILE]
"""

import argparse
import json
import os
import statistics
import time
from typing import Any, Dict, List

import torch

from torchrec_fusion.explain.run import explain_pairs, load_explainer
from torchrec_fusion.outputs import write_json
from torchrec_fusion.training.checkpoint import latest_checkpoint

TARGET_SECONDS = 1.0


def _train(run: str) -> None:
    from torchrec_fusion.cli import main

    print(f"training the ml-100k run into {run} (configs/movielens-100k.yaml, --history-liked like)")
    code = main(["train", "--config", "configs/movielens-100k.yaml", "--history-liked", "like", "--output-dir", run,
                 "--overwrite", "--quiet"])
    if code != 0:
        raise SystemExit(code)


def _gap(explained: Dict[str, Any]) -> float:
    """The largest ``|completeness gap| / |score - baseline|`` over the scores of one explanation."""
    return max(float(abs(s["completeness_gap"]) / max(abs(s["value"] - s["baseline"]), 1e-12))
               for s in explained["scores"].values())


def measure(run: str, pairs: int) -> Dict[str, Any]:
    """Load time, seconds per explanation of one pair (each after a warm-up), completeness."""
    start = time.perf_counter()
    explainer = load_explainer(run)
    load = time.perf_counter() - start
    test = explainer.prepared.splits["test"].in_memory_rows()
    loaded = explainer.prepared.loaded
    assert test is not None and loaded is not None and loaded.user_ids is not None and loaded.item_ids is not None
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:pairs]
    users = loaded.user_ids[test.extras["user"][pick].long()].tolist()
    items = loaded.item_ids[test.extras["item"][pick].long()].tolist()
    explain_pairs(explainer, users[:1], items[:1])  # warm-up: first autograd call, allocator
    seconds: List[float] = []
    gaps: List[float] = []
    for u, i in zip(users, items):
        t = time.perf_counter()
        (e,) = explain_pairs(explainer, [u], [i])
        seconds.append(time.perf_counter() - t)
        gaps.append(_gap(e))
    t = time.perf_counter()
    explain_pairs(explainer, users[:5], items[:5])  # what recommend --k 5 --explain adds
    five = time.perf_counter() - t
    return {"run": run, "checkpoint": explainer.source, "pairs": len(seconds),
            "load_seconds": round(load, 3), "median_seconds": round(statistics.median(seconds), 4),
            "max_seconds": round(max(seconds), 4), "five_items_seconds": round(five, 4),
            "max_completeness_gap": max(gaps), "target_seconds": TARGET_SECONDS,
            "meets_target": statistics.median(seconds) < TARGET_SECONDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/explain-ml-100k", help="an ml-100k run with history bags")
    parser.add_argument("--pairs", type=int, default=20, help="(user, item) pairs explained one at a time")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if latest_checkpoint(os.path.join(args.run, "checkpoints")) is None:
        _train(args.run)
    result = measure(args.run, args.pairs)
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result, indent=1)


if __name__ == "__main__":
    main()
