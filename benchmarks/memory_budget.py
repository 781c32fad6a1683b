"""Peak memory per rank when the tables are larger than one rank's budget.

    .venv/bin/python -m benchmarks.memory_budget                  # both scenarios below
    .venv/bin/python -m benchmarks.memory_budget --scenario split --steps 10

Each scenario builds its tables on the meta device, plans them with
``plan_sharding(memory_budget_bytes=...)`` over --world-size CPU ranks (gloo), shards them with
DMP, seeds them, trains a few steps (row-wise Adagrad, the default) and reports per rank:
the resident memory before the model was built, the peak resident memory of the process
(``getrusage(RUSAGE_SELF).ru_maxrss``), and the bytes of the shards that rank holds
(weights + optimizer state, measured on the sharded module).

* ``pair``: 2 tables of 2,000,000 x 64 fp32 (512 MB + 8 MB of row-wise Adagrad state each) with
  600 MiB per rank: one rank cannot hold both, so the planner puts them on different ranks.
* ``split``: 1 such table with 400 MiB per rank, below the table's own bytes: it must be split
  (no column split below 128 columns by default, so the planner falls back to row-wise).

(Two equal tables over two ranks cannot both be split below one table's bytes per rank: the
ranks together would hold less than the two tables.)
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List

import torch

from benchmarks.common import peak_rss, rss_now

MiB = 2**20
SCENARIOS = {
    "pair": {"tables": 2, "budget_mib": 600},
    "split": {"tables": 1, "budget_mib": 400},
}


class BenchModel(torch.nn.Module):
    def __init__(self, tables: int, rows: int, dim: int) -> None:
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{i}", num_embeddings=rows, embedding_dim=dim, feature_names=[f"f{i}"])
            for i in range(tables)], device=torch.device("meta"))
        self.head = torch.nn.Linear(tables * dim, 1)

    def forward(self, kjt: Any) -> torch.Tensor:
        return self.head(self.ebc(kjt).values()).squeeze(1)


def _batch(tables: int, rows: int, batch: int, step: int, rank: int) -> Any:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(1000 * step + rank)
    lengths = torch.randint(1, 6, (tables * batch,), generator=g)
    values = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor.from_lengths_sync(keys=[f"f{i}" for i in range(tables)], values=values, lengths=lengths)


def run_rank(tables: int, rows: int, dim: int, budget_mib: float, steps: int, batch: int) -> Dict[str, Any]:
    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.distributed.sharding import (
        describe_plan,
        plan_sharding,
        seed_embedding_tables,
        shard_bytes_per_rank,
        shard_model,
    )
    from torchrec_fusion.training.session import quiet_third_party_logs

    quiet_third_party_logs()
    ctx = init_distributed("cpu")
    rss_before = rss_now()
    peak_before = peak_rss()
    model = BenchModel(tables, rows, dim)
    plan = plan_sharding(model, ctx, batch, memory_budget_bytes=int(budget_mib * MiB))
    planned = shard_bytes_per_rank(plan, model, ctx.world_size)[ctx.rank]
    dmp, optimizer = shard_model(model, ctx, plan)
    seed_embedding_tables(dmp, 0)
    weights = 0
    for key, value in dmp.state_dict().items():
        if ".embedding_bags." in key:
            local = [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
            weights += sum(t.numel() * t.element_size() for t in local)
    state = 0
    for per_param in dmp.fused_optimizer.state_dict()["state"].values():
        for v in per_param.values():
            local = [s.tensor for s in v.local_shards()] if hasattr(v, "local_shards") else [v]
            state += sum(t.numel() * t.element_size() for t in local if t.dim() > 0)
    t0 = time.perf_counter()
    for step in range(steps):
        kjt = _batch(tables, rows, batch, step, ctx.rank)
        y = torch.rand(batch, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(dmp(kjt), y)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - t0
    lines = [ln.strip() for ln in describe_plan(plan).splitlines()[1:]]
    return {"rank": ctx.rank, "plan": lines, "planned": planned, "weights": weights, "state": state,
            "rss_before": rss_before, "peak_before": peak_before, "peak": peak_rss(), "rss_after": rss_now(),
            "seconds": seconds, "loss": float(loss.detach())}


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f}"


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--budget-mib", type=float, default=None, help="override the scenario's budget per rank")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024, help="per rank")
    args = p.parse_args(argv)

    from torchrec_fusion.distributed.launcher import launch

    table_bytes = args.rows * args.dim * 4 + args.rows * 4
    print(f"one table: {args.rows:,} x {args.dim} fp32 = {_mib(args.rows * args.dim * 4)} MiB of weights "
          f"+ {_mib(args.rows * 4)} MiB of row-wise Adagrad state = {_mib(table_bytes)} MiB")
    header = (f"{'scenario':<8} {'rank':>4} {'budget':>7} {'shards':>7} {'(plan)':>7} {'RSS before':>10} "
              f"{'peak RSS':>9} {'peak-before':>11} {'ms/step':>8}")
    rows_out = []
    for name in args.scenario:
        sc = dict(SCENARIOS[name])
        if args.budget_mib is not None:
            sc["budget_mib"] = args.budget_mib
        print(f"\n[{name}] {sc['tables']} table(s) = {_mib(sc['tables'] * table_bytes)} MiB, budget "
              f"{sc['budget_mib']:.0f} MiB per rank x {args.world_size} ranks", flush=True)
        results = launch(run_rank, args.world_size, sc["tables"], args.rows, args.dim, sc["budget_mib"],
                         args.steps, args.batch_size)
        print("  " + "\n  ".join(results[0]["plan"]))
        for r in results:
            rows_out.append((name, sc["budget_mib"], r))
    print("\n" + header)
    for name, budget, r in rows_out:
        held = r["weights"] + r["state"]
        print(f"{name:<8} {r['rank']:>4} {budget:>7.0f} {_mib(held):>7} {_mib(r['planned']):>7} "
              f"{_mib(r['rss_before']):>10} {_mib(r['peak']):>9} {_mib(r['peak'] - r['rss_before']):>11} "
              f"{1000 * r['seconds'] / args.steps:>8.1f}")
    print("\nall in MiB. shards: weights + optimizer state this rank holds, measured on the sharded module; "
          "(plan): the same from the plan;\nRSS before: resident memory before the model was built; "
          "peak RSS: getrusage(RUSAGE_SELF).ru_maxrss of the rank's process, after training.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
