"""Run configs: each component's options in its own section, flat keys routed there, every value checked."""

import argparse
import dataclasses

import pytest

from torchrec_fusion.cli import build_parser
from torchrec_fusion.training.config import TrainConfig, read_config_file


def test_flat_keys_go_to_the_chosen_members_sections() -> None:
    c = TrainConfig.make(dataset="movielens", data_dir="/x", split="u2", arch="ple", num_levels=3,
                         balancing="dwa", balancing_temperature=4.0, fusion="weighted", fusion_weights=[0.2, 0.8])
    assert c.data == {"data_dir": "/x", "split": "u2"} and c.arch_options == {"num_levels": 3}
    assert c.balancing_options == {"temperature": 4.0} and c.fusion_options == {"weights": [0.2, 0.8]}
    assert c.member_options("arch")["num_shared_experts"] == 2  # the defaults fill the rest
    assert c.member_options("dataset") == {"data_dir": "/x", "split": "u2"}


def test_sections_and_flat_keys_together_flat_wins() -> None:
    c = TrainConfig.from_dict({"arch_options": {"num_experts": 3, "expert_layer_sizes": [8]}, "num_experts": 5})
    assert c.arch_options == {"num_experts": 5, "expert_layer_sizes": [8]}


@pytest.mark.parametrize("values, message", [
    ({"num_levels": 3}, "option 'num_levels' belongs to arch 'ple'"),  # mmoe is the default arch
    ({"num_experts": "four"}, "arch_options of 'mmoe'.num_experts: expected an integer"),
    ({"epochs": "two"}, "epochs: expected an integer"),
    ({"batch_size": 32.7}, "batch_size: expected an integer"),
    ({"dense_lr": "fast"}, "dense_lr: expected a number"),
    ({"no_such_option": 1}, "unknown option(s) ['no_such_option']"),
    ({"arch_options": {"experts": 2}}, "unknown option(s) ['experts']"),
    ({"fusion_options": {"weights": [1.0]}}, "fusion_options given but fusion is 'none'"),
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"plugins": ["no_such_module_anywhere"]}, "plugin module 'no_such_module_anywhere' could not be imported"),
])
def test_bad_values_are_errors_naming_the_key(values: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(values, source="cfg.yaml")
    assert message in str(e.value) and "cfg.yaml" in str(e.value)


def test_ensemble_members_take_the_options_their_architecture_has() -> None:
    c = TrainConfig.make(ensemble=["mmoe", "ple", "dlrm"], num_experts=3, num_levels=1, expert_layer_sizes=[16])
    assert c.member_options("arch", "mmoe") == {"num_experts": 3, "expert_layer_sizes": [16]}
    assert c.member_options("arch", "ple")["num_levels"] == 1
    assert c.member_options("arch", "ple")["expert_layer_sizes"] == [16]


def test_saved_config_repeats_itself(tmp_path) -> None:
    c = TrainConfig.make(arch="shared_bottom", bottom_layer_sizes=[32, 16], balancing="gradnorm",
                         balancing_alpha=0.5, fusion="gated", fusion_hidden=[8], synthetic_rows=5000)
    c.save(str(tmp_path / "c.yaml"))
    again = TrainConfig.from_dict(read_config_file(str(tmp_path / "c.yaml")))
    assert again == c


def test_old_flat_config_files_still_load(tmp_path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("dataset: synthetic\nsynthetic_rows: 1000\narch: mmoe\nnum_experts: 2\nexpert_layer_sizes: [8]\n"
                    "fusion: weighted\nfusion_normalizer: rank\nfusion_weights: null\n")
    c = TrainConfig.from_dict(read_config_file(str(path)))
    assert c.data == {"synthetic_rows": 1000} and c.arch_options == {"num_experts": 2, "expert_layer_sizes": [8]}
    assert c.fusion_options == {"normalizer": "rank", "weights": None}


def _train_actions() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions if a.option_strings}


def test_cli_flags_are_derived_from_the_options() -> None:
    actions = _train_actions()
    for flag in ("num_experts", "num_levels", "bottom_layer_sizes", "balancing_window", "balancing_temperature",
                 "balancing_alpha", "fusion_weights", "fusion_normalizer", "fusion_hidden", "data_dir", "split",
                 "synthetic_rows", "synthetic_scale"):
        assert flag in actions, flag
    assert actions["num_experts"].type is int and actions["fusion_weights"].nargs == "+"
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"constraints", "keep_predictions", "data",
                                                                   "arch_options", "balancing_options",
                                                                   "fusion_options", "verbose", "progress"}
    assert fields <= set(actions)


def test_ensemble_options_must_belong_to_a_member() -> None:
    with pytest.raises(ValueError, match=r"arch_options \['bottom_layer_sizes'\] belong to no architecture"):
        TrainConfig.from_dict({"ensemble": ["mmoe", "ple"], "arch_options": {"bottom_layer_sizes": [8]}})


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 0}, "batch_size must be >= 1 (a size), got 0"),
    ({"eval_batch_size": -2}, "eval_batch_size must be >= 1 (a size), got -2"),
    ({"embedding_dim": 0}, "embedding_dim must be >= 1 (a size), got 0"),
    ({"epochs": 0}, "epochs must be >= 1 (a count), got 0"),
    ({"max_steps": 0}, "max_steps must be >= 1 (a count), got 0"),
    ({"history_length": -1}, "history_length must be >= 0 (a length), got -1"),
    ({"dense_lr": float("nan")}, "dense_lr must be >= 0 (a rate), got nan"),
    ({"embedding_lr": -0.1}, "embedding_lr must be >= 0 (a rate), got -0.1"),
    ({"retrieval_temperature": 0}, "retrieval_temperature must be > 0 (a temperature), got 0.0"),
    ({"rank_memory_mb": float("inf")}, "rank_memory_mb must be > 0 (a budget), got inf"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"validation_fraction": -0.1}, "validation_fraction must be in [0, 1), got -0.1"),
    ({"negative_alpha": float("inf")}, "negative_alpha must be a finite number, got inf"),
    ({"dense_arch_layer_sizes": [64, 0]}, "dense_arch_layer_sizes must hold integers >= 1, got [64, 0]"),
    ({"ranking_k": [10, -1]}, "ranking_k must hold integers >= 1, got [10, -1]"),
    ({"task_weights": {"ctr": -1}}, "task_weights must map to finite numbers >= 0, got {'ctr': -1.0}"),
    ({"ranking_fusion": {"like": float("nan")}}, "ranking_fusion must map to finite numbers, got {'like': nan}"),
])
def test_sizes_counts_and_rates_are_checked(values: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(values, source="cfg.yaml")
    assert str(e.value) == f"cfg.yaml: {message}"


def test_edges_of_the_ranges_are_accepted() -> None:
    c = TrainConfig.make(batch_size=1, embedding_dim=1, history_length=0, negatives=0, dropout=0.0,
                         validation_fraction=0.0, checkpoint_every=0, dense_lr=0.0, retrieval_layer_sizes=[],
                         ranking_fusion={"like": -0.5}, max_steps=None, rank_memory_mb=None)
    assert (c.batch_size, c.embedding_dim, c.dropout) == (1, 1, 0.0)
