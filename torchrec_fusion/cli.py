"""The ``torchrec-fusion`` command line."""

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Dict, List, Optional, Sequence

from torchrec_fusion.training.config import TrainConfig


def _choices() -> Dict[str, Sequence[str]]:
    from torchrec_fusion.data.sources import DATASETS
    from torchrec_fusion.distributed.sharding import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES
    from torchrec_fusion.fusion.head import TRAINABLE_FUSIONS
    from torchrec_fusion.fusion.normalize import METHODS as NORMALIZERS
    from torchrec_fusion.losses import BALANCERS
    from torchrec_fusion.modules.architectures import ARCHITECTURES

    return {
        "dataset": DATASETS, "arch": sorted(ARCHITECTURES), "balancing": sorted(BALANCERS),
        "embedding_optimizer": sorted(EMBEDDING_OPTIMIZERS), "dense_optimizer": sorted(DENSE_OPTIMIZERS),
        "sharding_type": SHARDING_TYPES, "device": ["cpu", "cuda"],
        "fusion": ["none", *TRAINABLE_FUSIONS], "fusion_normalizer": list(NORMALIZERS),
    }


HELP = {
    "dataset": "synthetic (no files needed) or movielens (official files in --data-dir)",
    "data_dir": "folder of the MovieLens files (ml-100k, ml-1m, ml-20m or ml-25m)",
    "split": "auto (u1 for ml-100k), u1..u5, ua, ub, or random",
    "tasks": "train only these tasks (names from the dataset)",
    "validation_fraction": "carve this fraction of train as validation and evaluate on it (for tuning)",
    "world_size": "local processes to launch (ignored under torchrun)",
    "sharding_type": "force this sharding type on every table (default: the planner chooses)",
    "batch_size": "per-rank batch size",
    "output_dir": "where metrics.json is written",
    "fusion": "fuse the task predictions into one score, trained in the same loop (rank aggregation: "
              "torchrec_fusion.fusion.rank_aggregation)",
    "fusion_target": "binary task whose label supervises the fused score (default: the first binary task)",
    "fusion_weights": "weighted fusion: fixed weights, one per task, instead of learnt simplex weights",
    "ensemble": "train several complete models (architecture names, or dlrm for TorchRec's DLRM), each with its "
                "own tables, under one DMP; combine with --fusion",
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    choices = _choices()
    hints = typing.get_type_hints(TrainConfig)
    skip = {"constraints", "keep_predictions", "verbose", "progress"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is typing.Union else hint
        kw: Dict[str, Any] = {"default": default, "help": HELP.get(f.name, "") + f" (default: {default})"}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) in (list, List):
            kw.update(nargs="+", type=typing.get_args(base)[0])
        else:
            kw["type"] = base
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        parser.add_argument(flag, **kw)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument("--quiet", dest="verbose", action="store_false", help="print only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrec-fusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a multi-task model, sharded by TorchRec's planner",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_config_args(train)
    from torchrec_fusion.fusion.files import FILE_FUSIONS

    fuse = sub.add_parser("fuse", help="fuse the score files of separate runs (train --save-scores)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fuse.add_argument("files", nargs="+", help="score files (OUT/scores.csv of each run)")
    fuse.add_argument("--method", required=True, choices=FILE_FUSIONS,
                      help="rank aggregation within each user's rows, or weighted per-user z-scores")
    fuse.add_argument("--label", required=True, help="binary label the fused score is evaluated against")
    fuse.add_argument("--scores", nargs="+", help="scores to fuse, as <run folder>:<task> (default: all)")
    fuse.add_argument("--weights", nargs="+", type=float, help="one weight per fused score")
    fuse.add_argument("--k", type=int, default=10, help="cutoff of NDCG@k and HR@k")
    fuse.add_argument("--output-dir", required=True, help="where fused.csv and metrics.json are written")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        from torchrec_fusion.training.trainer import train

        try:
            result = train(config)
        except (ValueError, OSError, KeyError, FloatingPointError) as e:
            print(f"torchrec-fusion: error: {e}", file=sys.stderr)
            return 2
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
            return 0
        shown = {**result["tasks"], **({"fused": result["fused"]} if result.get("fused") else {})}
        summary = {t: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for t, m in shown.items()}
        print(f"final ({result['eval_split']}): {summary}  samples/s={result['samples_per_second']:.0f}")
    if args.command == "fuse":
        import json

        from torchrec_fusion.fusion.files import fuse_files, write_scores

        try:
            keys, fused, report = fuse_files(args.files, args.method, args.label, args.scores, args.weights, args.k)
        except (ValueError, OSError) as e:
            print(f"torchrec-fusion: error: {e}", file=sys.stderr)
            return 2
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


if __name__ == "__main__":
    sys.exit(main())
