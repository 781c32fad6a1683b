"""Measured memory bandwidth, and the bytes of embedding rows a training step must move.

Bandwidth: the best of ``repeats`` runs of ``dst.copy_(src)`` (2 bytes moved per byte copied:
read + write, STREAM's convention) and ``a.add_(b)`` (3: two reads, one write) over tensors of
``mib`` MiB each, with all cores and with one (a rank's share at world size 2).

Embedding bytes per step (all ranks): every id looked up reads its row in the forward pass
(``lookups x dim x 4``); every distinct row of the step is read and written back by the update,
and so is its optimizer state (``unique x (2 x dim x 4 + 2 x state x 4)``, ``state`` = 1 float per
row for row-wise Adagrad, ``2 x dim`` for Adam's two moments). That is the least traffic a
sparse update can do (DDP replicas, the peers' and plain PyTorch's way over 2 ranks, each apply
the update to their own copy). The peers' dense Adam moves every row of every table every step
instead (at least ``8 x`` the table bytes per replica: read weight, gradient and both moments, write
weight and moments, and the gradient's zero-fill), reported beside it.
"""

import time
from typing import Any, Dict, List

import torch

from benchmarks.common import FEATURES, Workload, make_pool


def measure_bandwidth(mib: int = 512, repeats: int = 5, threads: int = 0, device: str = "cpu") -> Dict[str, float]:
    """Bytes per second of a large copy and a large add_ (best of ``repeats``)."""
    old = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    try:
        n = mib * 2**20 // 4
        dev = torch.device(device)
        src = torch.ones(n, device=dev)
        dst = torch.zeros(n, device=dev)  # both touched: no first-touch page faults in the timing

        def best(fn: Any) -> float:
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t)
            return min(times)

        copy_s = best(lambda: dst.copy_(src))
        add_s = best(lambda: dst.add_(src))
        return {"mib_per_tensor": mib, "threads": torch.get_num_threads() if dev.type == "cpu" else 0,
                "copy_bytes_per_s": 2 * n * 4 / copy_s, "add_bytes_per_s": 3 * n * 4 / add_s}
    finally:
        torch.set_num_threads(old)


def measure_matmul(n: int = 1024, batch: int = 2048, repeats: int = 5, threads: int = 0,
                   device: str = "cpu") -> Dict[str, float]:
    """FLOP/s of an fp32 ``[batch, n] @ [n, n]`` matmul (best of ``repeats``): the ceiling of the
    dense MLPs, whose layers are the same kind of product, only narrower."""
    old = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        a, b = torch.randn(batch, n, device=dev), torch.randn(n, n, device=dev)
        out = torch.empty(batch, n, device=dev)
        torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t)
        return {"shape": [batch, n, n], "threads": torch.get_num_threads() if dev.type == "cpu" else 0,
                "flops_per_s": 2 * batch * n * n / min(times)}
    finally:
        torch.set_num_threads(old)


def step_traffic(w: Workload, world_size: int) -> Dict[str, float]:
    """Lookups, distinct rows and bytes of embedding rows per global step (all ranks), averaged
    over the pool's batches (every rank's batch ``i`` makes global step ``i``)."""
    pools = [make_pool(w, r) for r in range(world_size)]
    lookups = unique = 0.0
    for i in range(w.pool):
        for f in FEATURES:
            ids = torch.cat([pools[r][i].ids[f] for r in range(world_size)])
            lookups += ids.numel()
            unique += torch.unique(ids).numel()
    lookups /= w.pool
    unique /= w.pool
    row = w.dim * 4
    fwd = lookups * row
    return {
        "lookups_per_step": lookups,
        "unique_rows_per_step": unique,
        "fwd_bytes": fwd,
        "update_bytes_rowwise_adagrad": unique * (2 * row + 2 * 4),
        "update_bytes_adam": unique * (2 * row + 2 * 2 * row),
        "dense_adam_min_bytes": 8 * len(FEATURES) * w.rows * row,
    }


def roofline_rows(entries: List[Dict[str, Any]], bandwidth: float) -> List[Dict[str, Any]]:
    """Per (contender, rows, dim, world size): embedding bytes per second at the measured step
    rate, and that as a fraction of ``bandwidth``; for the dense-Adam peers also the least
    time their full-table update takes at that bandwidth."""
    out = []
    for e in entries:
        w: Workload = e["workload"]
        t = step_traffic(w, e["world_size"])
        steps_per_s = e["train_samples_per_s"] / (w.batch_size * e["world_size"])
        sharded = e["contender"] in ("ours", "ours_fusion", "ours_matched", "dlrm")
        # DDP replicas (peers, plain) each apply the all-reduced update to their own copy of every table
        replicas = 1 if sharded else e["world_size"]
        update = t["update_bytes_rowwise_adagrad"] if sharded else t["update_bytes_adam"]
        useful = t["fwd_bytes"] + replicas * update
        row = {"contender": e["contender"], "rows": w.rows, "dim": w.dim, "world_size": e["world_size"],
               "steps_per_s": steps_per_s, "lookups_per_step": t["lookups_per_step"],
               "unique_rows_per_step": t["unique_rows_per_step"], "embedding_bytes_per_step": useful,
               "embedding_bytes_per_s": useful * steps_per_s,
               "fraction_of_bandwidth": useful * steps_per_s / bandwidth}
        if e["contender"] == "peers":
            dense = replicas * t["dense_adam_min_bytes"]
            row["dense_adam_min_bytes_per_step"] = dense
            row["dense_adam_min_seconds_per_step"] = dense / bandwidth
            row["dense_adam_fraction_of_bandwidth"] = dense * steps_per_s / bandwidth
        out.append(row)
    return out
