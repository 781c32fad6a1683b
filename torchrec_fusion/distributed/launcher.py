"""Process groups and a local launcher: the same entry point under torchrun or ``--world-size N``."""

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, cast

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

_STORE_FILE_ENV = "TORCHREC_FUSION_STORE_FILE"
# CPU ranks per core: above 1 each rank gets a fraction of a core (a warning); above this, refused
MAX_RANKS_PER_CORE = 4
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


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def check_world_size(world_size: int, device: Optional[str] = None, cores: Optional[int] = None) -> Optional[str]:
    """Checks ``world_size`` local ranks against this machine before any starts: on CUDA one GPU
    each, on CPU at most :data:`MAX_RANKS_PER_CORE` per core (a ``ValueError``); returns a warning
    when CPU ranks outnumber the cores (they share them, each step slower), else None.

    Example::

        assert check_world_size(2, "cpu", cores=2) is None
        assert "cores" in (check_world_size(3, "cpu", cores=2) or "")
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        gpus = torch.cuda.device_count()
        if world_size > gpus:
            raise ValueError(f"--world-size {world_size} needs one GPU per rank; this machine has {gpus}")
        return None
    cores = cores or cpu_cores()
    if world_size > MAX_RANKS_PER_CORE * cores:
        raise ValueError(f"--world-size {world_size} starts {world_size} processes on {cores} CPU core(s); at most "
                         f"{MAX_RANKS_PER_CORE * cores} ({MAX_RANKS_PER_CORE} per core) are allowed: use fewer, or "
                         "torchrun over several hosts")
    if world_size > cores:
        return (f"--world-size {world_size} on {cores} CPU core(s): the ranks share the cores and each step is "
                "slower than on fewer ranks")
    return None


# the signals the launcher holds back while it starts the ranks (the CLI turns SIGTERM into an exception)
_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[List[int]]:
    """Records SIGINT and SIGTERM instead of acting on them while the block runs (main thread only:
    elsewhere Python's handlers cannot be swapped, nor do they run); yields the list they go to."""
    pending: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _HELD}
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (a killed launcher leaves no ranks)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(local_rank: int, world_size: int, store_dir: str, fn: Callable[..., Any], args: Tuple[Any, ...],
            results: Any, received: Any) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, and ends the ranks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
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


def _join(processes: Any, error: Optional[BaseException], missing: bool) -> Optional[BaseException]:
    """Waits for every rank to end; the error to raise (``error``, else the spawn wrapper's when
    ranks are ``missing`` their results)."""
    try:
        while not processes.join():
            pass
    except (ProcessRaisedException, ProcessExitedException) as e:
        if error is None and missing:
            return e
        if error is None:  # every rank sent its result before a process died on its way out
            print("torchrec-fusion: warning: a rank died after finishing its work; results kept", file=sys.stderr)
    return error


def _stop(processes: List[Any], grace_s: float = 5.0) -> None:
    """Ends the ranks still running: SIGTERM, then SIGKILL those alive after ``grace_s``."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _spawn(fn: Callable[..., Any], world_size: int, args: Tuple[Any, ...]) -> List[Any]:
    """Runs ``fn(*args)`` on ``world_size`` spawned processes; results and errors come back through
    a queue in memory (never through files that anything else could have written)."""
    context = mp.get_context("spawn")
    # a semaphore, not an Event: Event.set waits for its sleepers to wake, forever if one was killed
    results, received = context.Queue(), context.Semaphore(0)
    with tempfile.TemporaryDirectory() as store_dir:
        # an interrupt while the ranks start would leave them running: it waits until they can be stopped
        with _deferred_signals() as pending:
            processes = _start_processes(_worker, args=(world_size, store_dir, fn, args, results, received),
                                         nprocs=world_size, join=False, start_method="spawn")
        try:
            for sig in pending:  # a Ctrl-C (or SIGTERM) that came meanwhile acts now, where the ranks are stopped
                signal.raise_signal(sig)
            got, error = _collect(processes, results, world_size)
            for _ in range(world_size):
                received.release()
            error = _join(processes, error, len(got) < world_size)
        except BaseException:  # Ctrl-C, SIGTERM (raised by the CLI's handler): no rank outlives the launcher
            _stop(processes.processes)
            raise
    if error is not None:
        raise error from None
    return [got[r] for r in range(world_size)]


def launch(fn: Callable[..., Any], world_size: int, *args: Any, device: Optional[str] = None) -> List[Any]:
    """Runs ``fn(*args)`` on ``world_size`` local processes and returns each rank's result.

    Under torchrun (RANK/WORLD_SIZE set) it runs ``fn`` in this process only
    and returns ``[result]``. ``fn`` must be importable (a module-level
    function) and call :func:`init_distributed` itself. ``world_size`` is checked against
    this machine first (:func:`check_world_size`, for ``device``: None is CUDA when present).
    An interrupt (KeyboardInterrupt, or any exception raised in this process) ends every rank.
    """
    if under_torchrun():
        return [fn(*args)]
    warning = check_world_size(world_size, device)
    if warning:
        print(f"torchrec-fusion: warning: {warning}", file=sys.stderr)
    if world_size == 1:  # in this process: no spawn cost
        return _in_this_process(fn, args)
    return _spawn(fn, world_size, args)
