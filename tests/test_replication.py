"""Small tables are replicated (data_parallel) unasked, large ones never; what the user asks wins."""

from typing import Any, Dict, Optional

import pytest
import torch

from torchrec_fusion.distributed.launcher import launch
from torchrec_fusion.distributed.replication import REPLICATE_TABLE_BYTES, small_table_constraints

LARGE_ROWS = 10_000_000  # x 64 fp32: 2.56 GB, never replicated unasked


def _model(tables: Dict[str, tuple]) -> torch.nn.Module:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ebc = EmbeddingBagCollection(tables=[
                EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"f_{n}"])
                for n, (r, d) in tables.items()], device=torch.device("meta"))

    return Model()


def _types(**kw: Any) -> Dict[str, str]:
    """The plan's sharding type per table, planned on two ranks as the trainer does."""
    from torchrec.distributed.planner.types import ParameterConstraints

    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.distributed.sharding import make_sharders, plan_sharding

    ctx = init_distributed("cpu")
    model = _model({"small": (1000, 16), "tiny": (3, 16), "large": (LARGE_ROWS, 64)})
    asked: Optional[Dict[str, ParameterConstraints]] = (
        {t: ParameterConstraints(sharding_types=[s]) for t, s in kw["asked"].items()} if "asked" in kw else None)
    constraints = small_table_constraints(model, ctx.world_size, "rowwise_adagrad", kw.get("sharding_type"), asked)
    plan = plan_sharding(model, ctx, 512, kw.get("sharding_type"), constraints,
                         make_sharders(kw.get("sharding_type"), constraints))
    return {t: ps.sharding_type for p in plan.plan.values() for t, ps in p.items()}


def _cases() -> Dict[str, Dict[str, str]]:
    return {"unasked": _types(), "asked": _types(asked={"small": "table_wise"}),
            "forced": _types(sharding_type="column_wise")}


@pytest.fixture(scope="module")
def planned() -> Dict[str, Dict[str, str]]:
    results = launch(_cases, 2)
    assert results[0] == results[1]
    return results[0]


def test_small_tables_replicated_unasked_large_never(planned: Dict[str, Dict[str, str]]) -> None:
    assert planned["unasked"]["small"] == planned["unasked"]["tiny"] == "data_parallel"
    assert planned["unasked"]["large"] != "data_parallel"


def test_what_the_user_asks_wins(planned: Dict[str, Dict[str, str]]) -> None:
    assert planned["asked"]["small"] == "table_wise" and planned["asked"]["tiny"] == "data_parallel"
    assert set(planned["forced"].values()) == {"column_wise"}


def test_rule() -> None:
    model = _model({"a": (1000, 16), "b": (2000, 16), "big": (REPLICATE_TABLE_BYTES // 64 + 1, 16)})
    out = small_table_constraints(model, 2, "rowwise_adagrad")
    assert sorted(out) == ["a", "b"]  # big is over the per-table limit (weights + optimizer state)
    assert small_table_constraints(model, 1, "rowwise_adagrad") == {}  # one rank: nothing to save
    assert small_table_constraints(model, 2, "rowwise_adagrad", memory_budget=True) == {}
    assert small_table_constraints(model, 2, "rowwise_adagrad", sharding_type="table_wise") == {}
    many = _model({f"t{i}": (60_000, 16) for i in range(20)})  # 3.9 MiB each with Adagrad state
    kept = small_table_constraints(many, 2, "rowwise_adagrad")
    assert 0 < len(kept) < 20  # the total limit stops the replication


def test_resumed_run_keeps_its_checkpoints_choice() -> None:
    model = _model({"a": (1000, 16), "b": (2000, 16)})
    out = small_table_constraints(model, 2, "rowwise_adagrad", previous=set())  # an older checkpoint: nothing
    assert out == {}
    out = small_table_constraints(model, 1, "rowwise_adagrad", previous={"b"})  # at any world size
    assert sorted(out) == ["b"]


def test_sharded_checkpoint_resumes_under_the_defaults(tmp_path) -> None:
    """A checkpoint whose small tables were sharded (written before they were replicated unasked, or
    with --sharding-type) continues with the defaults: the fused optimizer state of a sharded table
    does not load into a replicated one, so the resumed run keeps the checkpoint's choice."""
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.trainer import train

    base = dict(dataset="synthetic", synthetic_rows=1500, epochs=2, batch_size=64, world_size=2, progress=False,
                verbose=False, report=False, output_dir=str(tmp_path))
    first = train(TrainConfig.make(**base, sharding_type="table_wise", max_steps=5))
    assert "data_parallel" not in first.plan
    resumed = train(TrainConfig.make(**base, resume="auto"))
    assert "data_parallel" not in resumed.plan and resumed.steps > 5
