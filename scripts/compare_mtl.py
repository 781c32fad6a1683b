"""Compares multi-task architectures and loss balancing on MovieLens (or synthetic data).

    .venv/bin/python scripts/compare_mtl.py --data-dir ../shared/data/ml-100k

trains every (architecture, balancing, seed) with the CLI defaults (chosen on a validation
split carved from u1.base), sharded over --world-size CPU ranks, evaluates on the test split
(u1.test), and writes the table (mean and standard deviation over the seeds) as Markdown and JSON.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train

COLUMNS = [("like", "auc", "like AUC"), ("like", "logloss", "like log-loss"), ("rating", "rmse", "rating RMSE")]


def _cell(values: List[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="movielens", choices=["movielens", "synthetic"])
    p.add_argument("--data-dir", default="../shared/data/ml-100k")
    p.add_argument("--archs", nargs="+", default=["single_task", "shared_bottom", "mmoe", "ple"])
    p.add_argument("--balancing", nargs="+", default=["fixed", "uncertainty", "pcgrad"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="override the CLI default (smoke runs)")
    p.add_argument("--batch-size", type=int, default=None, help="override the CLI default (smoke runs on tiny data)")
    p.add_argument("--synthetic-rows", type=int, default=20_000)
    p.add_argument("--out", default="docs/mtl_comparison")
    args = p.parse_args(argv)

    columns = COLUMNS if args.dataset == "movielens" else [
        ("ctr", "auc", "ctr AUC"), ("ctr", "logloss", "ctr log-loss"), ("watch_time", "rmse", "watch_time RMSE")]
    tasks = None if args.dataset == "movielens" else ["ctr", "watch_time"]
    # each dataset takes its own options: the files' folder, or the number of synthetic rows
    data = {"data_dir": args.data_dir} if args.dataset == "movielens" else {"synthetic_rows": args.synthetic_rows}
    epochs = {"epochs": args.epochs} if args.epochs else {}
    if args.batch_size:
        epochs["batch_size"] = args.batch_size
    runs: List[Dict[str, Any]] = []
    for arch in args.archs:
        for balancing in args.balancing:
            for seed in args.seeds:
                cfg = TrainConfig.make(dataset=args.dataset, arch=arch, balancing=balancing, seed=seed,
                                       world_size=args.world_size, tasks=tasks, progress=False, verbose=False,
                                       **data, **epochs)
                t0 = time.time()
                r = train(cfg)
                runs.append({"arch": arch, "balancing": balancing, "seed": seed, "tasks": r.tasks,
                             "task_weights": r.task_weights, "seconds": time.time() - t0})
                print(f"{arch:14s} {balancing:12s} seed={seed} " + " ".join(
                    f"{label}={r.tasks[t][m]:.4f}" for t, m, label in columns), flush=True)

    lines = ["| architecture | balancing | " + " | ".join(c[2] for c in columns) + " |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]
    for arch in args.archs:
        for balancing in args.balancing:
            sel = [r for r in runs if r["arch"] == arch and r["balancing"] == balancing]
            lines.append(f"| {arch} | {balancing} | " + " | ".join(
                _cell([r["tasks"][t][m] for r in sel]) for t, m, _ in columns) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    out.with_suffix(".md").write_text(
        f"Mean ± standard deviation over seeds {args.seeds}; {args.dataset}"
        f"{' ' + args.data_dir if args.dataset == 'movielens' else ''}, world size {args.world_size}.\n\n"
        + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
