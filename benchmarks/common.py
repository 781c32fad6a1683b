"""The benchmark workload: table and batch shapes, Zipf-like id batches, memory helpers.

Every contender of a comparison trains on the same workload:

* four sparse features, each with its own table of ``rows`` x ``dim`` fp32: ``user``, ``item``,
  ``category`` (one id per sample) and ``tags`` (a bag of 0..``max_tags`` ids, sum-pooled);
* ``num_dense`` dense features (standard normal);
* the four tasks of the synthetic data: ``ctr`` (binary), ``cvr`` (binary, observed on clicked
  rows only), ``watch_time`` (regression) and ``ctcvr`` (binary);
* ``batch_size`` samples per rank per step.

Ids are drawn from a truncated power law (``P(rank r) ~ r^-a``, continuous inverse CDF) and the
ranks are scattered over the table by a multiplicative hash (a bijection of ``[0, rows)``), so a
10^7-row table needs no 10^7-row array, only the ids of the batches. Each rank keeps a pool of
``pool`` pre-built batches and cycles through them: the step timings then measure the step, not the
batch builder (which the data-path section measures on its own). Every contender gets the same
ids, in its own native input format (built before the clock starts).
"""

import dataclasses
import os
import resource
import time
from typing import Any, Dict, List, Tuple

import torch

FEATURES: Tuple[str, ...] = ("user", "item", "category", "tags")
BAG_FEATURES: Tuple[str, ...] = ("tags",)
TASK_NAMES: Tuple[str, ...] = ("ctr", "cvr", "watch_time", "ctcvr")
# the models compared (benchmarks.contenders builds them), in the order the tables list them
CONTENDERS: Tuple[str, ...] = ("ours", "ours_fusion", "ours_matched", "dlrm", "peers", "plain")
_HASH = 2654435761  # prime, coprime with every power of ten: r -> r * _HASH mod rows is a bijection


@dataclasses.dataclass
class Workload:
    """Shapes of one benchmark configuration (``batch_size`` is per rank)."""

    rows: int = 1_000_000
    dim: int = 64
    batch_size: int = 2048
    max_tags: int = 5
    num_dense: int = 4
    zipf_a: float = 1.05
    pool: int = 8
    seed: int = 0

    def floor_bytes(self, optimizer: str) -> int:
        """Bytes the four tables and their optimizer state must take, all ranks together:
        fp32 weights, plus one float per row (row-wise Adagrad) or two moments per weight (Adam)."""
        weights = len(FEATURES) * self.rows * self.dim * 4
        state = {"rowwise_adagrad": len(FEATURES) * self.rows * 4, "adam": 2 * weights, "none": 0}[optimizer]
        return weights + state


def zipf_like(gen: torch.Generator, n: int, rows: int, a: float, salt: int) -> torch.Tensor:
    """``n`` ids in ``[0, rows)`` with ``P(rank r) ~ r^-a``, ranks scattered by a hash."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if abs(a - 1.0) < 1e-9:
        x = torch.exp(u * torch.log(torch.tensor(float(rows))))
    else:
        top = float(rows) ** (1.0 - a)
        x = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a))
    ranks = (x.floor().long() - 1).clamp_(0, rows - 1)
    return (ranks * _HASH + salt * 7919) % rows


@dataclasses.dataclass
class RawBatch:
    """One rank's batch as plain tensors, the source of every contender's input format."""

    dense: torch.Tensor  # B x D float
    ids: Dict[str, torch.Tensor]  # per feature, the ids of all bags, concatenated
    lengths: Dict[str, torch.Tensor]  # per feature, B bag sizes
    labels: torch.Tensor  # B x T float
    masks: torch.Tensor  # B x T bool

    @property
    def batch_size(self) -> int:
        return self.dense.size(0)


def make_raw_batch(w: Workload, rank: int, index: int) -> RawBatch:
    """Batch ``index`` of rank ``rank`` (seeded: every contender gets the same one)."""
    gen = torch.Generator().manual_seed(w.seed * 1_000_003 + rank * 10_007 + index)
    b = w.batch_size
    ids, lengths = {}, {}
    for salt, f in enumerate(FEATURES):
        lens = (torch.randint(0, w.max_tags + 1, (b,), generator=gen) if f in BAG_FEATURES
                else torch.ones(b, dtype=torch.int64))
        ids[f] = zipf_like(gen, int(lens.sum()), w.rows, w.zipf_a, salt)
        lengths[f] = lens
    dense = torch.randn(b, w.num_dense, generator=gen)
    click = torch.rand(b, generator=gen) < 0.3
    convert = click & (torch.rand(b, generator=gen) < 0.3)
    watch = torch.rand(b, generator=gen).exp()
    labels = torch.stack([click.float(), convert.float(), watch, convert.float()], 1)
    ones = torch.ones(b, dtype=torch.bool)
    masks = torch.stack([ones, click, ones, ones], 1)
    return RawBatch(dense, ids, lengths, labels, masks)


def make_pool(w: Workload, rank: int) -> List[RawBatch]:
    return [make_raw_batch(w, rank, i) for i in range(w.pool)]


def lookups_per_batch(pool: List[RawBatch]) -> Dict[str, float]:
    """Mean ids (lookups) and mean distinct rows per feature per batch of one rank."""
    out: Dict[str, float] = {"lookups": 0.0, "unique_rows": 0.0}
    for rb in pool:
        for f in FEATURES:
            out["lookups"] += rb.ids[f].numel()
            out["unique_rows"] += torch.unique(rb.ids[f]).numel()
    return {k: v / len(pool) for k, v in out.items()}


# ---- memory -----------------------------------------------------------------------------------

def _proc_status_bytes(key: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes (0 where it is absent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_now() -> int:
    """Resident bytes of this process now (VmRSS)."""
    return _proc_status_bytes("VmRSS")


def vm_hwm() -> int:
    """Peak resident bytes of this process image (VmHWM): a cross-check of ``peak_rss``, which on
    Linux also keeps the peak of the process's image before its exec (inherited at fork)."""
    return _proc_status_bytes("VmHWM")


def peak_rss() -> int:
    """Peak resident bytes of this process (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> Dict[str, Any]:
    """CPU model, cores and memory of this machine (from /proc; lscpu's model name)."""
    info: Dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["torch"] = torch.__version__
    try:
        from importlib.metadata import version

        info["torchrec"] = version("torchrec")
        for dist in ("fbgemm-gpu-cpu", "fbgemm-gpu"):
            try:
                info["fbgemm"] = f"{dist} {version(dist)}"
                break
            except Exception:  # noqa: BLE001 - not installed under this name
                continue
    except Exception:  # noqa: BLE001
        pass
    return info


class OtherLoad:
    """CPU time the rest of the machine used while a job ran: all busy CPU time (/proc/stat) minus
    this process's and its waited-for children's (the job's ranks). ``cores()`` is that as an
    average number of cores taken from the job: above ~0.1 the job's timings are contended."""

    def __init__(self) -> None:
        self._t0 = self._snap()

    @staticmethod
    def _snap() -> Tuple[float, float, float]:
        busy = 0.0
        try:
            with open("/proc/stat") as f:
                parts = [float(x) for x in f.readline().split()[1:]]
            busy = (sum(parts[:8]) - parts[3] - parts[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def cores(self) -> float:
        wall0, busy0, own0 = self._t0
        wall1, busy1, own1 = self._snap()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def load_average() -> Tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages: a busy machine makes the timings noisy."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3
