"""Where a step of a MovieLens-100K run goes (the bench profiles configs/movielens-100k.yaml): the
trainer's own start-up (``training.session.start``: data, model, plan and pipeline), its tables
seeded as the trainer seeds them, on its shuffled batches, a few steps timed and profiled per rank.
``profile_demo_step`` runs on every rank (launched like the trainer)."""

import itertools
import statistics
import time
from typing import Any, Dict, Iterator

from torchrec_fusion.training.config import TrainConfig


def _batches_ahead(started: Any, config: TrainConfig, n: int) -> Iterator[Any]:
    """``n`` batches cycling through the rank's first 64 shuffled ones, all built before the clock: the
    trainer's loop builds each batch inside the step, the data path section measures the builder."""
    ctx = started.ctx
    first = list(itertools.islice(started.prepared.train.batches(
        config.batch_size, shuffle=True, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size), 64))
    return iter(list(itertools.islice(itertools.cycle(first), n)))


def profile_demo_step(config: TrainConfig, warmup: int, steps: int, profile_steps: int) -> Dict[str, Any]:
    from benchmarks.profile import profiled
    from torchrec_fusion.distributed.sharding import seed_embedding_tables
    from torchrec_fusion.training.session import start

    started = start(config)
    ctx, session = started.ctx, started.session
    seed_embedding_tables(session.dmp, config.seed)
    session.dmp.train()
    it = _batches_ahead(started, config, warmup + steps + profile_steps)
    for _ in range(warmup):
        session.pipeline.progress(it)
    per_step = []
    for _ in range(steps):
        t = time.perf_counter()
        session.pipeline.progress(it)
        per_step.append(time.perf_counter() - t)
    profile = profiled(lambda: session.pipeline.progress(it), profile_steps, ctx.device)
    median = statistics.median(per_step)
    return {
        "rank": ctx.rank, "world_size": ctx.world_size, "batch_size_per_rank": config.batch_size,
        "median_ms_per_step": 1000 * median,
        "samples_per_s_median_step": config.batch_size * ctx.world_size / median,
        "profile": profile,
    }
