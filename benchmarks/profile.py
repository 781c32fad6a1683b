"""Where a training step's time goes: ``torch.profiler`` over a few steps, each op of the main
thread put in one category (the first pattern its name matches, outermost op first):

* ``embedding fwd``: the table lookups (FBGEMM's TBE, ``aten::embedding``, ``aten::embedding_bag``);
* ``embedding bwd+update``: their backward, with FBGEMM's fused optimizer update for ours, the
  dense ``[rows, dim]`` gradient for the peers, the sparse gradient for plain PyTorch;
* ``comms``: input distribution (KJT splits, permutes and all-to-alls), output distribution
  (pooled embeddings all-to-all), collectives (DDP all-reduce waits, gloo);
* ``dense matmul``: mm/addmm/bmm/baddbmm of the dense MLPs, experts, gates and towers (fwd+bwd);
* ``dense other ops``: every other op of the model and loss (activations, dropout, softmax,
  cat/stack, copies, losses) and their backward;
* ``grad accumulation``: ``AccumulateGrad`` (writing ``.grad``; the peers' dense table gradients);
* ``optimizer``: ``optimizer.step()`` and ``zero_grad()`` (Adam / SparseAdam; for ours the dense
  Adam only, the tables' update being inside ``embedding bwd+update``);
* ``backward engine/DDP wait``: time inside ``backward()`` outside every op: the autograd engine,
  and at world size 2 the wait for DDP's gradient all-reduce (gloo runs it on its own thread);
* ``python/framework``: the rest of the wall time: Python between ops, module and pipeline
  bookkeeping, self time of the wrapper ranges.
"""

import contextlib
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Iterator, List

import torch

CATEGORIES = ("embedding fwd", "embedding bwd+update", "comms", "dense matmul", "dense other ops",
              "grad accumulation", "optimizer", "backward engine/DDP wait", "python/framework")

_PATTERNS = [
    ("comms", re.compile(r"sparse_data_dist|all2all|alltoall|all_to_all|All2All|output_dist|input_dist|allreduce|"
                         r"all_reduce|allgather|all_gather|c10d::|gloo|barrier|broadcast|KJTListSplitsAwaitable")),
    ("embedding bwd+update", re.compile(r"SplitLookupFunction|split_embedding_backward|EmbeddingBackward|"
                                        r"EmbeddingBagBackward|embedding_dense_backward|embedding_bag_backward|"
                                        r"_embedding_bag_sparse_backward|embedding_backward")),
    ("embedding fwd", re.compile(r"\[lookup\]|split_embedding_codegen_lookup|^aten::embedding$|aten::embedding_bag|"
                                 r"aten::_embedding_bag")),
    ("grad accumulation", re.compile(r"AccumulateGrad")),
    ("optimizer", re.compile(r"Optimizer\.step|Optimizer\.zero_grad|## optimizer|## zero_grad")),
    ("dense matmul", re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$|^(Mm|Addmm|Bmm|Baddbmm)Backward")),
]


def _category(name: str) -> str:
    for cat, pat in _PATTERNS:
        if pat.search(name):
            return cat
    return ""


def _is_op(name: str) -> bool:
    return name.startswith(("aten::", "fbgemm::")) or name.endswith("Backward0") or "Backward" in name


def categorize(events: List[Any], wall_us: float) -> Dict[str, float]:
    """Microseconds per category over ``events`` (the profiler's), main thread only;
    ``python/framework`` gets what no op covers of ``wall_us``."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    events = [e for e in events if str(getattr(e, "device_type", "CPU")).endswith("CPU")]  # host ops only
    if not events:
        out["python/framework"] = wall_us
        return out
    by_thread: Dict[int, float] = {}
    for e in events:
        if e.cpu_parent is None:
            by_thread[e.thread] = by_thread.get(e.thread, 0.0) + e.time_range.elapsed_us()
    main = max(by_thread, key=lambda t: by_thread[t])

    def visit(e: Any) -> None:
        dur = e.time_range.elapsed_us()
        cat = _category(e.name)
        if cat:
            out[cat] += dur
            return
        children = list(e.cpu_children)
        if not children:
            out["dense other ops"] += dur
            return
        for c in children:
            visit(c)
        rest = max(0.0, dur - sum(c.time_range.elapsed_us() for c in children))
        if e.name.startswith("## backward"):
            out["backward engine/DDP wait"] += rest
        else:
            out["dense other ops" if _is_op(e.name) else "python/framework"] += rest

    covered = 0.0
    for e in events:
        if e.cpu_parent is None and e.thread == main:
            visit(e)
            covered += e.time_range.elapsed_us()
    out["python/framework"] += max(0.0, wall_us - covered)
    return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 (the profiler's C++ "profiler_start/stop" lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiled(step: Callable[[], Any], steps: int, device: torch.device) -> Dict[str, Any]:
    """Runs ``step()`` ``steps`` times under torch.profiler; returns milliseconds per step per
    category, the profiled steps' wall time and the profiler's own top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    with _quiet_stderr():
        prof.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_us = (time.perf_counter() - t0) * 1e6
    with _quiet_stderr():
        prof.stop()
    cats = categorize(list(prof.events()), wall_us)
    top = sorted(prof.key_averages(), key=lambda k: k.self_cpu_time_total, reverse=True)[:12]
    return {
        "steps": steps,
        "wall_ms_per_step": wall_us / 1000 / steps,
        "ms_per_step": {k: v / 1000 / steps for k, v in cats.items()},
        "top_self_cpu_ms_per_step": [(k.key, k.self_cpu_time_total / 1000 / steps) for k in top],
    }


def profile_steps(runner: Any, natives: List[Any], ctx: Any, steps: int) -> Dict[str, Any]:
    """Profiles ``steps`` steps of ``runner`` in its current mode (training or evaluation), after
    one unprofiled one (the pipeline refills after a mode switch): see :func:`profiled`."""
    import torch.distributed as dist

    from benchmarks.contenders import batch_stream

    it = batch_stream(runner, natives, steps + 1)
    runner.progress(it)
    if ctx.world_size > 1:
        dist.barrier()
    out = profiled(lambda: runner.progress(it), steps, ctx.device)
    with contextlib.suppress(StopIteration):
        runner.progress(it)
    return out
