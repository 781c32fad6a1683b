"""Where a step of a MovieLens-100K run goes (the bench profiles configs/movielens-100k.yaml): the
trainer's own data, model, plan and pipeline (``prepare_data``, ``build_session``,
``seed_embedding_tables``, ``TrainPipelineSparseDist``) on its shuffled batches, a few steps timed
and profiled per rank. ``profile_demo_step`` runs on every rank (launched like the trainer)."""

import itertools
import statistics
import time
from typing import Any, Dict

import torch


def profile_demo_step(config: Any, warmup: int, steps: int, profile_steps: int) -> Dict[str, Any]:
    from benchmarks.profile import _quiet_stderr, categorize
    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.distributed.sharding import seed_embedding_tables
    from torchrec_fusion.training.trainer import build_session, prepare_data, quiet_third_party_logs

    quiet_third_party_logs()
    ctx = init_distributed(config.device)
    torch.manual_seed(config.seed)
    prepared = prepare_data(config)
    session = build_session(config, ctx, prepared.train)
    seed_embedding_tables(session.dmp, config.seed)
    session.dmp.train()
    n = warmup + steps + profile_steps
    batches = itertools.islice(itertools.cycle(list(itertools.islice(prepared.train.batches(
        config.batch_size, shuffle=True, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size), 64))), n)
    # the trainer's loop builds each batch inside the step; here they are built ahead (the data path
    # section measures the builder), so this is the step without the loader
    it = iter(list(batches))
    for _ in range(warmup):
        session.pipeline.progress(it)
    per_step = []
    for _ in range(steps):
        t = time.perf_counter()
        session.pipeline.progress(it)
        per_step.append(time.perf_counter() - t)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    with _quiet_stderr():
        prof.start()
    t0 = time.perf_counter()
    for _ in range(profile_steps):
        session.pipeline.progress(it)
    wall_us = (time.perf_counter() - t0) * 1e6
    with _quiet_stderr():
        prof.stop()
    cats = categorize(list(prof.events()), wall_us)
    top = sorted(prof.key_averages(), key=lambda k: k.self_cpu_time_total, reverse=True)[:12]
    median = statistics.median(per_step)
    return {
        "rank": ctx.rank, "world_size": ctx.world_size, "batch_size_per_rank": config.batch_size,
        "median_ms_per_step": 1000 * median,
        "samples_per_s_median_step": config.batch_size * ctx.world_size / median,
        "profile": {"steps": profile_steps, "wall_ms_per_step": wall_us / 1000 / profile_steps,
                    "ms_per_step": {k: v / 1000 / profile_steps for k, v in cats.items()},
                    "top_self_cpu_ms_per_step": [(k.key, k.self_cpu_time_total / 1000 / profile_steps) for k in top]},
    }
