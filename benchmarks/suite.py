"""What one run of the suite measures and the state it builds up: the sizes (default or ``--quick``),
the configurations to run, running them in fresh processes (or one per world size), and the
machine's memory bandwidth and matmul ceilings. The sections' tables are printed by
``benchmarks.sections`` and ``benchmarks.movielens`` from a :class:`Suite`."""

import argparse
import concurrent.futures
import dataclasses
import io
import multiprocessing
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from benchmarks.common import CONTENDERS, OtherLoad, Workload

if TYPE_CHECKING:  # the worker imports TorchRec: only the suite's runs need it
    from benchmarks.worker import Job

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ML = ROOT.parent / "shared" / "data" / "ml-100k"
ML_CONFIG = ROOT / "configs" / "movielens-100k.yaml"
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


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes of ``--quick`` or the default ones, with ``--steps`` and ``--rows`` applied."""
    plan = quick_plan() if args.quick else default_plan()
    if args.steps:
        plan.steps = {r: (plan.steps[r][0], args.steps) for r in plan.steps}
    if args.rows:
        plan.scaling_rows = sorted(args.rows)
        plan.steps.update({r: plan.steps.get(r, (3, 20)) for r in plan.scaling_rows})
    return plan


class Tee:
    """Prints and keeps what was printed (written to bench.txt beside the JSON)."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    def __call__(self, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.buf.write(line + "\n")


def fmt_rows(n: int) -> str:
    e = len(str(n)) - 1
    return f"10^{e}" if n == 10**e else f"{n:,}"


def gib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def num(x: Optional[float], nd: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


@dataclasses.dataclass
class Suite:
    """One run of the suite: its options and sizes, and what the sections have measured so far."""

    args: argparse.Namespace
    plan: Plan
    say: Tee
    world_sizes: List[int]
    result: Dict[str, Any]
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    results: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # one per configuration run
    skipped: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    failures: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    targets: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    bandwidth: float = 0.0  # bytes/s copied with all cores: the roofline's reference
    matmul_peak: float = 0.0  # fp32 matmul FLOP/s with all cores
    ml_rate: Optional[float] = None  # samples/s of the MovieLens run, when it ran

    @property
    def device(self) -> str:
        return str(self.args.device)

    @property
    def sections(self) -> Set[str]:
        return set(self.args.sections)

    def workload(self, rows: int, dim: int) -> Workload:
        return Workload(rows=rows, dim=dim, batch_size=self.plan.batch_size, pool=self.plan.pool)

    def job(self, contender: str, w: Workload, profile: bool = False) -> "Job":
        from benchmarks.worker import Job

        plan = self.plan
        warm, steps = plan.steps.get(w.rows, (3, 20))
        return Job(contender, w, warmup=warm, steps=steps, eval_warmup=plan.eval_steps[0],
                   eval_steps=plan.eval_steps[1], profile_steps=plan.profile_steps if profile else 0,
                   device=self.device)

    @property
    def ml_dir(self) -> str:
        return str(self.args.data_dir)

    @property
    def ml_ok(self) -> bool:
        """Whether the MovieLens-100K files are there."""
        return (Path(self.ml_dir) / "u.data").exists()

    def find(self, contender: str, rows: int, dim: int, ws: int) -> Optional[Dict[str, Any]]:
        return next((r for r in self.results if r["contender"] == contender and r["rows"] == rows
                     and r["dim"] == dim and r["world_size"] == ws), None)


def mem_available() -> int:
    from torchrec_fusion.training.limits import available_memory

    return available_memory() or 1 << 62


def memory_needed(contender: str, w: Any, world_size: int) -> int:
    """A generous estimate of the host memory a job needs, all ranks together."""
    weights = 4 * w.rows * w.dim * 4
    per_rank_runtime = 600 * MiB
    if contender in ("peers", "plain"):  # replicas: weights, gradients (dense for the peers), 2 moments
        return world_size * (int(4.5 * weights) + per_rank_runtime)
    return int(1.3 * w.floor_bytes("rowwise_adagrad")) + world_size * per_rank_runtime


Todo = List[Tuple[str, int, "Job"]]  # (section, world size, job)


def _comparison_jobs(suite: Suite) -> Todo:
    plan, todo = suite.plan, []
    w = suite.workload(plan.compare_rows, plan.dim)
    for ws in suite.world_sizes:
        for c in CONTENDERS:
            if c == "plain" and ws > 1 and suite.device == "cuda":
                suite.result["notes"].append("plain PyTorch at world size 2 on CUDA not run: DDP cannot all-reduce "
                                             "sparse gradients over NCCL")
                continue
            todo.append(("comparison", ws, suite.job(c, w, profile="comparison" in suite.sections)))
    return todo


def _scaling_jobs(suite: Suite) -> Todo:
    plan, todo = suite.plan, []
    configs = [(r, plan.dim) for r in plan.scaling_rows if r != plan.compare_rows or "comparison" not in suite.sections]
    configs.append((plan.compare_rows, plan.alt_dim))
    for rows, dim in configs:
        w = suite.workload(rows, dim)
        for ws in suite.world_sizes:
            todo.append(("scaling", ws, suite.job("ours", w)))
        for c in ("peers", "plain"):
            if rows > plan.peer_max_rows:
                floor = w.floor_bytes("adam")
                suite.skipped.append({"contender": c, "rows": rows, "dim": dim, "reason": (
                    f"not run above {fmt_rows(plan.peer_max_rows)} rows: the tables and Adam's two moments take "
                    f"3x the table bytes ({floor / GiB:.1f} GiB per replica"
                    + (", plus as much again of dense gradients" if c == "peers" else "") + ")")})
                continue
            if dim != plan.dim:
                continue
            # the peers' world-size-2 way (DDP replicas) runs in the comparison only: 1 rank here
            todo.append(("scaling", 1, suite.job(c, w)))
    return todo


def plan_jobs(suite: Suite) -> Todo:
    """The configurations the chosen sections need, each with its section and world size."""
    todo: Todo = []
    if "comparison" in suite.sections or "roofline" in suite.sections:
        todo += _comparison_jobs(suite)
    if "scaling" in suite.sections:
        todo += _scaling_jobs(suite)
    return todo


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


def _run_isolated_one(suite: Suite, tag: str, section: str, ws: int, jb: "Job") -> None:
    """One configuration in fresh processes (``--repeat`` times, the fastest kept); a failure is recorded."""
    t = time.perf_counter()
    tries: List[Dict[str, Any]] = []
    try:
        for _ in range(max(1, suite.args.repeat)):
            load = OtherLoad()
            ranks = _launch([jb], ws, True)[0]
            s = _summary(ranks, jb.workload, True)
            s["other_cpu_cores"] = load.cores()
            tries.append(s)
    except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
        suite.failures.append({"contender": jb.contender, "rows": jb.workload.rows, "dim": jb.workload.dim,
                               "world_size": ws, "error": f"{type(e).__name__}: {e}"[:500]})
        suite.say(f"{tag}: FAILED {type(e).__name__}: {str(e)[:200]}")
        return
    s = max(tries, key=lambda x: x["train_samples_per_s"])  # best of --repeat: the least disturbed
    s["section"] = section
    if len(tries) > 1:
        s["repeats"] = [{k: x[k] for k in ("train_samples_per_s", "eval_samples_per_s", "other_cpu_cores")}
                        for x in tries]
    suite.results.append(s)
    suite.say(f"{tag}: train {num(s['train_samples_per_s'])} samples/s, eval {num(s['eval_samples_per_s'])}"
              f" samples/s, peak-before {gib(max(s['peak_minus_before_per_rank']))} GiB/rank; other processes "
              f"used {s['other_cpu_cores']:.2f} of {suite.cores} cores ({time.perf_counter() - t:.0f} s)")


def _run_isolated(suite: Suite, todo: Todo) -> None:
    for i, (section, ws, jb) in enumerate(todo, 1):
        need, have = memory_needed(jb.contender, jb.workload, ws), mem_available()
        tag = (f"[{i}/{len(todo)}] {jb.contender:<11} rows={fmt_rows(jb.workload.rows):<5} "
               f"dim={jb.workload.dim:<3} ws={ws}")
        if suite.device == "cpu" and need > have:
            reason = f"needs about {need / GiB:.1f} GiB, {have / GiB:.1f} GiB available"
            suite.skipped.append({"contender": jb.contender, "rows": jb.workload.rows, "dim": jb.workload.dim,
                                  "world_size": ws, "reason": reason})
            suite.say(f"{tag}: skipped ({reason})")
            continue
        _run_isolated_one(suite, tag, section, ws, jb)


def _run_shared(suite: Suite, todo: Todo) -> None:
    """``--quick``: every configuration of a world size in one process per rank."""
    for ws in suite.world_sizes:
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
            suite.results.append(s)
        suite.say(f"world size {ws}: {len(group)} configurations in one process per rank "
                  f"({time.perf_counter() - t:.0f} s)")


def run_jobs(suite: Suite) -> None:
    """Runs every configuration the sections need into ``suite.results``."""
    todo = plan_jobs(suite)
    suite.say(f"\n== running {len(todo)} configurations ==")
    if suite.plan.isolated:
        _run_isolated(suite, todo)
    else:
        _run_shared(suite, todo)
