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
    from torchrec_fusion.modules.model import PRECISIONS

    return {
        "dataset": DATASETS, "arch": sorted(ARCHITECTURES), "balancing": sorted(BALANCERS),
        "embedding_optimizer": sorted(EMBEDDING_OPTIMIZERS), "dense_optimizer": sorted(DENSE_OPTIMIZERS),
        "sharding_type": SHARDING_TYPES, "device": ["cpu", "cuda"],
        "fusion": ["none", *TRAINABLE_FUSIONS], "fusion_normalizer": list(NORMALIZERS),
        "precision": list(PRECISIONS),
    }


HELP = {
    "dataset": "synthetic (no files needed), movielens (official files in --data-dir), criteo (raw TSV in "
               "--data-dir) or table (your Parquet/CSV: a 'table' section in --config)",
    "data_dir": "folder of the MovieLens files (ml-100k, ml-1m, ml-20m or ml-25m), or Criteo TSV file(s)",
    "split": "auto (u1 for ml-100k), u1..u5, ua, ub, or random",
    "tasks": "train only these tasks (names from the dataset)",
    "validation_fraction": "carve this fraction of train as validation and evaluate on it (for tuning)",
    "world_size": "local processes to launch (ignored under torchrun)",
    "sharding_type": "force this sharding type on every table (default: the planner chooses)",
    "batch_size": "per-rank batch size",
    "precision": "bf16: the dense part (MLPs, experts, gates, towers) in bfloat16 under torch.autocast, 4-5x "
                 "faster matrix products on CPUs with AVX512-BF16/AMX; tables, optimizer state and losses stay fp32",
    "output_dir": "where metrics.json is written",
    "fusion": "fuse the task predictions into one score, trained in the same loop (rank aggregation: "
              "torchrec_fusion.fusion.rank_aggregation)",
    "fusion_target": "binary task whose label supervises the fused score (default: the first binary task)",
    "fusion_weights": "weighted fusion: fixed weights, one per task, instead of learnt simplex weights",
    "rank_memory_mb": "memory per rank the planner may use for tables and their optimizer state",
    "checkpoint_every": "write a checkpoint every N global steps to OUT/checkpoints (0: only the final model)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "resume": "auto (the latest checkpoint in OUT, if any) or a checkpoint/run folder to continue from",
    "max_steps": "stop after this many global steps (counted across resumes)",
    "save_model": "save the final model to OUT/checkpoints (needed by evaluate, recommend, export)",
    "report": "write OUT/report.md with PNG plots",
    "ensemble": "train several complete models (architecture names, or dlrm for TorchRec's DLRM), each with its "
                "own tables, under one DMP; combine with --fusion",
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    choices = _choices()
    hints = typing.get_type_hints(TrainConfig)
    skip = {"constraints", "keep_predictions", "verbose", "progress", "table"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is typing.Union else hint
        # SUPPRESS: only the flags given on the command line override the config file
        kw: Dict[str, Any] = {"default": argparse.SUPPRESS, "help": HELP.get(f.name, "") + f" (default: {default})"}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) in (list, List):
            kw.update(nargs="+", type=typing.get_args(base)[0])
        else:
            kw["type"] = base
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        parser.add_argument(flag, **kw)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="hide the progress bar")
    parser.add_argument("--quiet", dest="verbose", action="store_false", default=argparse.SUPPRESS,
                        help="print only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrec-fusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a multi-task model, sharded by TorchRec's planner")
    train.add_argument("--config", help="a YAML or TOML file of these options (keys as the flags, with _ or -); "
                                        "flags given here override it. Each run saves OUT/config.yaml, which "
                                        "repeats the run")
    _add_config_args(train)
    run_args = argparse.ArgumentParser(add_help=False)
    run_args.add_argument("--run", required=True, help="the run's output folder (train --output-dir)")
    run_args.add_argument("--checkpoint", help="a checkpoint folder (default: the run's latest)")
    run_args.add_argument("--world-size", type=int, default=1, help="local processes; the checkpoint is resharded")
    run_args.add_argument("--data-dir", help="where the run's data now lies, if it moved")
    ev = sub.add_parser("evaluate", parents=[run_args], help="metrics of a run's checkpoint on a split")
    ev.add_argument("--split", choices=["test", "validation", "train"],
                    help="default: the split the run evaluated on")
    ev.add_argument("--output", help="JSON file for the metrics (default OUT/evaluation_<split>.json)")
    rec = sub.add_parser("recommend", parents=[run_args],
                         help="top-k items per user from a run's checkpoint, seen items excluded")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, nargs="+", help="the dataset's user ids")
    who.add_argument("--users-file", help="a file of user ids, one per line")
    rec.add_argument("--k", type=int, default=10, help="items per user")
    rec.add_argument("--by", help="rank by this task or 'fused' (default: fused, else the first binary task)")
    rec.add_argument("--include-seen", action="store_true", help="keep items the user already interacted with")
    rec.add_argument("--output", help="write every user's list here (.jsonl or .csv) instead of printing")
    exp = sub.add_parser("export", help="gather a run's sharded checkpoint into a single-process inference model")
    exp.add_argument("--run", required=True, help="the run's output folder")
    exp.add_argument("--checkpoint", help="a checkpoint folder (default: the run's latest)")
    exp.add_argument("--to", help="output folder (default OUT/export)")
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
    from torchrec_fusion.data.download import add_data_command

    add_data_command(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        from torchrec_fusion.data.download import data_command

        return data_command(args)
    if args.command in ("evaluate", "recommend", "export"):
        try:
            return _run_command(args)
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            print(f"torchrec-fusion: error: {e}", file=sys.stderr)
            return 2
    if args.command == "train":
        from torchrec_fusion.training.config import read_config_file

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            values = read_config_file(args.config) if args.config else {}
            values.update({k: v for k, v in vars(args).items() if k in fields})
            config = TrainConfig.from_dict(values, source=args.config or "command line")
        except (ValueError, TypeError) as e:
            print(f"torchrec-fusion: error: {e}", file=sys.stderr)
            return 2
        from torchrec_fusion.training.checkpoint import CheckpointError
        from torchrec_fusion.training.trainer import train

        try:
            result = train(config)
        except (ValueError, OSError, KeyError, FloatingPointError, CheckpointError) as e:
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


def _run_command(args: argparse.Namespace) -> int:
    import json

    if args.command == "export":
        from torchrec_fusion.serving import export_run

        print(f"exported: {export_run(args.run, args.to, args.checkpoint)}")
        return 0
    over = {"data_dir": args.data_dir}
    if args.command == "evaluate":
        from torchrec_fusion.training.inference import evaluate_run

        res = evaluate_run(args.run, args.split, args.world_size, args.checkpoint, **over)
        path = args.output or os.path.join(args.run, f"evaluation_{res['split']}.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"{res['split']} ({res['rows']} rows, step {res['step']}, world size {res['world_size']}):")
        for name, m in res["tasks"].items():
            print(f"  {name:16s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
        print(f"wrote {path}")
        return 0
    from torchrec_fusion.training.inference import recommend

    users = args.user
    if args.users_file:
        with open(args.users_file) as f:
            try:
                users = [int(line) for line in f if line.strip()]
            except ValueError as e:
                raise ValueError(f"{args.users_file}: one integer user id per line ({e})") from None
    recs = recommend(args.run, users, args.k, args.by, not args.include_seen, args.world_size, args.checkpoint, **over)
    if args.output:
        _write_recommendations(args.output, recs)
        print(f"wrote {len(recs)} users' top-{args.k} to {args.output}")
        return 0
    for r in recs:
        print(f"user {r['user']} (by {r['by']}):")
        for it in r["items"]:
            scores = " ".join(f"{k}={v:.3f}" for k, v in it["scores"].items())
            print(f"  {it['rank']:3d}. item {it['item']:<8d} {scores}" + (f"  {it['title']}" if "title" in it else ""))
    return 0


def _write_recommendations(path: str, recs: List[Dict[str, Any]]) -> None:
    import csv
    import json

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


if __name__ == "__main__":
    sys.exit(main())
