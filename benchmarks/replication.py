"""What replicating a table (data_parallel) costs against sharding it, per table size, on 2 ranks.

    .venv/bin/python -m benchmarks.replication            # plans for 10^3 .. 10^7 rows, all-reduce up to 10^6
    .venv/bin/python -m benchmarks.replication --max-allreduce-rows 100000

For one table of ``rows x 64`` fp32 with row-wise Adagrad, over 2 CPU ranks (gloo):

* the plan the trainer makes unasked (``small_table_constraints`` + TorchRec's planner) and the bytes
  each rank holds under it (weights + optimizer state, from the plan's shards: nothing is allocated,
  the tables stay on the meta device);
* the bytes per rank if the table were replicated (``--sharding-type data_parallel``);
* the time of one all-reduce of the table's whole gradient: what a replicated table pays at every step
  (TorchRec's data_parallel kernel has a dense gradient), measured on real tensors for tables up to
  ``--max-allreduce-rows`` rows (a 10^7-row table's gradient is 2.56 GB: not allocated here).
"""

import argparse
import time
from typing import Any, Dict, List

import torch

ROWS = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
DIM = 64


def _model(rows: int) -> torch.nn.Module:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    model = torch.nn.Module()
    model.ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t", num_embeddings=rows, embedding_dim=DIM, feature_names=["f"])], device=torch.device("meta"))
    return model


def _plan_bytes(model: torch.nn.Module, ctx: Any, sharding_type: Any) -> Dict[str, Any]:
    from torchrec_fusion.distributed.replication import small_table_constraints
    from torchrec_fusion.distributed.sharding import make_sharders, plan_sharding, shard_bytes_per_rank

    constraints = small_table_constraints(model, ctx.world_size, "rowwise_adagrad", sharding_type)
    plan = plan_sharding(model, ctx, 4096, sharding_type, constraints, make_sharders(sharding_type, constraints))
    (ps,) = [ps for p in plan.plan.values() for ps in p.values()]
    return {"type": ps.sharding_type, "bytes": shard_bytes_per_rank(plan, model, ctx.world_size)}


def _allreduce_seconds(rows: int) -> float:
    import torch.distributed as dist

    grad = torch.ones(rows, DIM)
    dist.all_reduce(grad)  # warm-up
    best = float("inf")
    for _ in range(3):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(grad)
        best = min(best, time.perf_counter() - t0)
    return best


def _rank(max_allreduce_rows: int) -> List[Dict[str, Any]]:
    from torchrec_fusion.distributed.launcher import init_distributed

    ctx = init_distributed("cpu")
    out = []
    for rows in ROWS:
        model = _model(rows)
        row: Dict[str, Any] = {"rows": rows, "unasked": _plan_bytes(model, ctx, None),
                               "replicated": _plan_bytes(model, ctx, "data_parallel")}
        row["allreduce_s"] = _allreduce_seconds(rows) if rows <= max_allreduce_rows else None
        out.append(row)
    return out


def main(argv: Any = None) -> List[Dict[str, Any]]:
    from torchrec_fusion.distributed.launcher import launch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-allreduce-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    rows = launch(_rank, 2, args.max_allreduce_rows)[0]
    print(f"one table of rows x {DIM} fp32 + row-wise Adagrad, 2 CPU ranks (gloo)")
    print(f"{'rows':>12} {'unasked plan':>14} {'MiB per rank':>16} {'replicated MiB/rank':>20} {'grad all-reduce':>16}")
    for r in rows:
        u, rep = r["unasked"], r["replicated"]
        ar = f"{r['allreduce_s'] * 1e3:,.1f} ms" if r["allreduce_s"] is not None else "not run"
        print(f"{r['rows']:>12,} {u['type']:>14} {' / '.join(f'{b / 2**20:,.1f}' for b in u['bytes']):>16} "
              f"{' / '.join(f'{b / 2**20:,.1f}' for b in rep['bytes']):>20} {ar:>16}")
    return rows


if __name__ == "__main__":
    main()
