"""How fast the command line answers when it has no work to do (issue #15): --help, a bad output path,
``data download`` offline, and ``train --help`` with its flags cached and not.

    .venv/bin/python -m benchmarks.cli_latency            # 5 runs each, median and max printed

Each command runs as a user runs it (a fresh ``torchrec-fusion`` process); the flag cache lives in a
temporary ``XDG_CACHE_HOME`` so that "cold" really builds the flags.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

EXE = str(Path(sys.executable).with_name("torchrec-fusion"))
CASES = {
    "torchrec-fusion --help": ["--help"],
    "train --output-dir /proc/x": ["train", "--output-dir", "/proc/x", "--dataset", "movielens"],
    "recommend --output /proc/x/top.csv": ["recommend", "--run", "runs/none", "--user", "1", "--output",
                                           "/proc/x/top.csv"],
    "data download (offline)": ["data", "download", "movielens-100k", "--to", "{tmp}/dl", "--timeout", "2"],
    "train --help (flags cached)": ["train", "--help"],
    "train --arch nope (flags cached)": ["train", "--arch", "nope"],
}


def _time(argv: List[str], env: Dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([EXE, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t


def main(argv: Optional[List[str]] = None) -> Dict[str, List[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    out: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": os.path.join(tmp, "cache")}
        out["train --help (flags not cached: builds them)"] = [_time(["train", "--help"], env)]
        for name, case in CASES.items():
            out[name] = [_time([a.format(tmp=tmp) for a in case], env) for _ in range(args.runs)]
    print(f"{'command':48s} {'median s':>9s} {'max s':>7s}  runs")
    for name, times in out.items():
        print(f"{name:48s} {statistics.median(times):9.2f} {max(times):7.2f}  {len(times)}")
    return out


if __name__ == "__main__":
    main()
