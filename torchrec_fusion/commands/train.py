"""``torchrec-fusion train``: the flags are the run config's fields and each component's options."""

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, Dict, List, Sequence

from torchrec_fusion.commands.base import Command
from torchrec_fusion.registry import option_names, options_class
from torchrec_fusion.training.config import FAMILIES, TrainConfig, flat_option_names, read_config_file

HELP = {
    "dataset": "synthetic (no files needed), movielens (official files in --data-dir), criteo (raw TSV in "
               "--data-dir) or table (your Parquet/CSV: a 'data' section with the table spec in --config)",
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
    "rank_memory_mb": "memory per rank the planner may use for tables and their optimizer state",
    "checkpoint_every": "write a checkpoint every N global steps to OUT/checkpoints (0: only the final model)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "resume": "auto (the latest checkpoint in OUT, if any) or a checkpoint/run folder to continue from",
    "max_steps": "stop after this many global steps (counted across resumes)",
    "save_model": "save the final model to OUT/checkpoints (needed by evaluate, recommend, export)",
    "report": "write OUT/report.md with PNG plots",
    "ensemble": "train several complete models (architecture names, or dlrm for TorchRec's DLRM), each with its "
                "own tables, under one DMP; combine with --fusion",
    "plugins": "modules to import first (on every rank): they register their own architectures, balancers, "
               "fusions or datasets",
}
# set in a config file only (mappings), or only by the tests
_NOT_FLAGS = {"constraints", "keep_predictions", "verbose", "progress", "data", "arch_options",
              "balancing_options", "fusion_options"}


def _choices() -> Dict[str, Sequence[str]]:
    from torchrec_fusion.distributed.sharding import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES
    from torchrec_fusion.modules.model import PRECISIONS

    out: Dict[str, Sequence[str]] = {
        "embedding_optimizer": sorted(EMBEDDING_OPTIMIZERS), "dense_optimizer": sorted(DENSE_OPTIMIZERS),
        "sharding_type": SHARDING_TYPES, "device": ["cpu", "cuda"], "precision": list(PRECISIONS)}
    for family in FAMILIES:
        out[family.choice] = ([family.none] if family.none else []) + sorted(family.registry())
    return out


def _kind(hint: Any) -> Dict[str, Any]:
    """argparse keywords for a value of type ``hint``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next((a for a in args if a is not type(None)), hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) in (list, List, tuple):
        return {"nargs": "+", "type": typing.get_args(hint)[0]}
    if hint in (int, float, str):
        return {"type": hint}
    return {"type": str}


def _default(f: "dataclasses.Field[Any]") -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory() if callable(factory) else None


def _config_flags(parser: argparse.ArgumentParser) -> None:
    choices, hints = _choices(), typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        default = _default(f)
        # SUPPRESS: only the flags given on the command line override the config file
        kw = {"default": argparse.SUPPRESS, "help": HELP.get(f.name, "") + f" (default: {default})",
              **_kind(hints[f.name])}
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def _option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per component option (``--num-experts``, ``--balancing-window``, ``--fusion-weights``),
    routed by TrainConfig.from_dict into the section of the chosen member."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    owners: Dict[str, List[str]] = {}
    for key, (family, name, _) in flat_option_names().items():
        if key in fields:
            continue
        owners.setdefault(key, [n for n, m in family.registry().items() if name in option_names(m)])
    for key, (family, name, member) in flat_option_names().items():
        if key in fields:
            continue
        cls = options_class(member)
        opt = next(f for f in dataclasses.fields(cls) if f.name == name)
        hint = typing.get_type_hints(cls)[name]
        default = _default(opt)
        text = str(opt.metadata.get("help", ""))
        parser.add_argument("--" + key.replace("_", "-"), default=argparse.SUPPRESS, **_kind(hint),
                            help=f"{text + '; ' if text else ''}{family.choice} {', '.join(owners[key])} "
                                 f"(default: {default})")


class Train(Command):
    help = "train a multi-task model, sharded by TorchRec's planner"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="a YAML or TOML file of these options (keys as the flags, with _ or -, "
                                             "or per component in sections data:, arch_options:, "
                                             "balancing_options:, fusion_options:); flags given here override "
                                             "it. Each run saves OUT/config.yaml, which repeats the run")
        _config_flags(parser)
        _option_flags(parser)
        parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                            help="hide the progress bar")
        parser.add_argument("--quiet", dest="verbose", action="store_false", default=argparse.SUPPRESS,
                            help="print only errors")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.trainer import train

        values = read_config_file(args.config) if args.config else {}
        values.update({k: v for k, v in vars(args).items() if k not in ("config", "command")})
        config = TrainConfig.from_dict(values, source=args.config or "command line")
        result = train(config)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
            return 0
        shown = {**result.tasks, **({"fused": result.fused} if result.fused else {})}
        summary = {t: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for t, m in shown.items()}
        summary = {t: m for t, m in summary.items() if m}  # tasks without scored rows (interaction) left out
        print(f"final ({result.eval_split}): {summary}  samples/s={result.samples_per_second:.0f}")
        return 0
