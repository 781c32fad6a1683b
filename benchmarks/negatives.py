"""What sampled negatives cost the data path: batches/s, observed samples/s and model rows/s of the
training batches with K = 0 (``MultiTaskData.batches``) and K sampled negatives per row
(``NegativeSampledData.batches``), on synthetic data of MovieLens-100K's size (943 users, 1,682
items, 100,000 rows before the split), with and without the history bags. No training: the rates
are the loader's alone, rank 0 of world size 2, on ``--threads`` threads.

    python -m benchmarks.negatives [--negatives 4] [--batch-size 2048] [--threads 1]
"""

import argparse
import time
from typing import Any, Dict, List, Optional

import torch

from torchrec_fusion.data.candidates import candidate_builder
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.history import InteractionHistory
from torchrec_fusion.data.negatives import NegativeSampledData, NegativeSampler
from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.data.types import BatchSource, CandidateRows

ML100K_SIZE = SyntheticConfig(num_rows=100_000, table_sizes={"user": 943, "item": 1682, "category": 19})


def rate(data: BatchSource, batch_size: int, rows_per_sample: int, max_batches: int) -> Dict[str, float]:
    """The best of two passes (the first warms the allocator) over up to ``max_batches`` batches."""
    best = float("inf")
    n = 0
    for epoch in range(2):
        t, n = time.perf_counter(), 0
        for _ in data.batches(batch_size, shuffle=True, epoch=epoch, rank=0, world_size=2):
            n += 1
            if n >= max_batches:
                break
        best = min(best, (time.perf_counter() - t) / max(n, 1))
    return {"batches_per_s": 1 / best, "samples_per_s": batch_size / best,
            "rows_per_s": batch_size * rows_per_sample / best, "ms_per_batch": best * 1e3}


def _sources(history: int) -> "tuple[MultiTaskData, CandidateRows]":
    train, _ = make_synthetic(ML100K_SIZE)
    make = candidate_builder(train, ["item", "category", "tags"])
    if not history:
        return train, make
    bags = InteractionHistory(train, history)
    return bags.add_to(train), lambda u, i: bags.add_to(make(u, i))


def measure(negatives: int, batch_size: int, max_batches: int, distribution: str) -> List[Dict[str, Any]]:
    """One row per (history bags, K) of the table."""
    out = []
    for history in (0, 64):
        train, candidates = _sources(history)
        sampled = NegativeSampledData(train, candidates,
                                      NegativeSampler.from_data(train, negatives, distribution, alpha=0.75))
        for k, data in ((0, train), (negatives, sampled)):
            row = rate(data, batch_size, 1 + k, max_batches)
            out.append({"history": history, "negatives": k, **row})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.negatives", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--negatives", type=int, default=4, help="K, sampled rows per observed row")
    p.add_argument("--batch-size", type=int, default=2048, help="observed rows per batch and rank")
    p.add_argument("--max-batches", type=int, default=15, help="batches timed per pass")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a rank's share of the cores)")
    p.add_argument("--distribution", choices=["uniform", "popularity"], default="uniform")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.negatives, args.batch_size, args.max_batches, args.distribution)
    print(f"data path, ml-100k-sized synthetic, batch {args.batch_size}, {args.distribution} negatives, "
          f"{args.threads} thread(s)")
    print(f"{'history':>7} {'K':>2} {'batches/s':>10} {'samples/s':>10} {'rows/s':>10} {'ms/batch':>9}")
    for r in rows:
        print(f"{r['history']:>7} {r['negatives']:>2} {r['batches_per_s']:>10.1f} {r['samples_per_s']:>10,.0f} "
              f"{r['rows_per_s']:>10,.0f} {r['ms_per_batch']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
