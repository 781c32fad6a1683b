"""The benchmark suite, one command: ``python -m benchmarks.run`` (``make bench``).

    .venv/bin/python -m benchmarks.run                 # default sizes (about 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.run --quick         # a tiny version (well under a minute)
    .venv/bin/python -m benchmarks.run --device cuda   # the same suite on GPUs (CUDA + fbgemm-gpu)
    .venv/bin/python -m benchmarks.run --out DIR_OR_FILE.json --sections comparison scaling

Prints the tables and writes them as JSON (``runs/bench/bench.json`` unless ``--out``) with the
printed text beside it (``bench.txt``). Sections:

1. comparison: training and evaluation samples/s at 10^6 rows per table of ours (sharded MMoE),
   ours + weighted fusion, TorchRec's DLRM, the peers' way and plain PyTorch's sparse way, world
   size 1 and 2, as ratios; plus a torch.profiler breakdown of a few steps of each.
2. scaling: samples/s and peak resident memory per rank against the memory floor, 10^4..10^7 rows
   per table (dim 64; dim 128 at 10^6), world size 1 and 2 (the peers up to 10^6 only).
3. datapath: batches/s of the batch builders against the training step rate.
4. roofline: bytes of embedding rows moved per second against the measured memory bandwidth.
5. movielens: the ML-100K MMoE run of configs/movielens-100k.yaml (make movielens): samples/s as the trainer
   reports it and its u1.test quality; the CLI defaults' run for reference.

Each configuration runs in fresh processes (one per rank) so that its peak RSS is its own
(``--quick`` shares one process per world size: its memory figures are not isolated). Threads per
rank are the launcher's: cores / ranks. See docs/performance.md for the method and the results.
"""

import argparse
import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "bench" / "bench.json"
DEFAULT_ML = ROOT.parent / "shared" / "data" / "ml-100k"
ML_CONFIG = ROOT / "configs" / "movielens-100k.yaml"
SECTIONS = ("comparison", "scaling", "datapath", "roofline", "movielens")
COMPARED = ("ours", "ours_fusion", "ours_matched", "dlrm", "peers", "plain")
GiB = 2**30
MiB = 2**20

TARGETS = {
    "ours_over_peers": 10.0,  # training samples/s at 10^6 rows per table
    "ours_over_plain": 1.3,
    "fusion_overhead_over_dlrm": 0.25,  # step time of ours + fusion over DLRM's, at most
    "peak_over_floor": 1.5,  # peak memory per rank over the floor, at most
    "movielens_samples_per_s": 250_000.0,
}


@dataclasses.dataclass
class Plan:
    """What one run of the suite measures (default or --quick sizes)."""

    compare_rows: int
    dim: int
    alt_dim: int
    batch_size: int
    scaling_rows: List[int]
    peer_max_rows: int
    steps: Dict[int, Tuple[int, int]]  # rows -> (warm-up, timed) training steps
    eval_steps: Tuple[int, int]
    profile_steps: int
    pool: int
    bandwidth_mib: int
    bandwidth_repeats: int
    synthetic_rows: int
    loader_batches: int
    ml_epochs: int
    ml_max_steps: Optional[int]
    isolated: bool


def default_plan() -> Plan:
    return Plan(compare_rows=10**6, dim=64, alt_dim=128, batch_size=2048,
                scaling_rows=[10**4, 10**5, 10**6, 10**7], peer_max_rows=10**6,
                steps={10**4: (5, 50), 10**5: (5, 50), 10**6: (3, 30), 10**7: (3, 20)},
                eval_steps=(2, 10), profile_steps=2, pool=8, bandwidth_mib=512, bandwidth_repeats=5,
                synthetic_rows=200_000, loader_batches=60, ml_epochs=2, ml_max_steps=None, isolated=True)


def quick_plan() -> Plan:
    return Plan(compare_rows=10**4, dim=16, alt_dim=32, batch_size=256, scaling_rows=[10**3, 10**4],
                peer_max_rows=10**4, steps={10**3: (2, 4), 10**4: (2, 4)}, eval_steps=(1, 2), profile_steps=1,
                pool=2, bandwidth_mib=32, bandwidth_repeats=2, synthetic_rows=8_000, loader_batches=10,
                ml_epochs=1, ml_max_steps=4, isolated=False)


class Tee:
    """Prints and keeps what was printed (written to bench.txt beside the JSON)."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    def __call__(self, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.buf.write(line + "\n")


def _fmt_rows(n: int) -> str:
    e = len(str(n)) - 1
    return f"10^{e}" if n == 10**e else f"{n:,}"


def _gib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def _num(x: Optional[float], nd: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def _short_plan_line(line: str) -> str:
    """``  a.b.t_user: table_wise / fused, 1 shard(s) on ranks [0]`` -> ``t_user table_wise on [0]``."""
    line = line.strip()
    try:
        path, rest = line.split(": ", 1)
        kind = rest.split(" / ")[0]
        ranks = rest.rsplit("on ranks ", 1)[1]
        shards = rest.split(", ", 1)[1].split(" shard")[0]
        return f"{path.rsplit('.', 1)[-1]} {kind}" + (f" x{shards}" if shards != "1" else "") + f" on {ranks}"
    except (ValueError, IndexError):
        return line


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def memory_needed(contender: str, w: Any, world_size: int) -> int:
    """A generous estimate of the host memory a job needs, all ranks together."""
    weights = 4 * w.rows * w.dim * 4
    per_rank_runtime = 600 * MiB
    if contender in ("peers", "plain"):  # replicas: weights, gradients (dense for the peers), 2 moments
        return world_size * (int(4.5 * weights) + per_rank_runtime)
    return int(1.3 * w.floor_bytes("rowwise_adagrad")) + world_size * per_rank_runtime


def _launch(jobs: List[Any], world_size: int, isolated: bool) -> List[List[Dict[str, Any]]]:
    """Runs ``jobs`` on ``world_size`` ranks; returns per job the list of per-rank results.
    ``isolated``: fresh processes (world size 1 too: a spawned child runs the launcher)."""
    from benchmarks.worker import run_jobs
    from torchrec_fusion.distributed.launcher import launch

    if world_size == 1 and isolated:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            per_rank = ex.submit(launch, run_jobs, 1, jobs).result()
    else:
        per_rank = launch(run_jobs, world_size, jobs)
    return [[per_rank[r][j] for r in range(world_size)] for j in range(len(jobs))]


def _summary(ranks: List[Dict[str, Any]], w: Any, isolated: bool) -> Dict[str, Any]:
    r0 = ranks[0]
    worst = max(ranks, key=lambda r: r["peak_minus_before"] / max(r["floor_rank"], 1))
    keys = ("contender", "world_size", "device", "threads", "train_samples_per_s", "train_median_samples_per_s",
            "train_ms_per_step", "train_median_ms_per_step", "train_p90_ms_per_step", "eval_samples_per_s",
            "eval_median_samples_per_s", "train_steps", "eval_steps", "plan")
    out = {k: r0[k] for k in keys}
    out.update({
        "rows": w.rows, "dim": w.dim, "batch_size_per_rank": w.batch_size, "workload": dataclasses.asdict(w),
        "peak_rss_per_rank": [r["peak_rss"] for r in ranks],
        "rss_before_per_rank": [r["rss_before"] for r in ranks],
        "peak_minus_before_per_rank": [r["peak_minus_before"] for r in ranks],
        "floor_per_rank": [r["floor_rank"] for r in ranks],
        "device_peak_per_rank": [r["device_peak_bytes"] for r in ranks],
        "worst_rank_peak_over_floor": worst["peak_minus_before"] / max(worst["floor_rank"], 1),
        "worst_rank_abs_peak_over_floor": max(r["peak_rss"] / max(r["floor_rank"], 1) for r in ranks),
        "vm_hwm_per_rank": [r["vm_hwm"] for r in ranks],
        # ru_maxrss also holds the peak of the image a rank was forked from (before its exec): when it is
        # above VmHWM (this image's own peak), the figure is inherited, not the configuration's
        "peak_rss_inherited": any(r["peak_rss"] > 1.02 * r["vm_hwm"] for r in ranks),
        "memory_isolated": isolated,
        "build_seconds": max(r["build_seconds"] for r in ranks),
        "dense_macs_per_sample": r0["dense_macs_per_sample"],
        "profile": r0["profile"],
        "profile_eval": r0["profile_eval"],
    })
    return out


def run_benchmarks(args: argparse.Namespace, say: Tee) -> Dict[str, Any]:
    import torch

    from benchmarks.common import OtherLoad, Workload, load_average, machine_info
    from benchmarks.worker import Job

    plan = quick_plan() if args.quick else default_plan()
    if args.steps:
        plan.steps = {r: (plan.steps[r][0], args.steps) for r in plan.steps}
    if args.rows:
        plan.scaling_rows = sorted(args.rows)
        plan.steps.update({r: plan.steps.get(r, (3, 20)) for r in plan.scaling_rows})
    sections = set(args.sections)
    device = args.device
    started = time.perf_counter()
    result: Dict[str, Any] = {"notes": []}

    # ---- machine -----------------------------------------------------------------------------
    info = machine_info()
    info["load_average_start"] = load_average()
    info["device"] = device
    if device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    result["machine"] = info
    say("== machine ==")
    say(f"cpu: {info.get('cpu_model', '?')}, {info['cpus']} cores; memory {_gib(info.get('memory_bytes'))} GiB; "
        f"torch {info['torch']}, torchrec {info.get('torchrec', '?')}, {info.get('fbgemm', '?')}; device {device}"
        + (f" ({', '.join(info['gpus'])})" if device == "cuda" else ""))
    la = info["load_average_start"]
    say(f"load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
        + ("  <- above 0.5: something else ran on these cores in the last minute; timings may be noisy"
           if la[0] > 0.5 else ""))
    say("mode: " + ("--quick (tiny sizes, one process per world size: memory figures not isolated)" if args.quick
                    else "default sizes, fresh processes per configuration"))

    cores = os.cpu_count() or 1

    world_sizes = [1, 2]
    if device == "cuda" and torch.cuda.device_count() < 2:
        world_sizes = [1]
        result["notes"].append(f"world size 2 skipped: {torch.cuda.device_count()} GPU(s) visible")

    # ---- the jobs ------------------------------------------------------------------------------
    def workload(rows: int, dim: int) -> Workload:
        return Workload(rows=rows, dim=dim, batch_size=plan.batch_size, pool=plan.pool)

    def job(contender: str, w: Workload, profile: bool = False) -> Job:
        warm, steps = plan.steps.get(w.rows, (3, 20))
        return Job(contender, w, warmup=warm, steps=steps, eval_warmup=plan.eval_steps[0],
                   eval_steps=plan.eval_steps[1], profile_steps=plan.profile_steps if profile else 0, device=device)

    todo: List[Tuple[str, int, Job]] = []  # (section, world size, job)
    if "comparison" in sections or "roofline" in sections:
        w = workload(plan.compare_rows, plan.dim)
        for ws in world_sizes:
            for c in COMPARED:
                if c == "plain" and ws > 1 and device == "cuda":
                    result["notes"].append("plain PyTorch at world size 2 on CUDA not run: DDP cannot all-reduce "
                                           "sparse gradients over NCCL")
                    continue
                todo.append(("comparison", ws, job(c, w, profile="comparison" in sections)))
    skipped: List[Dict[str, Any]] = []
    if "scaling" in sections:
        configs = [(r, plan.dim) for r in plan.scaling_rows if r != plan.compare_rows or "comparison" not in sections]
        configs.append((plan.compare_rows, plan.alt_dim))
        for rows, dim in configs:
            w = workload(rows, dim)
            for ws in world_sizes:
                todo.append(("scaling", ws, job("ours", w)))
            for c in ("peers", "plain"):
                if rows > plan.peer_max_rows:
                    floor = w.floor_bytes("adam")
                    skipped.append({"contender": c, "rows": rows, "dim": dim, "reason": (
                        f"not run above {_fmt_rows(plan.peer_max_rows)} rows: the tables and Adam's two moments take "
                        f"3x the table bytes ({floor / GiB:.1f} GiB per replica"
                        + (", plus as much again of dense gradients" if c == "peers" else "") + ")")})
                    continue
                if dim != plan.dim:
                    continue
                # the peers' world-size-2 way (DDP replicas) runs in the comparison only: 1 rank here
                todo.append(("scaling", 1, job(c, w)))

    results: List[Dict[str, Any]] = []
    failures: List[Dict[str, Any]] = []
    say(f"\n== running {len(todo)} configurations ==")
    if plan.isolated:
        for i, (section, ws, jb) in enumerate(todo, 1):
            need, have = memory_needed(jb.contender, jb.workload, ws), mem_available()
            tag = (f"[{i}/{len(todo)}] {jb.contender:<11} rows={_fmt_rows(jb.workload.rows):<5} "
                   f"dim={jb.workload.dim:<3} ws={ws}")
            if device == "cpu" and need > have:
                reason = f"needs about {need / GiB:.1f} GiB, {have / GiB:.1f} GiB available"
                skipped.append({"contender": jb.contender, "rows": jb.workload.rows, "dim": jb.workload.dim,
                                "world_size": ws, "reason": reason})
                say(f"{tag}: skipped ({reason})")
                continue
            t = time.perf_counter()
            tries: List[Dict[str, Any]] = []
            try:
                for _ in range(max(1, args.repeat)):
                    load = OtherLoad()
                    ranks = _launch([jb], ws, True)[0]
                    s = _summary(ranks, jb.workload, True)
                    s["other_cpu_cores"] = load.cores()
                    tries.append(s)
            except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
                failures.append({"contender": jb.contender, "rows": jb.workload.rows, "dim": jb.workload.dim,
                                 "world_size": ws, "error": f"{type(e).__name__}: {e}"[:500]})
                say(f"{tag}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            s = max(tries, key=lambda x: x["train_samples_per_s"])  # best of --repeat: the least disturbed
            s["section"] = section
            if len(tries) > 1:
                s["repeats"] = [{k: x[k] for k in ("train_samples_per_s", "eval_samples_per_s", "other_cpu_cores")}
                                for x in tries]
            results.append(s)
            say(f"{tag}: train {_num(s['train_samples_per_s'])} samples/s, eval {_num(s['eval_samples_per_s'])}"
                f" samples/s, peak-before {_gib(max(s['peak_minus_before_per_rank']))} GiB/rank; other processes "
                f"used {s['other_cpu_cores']:.2f} of {cores} cores ({time.perf_counter() - t:.0f} s)")
    else:
        for ws in world_sizes:
            group = [(sec, jb) for sec, w_, jb in todo if w_ == ws]
            if not group:
                continue
            t = time.perf_counter()
            load = OtherLoad()
            per_job = _launch([jb for _, jb in group], ws, False)
            other = load.cores()
            for (section, jb), ranks in zip(group, per_job):
                s = _summary(ranks, jb.workload, False)
                s["section"] = section
                s["other_cpu_cores"] = other
                results.append(s)
            say(f"world size {ws}: {len(group)} configurations in one process per rank ({time.perf_counter() - t:.0f} s)")

    # ---- bandwidth and matmul ceiling (measured after the jobs: a rank process spawned from this one
    # inherits this process's peak RSS in its ru_maxrss, so this process stays small until then) ------
    from benchmarks.roofline import measure_bandwidth, measure_matmul, roofline_rows

    bw_all = measure_bandwidth(plan.bandwidth_mib, plan.bandwidth_repeats, threads=cores, device=device)
    bw: Dict[str, Any] = {"all_cores": bw_all}
    mm = {"all_cores": measure_matmul(threads=cores, device=device, repeats=plan.bandwidth_repeats)}
    if device == "cpu" and cores > 1:
        bw["one_thread"] = measure_bandwidth(plan.bandwidth_mib, plan.bandwidth_repeats, threads=1)
        mm["one_thread"] = measure_matmul(threads=1, repeats=plan.bandwidth_repeats)
    bandwidth = bw_all["copy_bytes_per_s"]
    matmul_peak = mm["all_cores"]["flops_per_s"]
    result["bandwidth"] = {**bw, "reference_bytes_per_s": bandwidth}
    result["matmul"] = {**mm, "reference_flops_per_s": matmul_peak}
    say("\n== machine ceilings ==")
    say(f"memory bandwidth ({'GPU memory' if device == 'cuda' else 'host'}, {plan.bandwidth_mib} MiB tensors, best of "
        f"{plan.bandwidth_repeats}): copy {bw_all['copy_bytes_per_s'] / 1e9:.1f} GB/s, add_ "
        f"{bw_all['add_bytes_per_s'] / 1e9:.1f} GB/s with {bw_all['threads'] or 'all'} thread(s)"
        + (f"; one thread: copy {bw['one_thread']['copy_bytes_per_s'] / 1e9:.1f} GB/s, add_ "
           f"{bw['one_thread']['add_bytes_per_s'] / 1e9:.1f} GB/s" if "one_thread" in bw else ""))
    say(f"fp32 matmul [2048 x 1024] @ [1024 x 1024]: {matmul_peak / 1e9:.0f} GFLOP/s with "
        f"{mm['all_cores']['threads'] or 'all'} thread(s)"
        + (f"; one thread {mm['one_thread']['flops_per_s'] / 1e9:.0f} GFLOP/s" if "one_thread" in mm else ""))

    def find(contender: str, rows: int, dim: int, ws: int) -> Optional[Dict[str, Any]]:
        return next((r for r in results if r["contender"] == contender and r["rows"] == rows and r["dim"] == dim
                     and r["world_size"] == ws), None)

    # ---- 1. comparison -------------------------------------------------------------------------
    targets: List[Dict[str, Any]] = []
    if "comparison" in sections:
        w = workload(plan.compare_rows, plan.dim)
        warm, steps = plan.steps.get(w.rows, (3, 20))
        comp = {"workload": dataclasses.asdict(w), "warmup_steps": warm, "timed_steps": steps,
                "eval_warmup_steps": plan.eval_steps[0], "eval_timed_steps": plan.eval_steps[1],
                "dlrm_layer_sizes": None, "results": [], "ratios": {}}
        from benchmarks.contenders import dlrm_layer_sizes

        comp["dlrm_layer_sizes"] = dlrm_layer_sizes(w)
        say(f"\n== 1. throughput at {_fmt_rows(w.rows)} rows per table (4 tables, dim {w.dim}), batch {w.batch_size} per "
            f"rank; {steps} timed training steps after {warm} warm-up, {plan.eval_steps[1]} timed evaluation steps "
            f"after {plan.eval_steps[0]}; every contender the same batches ==")
        say(f"{'contender':<12} {'ws':>2} {'thr':>3} {'train samples/s':>16} {'(median step)':>14} {'ms/step':>8} "
            f"{'p90 ms':>7} {'eval samples/s':>15} {'others':>6}  ours/this (train)")
        for ws in world_sizes:
            ours = find("ours", w.rows, w.dim, ws)
            for c in COMPARED:
                r = find(c, w.rows, w.dim, ws)
                if r is None:
                    say(f"{c:<12} {ws:>2}  (not measured)")
                    continue
                comp["results"].append(r)
                ratio = ours["train_samples_per_s"] / r["train_samples_per_s"] if ours else None
                say(f"{c:<12} {ws:>2} {r['threads']:>3} {_num(r['train_samples_per_s']):>16} "
                    f"{_num(r['train_median_samples_per_s']):>14} {r['train_ms_per_step']:>8.1f} "
                    f"{r['train_p90_ms_per_step']:>7.1f} {_num(r['eval_samples_per_s']):>15} "
                    f"{r['other_cpu_cores']:>6.2f}  "
                    + (f"{ratio:.2f}x" if ratio and c != "ours" else ""))
            rat: Dict[str, Any] = {}
            peers, plain = find("peers", w.rows, w.dim, ws), find("plain", w.rows, w.dim, ws)
            fus, dlrm = find("ours_fusion", w.rows, w.dim, ws), find("dlrm", w.rows, w.dim, ws)
            matched = find("ours_matched", w.rows, w.dim, ws)
            if ours and peers:
                rat["ours_over_peers_train"] = ours["train_samples_per_s"] / peers["train_samples_per_s"]
                rat["ours_over_peers_eval"] = ours["eval_samples_per_s"] / peers["eval_samples_per_s"]
                rat["ours_over_peers_train_median"] = (ours["train_median_samples_per_s"]
                                                       / peers["train_median_samples_per_s"])
            if ours and plain:
                rat["ours_over_plain_train"] = ours["train_samples_per_s"] / plain["train_samples_per_s"]
                rat["ours_over_plain_eval"] = ours["eval_samples_per_s"] / plain["eval_samples_per_s"]
                rat["ours_over_plain_train_median"] = (ours["train_median_samples_per_s"]
                                                       / plain["train_median_samples_per_s"])
            if fus and dlrm:
                rat["fusion_step_time_over_dlrm"] = fus["train_ms_per_step"] / dlrm["train_ms_per_step"]
                rat["fusion_step_time_over_dlrm_median"] = (fus["train_median_ms_per_step"]
                                                            / dlrm["train_median_ms_per_step"])
                rat["fusion_eval_time_over_dlrm"] = dlrm["eval_samples_per_s"] / fus["eval_samples_per_s"]
            if fus and ours:
                rat["fusion_step_time_over_ours"] = fus["train_ms_per_step"] / ours["train_ms_per_step"]
            if matched and dlrm:
                rat["matched_step_time_over_dlrm"] = matched["train_ms_per_step"] / dlrm["train_ms_per_step"]
                rat["matched_step_time_over_dlrm_median"] = (matched["train_median_ms_per_step"]
                                                             / dlrm["train_median_ms_per_step"])
            comp["ratios"][f"ws{ws}"] = rat
            parts = []
            if "ours_over_peers_train" in rat:
                parts.append(f"ours/peers {rat['ours_over_peers_train']:.2f}x train (median step "
                             f"{rat['ours_over_peers_train_median']:.2f}x), {rat['ours_over_peers_eval']:.2f}x eval")
            if "ours_over_plain_train" in rat:
                parts.append(f"ours/plain {rat['ours_over_plain_train']:.2f}x train (median step "
                             f"{rat['ours_over_plain_train_median']:.2f}x), {rat['ours_over_plain_eval']:.2f}x eval")
            if "fusion_step_time_over_dlrm" in rat:
                parts.append(f"MMoE 4 tasks + fusion step time / DLRM's {rat['fusion_step_time_over_dlrm']:.2f}x "
                             f"(median step {rat['fusion_step_time_over_dlrm_median']:.2f}x; fusion head alone "
                             f"{rat.get('fusion_step_time_over_ours', float('nan')):.2f}x ours)")
            if "matched_step_time_over_dlrm" in rat:
                parts.append(f"the same at DLRM's dense compute (ours_matched) / DLRM's "
                             f"{rat['matched_step_time_over_dlrm']:.2f}x (median step "
                             f"{rat['matched_step_time_over_dlrm_median']:.2f}x)")
            if parts:
                say(f"  ws={ws}: " + "; ".join(parts))
            for key, name, goal, higher, pair in (
                    ("ours_over_peers_train", "training samples/s, ours / peers' way", TARGETS["ours_over_peers"], True,
                     (ours, peers)),
                    ("ours_over_plain_train", "training samples/s, ours / plain PyTorch sparse way",
                     TARGETS["ours_over_plain"], True, (ours, plain)),
                    ("matched_step_time_over_dlrm", "step time, MMoE 4 tasks + fusion at DLRM's dense compute / "
                     "single-task DLRM", 1 + TARGETS["fusion_overhead_over_dlrm"], False, (matched, dlrm))):
                if key in rat:
                    v = rat[key]
                    met = v >= goal if higher else v <= goal
                    targets.append({"target": f"{name}, {_fmt_rows(w.rows)} rows, ws={ws}",
                                    "goal": (">= " if higher else "<= ") + f"{goal:g}x", "measured": v, "met": met,
                                    "by": (v / goal) if higher else (goal / v),
                                    "other_cpu_cores": max(r.get("other_cpu_cores", 0.0) for r in pair)})
        say(f"  others: cores other processes used while the configuration ran (of {cores}); above ~0.1 its "
            "timings are contended (re-run on a quiet machine, or --repeat N keeps the best of N)")
        say("  plans (ours, rank placement):")
        for ws in world_sizes:
            r = find("ours", w.rows, w.dim, ws)
            if r:
                say(f"  ws={ws}: " + "; ".join(_short_plan_line(ln) for ln in r["plan"].splitlines()[1:]))
        result["comparison"] = comp

        # profiles
        profs = [r for r in comp["results"] if r.get("profile")]
        if profs:
            from benchmarks.profile import CATEGORIES

            short = {"embedding fwd": "emb fwd", "embedding bwd+update": "emb bwd+upd", "comms": "comms",
                     "dense matmul": "matmul", "dense other ops": "other ops", "grad accumulation": "grad acc",
                     "optimizer": "optim", "backward engine/DDP wait": "bwd wait", "python/framework": "python"}
            for key, what in (("profile", "a training step"), ("profile_eval", "an evaluation step")):
                say(f"\n   where {what}'s time goes (torch.profiler, {plan.profile_steps} steps, rank 0, ms per step)")
                say(f"   {'contender':<12} {'ws':>2} " + " ".join(f"{short[c]:>11}" for c in CATEGORIES)
                    + f" {'total':>9}")
                for r in profs:
                    p = r[key]
                    say(f"   {r['contender']:<12} {r['world_size']:>2} " + " ".join(
                        f"{p['ms_per_step'][c]:>11.1f}" for c in CATEGORIES) + f" {p['wall_ms_per_step']:>9.1f}")
            result["profile"] = [{"contender": r["contender"], "world_size": r["world_size"], "mode": "train",
                                  **r["profile"]} for r in profs]
            result["profile"] += [{"contender": r["contender"], "world_size": r["world_size"], "mode": "eval",
                                   **r["profile_eval"]} for r in profs]

        # the dense part's compute against the matmul ceiling
        say(f"\n   dense compute: multiply-adds per sample of the weight matrices, x 6 (fwd + 2 x bwd, 2 FLOP each) x train "
            f"samples/s, against the fp32 matmul ceiling ({matmul_peak / 1e9:.0f} GFLOP/s)")
        say(f"   {'contender':<12} {'ws':>2} {'MACs/sample':>12} {'GFLOP/s':>8} {'of ceiling':>10}")
        for r in comp["results"]:
            flops = 6 * r["dense_macs_per_sample"] * r["train_samples_per_s"]
            r["dense_train_flops_per_s"] = flops
            r["dense_fraction_of_matmul_ceiling"] = flops / matmul_peak
            say(f"   {r['contender']:<12} {r['world_size']:>2} {r['dense_macs_per_sample']:>12,} {flops / 1e9:>8.1f} "
                f"{100 * flops / matmul_peak:>9.1f}%")

    # ---- 2. scaling ----------------------------------------------------------------------------
    if "scaling" in sections:
        say(f"\n== 2. scaling: rows per table x world size (4 tables, batch {plan.batch_size} per rank); memory per rank "
            f"(worst rank) ==")
        say("floor = the bytes the tables and their optimizer state must take on that rank: fp32 weights + row-wise "
            "Adagrad's one float per row (ours), weights + Adam's two moments on every replica (peers, plain)")
        say(f"{'contender':<9} {'rows':>5} {'dim':>4} {'ws':>2} {'steps':>5} {'train samples/s':>16} {'eval samples/s':>15} "
            f"{'RSS before':>10} {'peak RSS':>9} {'peak-before':>11} {'floor':>7} {'(p-b)/floor':>11} {'peak/floor':>10} "
            f"{'others':>6}"
            + ("  GPU peak" if device == "cuda" else ""))
        rows_s = []
        order = {"ours": 0, "peers": 1, "plain": 2}
        for r in sorted((r for r in results if r["contender"] in order),
                        key=lambda r: (r["dim"], r["rows"], order[r["contender"]], r["world_size"])):
            i = max(range(len(r["floor_per_rank"])),
                    key=lambda k: r["peak_minus_before_per_rank"][k] / max(r["floor_per_rank"][k], 1))
            rows_s.append(r)
            say(f"{r['contender']:<9} {_fmt_rows(r['rows']):>5} {r['dim']:>4} {r['world_size']:>2} {r['train_steps']:>5} "
                f"{_num(r['train_samples_per_s']):>16} {_num(r['eval_samples_per_s']):>15} "
                f"{_gib(r['rss_before_per_rank'][i]):>10} {_gib(r['peak_rss_per_rank'][i]):>9} "
                f"{_gib(r['peak_minus_before_per_rank'][i]):>11} {_gib(r['floor_per_rank'][i]):>7} "
                f"{r['peak_minus_before_per_rank'][i] / max(r['floor_per_rank'][i], 1):>11.2f} "
                f"{r['peak_rss_per_rank'][i] / max(r['floor_per_rank'][i], 1):>10.2f} {r['other_cpu_cores']:>6.2f}"
                + (f"  {_gib(r['device_peak_per_rank'][i])}" if device == "cuda" else "")
                + ("  (ru_maxrss above VmHWM: inherited)" if r["peak_rss_inherited"] else ""))
        say("(GiB; RSS before: resident memory before the model was built; peak RSS: getrusage ru_maxrss of the "
            "rank's process)")
        for s in skipped:
            say(f"{s['contender']:<9} {_fmt_rows(s['rows']):>5} {s['dim']:>4}  skipped: {s['reason']}")
        if not plan.isolated:
            say("(--quick: several configurations share a process, so peak RSS is the process's, "
                "not the configuration's)")
        result["scaling"] = {"results": rows_s, "skipped": skipped}
        for r in rows_s:
            if r["contender"] == "ours" and r["rows"] >= 10**6 and plan.isolated and not r["peak_rss_inherited"]:
                v = r["worst_rank_peak_over_floor"]
                targets.append({"target": f"peak memory per rank (peak - before) / floor, ours, {_fmt_rows(r['rows'])} "
                                          f"rows, dim {r['dim']}, ws={r['world_size']}",
                                "goal": f"<= {TARGETS['peak_over_floor']:g}x", "measured": v,
                                "met": v <= TARGETS["peak_over_floor"], "by": TARGETS["peak_over_floor"] / v})

    if failures:
        result["failures"] = failures
        say("\nfailed configurations: " + "; ".join(f"{f['contender']} rows={f['rows']} ws={f['world_size']}: "
                                                    f"{f['error'][:120]}" for f in failures))

    # ---- 5. movielens (before the data path: its step rate is the reference there) -----------------
    ml_dir = args.data_dir
    ml_ok = (Path(ml_dir) / "u.data").exists()
    ml_rate = None
    if "movielens" in sections:
        if not ml_ok:
            result["movielens"] = {"skipped": f"no MovieLens-100K files in {ml_dir}"}
        else:
            from torchrec_fusion.training.config import TrainConfig, read_config_file
            from torchrec_fusion.training.trainer import train

            ml_ws = 2 if device == "cpu" or torch.cuda.device_count() >= 2 else 1
            quick = {"epochs": plan.ml_epochs, "max_steps": plan.ml_max_steps} if args.quick else {}
            common = {"data_dir": str(ml_dir), "world_size": ml_ws, "progress": False, "verbose": False,
                      "report": False, "save_model": False, "device": device, "output_dir": None, **quick}
            # the project's MovieLens settings (make movielens), as a user runs them: every epoch of the file
            defaults = TrainConfig().to_dict()
            cfg = TrainConfig.from_dict({**read_config_file(str(ML_CONFIG)), **common}, str(ML_CONFIG))
            t = time.perf_counter()
            load = OtherLoad()
            res = train(cfg)
            ml_others = load.cores()
            ml_rate = res["samples_per_second"]
            result["movielens"] = {
                "command": "torchrec-fusion train --config configs/movielens-100k.yaml"
                           + (f" --world-size {ml_ws}" if ml_ws != cfg.world_size else "")
                           + "".join(f" --{k.replace('_', '-')} {v}" for k, v in quick.items() if v is not None),
                "config": {k: v for k, v in cfg.to_dict().items() if v != defaults[k]},
                "samples_per_second": ml_rate, "train_seconds": res["train_seconds"], "steps": res["steps"],
                "batch_size_per_rank": cfg.batch_size, "world_size": ml_ws, "epochs": cfg.epochs,
                "wall_seconds": time.perf_counter() - t, "tasks": res["tasks"], "other_cpu_cores": ml_others,
                "target_samples_per_second": TARGETS["movielens_samples_per_s"]}
            targets.append({"target": f"ML-100K MMoE run of configs/movielens-100k.yaml ({ml_ws} ranks), trainer's "
                                      "samples/s", "goal": f">= {TARGETS['movielens_samples_per_s']:,.0f}",
                            "measured": ml_rate, "met": ml_rate >= TARGETS["movielens_samples_per_s"],
                            "by": ml_rate / TARGETS["movielens_samples_per_s"], "other_cpu_cores": ml_others})
            targets.append({"target": "ML-100K quality of that run on u1.test (walking skeleton's bar: RMSE < 0.93, "
                                      "like AUC > 0.79)", "goal": "RMSE < 0.93 and AUC > 0.79", "measured": None,
                            "shown": f"RMSE {res['tasks']['rating']['rmse']:.4f}, AUC {res['tasks']['like']['auc']:.4f}",
                            "met": res["tasks"]["rating"]["rmse"] < 0.93 and res["tasks"]["like"]["auc"] > 0.79,
                            "by": None, "other_cpu_cores": 0.0})
            # one of its steps profiled: the trainer's data, plan and pipeline, batches built ahead
            from benchmarks.mlprofile import profile_demo_step
            from torchrec_fusion.distributed.launcher import launch

            warm, steps, prof = (2, 3, 1) if args.quick else (10, 40, 3)
            ranks = launch(profile_demo_step, ml_ws, cfg, warm, steps, prof)
            result["movielens"]["step_profile"] = ranks
            # for reference: the CLI's defaults (batch 256 per rank, the larger model, fp32, planner's plan)
            dcfg = TrainConfig.from_dict({"dataset": "movielens", **common, "epochs": plan.ml_epochs,
                                          "max_steps": plan.ml_max_steps})
            t = time.perf_counter()
            dres = train(dcfg)
            result["movielens"]["cli_defaults"] = {
                "command": f"torchrec-fusion train --dataset movielens --data-dir {ml_dir} --world-size {ml_ws} "
                           f"--epochs {plan.ml_epochs}" + (f" --max-steps {plan.ml_max_steps}" if plan.ml_max_steps else ""),
                "samples_per_second": dres["samples_per_second"], "steps": dres["steps"],
                "batch_size_per_rank": dcfg.batch_size, "wall_seconds": time.perf_counter() - t,
                "tasks": dres["tasks"]}

    # ---- 3. data path --------------------------------------------------------------------------
    if "datapath" in sections:
        from benchmarks.datapath import movielens_loader, synthetic_loader

        threads = max(1, cores // 2)
        say(f"\n== 3. data path: batches/s of MultiTaskData.batches ({threads} thread(s), a rank's share at ws=2) "
            f"against the training step rate ==")
        say("the pipeline pulls each batch inline on CPU: the loader's share of a step is (train steps/s) / "
            "(loader batches/s)")
        dp = []
        syn = synthetic_loader(plan.batch_size, plan.synthetic_rows, plan.loader_batches, threads)
        for ws in world_sizes:
            ours = find("ours", plan.compare_rows, plan.dim, ws)
            if ours:
                steps_per_s = 1000.0 / ours["train_ms_per_step"]
                dp.append({**syn, "against": f"ours, {_fmt_rows(plan.compare_rows)} rows, ws={ws}",
                           "train_steps_per_s": steps_per_s, "loader_over_train": syn["batches_per_s"] / steps_per_s,
                           "loader_share_of_step": steps_per_s / syn["batches_per_s"]})
        if not dp:
            dp.append({**syn, "against": None})
        if ml_ok:
            from torchrec_fusion.training.config import read_config_file

            mlc = read_config_file(str(ML_CONFIG))
            ml = movielens_loader(str(ml_dir), mlc["batch_size"], plan.loader_batches, threads, mlc["history_length"])
            if ml_rate:
                steps_per_s = ml_rate / (mlc["batch_size"] * result["movielens"]["world_size"])
                dp.append({**ml, "against": "ML-100K run, make movielens", "train_steps_per_s": steps_per_s,
                           "loader_over_train": ml["batches_per_s"] / steps_per_s,
                           "loader_share_of_step": steps_per_s / ml["batches_per_s"]})
            else:
                dp.append({**ml, "against": None})
        say(f"{'source':<48} {'batch':>5} {'batches/s':>10} {'samples/s':>11} {'vs training':<24} "
            f"{'steps/s':>8} {'loader/train':>12} {'share':>6}")
        for d in dp:
            say(f"{d['source']:<48} {d['batch_size']:>5} {d['batches_per_s']:>10,.1f} {d['samples_per_s']:>11,.0f} "
                f"{(d['against'] or '-'):<24} {_num(d.get('train_steps_per_s'), 1):>8} "
                + (f"{d['loader_over_train']:>11.1f}x {100 * d['loader_share_of_step']:>5.1f}%"
                   if d.get("loader_over_train") else ""))
        result["datapath"] = dp

    # ---- 4. roofline ---------------------------------------------------------------------------
    if "roofline" in sections:
        entries = []
        for r in results:
            if r["contender"] in COMPARED:
                entries.append({**r, "workload": Workload(**r["workload"])})
        rows_r = roofline_rows(entries, bandwidth)
        say(f"\n== 4. roofline: embedding rows moved per second against the measured bandwidth "
            f"({bandwidth / 1e9:.1f} GB/s copy, all cores) ==")
        say("bytes/step = lookups x dim x 4 (forward reads) + distinct rows x (2 x dim x 4 + 2 x state x 4) (update: "
            "weights and optimizer state read and written; state = 1 float/row row-wise Adagrad, 2 x dim Adam; "
            "once per DDP replica)")
        say(f"{'contender':<12} {'rows':>5} {'dim':>4} {'ws':>2} {'steps/s':>8} {'lookups':>8} {'distinct':>9} "
            f"{'MB/step':>8} {'GB/s':>7} {'of bw':>7}  dense Adam (peers): min GB/step, min s/step at bw")
        order_r = {c: i for i, c in enumerate(COMPARED)}
        rows_r.sort(key=lambda x: (x["dim"], x["rows"], order_r[x["contender"]], x["world_size"]))
        for x in rows_r:
            extra = ""
            if "dense_adam_min_bytes_per_step" in x:
                extra = (f"  {x['dense_adam_min_bytes_per_step'] / 1e9:.2f} GB, {x['dense_adam_min_seconds_per_step']:.3f} s "
                         f"({100 * x['dense_adam_fraction_of_bandwidth']:.0f}% of bw at this rate)")
            say(f"{x['contender']:<12} {_fmt_rows(x['rows']):>5} {x['dim']:>4} {x['world_size']:>2} {x['steps_per_s']:>8.2f} "
                f"{x['lookups_per_step']:>8,.0f} {x['unique_rows_per_step']:>9,.0f} "
                f"{x['embedding_bytes_per_step'] / 1e6:>8.2f} {x['embedding_bytes_per_s'] / 1e9:>7.3f} "
                f"{100 * x['fraction_of_bandwidth']:>6.2f}%" + extra)
        result["roofline"] = {"bandwidth_bytes_per_s": bandwidth, "rows": rows_r}

    if "movielens" in sections:
        say("\n== 5. MovieLens-100K MMoE run of the project's settings (configs/movielens-100k.yaml, make movielens); "
            "the trainer's samples/s counts the training loop, not evaluation ==")
        m = result["movielens"]
        if "skipped" in m:
            say(f"skipped: {m['skipped']}")
        else:
            tasks = m["tasks"]
            goal = TARGETS["movielens_samples_per_s"]
            say(f"{m['command']}: {m['world_size']} ranks x batch {m['batch_size_per_rank']}, {m['epochs']} epochs, "
                f"{m['steps']} steps, samples/s {m['samples_per_second']:,.0f} as the trainer reports it (target "
                f"{goal:,.0f}: {m['samples_per_second'] / goal:.1%} of it); u1.test like AUC {tasks['like']['auc']:.4f}, "
                f"rating RMSE {tasks['rating']['rmse']:.4f}; wall {m['wall_seconds']:.0f} s")
            say("  settings other than the CLI defaults: " + ", ".join(
                f"{k}={v}" for k, v in m["config"].items() if k not in ("data_dir", "progress", "verbose", "report",
                                                                        "save_model", "output_dir", "device")))
            prof = m["step_profile"][0]
            p = prof["profile"]
            say(f"its step without the loader (batches built ahead), rank 0: median {prof['median_ms_per_step']:.1f} ms "
                f"= {prof['samples_per_s_median_step']:,.0f} samples/s; profiled ({p['steps']} steps, ms per step): "
                + ", ".join(f"{k} {v:.1f}" for k, v in p["ms_per_step"].items()) + f"; total {p['wall_ms_per_step']:.1f}")
            say("  top ops by self CPU time (ms per step): " + ", ".join(
                f"{k} {v:.1f}" for k, v in p["top_self_cpu_ms_per_step"][:8]))
            f = m.get("cli_defaults")
            if f:
                say(f"for reference, the CLI's defaults: {f['command']} (batch {f['batch_size_per_rank']} per rank, "
                    f"the larger default model, fp32): {f['steps']} steps, samples/s {f['samples_per_second']:,.0f}; "
                    f"like AUC {f['tasks']['like']['auc']:.4f}, rating RMSE {f['tasks']['rating']['rmse']:.4f}")

    for note in result["notes"]:
        say(f"note: {note}")

    # ---- targets -------------------------------------------------------------------------------
    if targets:
        say("\n== targets (issue #6) ==" + ("  (--quick sizes: not the targets' configuration, indicative only)"
                                           if args.quick else ""))
        for t in targets:
            t["indicative_only"] = bool(args.quick)
        for t in targets:
            meas = t["measured"]
            shown = t.get("shown") or (f"{meas:,.0f}" if meas > 1000 else f"{meas:.2f}x")
            how = "MET" if t["met"] else "NOT MET"
            t["contended"] = t.get("other_cpu_cores", 0.0) > 0.1
            say(f"{how:<8} {t['target']}: {shown} (goal {t['goal']}"
                + ("" if t["by"] is None else f"; {t['by']:.2f}x of the goal" if t["met"] else f"; {t['by']:.1%} of the goal")
                + ")"
                + (f"  CONTENDED: other processes used {t['other_cpu_cores']:.2f} cores; re-run on a quiet machine"
                   if t["contended"] else ""))
        result["targets"] = targets
    if skipped and "scaling" not in sections:
        result["skipped"] = skipped

    la = load_average()
    result["machine"]["load_average_end"] = la
    wall = time.perf_counter() - started
    result["wall_seconds"] = wall
    say(f"\nload average at end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; suite wall time {wall:.0f} s")
    return result


def cuda_problem() -> Optional[str]:
    """Why ``--device cuda`` cannot run here (None when it can)."""
    import torch

    if not torch.cuda.is_available():
        return (f"CUDA is unavailable on this host (torch {torch.__version__}: torch.cuda.is_available() is False). "
                "--device cuda needs a CUDA build of torch, a GPU and fbgemm-gpu (VARIANT=gpu bash scripts/setup.sh); "
                "run without --device for the CPU suite.")
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            version("fbgemm-gpu")
        except PackageNotFoundError:
            return ("CUDA is available but fbgemm-gpu (the CUDA build) is not installed (fbgemm-gpu-cpu has no GPU "
                    "kernels): VARIANT=gpu bash scripts/setup.sh")
    except Exception:  # noqa: BLE001
        pass
    return None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks the suite runs")
    p.add_argument("--out", default=None, help=f"JSON file, or a folder for bench.json (default {DEFAULT_OUT})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--data-dir", default=str(DEFAULT_ML), help="MovieLens-100K folder (read, never copied)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps for every configuration")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="rows per table for the scaling section")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each configuration N times and keep the fastest (a busy machine's noise only slows)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        problem = cuda_problem()
        if problem:
            print(f"benchmarks: {problem}", file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else DEFAULT_OUT
    if out.suffix != ".json":
        out = out / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    say = Tee()
    from torchrec_fusion.training.trainer import quiet_third_party_logs

    quiet_third_party_logs()
    result = run_benchmarks(args, say)
    result["command"] = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(out.with_suffix(".json.tmp"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(out.with_suffix(".json.tmp"), out)
    out.with_suffix(".txt").write_text(say.buf.getvalue())
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
