"""Ranks the MovieLens catalogue with each single score and each fusion method.

    .venv/bin/python scripts/compare_fusion.py --data-dir ../shared/data/ml-100k

Per seed, two sharded runs with the CLI defaults and a learnt weighted fusion head:
1. trained on u1.base less a 10% validation split, ranked on that validation split: the weight of
   the post-hoc weighted fusion (per-user z-scores of ``like`` and ``rating``) is fitted there, on
   NDCG@10, by a grid over the simplex;
2. trained on all of u1.base and ranked on u1.test, where every score and fusion is reported: the
   single scores, the learnt fusion head, the fitted weighting, RRF, Borda and CombSUM.
Users: those with a liked (rating >= 4) held-out item; candidates: every item the user did not
rate in training; full ranking and the sampled protocol (1 held-out positive + 100 negatives).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

from torchrec_fusion.evaluation.catalogue import CatalogueTask, catalogue_report
from torchrec_fusion.evaluation.ranking import ranking_metrics
from torchrec_fusion.fusion.normalize import normalize
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train

COLUMNS = ["ndcg@10", "hr@10", "mrr", "sampled_ndcg@10", "sampled_hr@10"]


def weighted(scores: Dict[str, torch.Tensor], task: CatalogueTask, w: float) -> torch.Tensor:
    z = {k: normalize(scores[k].masked_fill(task.seen, float("nan")), "zscore") for k in ("like", "rating")}
    return w * z["like"] + (1 - w) * z["rating"]


def fit_weight(scores: Dict[str, torch.Tensor], task: CatalogueTask, steps: int = 20) -> float:
    """The weight of ``like`` (rating gets 1 - w) with the best validation NDCG@10."""
    best = (-1.0, 0.0)
    for i in range(steps + 1):
        w = i / steps
        value = ranking_metrics(weighted(scores, task, w), task.positives, (10,), exclude=task.seen).mean["ndcg@10"]
        best = max(best, (value, w))
    return best[1]


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/ml-100k")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="override the CLI default (smoke runs)")
    p.add_argument("--out", default="docs/fusion_comparison")
    args = p.parse_args(argv)

    rows: Dict[str, List[Dict[str, float]]] = {}
    fitted = []
    for seed in args.seeds:
        base: Dict[str, Any] = {"dataset": "movielens", "data_dir": args.data_dir, "world_size": args.world_size,
                                "seed": seed, "ranking_eval": True, "fusion": "weighted", "fusion_target": "like",
                                "keep_predictions": True, "progress": False, "verbose": False}
        if args.epochs:
            base["epochs"] = args.epochs
        val = train(TrainConfig.make(**base, validation_fraction=0.1))
        assert val.ranking_scores is not None  # kept: keep_predictions
        w = fit_weight(val.ranking_scores, val.ranking_task)
        fitted.append(w)
        test = train(TrainConfig.make(**base))
        task, scores = test.ranking_task, test.ranking_scores
        assert scores is not None
        report: Dict[str, Dict[str, float]] = dict(test.ranking)
        report["fitted weighted"] = catalogue_report({"f": weighted(scores, task, w)}, task, seed=seed)["f"]
        for name, m in report.items():
            rows.setdefault(name, []).append(m)
        print(f"seed={seed} fitted w_like={w:.2f} " + " ".join(
            f"{n}:ndcg@10={m['ndcg@10']:.4f}" for n, m in report.items()), flush=True)

    def cell(vals: List[float]) -> str:
        return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.4f}"

    names = {"like": "like (single score)", "rating": "rating (single score)", "fused": "learnt weighted head",
             "fitted weighted": "fitted weighted (validation)", "rrf": "RRF (k=60)", "borda": "Borda",
             "combsum": "CombSUM (min-max)"}
    lines = ["| score | " + " | ".join(COLUMNS) + " |", "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for name, ms in rows.items():
        lines.append(f"| {names.get(name, name)} | " + " | ".join(cell([m[c] for m in ms]) for c in COLUMNS) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "fitted_w_like": fitted, "rows": rows},
                                                   indent=2))
    out.with_suffix(".md").write_text(
        f"MovieLens ({args.data_dir}), u1.test ranked against the whole catalogue (training items excluded); "
        f"mean ± sd over seeds {args.seeds}, world size {args.world_size}; fitted weight of like "
        f"(rating gets 1 - w) per seed: {fitted}.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
