"""Every option of a training run, in one dataclass (the CLI fills it)."""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TrainConfig:
    """A training run. Defaults are the CLI's defaults, chosen on a validation
    split carved from MovieLens-100K u1.base (``--validation-fraction 0.1``),
    never on u1.test: history bags on, no dot interactions, dropout 0.5, 12 epochs."""

    # data
    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    # dataset "table": the user's own Parquet/CSV columns (see torchrec_fusion.data.tabular.TableSpec)
    table: Optional[Dict[str, Any]] = None
    split: Optional[str] = "auto"
    tasks: Optional[List[str]] = None
    validation_fraction: float = 0.0  # > 0: carve a validation split from train and evaluate on it
    history_length: int = 64  # > 0: add user_history / item_audience bags of up to this many ids
    synthetic_rows: int = 200_000
    synthetic_scale: float = 1.0
    # model
    arch: str = "mmoe"
    embedding_dim: int = 32
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [64])
    num_experts: int = 4
    num_levels: int = 2  # ple: extraction levels (cgc is one level)
    num_shared_experts: int = 2  # ple, cgc: shared experts per level
    num_task_experts: int = 1  # ple, cgc: experts per task per level
    expert_layer_sizes: List[int] = field(default_factory=lambda: [128, 64])
    bottom_layer_sizes: List[int] = field(default_factory=lambda: [128, 64])
    tower_layer_sizes: List[int] = field(default_factory=lambda: [32])
    interaction: bool = False
    dropout: float = 0.5
    embedding_l2: float = 0.0
    precision: str = "fp32"  # bf16: the dense part under torch.autocast (see MultiTaskModel)
    # optimisation
    epochs: int = 12
    batch_size: int = 256
    eval_batch_size: int = 4096
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.05
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    dense_weight_decay: float = 0.0
    balancing: str = "fixed"
    # score fusion after the task heads, trained in the same loop
    fusion: str = "none"
    fusion_target: Optional[str] = None  # binary task supervising the fused score (default: the first)
    fusion_normalizer: str = "zscore"
    fusion_weights: Optional[List[float]] = None  # weighted: fixed weights instead of learnt ones
    fusion_loss_weight: float = 1.0
    # rank the whole item catalogue for each evaluated user after training (MovieLens)
    ranking_eval: bool = False
    ranking_relevance: str = "like"  # a held-out row is relevant where this binary label is 1
    ranking_k: List[int] = field(default_factory=lambda: [10])
    # several complete models, each with its own tables, under one DMP (architecture names or "dlrm")
    ensemble: Optional[List[str]] = None
    # distribution
    world_size: int = 1
    device: Optional[str] = None
    sharding_type: Optional[str] = None
    rank_memory_mb: Optional[float] = None  # the planner's memory budget per rank (default: the device's)
    # per table: ParameterConstraints fields, e.g. {"t_user": {"sharding_types": ["column_wise"], "min_partition": 8}}
    constraints: Optional[Dict[str, Dict[str, Any]]] = None
    seed: int = 0
    # checkpoints (OUT/checkpoints): every N global steps, and the final model unless save_model is off
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # "auto" (the latest under OUT/checkpoints, if any) or a checkpoint folder
    max_steps: Optional[int] = None  # stop after this many global steps (counted across resumes)
    save_model: bool = True
    # output
    output_dir: Optional[str] = None
    save_scores: bool = False  # write OUT/scores.csv: the eval split's labels and scores, for `fuse`
    progress: bool = True
    verbose: bool = True
    keep_predictions: bool = False  # return eval predictions from run() (tests)
    report: bool = True  # OUT/report.md with PNG plots of the run

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config") -> "TrainConfig":
        """A config from a mapping of field names (``-`` or ``_``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def save(self, path: str) -> None:
        """Writes the whole resolved config as YAML: ``train --config path`` repeats the run."""
        import yaml

        with open(path + ".tmp", "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
        os.replace(path + ".tmp", path)


    def arch_kwargs(self) -> Dict[str, Any]:
        if self.arch == "mmoe":
            return {"num_experts": self.num_experts, "expert_layer_sizes": self.expert_layer_sizes}
        if self.arch in ("ple", "cgc"):
            kwargs = {"num_shared_experts": self.num_shared_experts, "num_task_experts": self.num_task_experts,
                      "expert_layer_sizes": self.expert_layer_sizes}
            return {**kwargs, "num_levels": self.num_levels} if self.arch == "ple" else kwargs
        if self.arch == "shared_bottom":
            return {"bottom_layer_sizes": self.bottom_layer_sizes}
        if self.arch in ("single_task", "esmm", "aitm"):  # one MLP per task, sized like the shared bottom
            return {"task_layer_sizes": self.bottom_layer_sizes}
        return {}


def read_config_file(path: str) -> Dict[str, Any]:
    """The options in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file, as a dict."""
    if not os.path.exists(path):
        raise ValueError(f"config file {path} does not exist")
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            try:
                values = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: invalid TOML: {e}") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        with open(path) as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: invalid YAML: {e}") from None
    else:
        raise ValueError(f"config file {path}: use .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return values
