"""Process groups and a local launcher: the same entry point under torchrun or ``--world-size N``."""

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional, Tuple, cast

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

_STORE_FILE_ENV = "TORCHREC_FUSION_STORE_FILE"
# torch's spawn helper has no annotations
_start_processes = cast(Callable[..., Any], start_processes)


@dataclass
class DistContext:
    """Where this process stands: rank, world size and its compute device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def compute_device(self) -> str:
        return self.device.type


def under_torchrun() -> bool:
    """True when the process was started by torchrun (or another launcher setting RANK/WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: Optional[str] = None) -> DistContext:
    """Joins (or creates) the default process group from the environment.

    ``nccl`` on CUDA, ``gloo`` on CPU. A process started without any launcher
    forms a group of one, so the same code path serves every world size.
    """
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    store = os.environ.get(_STORE_FILE_ENV)
    if not store:  # env:// rendezvous (torchrun sets these; a lone process makes its own)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
        # share the cores among the local ranks instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and not store:
            # torchrun restarted the workers: their new process group must not read the addresses the
            # previous workers left in the agent's store, so every attempt gets its own key prefix
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            # (TCPStore and PrefixStore are exported at runtime, not in torch's stubs)
            tcp = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),  # type: ignore[attr-defined]
                                world, is_master=not agent and rank == 0, timeout=timedelta(minutes=10))
            prefixed = dist.PrefixStore(f"torchrec_fusion/attempt_{restart}", tcp)  # type: ignore[attr-defined]
            dist.init_process_group(backend=backend, rank=rank, world_size=world, store=prefixed)
        else:
            # the local launcher meets through a file, so no rendezvous port can be taken by another job
            init = f"file://{store}" if store else None
            dist.init_process_group(backend=backend, rank=rank, world_size=world, init_method=init)
    return DistContext(rank, world, local_rank, local_world, dev, backend)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, world_size: int, out_dir: str, fn: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), **{_STORE_FILE_ENV: os.path.join(out_dir, "store")},
    )
    try:
        result = fn(*args)
        path = os.path.join(out_dir, f"rank{local_rank}.pt")
        torch.save(result, path + ".tmp")
        os.replace(path + ".tmp", path)  # published whole
    except BaseException as e:  # hand the original error to the parent, then fail so peers are stopped
        with contextlib.suppress(Exception):
            torch.save(e, os.path.join(out_dir, f"rank{local_rank}.err"))
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    # Done: wait for the peers, then leave without the interpreter's teardown. Rarely (2 of ~200
    # launches seen), a rank aborted in C++ teardown ("terminate called without an active
    # exception") after its work was done; os._exit skips those destructors.
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(fn: Callable[..., Any], world_size: int, *args: Any) -> List[Any]:
    """Runs ``fn(*args)`` on ``world_size`` local processes and returns each rank's result.

    Under torchrun (RANK/WORLD_SIZE set) it runs ``fn`` in this process only
    and returns ``[result]``. ``fn`` must be importable (a module-level
    function) and call :func:`init_distributed` itself.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if under_torchrun():
        return [fn(*args)]
    if world_size == 1:  # in this process: no spawn cost; leave no trace in the environment
        keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", _STORE_FILE_ENV)
        saved = {k: os.environ.get(k) for k in keys}
        threads = torch.get_num_threads()
        tmp = tempfile.mkdtemp(prefix="torchrec_fusion_")
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          **{_STORE_FILE_ENV: os.path.join(tmp, "store")})
        try:
            return [fn(*args)]
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            torch.set_num_threads(threads)
            shutil.rmtree(tmp, ignore_errors=True)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            _start_processes(_worker, args=(world_size, out_dir, fn, args), nprocs=world_size,
                             join=True, start_method="spawn")
        except (ProcessRaisedException, ProcessExitedException):
            for r in range(world_size):  # re-raise the first rank's own error, not the spawn wrapper
                err = os.path.join(out_dir, f"rank{r}.err")
                if os.path.exists(err):
                    raise torch.load(err, weights_only=False) from None
            if not all(os.path.exists(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)):
                raise
            # every rank published its result before a process died on its way out: keep the results
            print("torchrec-fusion: warning: a rank died after finishing its work; results kept", file=sys.stderr)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
