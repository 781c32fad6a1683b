"""``torchrec-fusion recommend``: every user's top-k items from a run's checkpoint."""

import argparse
import csv
import json
from typing import Any, Dict, List

from torchrec_fusion.commands.base import Command
from torchrec_fusion.commands.explain import describe
from torchrec_fusion.commands.runs import run_arguments


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
    outputs = {"--output": "file"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        run_arguments(parser)
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
        parser.add_argument("--explain", action="store_true",
                            help="explain each item: its score's top features and the history items that raised it "
                                 "most (every score's attributions, gate mixtures and fusion contributions in .jsonl)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.inference import recommend

        users = _read_users(args.users_file) if args.users_file else args.user
        recs = recommend(args.run, users, args.k, args.by, not args.include_seen, args.world_size, args.checkpoint,
                         candidates=args.candidates, data=args.data, explain=args.explain, data_dir=args.data_dir,
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
                if "explanation" in it:
                    print("\n".join(describe(it["explanation"], _explained(it["explanation"], r["by"]), gates=False)))
        return 0


def _explained(explanation: Dict[str, Any], by: str) -> str:
    """The score an item's explanation is shown for: the ranking score when it is explained (a task or
    the fused score), else the fused score, else the first."""
    scores = explanation["scores"]
    return by if by in scores else ("fused" if "fused" in scores else next(iter(scores)))
