"""``torchrec-fusion fuse``: fuse the score files of separate runs."""

import argparse
import json
import os

from torchrec_fusion.commands.base import Command


class Fuse(Command):
    help = "fuse the score files of separate runs (train --save-scores)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from torchrec_fusion.fusion.files import FILE_FUSIONS

        parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
        parser.add_argument("files", nargs="+", help="score files (OUT/scores.csv of each run)")
        parser.add_argument("--method", required=True, choices=FILE_FUSIONS,
                            help="rank aggregation within each user's rows, or weighted per-user z-scores")
        parser.add_argument("--label", required=True, help="binary label the fused score is evaluated against")
        parser.add_argument("--scores", nargs="+", help="scores to fuse, as <run folder>:<task> (default: all)")
        parser.add_argument("--weights", nargs="+", type=float, help="one weight per fused score")
        parser.add_argument("--k", type=int, default=10, help="cutoff of NDCG@k and HR@k")
        parser.add_argument("--output-dir", required=True, help="where fused.csv and metrics.json are written")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.fusion.files import fuse_files, write_scores

        keys, fused, report = fuse_files(args.files, args.method, args.label, args.scores, args.weights, args.k)
        os.makedirs(args.output_dir, exist_ok=True)
        write_scores(os.path.join(args.output_dir, "fused.csv"), {"user": keys[:, 0], "item": keys[:, 1]}, {},
                     {"fused": fused})
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump({"method": args.method, "label": args.label, "files": args.files,
                       "fused": report["fused"], "scores": {k: v for k, v in report.items() if k != "fused"}}, f,
                      indent=2)
        for name, m in report.items():
            print(f"{name:24s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
        return 0
