"""``evaluate``, ``recommend`` and ``export``: commands on a finished run's checkpoint."""

import argparse
import csv
import json
import os
import re
from typing import Any, Dict, List

from torchrec_fusion.commands.base import Command


def _run_arguments(parser: argparse.ArgumentParser, world_size: bool = True) -> None:
    parser.add_argument("--run", required=True, help="the run's output folder (train --output-dir)")
    parser.add_argument("--checkpoint", help="a checkpoint folder, or best (the best epoch of --early-stopping) "
                                             "or latest (default: the run's latest)")
    parser.add_argument("--allow-plugins", action="store_true",
                        help="import the plugin modules the run's config.yaml names (plugins:); without it such a "
                             "run is refused, since importing a module runs its code")
    if world_size:
        parser.add_argument("--world-size", type=int, default=1,
                            help="local processes; the checkpoint is resharded")
        parser.add_argument("--data-dir", help="where the run's data now lies, if it moved")


class Evaluate(Command):
    help = "metrics of a run's checkpoint on a split"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _run_arguments(parser)
        parser.add_argument("--split", choices=["test", "validation", "train"],
                            help="default: the split the run evaluated on")
        parser.add_argument("--data", metavar="FILE",
                            help="score this file instead of a split (path, glob or folder; a table run's spec "
                                 "reads it, with the run's table sizes)")
        parser.add_argument("--output", help="JSON file for the metrics (default OUT/evaluation_<split>.json, or "
                                              "OUT/evaluation_file_<name>.json with --data)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.inference import evaluate_run

        res = evaluate_run(args.run, args.split, args.world_size, args.checkpoint, args.data, data_dir=args.data_dir,
                           allow_plugins=args.allow_plugins)
        stem = re.sub(r"[^\w-]+", "_", os.path.basename(args.data.rstrip("/")).split(".")[0]) if args.data else ""
        name = f"file_{stem}" if args.data else res["split"]
        path = args.output or os.path.join(args.run, f"evaluation_{name}.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"{res.get('data', res['split'])} ({res['rows']} rows, checkpoint {res['checkpoint']}, step "
              f"{res['step']}, world size {res['world_size']}):")
        for name, m in res["tasks"].items():
            print(f"  {name:16s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
        print(f"wrote {path}")
        return 0


def _read_users(path: str) -> List[int]:
    with open(path) as f:
        try:
            return [int(line) for line in f if line.strip()]
        except ValueError as e:
            raise ValueError(f"{path}: one integer user id per line ({e})") from None


def write_recommendations(path: str, recs: List[Dict[str, Any]]) -> None:
    """Every user's list as CSV (one row per item) or JSON lines (one line per user)."""
    with open(path, "w", newline="") as f:
        if path.endswith(".csv"):
            tasks = list(recs[0]["items"][0]["scores"]) if recs and recs[0]["items"] else []
            w = csv.writer(f)
            w.writerow(["user", "rank", "item", "title", *tasks])
            for r in recs:
                for it in r["items"]:
                    w.writerow([r["user"], it["rank"], it["item"], it.get("title", ""),
                                *(f"{it['scores'][t]:.6g}" for t in tasks)])
        else:
            for r in recs:
                f.write(json.dumps(r) + "\n")


class Recommend(Command):
    help = "top-k items per user from a run's checkpoint, seen items excluded"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _run_arguments(parser)
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", type=int, nargs="+", help="the dataset's user ids")
        who.add_argument("--users-file", help="a file of user ids, one per line")
        parser.add_argument("--k", type=int, default=10, help="items per user")
        parser.add_argument("--by", help="rank by this task, 'fused', 'retrieval' or the chain 'retrieval_x_<task>' "
                                         "(default: the chain, else fused, else the first binary task)")
        parser.add_argument("--include-seen", action="store_true",
                            help="keep items the user already interacted with")
        parser.add_argument("--data", metavar="FILE", help="a file of newer interactions the run's table spec reads "
                                                          "(Parquet/CSV): their items count as seen and are left out")
        parser.add_argument("--candidates", type=int, metavar="N",
                            help="items the full model scores per user: the top N by the retrieval head's dot product "
                                 "(exact search over the run's item vectors), 0 for every item (default: every item "
                                 "of a catalogue of up to 20,000, else max(20 k, 200) retrieved)")
        parser.add_argument("--output", help="write every user's list here (.jsonl or .csv) instead of printing")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.inference import recommend

        users = _read_users(args.users_file) if args.users_file else args.user
        recs = recommend(args.run, users, args.k, args.by, not args.include_seen, args.world_size, args.checkpoint,
                         candidates=args.candidates, data=args.data, data_dir=args.data_dir,
                         allow_plugins=args.allow_plugins)
        if args.output:
            write_recommendations(args.output, recs)
            print(f"wrote {len(recs)} users' top-{args.k} to {args.output}")
            return 0
        for r in recs:
            print(f"user {r['user']} (by {r['by']}): {r['candidates']} items scored")
            for it in r["items"]:
                scores = " ".join(f"{k}={v:.3f}" for k, v in it["scores"].items())
                print(f"  {it['rank']:3d}. item {it['item']:<8d} {scores}" + (f"  {it['title']}" if "title" in it
                                                                               else ""))
        return 0


class Export(Command):
    help = "gather a run's sharded checkpoint into a single-process inference model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _run_arguments(parser, world_size=False)
        parser.add_argument("--to", help="output folder (default OUT/export)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.serving import export_run

        print(f"exported: {export_run(args.run, args.to, args.checkpoint, allow_plugins=args.allow_plugins)}")
        return 0
