"""One run per output folder: ``OUT/.lock`` is held while a run lives, and a folder that already
holds a run is continued (``--resume``), replaced (``--overwrite``) or refused.

The lock is an ``flock`` on ``OUT/.lock``, which also holds the holder's pid, host and start time:
the kernel frees the flock when its process ends however it ends, so a lock file whose flock is free
was left by a run that crashed (reported, then taken over), and a second run on the same folder is
refused while the first lives. A lock file written on another host is never taken over: its
liveness cannot be seen from here.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

LOCK = ".lock"
# what a training run writes into its folder: what blocks a fresh run there and what --overwrite removes
RUN_FILES = ("checkpoints", "metrics.json", "config.yaml", "report.md", "report", "scores.csv", "item_vectors.pt")


class RunFolderError(ValueError):
    """An output folder in use by another run, or holding a run that this one would mix with."""


def _warn(message: str) -> None:
    print(f"torchrec-fusion: warning: {message}", file=sys.stderr)


def _holder(fd: int) -> Dict[str, Any]:
    """The pid, host and start time written in an open lock file (empty when there are none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        value = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: Dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


def _take(path: str) -> int:
    """Opens and flocks ``path`` (created when missing); raises :class:`RunFolderError` while another
    process holds it. Retries when the holder removed the file between our open and our flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderError(f"{os.path.dirname(path)} is in use by another run ({_describe(holder)}): "
                                 "wait for it to end or choose another --output-dir") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def acquire_lock(folder: str) -> int:
    """Takes ``folder/.lock`` for this process and writes its pid, host and start time into it;
    returns the open descriptor that holds it (see :func:`release_lock`)."""
    path = os.path.join(folder, LOCK)
    fd = _take(path)
    left = _holder(fd)
    host = socket.gethostname()
    if left and left.get("host") != host:
        os.close(fd)
        raise RunFolderError(f"{path} was written by a run on another host ({_describe(left)}); if no run is "
                             f"using {folder} there, delete {path}")
    if left:  # free, yet not removed: its run ended without releasing it
        _warn(f"{path} was left by a run that ended without releasing it ({_describe(left)}): taken over")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode())
    os.fsync(fd)
    return fd


def release_lock(folder: str, fd: int) -> None:
    """Removes ``folder/.lock`` (when it is still the file ``fd`` holds) and frees it."""
    path = os.path.join(folder, LOCK)
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    os.close(fd)


def run_files(folder: str) -> List[str]:
    """The outputs of an earlier run found in ``folder``."""
    return [n for n in RUN_FILES if os.path.lexists(os.path.join(folder, n))]


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _remove(folder: str, names: List[str]) -> None:
    """Deletes ``names`` from ``folder``: each is first renamed away, so none is ever left half-deleted
    under its own name."""
    for name in names:
        path = os.path.join(folder, name)
        gone = os.path.join(folder, f".removed-{os.getpid()}-{name}")
        os.replace(path, gone)
        if os.path.isdir(gone) and not os.path.islink(gone):
            shutil.rmtree(gone)
        else:
            os.remove(gone)


def check_reuse(folder: str, resume: Optional[str], overwrite: bool, log: Callable[[str], None] = _warn) -> None:
    """Applies the re-use rules to ``folder`` (its lock held): a folder without an earlier run is
    used as is; ``overwrite`` removes the earlier run's files first; ``resume`` "auto" (or a
    checkpoint inside ``folder``) continues it; anything else is refused with both options named."""
    inside = resume is not None and resume != "auto" and _inside(resume, folder)
    if overwrite and (resume == "auto" or inside):
        raise RunFolderError(f"--overwrite deletes the run in {folder} and --resume {resume} continues it: "
                             "give one of them")
    found = run_files(folder)
    if not found:
        return
    if overwrite:
        _remove(folder, found)
        log(f"--overwrite: removed the earlier run's {', '.join(found)} from {folder}")
        return
    has_checkpoints = "checkpoints" in found and bool(os.listdir(os.path.join(folder, "checkpoints")))
    continuing = resume == "auto" or inside
    if continuing and (has_checkpoints or "metrics.json" not in found):
        return
    if continuing:
        why = "it finished without a checkpoint to continue from"
    elif resume is None:
        why = "--resume auto continues it"
    else:
        why = f"--resume {resume} would mix its checkpoints with that run's; --resume auto continues that run"
    raise RunFolderError(f"{folder} already holds a run ({', '.join(found)}): {why}, --overwrite replaces it "
                         "(deleting those first), or choose another --output-dir")


@contextlib.contextmanager
def hold_run_folder(folder: str, resume: Optional[str] = None, overwrite: bool = False) -> Iterator[None]:
    """Holds ``folder/.lock`` (the folder created when missing) while the block runs, after
    :func:`check_reuse`; the lock is released however the block ends, and a folder created here
    that the block left empty (a run refused at its start) is removed."""
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    fd = acquire_lock(folder)
    try:
        check_reuse(folder, resume, overwrite)
        yield
    finally:
        release_lock(folder, fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                os.rmdir(folder)
