"""One benchmark job on one rank: build a contender, time its training and evaluation steps,
read its peak memory, optionally profile a few steps. ``run_job`` is what the launcher starts
on every rank (a module-level function, importable by the spawned processes)."""

import dataclasses
import gc
import statistics
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from benchmarks.common import Workload, lookups_per_batch, make_pool, peak_rss, rss_now, vm_hwm
from benchmarks.contenders import batch_stream, build


@dataclasses.dataclass
class Job:
    contender: str
    workload: Workload
    warmup: int = 10
    steps: int = 100
    eval_warmup: int = 3
    eval_steps: int = 30
    profile_steps: int = 0
    device: str = "cpu"


def _sync(ctx: Any) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    if ctx.world_size > 1:
        dist.barrier()


def _drain(runner: Any, it: Any) -> None:
    try:
        runner.progress(it)  # the iterator is exhausted: the pipeline has nothing left in flight
    except StopIteration:
        return
    raise RuntimeError(f"{runner.name}: a batch was left in flight after the timed steps")


def _timed(runner: Any, natives: Any, ctx: Any, warmup: int, steps: int) -> Tuple[float, List[float]]:
    """Seconds for ``steps`` steps after ``warmup`` steps (all ranks start and stop together),
    and each step's seconds as this rank saw it (for the median: robust to a busy machine)."""
    it = batch_stream(runner, natives, warmup + steps)
    for _ in range(warmup):
        runner.progress(it)
    _sync(ctx)
    t0 = last = time.perf_counter()
    per_step = []
    for _ in range(steps):
        runner.progress(it)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        now = time.perf_counter()
        per_step.append(now - last)
        last = now
    _sync(ctx)
    seconds = time.perf_counter() - t0
    _drain(runner, it)
    return seconds, per_step


def dense_macs_per_sample(module: torch.nn.Module) -> int:
    """Multiply-adds per sample of the dense part's forward pass, counted as its weight matrices'
    elements (each is used once per sample in an MLP, a stacked-experts GEMM, a gate, a tower):
    every parameter of 2 or more dimensions that is not an embedding table. MMoE's expert mixing
    and DLRM's dot interactions, which have no weights, are not counted (both are small)."""
    total = 0
    for name, p in module.named_parameters():
        if "embedding" in name or p.dim() < 2:
            continue
        total += p.numel()
    return total


def run_jobs(jobs: List[Job]) -> List[Dict[str, Any]]:
    """Runs ``jobs`` one after the other on this rank (the launcher starts it on every rank).
    One job per process gives each its own peak-memory figure; several share the process's."""
    from torchrec_fusion.distributed.launcher import init_distributed
    from torchrec_fusion.training.session import quiet_third_party_logs

    quiet_third_party_logs()
    out = []
    for job in jobs:
        ctx = init_distributed(job.device)
        out.append(run_job(job, ctx))
        gc.collect()
    return out


def run_job(job: Job, ctx: Any) -> Dict[str, Any]:
    torch.manual_seed(0)
    w = job.workload
    pool = make_pool(w, ctx.rank)
    rss_before, peak_before = rss_now(), peak_rss()
    t = time.perf_counter()
    runner = build(job.contender, w, ctx)
    build_seconds = time.perf_counter() - t
    natives = [runner.inputs(rb) for rb in pool]
    rss_built = rss_now()

    runner.train_mode(True)
    train_s, train_steps = _timed(runner, natives, ctx, job.warmup, job.steps)
    runner.train_mode(False)
    eval_s, eval_steps = _timed(runner, natives, ctx, job.eval_warmup, job.eval_steps) if job.eval_steps else (0.0, [])
    peak, hwm = peak_rss(), vm_hwm()
    device_peak: Optional[int] = None
    if ctx.device.type == "cuda":
        device_peak = int(torch.cuda.max_memory_allocated(ctx.device))

    profile = profile_eval = None
    if job.profile_steps:  # after the memory reading: the profiler's own buffers are not the model's
        from benchmarks.profile import profile_steps

        profile_eval = profile_steps(runner, natives, ctx, job.profile_steps)
        runner.train_mode(True)
        profile = profile_steps(runner, natives, ctx, job.profile_steps)
    runner.train_mode(True)

    samples = w.batch_size * ctx.world_size
    out = {
        "contender": job.contender, "rank": ctx.rank, "world_size": ctx.world_size, "device": ctx.device.type,
        "threads": torch.get_num_threads(),
        "train_seconds": train_s, "train_steps": job.steps,
        "train_samples_per_s": job.steps * samples / train_s,
        "train_ms_per_step": 1000 * train_s / job.steps,
        "train_median_ms_per_step": 1000 * statistics.median(train_steps),
        "train_p90_ms_per_step": 1000 * sorted(train_steps)[int(0.9 * (len(train_steps) - 1))],
        "train_median_samples_per_s": samples / statistics.median(train_steps),
        "eval_seconds": eval_s, "eval_steps": job.eval_steps,
        "eval_samples_per_s": job.eval_steps * samples / eval_s if eval_s else None,
        "eval_median_samples_per_s": samples / statistics.median(eval_steps) if eval_steps else None,
        "rss_before": rss_before, "peak_before": peak_before, "rss_built": rss_built, "peak_rss": peak,
        "vm_hwm": hwm,
        "peak_minus_before": peak - rss_before, "floor_rank": runner.floor_rank,
        "device_peak_bytes": device_peak,
        "build_seconds": build_seconds, "plan": runner.plan,
        "per_rank_batch": lookups_per_batch(pool),
        "profile": profile, "profile_eval": profile_eval,
        "dense_macs_per_sample": dense_macs_per_sample(runner.dense_module()),
    }
    if ctx.world_size > 1:
        dist.barrier()
    return out
