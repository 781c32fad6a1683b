"""One process versus 2 sharded processes: same seed, same global batches, same numbers."""

import pytest
import torch

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.state import RunResult
from torchrec_fusion.training.trainer import train

# ctr and watch_time are present on every row, so a rank's mean loss over its half of the global
# batch, averaged over ranks, is the global mean; cvr (masked by clicks) would break that identity.
BASE = {"dataset": "synthetic", "synthetic_rows": 2560, "synthetic_scale": 0.05, "tasks": ["ctr", "watch_time"],
        "embedding_dim": 16, "epochs": 1, "eval_batch_size": 256, "progress": False, "verbose": False,
        "keep_predictions": True, "seed": 3, "dropout": 0.0, "expert_layer_sizes": [32, 16],
        "tower_layer_sizes": [8], "num_experts": 3, "precision": "fp32"}  # bf16 rounds differently per batch split


def _run(world_size: int, per_rank_batch: int, **kw) -> RunResult:
    return train(TrainConfig.make(**{**BASE, **kw}, world_size=world_size, batch_size=per_rank_batch))


@pytest.fixture(scope="module")
def reference() -> RunResult:
    # one process, global batch 128, every table whole on rank 0
    return _run(1, 128, sharding_type="table_wise", embedding_optimizer="adagrad")


def _assert_same(a: RunResult, b: RunResult) -> None:
    assert len(a.step_losses) == len(b.step_losses) == 16
    torch.testing.assert_close(torch.tensor(a.step_losses), torch.tensor(b.step_losses), rtol=1e-5, atol=1e-6)
    assert a.predictions is not None and b.predictions is not None and a.labels is not None and b.labels is not None
    for task in ("ctr", "watch_time"):
        torch.testing.assert_close(a.predictions[task], b.predictions[task], rtol=1e-4, atol=1e-5)
        assert torch.equal(a.labels[task], b.labels[task])
    # and the model did learn something, so agreement is not trivial
    assert a.step_losses[-1] < a.step_losses[0]


# t_user_history and t_item_audience are MEAN-pooled (the others SUM), so every type is checked
# with both poolings
TABLES = ("t_user", "t_item", "t_category", "t_tags", "t_user_history", "t_item_audience")


def _split_columns(sharding: str) -> dict:
    # 16 columns cut into shards of 8: each rank holds half of every table's columns
    return {t: {"sharding_types": [sharding], "min_partition": 8} for t in TABLES}


@pytest.mark.parametrize(
    "sharding, constraints, shards",
    [
        ("table_wise", None, None),
        ("column_wise", _split_columns("column_wise"), "2 shard(s)"),
        ("table_column_wise", _split_columns("table_column_wise"), "2 shard(s)"),
        # offered on CPU by CpuEmbeddingBagCollectionSharder when asked (TorchRec offers them for CUDA only)
        ("row_wise", None, "2 shard(s)"),
        ("table_row_wise", None, "2 shard(s)"),
        # 2 column shards, each split by rows over the 2 ranks of the node
        ("grid_shard", _split_columns("grid_shard"), "4 shard(s) on ranks [0, 1]"),
        # every table whole on both ranks; DDP all-reduces their gradients
        ("data_parallel", None, "1 shard(s) on ranks [0, 1]"),
    ],
)
def test_two_ranks_match_one_process(reference: RunResult, sharding: str, constraints, shards) -> None:
    sharded = _run(2, 64, sharding_type=sharding, constraints=constraints, embedding_optimizer="adagrad")
    if shards:
        assert sharded.plan.count(shards) == len(TABLES), sharded.plan
    assert sharded.plan.count(f": {sharding} /") == len(TABLES), sharded.plan
    _assert_same(reference, sharded)


def test_per_table_constraints_mixing_the_types_match(reference: RunResult) -> None:
    """One plan mixing the types, MEAN-pooled tables row-split next to tables that are not:
    TorchRec 1.8.0 divided the other tables' pooled outputs by their bag sizes once a MEAN
    row-split table was present, and left MEAN grid-sharded tables summed."""
    constraints = {
        "t_user": {"sharding_types": ["data_parallel"]},
        "t_item": {"sharding_types": ["table_wise"]},
        "t_category": {"sharding_types": ["column_wise"], "min_partition": 8},
        "t_tags": {"sharding_types": ["table_row_wise"]},
        "t_user_history": {"sharding_types": ["row_wise"]},  # MEAN
        "t_item_audience": {"sharding_types": ["grid_shard"], "min_partition": 8},  # MEAN
    }
    sharded = _run(2, 64, constraints=constraints, embedding_optimizer="adagrad")
    for table, c in constraints.items():
        assert f".{table}: {c['sharding_types'][0]} /" in sharded.plan, sharded.plan
    _assert_same(reference, sharded)


def test_rowwise_adagrad_table_wise_matches() -> None:
    """The default fused optimizer (row-wise Adagrad) agrees too when tables are whole."""
    ref = _run(1, 128, sharding_type="table_wise")
    sharded = _run(2, 64, sharding_type="table_wise")
    _assert_same(ref, sharded)


def test_cpu_sharder_offers_what_was_measured() -> None:
    from torchrec_fusion.distributed.sharding import make_sharders

    # unasked: no data_parallel on CPU (it replicates every table) and no row-wise family (slow on CPU)
    assert make_sharders()[0].sharding_types("cpu") == ["table_wise", "column_wise", "table_column_wise"]
    assert "row_wise" in make_sharders("row_wise")[0].sharding_types("cpu")
    assert "grid_shard" in make_sharders("grid_shard")[0].sharding_types("cpu")
    assert "data_parallel" in make_sharders("data_parallel")[0].sharding_types("cpu")
    assert "data_parallel" in make_sharders()[0].sharding_types("cuda")  # TorchRec's own list elsewhere
    # one table asking is enough to offer its type
    from torchrec.distributed.planner.types import ParameterConstraints

    both = make_sharders(None, {"t": ParameterConstraints(sharding_types=["data_parallel", "grid_shard"])})[0]
    assert {"data_parallel", "grid_shard"} <= set(both.sharding_types("cpu"))


# ---- the tables themselves, on a small model: do they train, and alike under every plan? ----

SMALL_TABLES = (("a", 40, 16, "mean"), ("b", 24, 16, "sum"))


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        super().__init__()
        pool = {"mean": PoolingType.MEAN, "sum": PoolingType.SUM}
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=n, embedding_dim=d, num_embeddings=r, feature_names=[f"f_{n}"], pooling=pool[p])
            for n, r, d, p in SMALL_TABLES], device=torch.device("meta"))
        self.head = torch.nn.Linear(sum(d for _, _, d, _ in SMALL_TABLES), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.linspace(-0.5, 0.5, self.head.in_features))
            self.head.bias.zero_()

    def forward(self, kjt):
        return self.head(self.ebc(kjt).values()).squeeze(1)


def _small_batch(rank: int, world_size: int, step: int, global_batch: int = 16):
    """This rank's slice of global batch ``step`` (the same global batches at any world size)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(100 + step)
    per = global_batch // world_size
    lengths, values = [], []
    for _, rows, _, _ in SMALL_TABLES:
        lens = torch.randint(1, 4, (global_batch,), generator=g)
        vals = torch.randint(0, rows, (int(lens.sum()),), generator=g)
        off = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        lengths.append(lens[rank * per:(rank + 1) * per])
        values.append(vals[off[rank * per]:off[(rank + 1) * per]])
    labels = torch.rand(global_batch, generator=g)[rank * per:(rank + 1) * per]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=[f"f_{n}" for n, _, _, _ in SMALL_TABLES],
                                              values=torch.cat(values), lengths=torch.cat(lengths))
    return kjt, labels


def _full_tables(dmp) -> dict:
    """Every table whole on rank 0 (None elsewhere)."""
    out = {}
    for key, value in dmp.state_dict().items():
        if ".embedding_bags." not in key:
            continue
        name = key.split(".")[-2]
        if hasattr(value, "local_shards"):
            full = torch.empty(value.size()) if dist_rank() == 0 else None
            value.gather(dst=0, out=full)
            out[name] = full
        else:
            out[name] = value.detach().clone()
    return out


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def train_small(types: dict, optimizer: str, steps: int = 4) -> dict:
    """One rank: shards ``_Small`` with one sharding type per table, trains ``steps`` steps with
    embedding optimizer ``optimizer`` and returns the losses and the tables before and after."""
    from torchrec.distributed.planner.types import ParameterConstraints

    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.distributed.sharding import make_sharders, plan_sharding, seed_embedding_tables, shard_model

    ctx = init_distributed("cpu")
    model = _Small()
    constraints = {n: ParameterConstraints(sharding_types=[types[n]], min_partition=8) for n, *_ in SMALL_TABLES}
    sharders = make_sharders(None, constraints)
    plan = plan_sharding(model, ctx, 8, None, constraints, sharders)
    dmp, opt = shard_model(model, ctx, plan, embedding_optimizer=optimizer, embedding_lr=0.1, sharders=sharders)
    seed_embedding_tables(dmp, 7)
    before = _full_tables(dmp)
    losses = []
    for step in range(steps):
        kjt, y = _small_batch(ctx.rank, ctx.world_size, step)
        opt.zero_grad()
        loss = ((dmp(kjt) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    mean_loss = torch.stack(losses)
    if ctx.world_size > 1:
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= ctx.world_size
    return {"before": before, "after": _full_tables(dmp), "losses": mean_loss}


def _launch_small(world_size: int, types: dict, optimizer: str) -> dict:
    from torchrec_fusion.distributed.launcher import launch

    return launch(train_small, world_size, types, optimizer)[0]


def _assert_tables_trained_alike(ref: dict, other: dict) -> None:
    for name, *_ in SMALL_TABLES:
        torch.testing.assert_close(other["before"][name], ref["before"][name], rtol=0, atol=0)
        moved = (ref["after"][name] - ref["before"][name]).abs().max()
        assert moved > 1e-3, f"table {name} did not train"
        torch.testing.assert_close(other["after"][name], ref["after"][name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other["losses"], ref["losses"], rtol=1e-5, atol=1e-6)


TW = {n: "table_wise" for n, *_ in SMALL_TABLES}
DP = {n: "data_parallel" for n, *_ in SMALL_TABLES}


def test_data_parallel_tables_train_like_fused_ones_over_two_ranks() -> None:
    """data_parallel tables do train (with the embedding optimizer, not the dense one), and
    2 ranks end with the tables of one process holding them whole with the fused optimizer."""
    ref = _launch_small(1, TW, "rowwise_adagrad")
    _assert_tables_trained_alike(ref, _launch_small(2, DP, "rowwise_adagrad"))


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_dense_embedding_optimizers_match_fused(optimizer: str) -> None:
    """The PyTorch optimizers run on data_parallel tables follow FBGEMM's fused ones."""
    _assert_tables_trained_alike(_launch_small(1, TW, optimizer), _launch_small(1, DP, optimizer))


def test_grid_shard_and_mixed_plan_over_two_ranks() -> None:
    """A MEAN table grid-sharded next to a SUM table data_parallel: forward, backward and update
    as one process with whole tables."""
    ref = _launch_small(1, TW, "adagrad")
    _assert_tables_trained_alike(ref, _launch_small(2, {"a": "grid_shard", "b": "data_parallel"}, "adagrad"))


def test_row_sparse_adam_moves_only_rows_with_a_gradient() -> None:
    from torchrec_fusion.distributed.sharding import RowSparseAdam

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    ref = torch.nn.Parameter(w.detach().clone())
    ours, torch_adam = RowSparseAdam([w], lr=0.1, eps=1e-8), torch.optim.Adam([ref], lr=0.1, eps=1e-8)
    for step in range(3):
        g = torch.randn(4, 3)
        if step > 0:
            g[2:] = 0  # rows 2 and 3 are looked up in the first batch only
        w.grad, ref.grad = g.clone(), g.clone()
        ours.step()
        torch_adam.step()
        if step == 0:
            torch.testing.assert_close(w.detach(), ref.detach())
            after_first = w.detach().clone()
    torch.testing.assert_close(w.detach()[:2], ref.detach()[:2])  # rows with a gradient every step: Adam's
    assert torch.equal(w.detach()[2:], after_first[2:])  # the others stay put, as in FBGEMM
    assert not torch.allclose(ref.detach()[2:], after_first[2:])  # (torch's dense Adam moves them on momentum)


def test_dense_embedding_optimizer_refuses_unknown_kwargs() -> None:
    from torchrec_fusion.distributed.sharding import dense_embedding_optimizer

    with pytest.raises(ValueError, match="not supported for 'adagrad'"):
        dense_embedding_optimizer("adagrad", [torch.nn.Parameter(torch.zeros(2, 2))], 0.1, {"max_norm": 1.0})
