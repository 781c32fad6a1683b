"""Load run of ``torchrec-fusion serve``: requests/s and p50/p99 latency at several concurrencies,
micro-batching on against off.

For each mode the server runs as its own process (``torchrec-fusion serve --export DIR``, with
``--no-batching`` for off) on a free port; the client (httpx, asyncio) keeps ``C`` requests in
flight for ``--seconds`` after a short warm-up, each ``/score`` request carrying ``--rows`` rows
of the run's test split. Client and server share this machine's cores.

    python scripts/load_serve.py --export runs/ml-100k/export [--concurrency 1 8 32] [--seconds 10]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

import httpx

from torchrec_fusion.outputs import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(export: str, n: int) -> List[Dict[str, Any]]:
    """``n`` rows of the run's test split, as ``/score`` takes them."""
    from torchrec_fusion.training.config import TrainConfig, read_config_file
    from torchrec_fusion.training.prepare import prepare_data

    config = TrainConfig.from_dict(read_config_file(os.path.join(export, "config.yaml")))
    batch = next(iter(prepare_data(config).splits["test"].batches(n, drop_last=False)))
    sparse = batch.sparse_features.to_dict()
    return [{"dense": batch.dense_features[i].tolist(),
             "sparse": {f: jt.values()[jt.offsets()[i]:jt.offsets()[i + 1]].tolist() for f, jt in sparse.items()}}
            for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(export: str, port: int, batching: bool, extra: List[str]) -> "subprocess.Popen[bytes]":
    cmd = [sys.executable, "-m", "torchrec_fusion", "serve", "--export", export, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd + ([] if batching else ["--no-batching"]), cwd=ROOT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the server did not answer /health in 60 s")


async def _load(url: str, rows: List[Dict[str, Any]], per_request: int, concurrency: int, seconds: float
                ) -> Dict[str, float]:
    latencies: List[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        i = w
        while time.perf_counter() < stop:
            body = {"rows": [rows[(i * per_request + j) % len(rows)] for j in range(per_request)]}
            t = time.perf_counter()
            r = await client.post(url + "/score", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"/score answered {r.status_code}: {r.text}")
            i += concurrency

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def run_mode(export: str, batching: bool, rows: List[Dict[str, Any]], args: argparse.Namespace) -> List[Dict[str, Any]]:
    port = _free_port()
    proc = _start(export, port, batching, args.server_args)
    url = f"http://127.0.0.1:{port}"
    out = []
    try:
        for c in args.concurrency:
            asyncio.run(_load(url, rows, args.rows, c, min(2.0, args.seconds)))  # warm-up
            before = httpx.get(url + "/info").json()["batching"]
            result = asyncio.run(_load(url, rows, args.rows, c, args.seconds))
            after = httpx.get(url + "/info").json()["batching"]
            forwards = after["forwards"] - before["forwards"]
            result.update(batching=batching, concurrency=c, forwards=forwards,
                          rows_per_forward=(after["rows"] - before["rows"]) / max(forwards, 1))
            print(json.dumps(result), flush=True)
            out.append(result)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="a folder written by torchrec-fusion export")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="requests in flight")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per concurrency")
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                   help="more flags for serve (last on the line), e.g. --deadline-ms 1")
    args = p.parse_args()
    rows = _rows(args.export, 512)
    results = run_mode(args.export, True, rows, args) + run_mode(args.export, False, rows, args)
    print(f"{'batching':>8} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'rows/fwd':>8}")
    for r in results:
        print(f"{'on' if r['batching'] else 'off':>8} {r['concurrency']:>4} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {r['rows_per_forward']:>8.1f}")
    if args.json:
        write_json(args.json, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
