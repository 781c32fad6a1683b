"""Extending the project from outside the package: a toy architecture, a balancer with options, a
dataset and a fusion method (tests/plugins/toy_components.py: each a class with its own Options and
one registry line), trained from a config file that names the module under ``plugins:``."""

import json
from pathlib import Path

import pytest
import yaml

from torchrec_fusion.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.mark.parametrize("world_size", [1, 2])
def test_toy_components_train_from_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 world_size: int) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))  # spawned ranks get the same sys.path
    config = {
        "plugins": ["toy_components"],
        "dataset": "coin_flips", "data": {"rows": 3000, "users": 40},
        "arch": "twin_tower", "arch_options": {"width": 12, "depth": 2},
        "balancing": "power", "balancing_options": {"scale": 0.25},
        "fusion": "max", "fusion_options": {"temperature": 2.0}, "fusion_target": "click",
        "epochs": 3, "batch_size": 100, "world_size": world_size, "embedding_dim": 8, "dropout": 0.0,
        "history_length": 0, "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--quiet", "--no-progress"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["data"]["dataset"] == "coin_flips" and m["world_size"] == world_size
    assert m["tasks"]["click"]["count"] == 750 and m["tasks"]["click"]["auc"] > 0.95  # click = even user id
    assert m["task_weights"] == {"click": 1.0, "score": 0.25}  # the balancer's option took effect
    assert m["fused"]["method"] == "max" and m["fused"]["auc"] > 0.9
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["arch_options"] == {"width": 12, "depth": 2} and saved["plugins"] == ["toy_components"]
    if world_size == 1:  # reading a run that names plugins imports them: only when the user allows it
        run = str(tmp_path / "run")
        assert main(["evaluate", "--run", run]) == 2
        assert main(["evaluate", "--run", run, "--allow-plugins"]) == 0
        assert main(["export", "--run", run]) == 2


def test_a_plugin_option_of_the_wrong_type_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"plugins": ["toy_components"], "dataset": "coin_flips", "arch": "twin_tower",
                                    "arch_options": {"width": "wide"}}))
    assert main(["train", "--config", str(path)]) == 2
    assert "arch_options of 'twin_tower'.width: expected an integer" in capsys.readouterr().err
