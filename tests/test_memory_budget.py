"""plan_sharding(memory_budget_bytes=...): tables larger than one rank may hold, over 2 processes (gloo)."""

import pytest
import torch

from torchrec_fusion.distributed.launcher import launch

MiB = 2**20
BIG = 2_000_000, 64  # fp32: 512,000,000 bytes of weights, + 8,000,000 of row-wise Adagrad state
BIG_BYTES = BIG[0] * BIG[1] * 4 + BIG[0] * 4


class _Model(torch.nn.Module):
    """Tables on the meta device, as the trainer builds them: no rank allocates a whole table."""

    def __init__(self, tables, device: str = "meta") -> None:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"f_{n}"])
            for n, r, d in tables], device=torch.device(device))
        self.head = torch.nn.Linear(sum(d for _, _, d in tables), 1)

    def forward(self, kjt):
        return self.head(self.ebc(kjt).values())


def _plan(model, ctx, budget_mib, **kw):
    from torchrec_fusion.distributed.sharding import MemoryBudgetError, plan_sharding, shard_bytes_per_rank

    try:
        plan = plan_sharding(model, ctx, 64, memory_budget_bytes=int(budget_mib * MiB), **kw)
    except MemoryBudgetError as e:
        return {"error": str(e)}
    return {"plan": {t: (ps.sharding_type, sorted(set(ps.ranks or []))) for p in plan.plan.values()
                     for t, ps in p.items()},
            "bytes": shard_bytes_per_rank(plan, model, ctx.world_size)}


def plan_cases() -> dict:
    """One rank: every planner case, in the same order on every rank (planning is collective)."""
    from torchrec_fusion.distributed.launcher import init_distributed

    ctx = init_distributed("cpu")
    out = {}
    big = _Model([("big", *BIG), ("small", 1000, 16)])
    out["split"] = _plan(big, ctx, 400)  # one 496 MiB table, 400 MiB per rank: it must be split
    out["meta_kept"] = (all(p.is_meta for p in big.ebc.parameters())
                        and not any(hasattr(p, "_optimizer_classes") for p in big.ebc.parameters()))
    pair = _Model([("a", *BIG), ("b", *BIG)])
    tw = {"sharding_type": "table_wise"}
    out["pair"] = _plan(pair, ctx, BIG_BYTES / 0.6 / MiB, **tw)  # each table 60% of a rank
    out["too_small"] = _plan(pair, ctx, 400)  # 992 MiB of tables, 2 x 400 MiB
    out["forced_whole"] = _plan(big, ctx, 400, **tw)  # fits the sum, but table_wise cannot split it
    return out


@pytest.fixture(scope="module")
def cases() -> list:
    return launch(plan_cases, 2)


def test_budget_too_small_for_one_rank_splits_the_table(cases) -> None:
    for rank in cases:
        split = rank["split"]
        assert "error" not in split, split
        kind, ranks = split["plan"]["big"]
        assert kind in ("row_wise", "table_row_wise", "column_wise", "table_column_wise", "grid_shard"), split
        assert ranks == [0, 1], split
        assert 400 * MiB < BIG_BYTES  # the table alone is over one rank's budget...
        assert all(b <= 400 * MiB for b in split["bytes"]), split  # ...no rank's shards are
        assert sum(split["bytes"]) >= BIG_BYTES


def test_planning_leaves_the_tables_on_meta(cases) -> None:
    assert all(rank["meta_kept"] for rank in cases)


def test_two_tables_of_60_percent_land_on_different_ranks(cases) -> None:
    for rank in cases:
        pair = rank["pair"]
        assert "error" not in pair, pair
        assert {pair["plan"]["a"][1][0], pair["plan"]["b"][1][0]} == {0, 1}, pair
        assert all(b <= BIG_BYTES / 0.6 for b in pair["bytes"])


def test_model_larger_than_all_ranks_fails_clearly_on_every_rank(cases) -> None:
    for rank in cases:  # the error reaches every rank: none is left waiting for the plan
        msg = rank["too_small"].get("error", "")
        assert "memory_budget_bytes=400.0 MiB (419,430,400 bytes) per rank x 2 rank(s)" in msg, rank["too_small"]
        assert f"they need {2 * BIG_BYTES / MiB:,.1f} MiB ({2 * BIG_BYTES:,} bytes)" in msg
        assert "rowwise_adagrad" in msg


def test_table_forced_whole_over_budget_names_the_types(cases) -> None:
    for rank in cases:
        msg = rank["forced_whole"].get("error", "")
        assert "'big'" in msg and "table_wise" in msg, rank["forced_whole"]


def shard_under_budget() -> dict:
    """One rank: plans a 5.3 MB table with 4 MiB per rank, shards it with DMP and reports what
    this rank really holds."""
    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.distributed.sharding import plan_sharding, shard_model

    ctx = init_distributed("cpu")
    model = _Model([("t", 40_000, 32)])
    plan = plan_sharding(model, ctx, 8, memory_budget_bytes=4 * MiB)
    dmp, _ = shard_model(model, ctx, plan)
    held = {}
    for key, value in dmp.state_dict().items():
        if ".embedding_bags." in key:
            held[key] = sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
    opt = 0
    for per_param in dmp.fused_optimizer.state_dict()["state"].values():
        for v in per_param.values():  # row-wise Adagrad: a ShardedTensor of one float per row
            local = [s.tensor for s in v.local_shards()] if hasattr(v, "local_shards") else [v]
            opt += sum(t.numel() * t.element_size() for t in local if t.dim() > 0)
    return {"held": held, "optimizer": opt}


def test_sharded_model_holds_its_shards_only() -> None:
    results = launch(shard_under_budget, 2)
    whole = 40_000 * 32 * 4
    for r in results:
        (weights,) = r["held"].values()
        assert 0 < weights < whole
        assert r["optimizer"] == weights // 32  # row-wise Adagrad: one float per row of 32
        assert weights + r["optimizer"] <= 4 * MiB
    assert sum(sum(r["held"].values()) for r in results) == whole


def test_budget_must_be_positive() -> None:
    from torchrec_fusion.distributed.launcher import DistContext
    from torchrec_fusion.distributed.sharding import plan_sharding

    ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo")
    with pytest.raises(ValueError, match="memory_budget_bytes must be positive"):
        plan_sharding(_Model([("t", 10, 4)]), ctx, 8, memory_budget_bytes=0)


def test_trainer_rank_memory_too_small_fails_clearly() -> None:
    """``TrainConfig.rank_memory_mb`` reaches the planner; too little fails on every rank with the
    budget error, not a hang or a bare planner message."""
    from torchrec_fusion.distributed.sharding import MemoryBudgetError
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.trainer import train

    config = TrainConfig.make(dataset="synthetic", synthetic_rows=512, tasks=["ctr"], embedding_dim=16, epochs=1,
                              progress=False, verbose=False, world_size=2, batch_size=64, rank_memory_mb=0.01)
    with pytest.raises(MemoryBudgetError, match=r"memory_budget_bytes=0\.0 MiB \(10,485 bytes\) per rank x 2"):
        train(config)
