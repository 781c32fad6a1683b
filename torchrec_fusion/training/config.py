"""Every option of a training run: general fields here, each component's own options in its section.

The components chosen by name (the dataset, the architecture, the loss balancing, the fusion) each own
an ``Options`` dataclass in their own file; a run's config holds their values in a section per family
(``data:``, ``arch_options:``, ``balancing_options:``, ``fusion_options:``). A flat key (a CLI flag, or
a top-level key in a config file) that names an option of the chosen member is routed into its section:
``--num-experts 8`` or ``num_experts: 8`` set ``arch_options.num_experts`` under ``arch: mmoe``; the
balancing and fusion options take their family's prefix (``--balancing-window``, ``--fusion-weights``).
"""

import dataclasses
import importlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torchrec_fusion.registry import Registry, check_value, make_options, option_names, options_class, options_dict


@dataclass(frozen=True)
class Family:
    """One family of registered components as the config sees it: the field that names the member,
    the section holding its options, and the prefix of its flat keys."""

    choice: str
    section: str
    prefix: str
    registry: Callable[[], "Registry[Any]"]
    none: Optional[str] = None  # a choice meaning "no member" (fusion: none)


def _datasets() -> Registry[Any]:
    from torchrec_fusion.data.registry import DATASETS

    return DATASETS


def _architectures() -> Registry[Any]:
    from torchrec_fusion.modules.architectures import ARCHITECTURES

    return ARCHITECTURES


def _balancers() -> Registry[Any]:
    from torchrec_fusion.losses import BALANCERS

    return BALANCERS


def _fusions() -> Registry[Any]:
    from torchrec_fusion.fusion.head import TRAINABLE_FUSIONS

    return TRAINABLE_FUSIONS


FAMILIES = (
    Family("dataset", "data", "", _datasets),
    Family("arch", "arch_options", "", _architectures),
    Family("balancing", "balancing_options", "balancing_", _balancers),
    Family("fusion", "fusion_options", "fusion_", _fusions, none="none"),
)


@dataclass
class TrainConfig:
    """A training run. Defaults are the CLI's defaults, chosen for speed at equal quality on a
    validation split carved from MovieLens-100K u1.base (``--validation-fraction 0.1``), never on
    u1.test: 16-dim tables, small MLPs (MMoE experts of one 64-wide layer), history bags of 32 ids,
    dropout 0.5, batches of 4096 per rank with learning rates scaled to them, 25 epochs; small tables
    replicated on every rank (distributed/replication.py) and the dense part in bfloat16 where the
    CPU has it natively (``precision: auto``, training/precision.py).

    Build one with :meth:`make` (or :meth:`from_dict`), which routes flat option names into
    their sections and checks every value.

    Example::

        config = TrainConfig.make(arch="mmoe", num_experts=8, balancing="dwa", balancing_temperature=3.0)
        assert config.arch_options == {"num_experts": 8} and config.balancing_options == {"temperature": 3.0}
        assert config.member_options("arch")["expert_layer_sizes"] == [64]
    """

    # data: the dataset's own options (data_dir, split, ...) are in ``data``
    dataset: str = "synthetic"
    data: Dict[str, Any] = field(default_factory=dict)
    tasks: Optional[List[str]] = None
    validation_fraction: float = 0.0  # > 0: carve a validation split from train and evaluate on it
    # "task:metric" (e.g. ctr:auc, rating:rmse, fused:auc) on the validation split: the best epoch is kept as
    # OUT/checkpoints/best, and training stops after `patience` epochs without improvement
    early_stopping: Optional[str] = None
    patience: int = 3
    history_length: int = 32  # > 0: add user_history / item_audience bags of up to this many ids
    # > 0: K sampled items per training row the user never interacted with, as rows of an entire-space
    # binary task "interaction" (1 on observed rows, 0 on sampled ones; every other task masked there)
    negatives: int = 0
    negative_sampling: str = "uniform"  # or "popularity": q(item) ~ count(item)^negative_alpha
    negative_alpha: float = 1.0
    history_liked: Optional[str] = None  # a binary task: each row also gets a user_liked bag (its label 1)
    # model: the architecture's own options (num_experts, ...) are in ``arch_options``
    arch: str = "mmoe"
    arch_options: Dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 16
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [32])
    tower_layer_sizes: List[int] = field(default_factory=lambda: [16])
    interaction: bool = False
    dropout: float = 0.5
    embedding_l2: float = 0.0
    precision: str = "auto"  # bf16: the dense part under torch.autocast (see MultiTaskModel); auto: training/precision
    # a retrieval head: user and item towers over the shared tables (their pooled embeddings summed,
    # history bags scaled by 1/sqrt(length)), a softmax over in-batch and sampled items with log-Q
    retrieval: bool = False
    retrieval_user_features: Optional[List[str]] = None  # default: the user_history / user_liked bags
    retrieval_item_features: Optional[List[str]] = None  # default: ["item"]
    retrieval_layer_sizes: List[int] = field(default_factory=list)  # each tower's MLP (none: sums only)
    retrieval_item_bias: bool = True
    retrieval_loss_weight: float = 1.0
    retrieval_temperature: float = 1.0
    # optimisation
    epochs: int = 25
    batch_size: int = 4096
    eval_batch_size: int = 4096
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.15
    dense_optimizer: str = "adam"
    dense_lr: float = 0.0045
    dense_weight_decay: float = 0.0
    task_weights: Optional[Dict[str, float]] = None  # each task's loss weight under fixed balancing (default 1)
    balancing: str = "fixed"
    balancing_options: Dict[str, Any] = field(default_factory=dict)
    # score fusion after the task heads, trained in the same loop
    fusion: str = "none"
    fusion_options: Dict[str, Any] = field(default_factory=dict)
    fusion_target: Optional[str] = None  # binary task supervising the fused score (default: the first)
    fusion_loss_weight: float = 1.0
    # rank the whole item catalogue for each evaluated user after training (MovieLens)
    ranking_eval: bool = False
    ranking_relevance: str = "like"  # a held-out row is relevant where this binary label is 1
    ranking_k: List[int] = field(default_factory=lambda: [10])
    # the fused ranking score: a weighted sum of the scores' log forms ({"retrieval": 1, "like": 0.5});
    # "fit" chooses the weights on the evaluated split (use it on validation, then copy them here)
    ranking_fusion: Optional[Dict[str, float]] = None
    fit_ranking_fusion: bool = False
    # several complete models, each with its own tables, under one DMP (architecture names or "dlrm")
    ensemble: Optional[List[str]] = None
    # distribution
    world_size: int = 1
    threads: Optional[int] = None  # intra-op threads per rank (default: the cores / the local ranks)
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
    overwrite: bool = False  # replace the run already in output_dir (its checkpoints and results deleted first)
    save_scores: bool = False  # write OUT/scores.csv: the eval split's labels and scores, for `fuse`
    progress: bool = True
    verbose: bool = True
    full_plan: bool = False  # print every table of the sharding plan (train --verbose), not a summary
    keep_predictions: bool = False  # return eval predictions from run() (tests)
    report: bool = True  # OUT/report.md with PNG plots of the run
    explain: bool = True  # metrics.json "explain": feature importance and expert reliance (explain/importance.py)
    # modules imported (on every rank) before the config is resolved: they register their components
    plugins: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def make(cls, **values: Any) -> "TrainConfig":
        """A config from keyword arguments, flat option names allowed (see :meth:`from_dict`)."""
        return cls.from_dict(values, source="TrainConfig.make")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """A config from a mapping of field names (``-`` or ``_``); a key that is no field but an option
        of the chosen dataset, architecture, balancing or fusion goes into that section. Unknown keys
        and mistyped values are a ``ValueError`` naming ``source`` and the key."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        import_plugins(check_value(values.get("plugins", []), List[str], f"{source}: plugins"), source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = _field_types()
        known = {k: check_value(v, hints[k], f"{source}: {k}") for k, v in values.items() if k in fields}
        sections: Dict[str, Dict[str, Any]] = {f.section: dict(known.get(f.section) or {}) for f in FAMILIES}
        for key in sorted(set(values) - set(fields)):
            family, name = _route(key, known, source)
            sections[family.section][name] = values[key]
        known.update(sections)
        config = cls(**known)
        config.check(source)
        return config

    def check(self, source: str = "config") -> None:
        """Validates the sizes, counts and rates (before any process starts) and every component
        section against its member's ``Options``; a ``ValueError`` naming ``source`` and the key."""
        _check_ranges(self, source)
        for family in FAMILIES:
            members = self._members(family, source)
            for member in members:
                _member_options(family, member, self._section_for(family, member), source)
            if family.choice == "arch" and self.ensemble:  # each option must be some member's
                taken = {n for m in members for n in option_names(family.registry()[m])}
                unused = sorted(set(self.arch_options) - taken)
                if unused:
                    raise ValueError(f"{source}: arch_options {unused} belong to no architecture of the ensemble "
                                     f"{self.ensemble}")

    def _members(self, family: Family, source: str = "config") -> List[str]:
        chosen = getattr(self, family.choice)
        if family.none is not None and chosen == family.none:
            if getattr(self, family.section):
                raise ValueError(f"{source}: {family.section} given but {family.choice} is {chosen!r}")
            return []
        if family.choice == "arch" and self.ensemble:
            return [a for a in self.ensemble if a != "dlrm"]
        return [chosen]

    def _section_for(self, family: Family, member: str) -> Dict[str, Any]:
        """The part of ``family``'s section that ``member`` takes (ensemble members share one section:
        each takes the options its architecture has)."""
        section: Dict[str, Any] = getattr(self, family.section)
        if family.choice == "arch" and self.ensemble:
            names = set(option_names(family.registry()[member]))
            return {k: v for k, v in section.items() if k in names}
        return section

    def member_options(self, family: str, member: Optional[str] = None) -> Dict[str, Any]:
        """The resolved options (defaults filled in) of ``member`` (default: the chosen one) of the
        family named by its choice field (``"dataset"``, ``"arch"``, ``"balancing"``, ``"fusion"``)."""
        fam = next(f for f in FAMILIES if f.choice == family)
        member = member or getattr(self, fam.choice)
        return options_dict(_member_options(fam, member, self._section_for(fam, member), "config"))

    def save(self, path: str) -> None:
        """Writes the whole resolved config as YAML: ``train --config path`` repeats the run."""
        import yaml

        with open(path + ".tmp", "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
        os.replace(path + ".tmp", path)


# (field, lowest allowed value, whether the lowest is excluded, what it is) for the numbers of a run
_RANGES: Tuple[Tuple[str, float, bool, str], ...] = (
    ("embedding_dim", 1, False, "a size"), ("epochs", 1, False, "a count"), ("batch_size", 1, False, "a size"),
    ("eval_batch_size", 1, False, "a size"), ("world_size", 1, False, "a count"),
    ("keep_checkpoints", 1, False, "a count"), ("max_steps", 1, False, "a count"),
    ("history_length", 0, False, "a length"), ("negatives", 0, False, "a count"),
    ("checkpoint_every", 0, False, "a step count"), ("embedding_lr", 0, False, "a rate"),
    ("dense_lr", 0, False, "a rate"), ("dense_weight_decay", 0, False, "a rate"),
    ("embedding_l2", 0, False, "a weight"), ("retrieval_loss_weight", 0, False, "a weight"),
    ("fusion_loss_weight", 0, False, "a weight"), ("retrieval_temperature", 0, True, "a temperature"),
    ("rank_memory_mb", 0, True, "a budget"), ("threads", 1, False, "a count"),
)
_SIZE_LISTS = ("dense_arch_layer_sizes", "tower_layer_sizes", "retrieval_layer_sizes", "ranking_k")


def _check_ranges(config: TrainConfig, source: str) -> None:
    """Every number of ``config`` finite and in its range: a zero batch size or embedding dim is an
    error here, naming the key, not a division by zero in a rank."""
    for name, low, open_low, what in _RANGES:
        v = getattr(config, name)
        if v is not None and not (math.isfinite(v) and (v > low if open_low else v >= low)):
            raise ValueError(f"{source}: {name} must be {'>' if open_low else '>='} {low:g} ({what}), got {v!r}")
    for name in ("validation_fraction", "dropout"):
        v = getattr(config, name)
        if not 0 <= v < 1:
            raise ValueError(f"{source}: {name} must be in [0, 1), got {v!r}")
    if not math.isfinite(config.negative_alpha):
        raise ValueError(f"{source}: negative_alpha must be a finite number, got {config.negative_alpha!r}")
    for name in _SIZE_LISTS:
        bad = [v for v in getattr(config, name) or [] if v < 1]
        if bad:
            raise ValueError(f"{source}: {name} must hold integers >= 1, got {getattr(config, name)}")
    for name in ("task_weights", "ranking_fusion"):
        weights: Dict[str, float] = getattr(config, name) or {}
        bad_w = {k: w for k, w in weights.items() if not (math.isfinite(w) and (w >= 0 or name == "ranking_fusion"))}
        if bad_w:
            raise ValueError(f"{source}: {name} must map to finite numbers"
                             f"{' >= 0' if name == 'task_weights' else ''}, got {bad_w}")


def _field_types() -> Dict[str, Any]:
    import typing

    return typing.get_type_hints(TrainConfig)


def _member_options(family: Family, member: str, values: Mapping[str, Any], source: str) -> Any:
    registry = family.registry()
    if member not in registry:
        raise ValueError(f"{source}: {family.choice}: unknown {registry.family} {member!r}; "
                         f"choose one of {sorted(registry)}")
    return make_options(options_class(registry[member]), values, f"{source}: {family.section} of {member!r}")


def _route(key: str, known: Mapping[str, Any], source: str) -> Tuple[Family, str]:
    """The family section a flat ``key`` belongs to, given the chosen members in ``known``."""
    defaults = TrainConfig()
    elsewhere: List[str] = []
    for family in FAMILIES:
        if not key.startswith(family.prefix):
            continue
        name = key[len(family.prefix):]
        chosen = known.get(family.choice, getattr(defaults, family.choice))
        members = [chosen]
        if family.choice == "arch" and known.get("ensemble"):
            members = [a for a in known["ensemble"] if a != "dlrm"]
        registry = family.registry()
        if any(m in registry and name in option_names(registry[m]) for m in members):
            return family, name
        elsewhere += [f"{family.choice} {m!r}" for m in sorted(registry) if name in option_names(registry[m])]
    if elsewhere:
        raise ValueError(f"{source}: option {key!r} belongs to {', '.join(elsewhere)}, not to the chosen one")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    raise ValueError(f"{source}: unknown option(s) [{key!r}]; known: {sorted(fields | set(flat_option_names()))}")


def flat_option_names() -> Dict[str, Tuple[Family, str, Any]]:
    """Every flat key: the config's fields and each family's options with its prefix, mapped to
    (family, option name, the member whose Options field it is); fields map to None families."""
    out: Dict[str, Tuple[Family, str, Any]] = {}
    for family in FAMILIES:
        for member in family.registry().values():
            for f in dataclasses.fields(options_class(member)):
                out.setdefault(family.prefix + f.name, (family, f.name, member))
    return out


def import_plugins(modules: List[str], source: str = "config") -> None:
    """Imports each named module once (they register their components in the registries)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"{source}: plugin module {name!r} could not be imported: {e}") from None


def read_config_file(path: str) -> Dict[str, Any]:
    """The options in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file, as a dict."""
    if not os.path.exists(path):
        raise ValueError(f"config file {path} does not exist")
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            try:
                values = tomllib.load(f)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: invalid TOML: {e}") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        with open(path, encoding="utf-8") as f:
            try:
                values = yaml.safe_load(f) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: invalid YAML: {e}") from None
    else:
        raise ValueError(f"config file {path}: use .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return values
