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
6. small_tables: the census shape (32 small categorical tables, 7 dense, 2 binary tasks, MMoE): ours with
   the CLI defaults at world size 1 and 2 against plain PyTorch, samples/s and held-out AUC
   (``benchmarks.small_tables``, also runnable alone).

Each configuration runs in fresh processes (one per rank) so that its peak RSS is its own
(``--quick`` shares one process per world size: its memory figures are not isolated). Threads per
rank are the launcher's: cores / ranks. See docs/performance.md for the method and the results.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks.suite import DEFAULT_ML, ROOT, Suite, Tee, plan_for

DEFAULT_OUT = ROOT / "runs" / "bench" / "bench.json"
SECTIONS = ("comparison", "scaling", "datapath", "roofline", "movielens", "small_tables")


def _world_sizes(device: str, notes: List[str]) -> List[int]:
    """1 and 2 ranks; on CUDA, 2 only with 2 GPUs."""
    import torch

    if device == "cuda" and torch.cuda.device_count() < 2:
        notes.append(f"world size 2 skipped: {torch.cuda.device_count()} GPU(s) visible")
        return [1]
    return [1, 2]


def run_benchmarks(args: argparse.Namespace, say: Tee) -> Dict[str, Any]:
    """Every chosen section, in the order their numbers depend on one another: the configurations,
    the machine's ceilings, comparison, scaling, the MovieLens run (its step rate is the data path's
    reference), data path, roofline; then the MovieLens summary, notes and targets."""
    from benchmarks import sections as sec
    from benchmarks.common import load_average
    from benchmarks.datapath import datapath
    from benchmarks.movielens import report_movielens, run_movielens
    from benchmarks.suite import run_jobs

    started = time.perf_counter()
    result: Dict[str, Any] = {"notes": []}
    suite = Suite(args, plan_for(args), say, _world_sizes(args.device, result["notes"]), result)
    sec.machine(suite)
    run_jobs(suite)
    sec.ceilings(suite)
    wanted = suite.sections
    if "comparison" in wanted:
        sec.comparison(suite)
    if "scaling" in wanted:
        sec.scaling(suite)
    sec.failures(suite)
    if "movielens" in wanted:
        run_movielens(suite)
    if "datapath" in wanted:
        datapath(suite)
    if "roofline" in wanted:
        sec.roofline(suite)
    if "movielens" in wanted:
        report_movielens(suite)
    if "small_tables" in wanted:
        from benchmarks.small_tables import small_tables

        small_tables(suite)
    sec.notes_and_targets(suite)
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
    from torchrec_fusion.training.session import quiet_third_party_logs

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
