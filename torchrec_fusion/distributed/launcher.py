"""Process groups and a local launcher: the same entry point under torchrun or ``--world-size N``."""

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

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


def _sendable(error: BaseException) -> BaseException:
    """``error`` itself when it pickles, else a RuntimeError carrying its type and message."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _worker(local_rank: int, world_size: int, store_dir: str, fn: Callable[..., Any], args: Tuple[Any, ...],
            results: Any, received: Any) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), **{_STORE_FILE_ENV: os.path.join(store_dir, "store")},
    )
    try:
        result = fn(*args)
    except BaseException as e:  # hand the original error to the parent, then fail so peers are stopped
        with contextlib.suppress(Exception):
            results.put((local_rank, False, _sendable(e)))
            results.close()
            results.join_thread()  # on its way before this process ends
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    # the result goes to the parent through a pipe, its tensors through shared memory: they stay
    # readable only while this process lives, so it waits until the parent has every result
    results.put((local_rank, True, result))
    received.acquire()
    # Done: wait for the peers, then leave without the interpreter's teardown. Rarely (2 of ~200
    # launches seen), a rank aborted in C++ teardown ("terminate called without an active
    # exception") after its work was done; os._exit skips those destructors.
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _in_this_process(fn: Callable[..., Any], args: Tuple[Any, ...]) -> List[Any]:
    """Runs ``fn(*args)`` as a group of one in this process, leaving no trace in the environment."""
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


def _collect(processes: Any, results: Any, world_size: int) -> Tuple[Dict[int, Any], Optional[BaseException]]:
    """Each rank's result as it arrives, until all are in, one rank reports an error, or the
    processes end without them (a rank killed: the error is then the spawn wrapper's)."""
    got: Dict[int, Any] = {}
    while len(got) < world_size:
        try:
            rank, ok, value = results.get(timeout=0.2)
        except queue.Empty:
            try:
                if processes.join(timeout=0):  # every process ended, some without a result
                    return got, RuntimeError(f"ranks {sorted(set(range(world_size)) - set(got))} ended "
                                             "without a result")
            except (ProcessRaisedException, ProcessExitedException) as e:
                with contextlib.suppress(queue.Empty):  # the rank's own error, if it sent one first
                    rank, ok, value = results.get(timeout=1.0)
                    if not ok:
                        return got, value
                return got, e
            continue
        if not ok:
            return got, value
        got[rank] = value
    return got, None


def _spawn(fn: Callable[..., Any], world_size: int, args: Tuple[Any, ...]) -> List[Any]:
    """Runs ``fn(*args)`` on ``world_size`` spawned processes; results and errors come back through
    a queue in memory (never through files that anything else could have written)."""
    context = mp.get_context("spawn")
    # a semaphore, not an Event: Event.set waits for its sleepers to wake, forever if one was killed
    results, received = context.Queue(), context.Semaphore(0)
    with tempfile.TemporaryDirectory() as store_dir:
        processes = _start_processes(_worker, args=(world_size, store_dir, fn, args, results, received),
                                     nprocs=world_size, join=False, start_method="spawn")
        got, error = _collect(processes, results, world_size)
        for _ in range(world_size):
            received.release()
        try:
            while not processes.join():
                pass
        except (ProcessRaisedException, ProcessExitedException) as e:
            if error is None and len(got) < world_size:
                error = e
            elif error is None:  # every rank sent its result before a process died on its way out
                print("torchrec-fusion: warning: a rank died after finishing its work; results kept",
                      file=sys.stderr)
    if error is not None:
        raise error from None
    return [got[r] for r in range(world_size)]


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
    if world_size == 1:  # in this process: no spawn cost
        return _in_this_process(fn, args)
    return _spawn(fn, world_size, args)
