"""``torchrec-fusion train``: the flags are the run config's fields and each component's options."""

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torchrec_fusion.commands.base import Command, plain
from torchrec_fusion.commands.flag_cache import cached
from torchrec_fusion.registry import option_names, options_class
from torchrec_fusion.training.config import FAMILIES, TrainConfig, flat_option_names, read_config_file

HELP = {
    "dataset": "synthetic (no files needed), movielens (official files in --data-dir), criteo (raw TSV in "
               "--data-dir) or table (your Parquet/CSV: a 'data' section with the table spec in --config)",
    "tasks": "train only these tasks (names from the dataset; default: all of them)",
    "early_stopping": "TASK:METRIC (e.g. ctr:auc, rating:rmse, fused:auc) watched on the evaluated split each "
                      "epoch: the best epoch is kept as OUT/checkpoints/best (default: off)",
    "patience": "with --early-stopping, stop after this many epochs without improvement",
    "history_length": "each row gets user_history (the user's other rated items) and item_audience (the item's "
                      "other raters) bags of up to this many ids, from training rows only (0: none)",
    "negatives": "K sampled items per training row that the user never interacted with, as rows of a binary "
                 "task interaction (1 on observed rows; every other task masked there); 0: none",
    "negative_sampling": "how --negatives are drawn: uniform, or popularity (q(item) ~ count(item)^alpha)",
    "negative_alpha": "the popularity exponent of --negative-sampling popularity (0 is uniform)",
    "history_liked": "a binary task (e.g. like): each row also gets a user_liked bag of the items where it was 1",
    "arch": "the multi-task architecture over the shared features (its own options below name it)",
    "embedding_dim": "width of every embedding table",
    "dense_arch_layer_sizes": "hidden sizes of the MLP over the dense features (its last size joins the "
                              "pooled embeddings)",
    "tower_layer_sizes": "hidden sizes of each task's tower, between the architecture and the task's output",
    "interaction": "add the pairwise dot products of the embeddings and the dense vector (as DLRM) to the "
                   "features the architecture reads",
    "dropout": "dropout after each hidden layer of the architecture and the towers",
    "embedding_l2": "weight of an L2 penalty on the embeddings looked up in each batch",
    "retrieval": "add a user tower and an item tower over the same tables, trained with a softmax over the "
                 "batch's items (and the sampled ones) corrected by log-Q; its score joins --ranking-eval",
    "retrieval_user_features": "the user tower's features (default: the user_history and user_liked bags)",
    "retrieval_item_features": "the item tower's features (default: item)",
    "retrieval_layer_sizes": "each tower's MLP over its summed embeddings (none: the sums themselves)",
    "retrieval_item_bias": "learn a bias per item in the retrieval score",
    "retrieval_loss_weight": "weight of the retrieval loss in the total loss",
    "retrieval_temperature": "the retrieval softmax's temperature (the scores are divided by it)",
    "eval_batch_size": "batch size of evaluation and catalogue scoring, per rank",
    "embedding_optimizer": "the fused optimizer that updates the tables inside backward",
    "embedding_lr": "learning rate of the embedding optimizer",
    "dense_optimizer": "the optimizer of every other parameter (MLPs, experts, gates, towers, fusion)",
    "dense_lr": "learning rate of the dense optimizer",
    "dense_weight_decay": "weight decay of the dense optimizer",
    "balancing": "how the task losses are weighted: fixed (each task's weight, --task-weights), uncertainty, dwa, "
                 "gradnorm or pcgrad (their options below)",
    "fusion_loss_weight": "weight of the fused score's loss in the total loss",
    "ranking_eval": "after training, rank every item the user did not rate in training for each evaluated user "
                    "with a relevant held-out row: HR@K, NDCG@K, recall@K and MRR per score",
    "ranking_relevance": "the binary task whose label 1 makes a held-out row relevant in --ranking-eval",
    "ranking_k": "the cut-offs K of --ranking-eval's metrics",
    "threads": "intra-op threads of each rank (default: this machine's cores divided by the local ranks)",
    "device": "cpu or cuda (default: cuda when a GPU is present); the process group is gloo on cpu, nccl on cuda",
    "seed": "seed of the data split, the shuffling, the sampled negatives and the initial weights",
    "save_scores": "write OUT/scores.csv, the evaluated split's labels and scores, to fuse runs with "
                   "torchrec-fusion fuse",
    "task_weights": "each named task's loss weight under fixed balancing, e.g. --task-weights rating=0.5 "
                    "(0 trains without that task's loss; the others keep 1)",
    "ranking_fusion": "the fused ranking score fused_ranking of --ranking-eval and recommend: weights of the "
                      "scores' log forms, e.g. --ranking-fusion retrieval=1 like=0.5 interaction=0.35",
    "fit_ranking_fusion": "choose the ranking fusion weights on the evaluated split's rankings (NDCG@k by "
                          "coordinate ascent from the best single score) and report them: run it with "
                          "--validation-fraction, then pass the weights to the final run",
    "validation_fraction": "carve this fraction of train as validation and evaluate on it (for tuning; 0: "
                           "evaluate on the test split)",
    "epochs": "epochs to train (at least 1)",
    "world_size": "local processes to launch (ignored under torchrun); on CPU more ranks than cores warns (they "
                  "share the cores) and more than 4 per core is refused; on CUDA one GPU per rank",
    "sharding_type": "force this sharding type on every table (default: the planner chooses)",
    "batch_size": "per-rank batch size",
    "precision": "bf16: the dense part (MLPs, experts, gates, towers) in bfloat16 under torch.autocast, 4-5x "
                 "faster matrix products on CPUs with AVX512-BF16/AMX; tables, optimizer state and losses stay fp32; "
                 "auto: bf16 where the CPU has native bfloat16, else fp32 (the choice is printed)",
    "output_dir": "where the run writes config.yaml, metrics.json, the report and checkpoints/; one run at a time "
                  "(OUT/.lock), and a folder holding a run is refused unless --resume or --overwrite (default: "
                  "none, nothing is written)",
    "overwrite": "replace the run in --output-dir: its checkpoints, metrics, report and config are deleted before "
                 "this run starts (under torchrun with restarts, use --resume auto instead)",
    "fusion": "fuse the task predictions into one score, trained in the same loop (rank aggregation: "
              "torchrec_fusion.fusion.rank_aggregation)",
    "fusion_target": "binary task whose label supervises the fused score (default: the first binary task)",
    "rank_memory_mb": "memory per rank the planner may use for tables and their optimizer state (default: the "
                      "device's)",
    "checkpoint_every": "write a checkpoint every N global steps to OUT/checkpoints (0: only the final model)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "resume": "auto (the latest checkpoint in OUT, if any: continues the run there) or a checkpoint/run folder to "
              "continue from (default: a fresh start)",
    "max_steps": "stop after this many global steps, counted across resumes (default: no limit)",
    "save_model": "save the final model to OUT/checkpoints (needed by evaluate, recommend, export)",
    "report": "write OUT/report.md with PNG plots",
    "explain": "add the model's explanation to OUT/metrics.json (\"explain\") and the report: mean |integrated "
               "gradients| per feature and task and mean gate weight per expert, over 256 evaluated rows (about "
               "1-2 s after training)",
    "ensemble": "train several complete models (architecture names, or dlrm for TorchRec's DLRM), each with its "
                "own tables, under one DMP; combine with --fusion (default: one model, --arch)",
    "plugins": "modules to import first (on every rank): they register their own architectures, balancers, "
               "fusions or datasets",
}
# help of component options whose Options field has none (TableReader's is in data/tabular.py)
_OPTION_HELP = {
    "table": "the table spec of dataset table (train, test, sparse, dense, tasks, ...: see the README, 'Your own "
             "data'); write it as the data: section of --config",
}
# set in a config file only (mappings), or only by the tests
_NOT_FLAGS = {"constraints", "keep_predictions", "verbose", "full_plan", "progress", "data", "arch_options",
              "balancing_options", "fusion_options"}


def _choices() -> Dict[str, Sequence[str]]:
    from torchrec_fusion.distributed.sharding import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES
    from torchrec_fusion.modules.model import PRECISIONS

    out: Dict[str, Sequence[str]] = {
        "embedding_optimizer": sorted(EMBEDDING_OPTIMIZERS), "dense_optimizer": sorted(DENSE_OPTIMIZERS),
        "sharding_type": SHARDING_TYPES, "device": ["cpu", "cuda"], "precision": ["auto", *PRECISIONS]}
    for family in FAMILIES:
        out[family.choice] = ([family.none] if family.none else []) + sorted(family.registry())
    return out


def _unwrap(hint: Any) -> Any:
    """``X`` from ``Optional[X]``; any other hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return hint


def _kind(hint: Any) -> Dict[str, Any]:
    """argparse keywords for a value of type ``hint``."""
    hint = _unwrap(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) in (dict, Dict):  # --task-weights rating=0 like=1
        return {"nargs": "+", "type": _key_value, "metavar": "NAME=VALUE"}
    if typing.get_origin(hint) in (list, List, tuple):
        return {"nargs": "+", "type": typing.get_args(hint)[0]}
    if hint in (int, float, str):
        return {"type": hint}
    return {"type": str}


def _key_value(text: str) -> Tuple[str, Any]:
    """``name=value`` from the command line, the value read as YAML (a number stays a number)."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a number or a word") from None


def _default(f: "dataclasses.Field[Any]") -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory() if callable(factory) else None


def _help(text: str, default: Any) -> str:
    """A flag's help: ``text`` as plain text, then its default unless ``text`` already says it or there is
    none to show (None or empty: the text says what happens then)."""
    text = plain(text)
    if "default" not in text and default is not None and default != [] and default != {}:
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


Spec = Dict[str, Any]  # one flag: {"flag": "--num-experts", "type": "int", "nargs": ..., "choices": ..., "help": ...}
_TYPES: Dict[str, Any] = {"int": int, "float": float, "str": str, "key_value": _key_value}


def _spec(flag: str, kind: Dict[str, Any], help: str, choices: Optional[Sequence[str]] = None) -> Spec:
    """A flag as plain data (JSON), so that the flags can be cached and rebuilt without importing torch."""
    out: Spec = {"flag": flag, "help": help, **{k: v for k, v in kind.items() if k in ("nargs", "metavar")}}
    if kind.get("action") is argparse.BooleanOptionalAction:
        out["type"] = "bool"
    else:
        out["type"] = next(name for name, t in _TYPES.items() if t is kind["type"])
    if choices is not None:
        out["choices"] = list(choices)
    return out


def _config_flags() -> List[Spec]:
    choices, hints = _choices(), typing.get_type_hints(TrainConfig)
    return [_spec("--" + f.name.replace("_", "-"), _kind(hints[f.name]), _help(HELP.get(f.name, ""), _default(f)),
                  choices.get(f.name))
            for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_FLAGS]


def _option_flags() -> List[Spec]:
    """One flag per component option (``--num-experts``, ``--balancing-window``, ``--fusion-weights``),
    routed by TrainConfig.from_dict into the section of the chosen member."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    owners: Dict[str, List[str]] = {}
    for key, (family, name, _) in flat_option_names().items():
        if key in fields:
            continue
        owners.setdefault(key, [n for n, m in family.registry().items() if name in option_names(m)])
    out = []
    for key, (family, name, member) in flat_option_names().items():
        if key in fields:
            continue
        cls = options_class(member)
        opt = next(f for f in dataclasses.fields(cls) if f.name == name)
        text = str(opt.metadata.get("help", "") or _OPTION_HELP.get(key, ""))
        out.append(_spec("--" + key.replace("_", "-"), _kind(typing.get_type_hints(cls)[name]),
                         _help(f"{text + '; ' if text else ''}{family.choice} {', '.join(owners[key])}",
                               _default(opt))))
    return out


def _add(parser: argparse.ArgumentParser, spec: Spec) -> None:
    kw: Dict[str, Any] = {k: v for k, v in spec.items() if k in ("nargs", "metavar", "choices", "help")}
    if spec["type"] == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw["type"] = _TYPES[spec["type"]]
    # SUPPRESS: only the flags given on the command line override the config file
    parser.add_argument(spec["flag"], default=argparse.SUPPRESS, **kw)


def flag_specs() -> List[Spec]:
    """The flags of the run config's fields and of every component's options (this imports every
    registry, hence torch): cached on disk by :func:`~torchrec_fusion.commands.flag_cache.cached`."""
    return _config_flags() + _option_flags()


class Train(Command):
    help = "train a multi-task model, sharded by TorchRec's planner"
    outputs = {"--output-dir": "dir"}
    description = ("Train a multi-task model, its tables sharded by TorchRec's planner over --world-size processes "
                   "(or torchrun's). Every option can also be set in a --config file. A run prints its data, its "
                   "threads per rank, a summary of the sharding plan and each epoch's metrics on the held-out "
                   "split, and writes OUT/metrics.json and OUT/report.md.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="a YAML or TOML file of these options (keys as the flags, with _ or -, "
                                             "or per component in sections data:, arch_options:, "
                                             "balancing_options:, fusion_options:); flags given here override "
                                             "it. Each run saves OUT/config.yaml, which repeats the run")
        for spec in cached("train", flag_specs):
            _add(parser, spec)
        parser.add_argument("--no-progress", "--quiet", dest="progress", action="store_false",
                            default=argparse.SUPPRESS, help="hide the progress bars (the metrics are still printed)")
        parser.add_argument("--verbose", dest="full_plan", action="store_true", default=argparse.SUPPRESS,
                            help="print the whole sharding plan, one line per table (default: a summary)")

    def run(self, args: argparse.Namespace) -> int:
        from torchrec_fusion.training.trainer import train

        values = read_config_file(args.config) if args.config else {}
        mappings = {k for k, h in typing.get_type_hints(TrainConfig).items() if typing.get_origin(_unwrap(h)) is dict}
        values.update({k: dict(v) if k in mappings else v for k, v in vars(args).items()
                       if k not in ("config", "command")})
        config = TrainConfig.from_dict(values, source=args.config or "command line")
        result = train(config)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
            return 0
        shown = {**result.tasks, **({"fused": result.fused} if result.fused else {})}
        summary = {t: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for t, m in shown.items()}
        summary = {t: m for t, m in summary.items() if m}  # tasks without scored rows (interaction) left out
        print(f"final ({result.eval_split}): {summary}  samples/s={result.samples_per_second:.0f}")
        return 0
