"""``torchrec-fusion fuse``: fuse the score files of separate runs."""

import argparse
import os

from torchrec_fusion.commands.base import Command
from torchrec_fusion.outputs import write_json

OUTPUTS = ("fused.csv", "metrics.json")


class Fuse(Command):
    help = "fuse the score files of separate runs (train --save-scores)"
    outputs = {"--output-dir": "dir"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from torchrec_fusion.fusion.files import FILE_FUSIONS
        from torchrec_fusion.fusion.normalize import METHODS

        parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
        parser.add_argument("files", nargs="+", help="score files (OUT/scores.csv of each run); a row a file "
                            "lacks is one that run did not return")
        parser.add_argument("--method", required=True, choices=FILE_FUSIONS,
                            help="rank aggregation within each user's rows, or weighted per-user z-scores")
        parser.add_argument("--label", required=True, help="binary label the fused score is evaluated against")
        parser.add_argument("--scores", nargs="+", help="scores to fuse, as <run folder>:<task> (default: all)")
        parser.add_argument("--weights", nargs="+", type=float,
                            help="one weight per fused score, finite and >= 0 (rrf, borda, combsum, combmnz, "
                            "weighted; the others take none)")
        parser.add_argument("--rrf-k", type=float, default=None, help="RRF constant k in w / (k + rank) (rrf "
                            "only; default 60)")
        parser.add_argument("--norm", default="auto", choices=("auto", *METHODS),
                            help="per-user normalisation before a score fusion: auto = the method's own "
                            "(minmax for comb*, zscore for weighted), none = raw scores; rrf and borda use ranks")
        parser.add_argument("--k", type=int, default=10, help="cutoff of NDCG@k, HR@k and recall@k")
        parser.add_argument("--output-dir", required=True, help="where fused.csv and metrics.json are written "
                            "(a folder that holds neither)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.fusion.files import KEY_COLUMNS, fuse_files, write_scores

        taken = [name for name in OUTPUTS if os.path.exists(os.path.join(args.output_dir, name))]
        if taken:
            raise ValueError(f"{args.output_dir} already holds {taken}: give a new --output-dir")
        if args.rrf_k is not None and args.method != "rrf":
            raise ValueError(f"--rrf-k is the rrf constant; --method {args.method} takes none")
        options = {"k": args.rrf_k} if args.rrf_k is not None else None
        keys, fused, report, key_columns = fuse_files(args.files, args.method, args.label, args.scores,
                                                      args.weights, args.k, options, args.norm)
        if key_columns == ("row",):
            print("the files are keyed by row: all rows are fused and ranked as one list")
        os.makedirs(args.output_dir, exist_ok=True)
        key_cols = {c: keys[:, i] for i, c in enumerate(KEY_COLUMNS) if c in key_columns}
        write_scores(os.path.join(args.output_dir, "fused.csv"), key_cols, {}, {"fused": fused}, number_rows=False)
        path = os.path.join(args.output_dir, "metrics.json")
        summary = {"method": args.method, "label": args.label, "files": args.files, "norm": args.norm,
                   "weights": args.weights, "options": options or {}, "rows": len(keys),
                   "lists": len(set(keys[:, 0].tolist())), "fused": report["fused"],
                   "scores": {k: v for k, v in report.items() if k != "fused"}}
        write_json(path, summary)
        for name, m in report.items():
            print(f"{name:24s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
        return 0
