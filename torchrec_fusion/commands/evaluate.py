"""``torchrec-fusion evaluate``: metrics of a run's checkpoint on a split or a file."""

import argparse
import os
import re
from typing import Any, Dict, Optional

from torchrec_fusion.commands.base import Command
from torchrec_fusion.commands.runs import run_arguments
from torchrec_fusion.outputs import write_json


class Evaluate(Command):
    help = "metrics of a run's checkpoint on a split"
    outputs = {"--output": "file"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        run_arguments(parser)
        parser.add_argument("--split", choices=["test", "validation", "train"],
                            help="default: the split the run evaluated on")
        parser.add_argument("--data", metavar="FILE",
                            help="score this file instead of a split (path, glob or folder; a table run's spec "
                                 "reads it, with the run's table sizes)")
        parser.add_argument("--no-explain", action="store_true",
                            help="leave out \"explain\" (feature importance per task and expert reliance over 256 "
                                 "rows of the split, computed in this process)")
        parser.add_argument("--output", help="JSON file for the metrics (default OUT/evaluation_<split>.json, or "
                                              "OUT/evaluation_file_<name>.json with --data)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.inference import evaluate_run

        res = evaluate_run(args.run, args.split, args.world_size, args.checkpoint, args.data, data_dir=args.data_dir,
                           allow_plugins=args.allow_plugins)
        if not args.no_explain and not args.data:
            res["explain"] = _explain(args, res)
        stem = re.sub(r"[^\w-]+", "_", os.path.basename(args.data.rstrip("/")).split(".")[0]) if args.data else ""
        name = f"file_{stem}" if args.data else res["split"]
        path = args.output or os.path.join(args.run, f"evaluation_{name}.json")
        write_json(path, res)
        print(f"{res.get('data', res['split'])} ({res['rows']} rows, checkpoint {res['checkpoint']}, step "
              f"{res['step']}, world size {res['world_size']}):")
        for name, m in res["tasks"].items():
            print(f"  {name:16s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
        print(f"wrote {path}")
        return 0


def _explain(args: argparse.Namespace, res: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The global importance of the evaluated checkpoint on the evaluated split (see
    :func:`torchrec_fusion.explain.run.run_importance`)."""
    from torchrec_fusion.explain.run import run_importance
    from torchrec_fusion.training.inference import load_run
    from torchrec_fusion.training.prepare import prepare_data

    config, _ = load_run(args.run, res["checkpoint"], allow_plugins=args.allow_plugins, data_dir=args.data_dir)
    return run_importance(config, prepare_data(config), res["checkpoint"], res["split"])
