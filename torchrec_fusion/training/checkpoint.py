"""Atomic, verifiable, reshardable checkpoints of a DMP model and its optimizers, loaded without running code.

A checkpoint is a folder ``<root>/step_<N>`` written by every rank with
``torch.distributed.checkpoint`` (each rank writes its own shards, so no rank
ever holds a whole table), plus:

- ``state.json``: the training position (global step, epoch, batch in epoch),
  the run's history so far and whatever else the trainer hands in;
- ``rng_<rank>.pt``: each rank's torch RNG state (dropout) and generator states, tensors only,
  restored on an exact resume at the same world size;
- ``MANIFEST.json``: size and sha256 of every file, written last.

It is written into ``step_<N>.tmp`` and renamed into place only once every
rank has finished and the manifest is on disk, then ``<root>/latest`` is
replaced atomically: a crash (or a full disk) while writing leaves the previous
checkpoint as the latest, never a half-written one. :func:`mark_best` keeps one
checkpoint apart as ``<root>/best_step_<N>`` (hard links of its files) named by
``<root>/best``: pruning the old ``step_`` folders never removes it.

Loading checks the folder first (:func:`verify_checkpoint`): the manifest lists exactly the
files present, each with its size and sha256 (a truncated or flipped file is a
:class:`CheckpointError` naming it); ``state.json`` is JSON; ``rng_<rank>.pt`` loads with
``weights_only=True``; ``.metadata`` is unpickled by an unpickler that builds DCP's metadata
classes only, and every item of every shard loads with ``weights_only=True``
(:mod:`~torchrec_fusion.training.safe_checkpoint`). The sha256 values detect damage, not
tampering: what keeps a planted file from running code is that nothing is ever unpickled
without those restrictions. Loading into a model sharded differently (another world size or
plan) reshards: DCP reads each destination shard's slice.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from torchrec_fusion.training.safe_checkpoint import (
    METADATA,
    SHARD_SUFFIX,
    CheckpointError,
    SafeWriter,
    check_shards,
    load_plain,
    load_state,
    read_metadata,
)

MANIFEST = "MANIFEST.json"
BEST = "best"
STATE = "state.json"
_RNG = re.compile(r"rng_(\d+)\.pt")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN = (torch.Tensor, int, float, bool, str, type(None))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> List[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
                  if f != MANIFEST)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _check_plain(obj: Any, where: str) -> None:
    """Refuses to save what could not be loaded back with ``weights_only=True``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}/{i}")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"checkpoint state {where} is a {type(obj).__name__}: only tensors and plain values are "
                        "saved (they load without running code)")


def _app_state(model: nn.Module, optimizer: Optional[Any]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def _write(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` and flushes it to the disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    """Makes the renames inside ``path`` durable (where the platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def step_name(step: int) -> str:
    return f"step_{step:09d}"


def save_checkpoint(root: str, step: int, model: nn.Module, optimizer: Optional[Any] = None,
                    state: Optional[Dict[str, Any]] = None, keep: int = 2,
                    extra: Optional[Dict[str, Any]] = None) -> str:
    """Writes checkpoint ``step`` of ``model`` (and ``optimizer``) under ``root``; every rank calls it.

    Args:
        root: the checkpoints folder (shared by all ranks).
        step: the global step the model has completed.
        model: a DMP model or any module.
        optimizer: the (combined) optimizer; its fused and dense state are saved.
        state: JSON-serialisable training state (position, history, config).
        keep: how many finished checkpoints to keep (older ones are deleted).
        extra: this rank's own tensors (generator states), saved beside its RNG state in ``rng_<rank>.pt``.

    Returns:
        The published checkpoint folder.

    Raises:
        CheckpointError: a write failed (a full disk, say); the previous checkpoint stays the latest.
    """
    final = os.path.join(root, step_name(step))
    tmp = final + ".tmp"
    app, rng = _app_state(model, optimizer), {"torch": torch.get_rng_state(), **(extra or {})}
    _check_plain(app, "")
    _check_plain(rng, f"rng_{_rank()}")
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a crash while writing
        os.makedirs(tmp)
    _barrier()
    try:
        dcp_save(app, storage_writer=SafeWriter(tmp))
        buf = io.BytesIO()
        torch.save(rng, buf)
        _write(os.path.join(tmp, f"rng_{_rank()}.pt"), buf.getvalue())
        if _rank() == 0:
            _write(os.path.join(tmp, STATE), json.dumps({
                **(state or {}), "step": step,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1}).encode())
        _barrier()  # every rank's files are complete
        if _rank() == 0:
            _publish(root, tmp, final, keep)
    except (OSError, CheckpointException) as e:  # DCP wraps its writers' errors in a BaseException
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        raise CheckpointError(f"writing checkpoint {final} failed ({cause}); the latest checkpoint is still "
                              f"{latest_checkpoint(root)} (--resume auto continues from it)") from None
    _barrier()
    return final


def _publish(root: str, tmp: str, final: str, keep: int) -> None:
    """Rank 0: the manifest, then ``tmp`` renamed to ``final``, then ``latest`` pointed at it."""
    manifest = {p: {"bytes": os.path.getsize(os.path.join(tmp, p)), "sha256": _sha256(os.path.join(tmp, p))}
                for p in _files(tmp)}
    _write(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # published whole
    _write(os.path.join(root, "latest.tmp"), os.path.basename(final).encode())
    os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: str) -> List[str]:
    """The published checkpoints under ``root``, oldest first (unfinished ``.tmp`` folders excluded)."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and not n.endswith(".tmp"))
    return [os.path.join(root, n) for n in names]


def latest_checkpoint(root: str) -> Optional[str]:
    """The newest published checkpoint under ``root``, or None."""
    pointer = os.path.join(root, "latest")
    if os.path.exists(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(root, name)
        if name.startswith("step_") and os.path.basename(name) == name and os.path.isdir(path):
            return path
    found = list_checkpoints(root)
    return found[-1] if found else None


def best_checkpoint(root: str) -> Optional[str]:
    """The checkpoint :func:`mark_best` last marked under ``root``, or None."""
    try:
        with open(os.path.join(root, BEST)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    path = os.path.join(root, name)
    ok = name.startswith(BEST + "_step_") and os.path.basename(name) == name and os.path.isdir(path)
    return path if ok else None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # checkpoint files are never changed in place: a link is a copy
    except OSError:
        shutil.copy2(src, dst)


def mark_best(root: str, path: str) -> str:
    """Keeps the published checkpoint ``path`` as ``<root>/best_<name>`` and points ``<root>/best`` at
    it (replacing the previous best); every rank calls it, rank 0 writes. Returns the best folder."""
    name = f"{BEST}_{os.path.basename(path)}"
    dest = os.path.join(root, name)
    if _rank() == 0:
        if not os.path.isdir(dest):
            shutil.rmtree(dest + ".tmp", ignore_errors=True)
            shutil.copytree(path, dest + ".tmp", copy_function=_link_or_copy)
            _fsync_dir(dest + ".tmp")
            os.replace(dest + ".tmp", dest)
        _write(os.path.join(root, BEST + ".tmp"), name.encode())
        os.replace(os.path.join(root, BEST + ".tmp"), os.path.join(root, BEST))
        _fsync_dir(root)
        for old in os.listdir(root):  # the previous best (and any a crash left behind)
            if old.startswith(BEST + "_step_") and old != name:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    _barrier()
    return dest


def _read_manifest(path: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: no {MANIFEST} (the run stopped while writing it)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupted: {MANIFEST} is not valid JSON ({e})") from None
    entries_ok = isinstance(manifest, dict) and all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        and _SHA256.fullmatch(v["sha256"]) for v in manifest.values())
    if not entries_ok:
        raise CheckpointError(f"checkpoint {path} is corrupted: {MANIFEST} is not a map of file -> bytes, sha256")
    checked: Dict[str, Any] = manifest
    return checked


def _check_files(path: str, manifest: Dict[str, Any]) -> None:
    """The manifest lists exactly the plain files present, and each matches its size and sha256."""
    present = set(_files(path))
    for name in sorted(present | set(manifest)):
        if name not in manifest:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} is not in its {MANIFEST}")
        p = os.path.join(path, name)
        if name not in present:
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        kind_ok = name in (METADATA, STATE) or name.endswith(SHARD_SUFFIX) or _RNG.fullmatch(name)
        if os.path.dirname(name) or os.path.islink(p) or not kind_ok:
            raise CheckpointError(f"checkpoint {path} holds {name}: not a plain file a checkpoint writes")
        size = os.path.getsize(p)
        if size != manifest[name]["bytes"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} has {size} bytes, expected "
                                  f"{manifest[name]['bytes']} (truncated?)")
        if _sha256(p) != manifest[name]["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} does not match its sha256")
    for name in (METADATA, STATE):
        if name not in manifest:
            raise CheckpointError(f"checkpoint {path} is incomplete: its {MANIFEST} does not list {name}")


def verify_checkpoint(path: str) -> Dict[str, Any]:
    """Checks checkpoint ``path`` before anything in it is loaded; returns its ``state.json``.

    The manifest must list exactly the files present, with their sizes and sha256; ``state.json``
    must be a JSON object; each rank's ``rng_<rank>.pt`` must load with ``weights_only=True``;
    ``.metadata`` must unpickle as DCP metadata only, and every item of every shard must load
    with ``weights_only=True``. Nothing is unpickled without those restrictions.

    Raises:
        CheckpointError: a missing, extra, damaged or unsafe file, named in the message.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_files(path, _read_manifest(path))
    state = _read_state(path)
    ranks = sorted(int(m.group(1)) for m in map(_RNG.fullmatch, _files(path)) if m)
    if ranks != list(range(state["world_size"])):
        raise CheckpointError(f"checkpoint {path} is incomplete: it was saved by {state['world_size']} ranks but "
                              f"holds the RNG states of ranks {ranks}")
    for rank in ranks:
        load_rng(path, rank)
    check_shards(path, read_metadata(path))
    return state


def _read_state(path: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(path, STATE), "rb") as f:
            state = json.loads(f.read().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupted: {STATE} is not valid JSON ({e})") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("world_size"), int) and state["world_size"] >= 1):
        raise CheckpointError(f"checkpoint {path} is corrupted: {STATE} is not a JSON object with its step and "
                              "world_size")
    return state


def read_state(path: str) -> Dict[str, Any]:
    """Checkpoint ``path``'s state.json (JSON: its step, world size, plan, ...), checked for its form only."""
    return _read_state(path)


def load_rng(path: str, rank: int) -> Dict[str, Any]:
    """Rank ``rank``'s RNG states in checkpoint ``path`` (``{"torch": tensor, "generators": {name: tensor}}``),
    loaded with ``weights_only=True``."""
    name = f"rng_{rank}.pt"
    rng = load_plain(os.path.join(path, name), path, name)
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(rng.get("generators", {}), dict)
            and all(isinstance(v, torch.Tensor) for v in rng.get("generators", {}).values())):
        raise CheckpointError(f"checkpoint {path} is corrupted: {name} does not hold RNG states")
    return rng


def load_checkpoint(path: str, model: nn.Module, optimizer: Optional[Any] = None) -> Dict[str, Any]:
    """Loads checkpoint ``path`` into ``model`` (and ``optimizer``), resharding as needed;
    every rank calls it. Rank 0 verifies the files first (:func:`verify_checkpoint`). Returns the
    saved ``state.json`` (the RNG states are the caller's to restore: :func:`load_rng`)."""
    verdict = None
    if _rank() == 0:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            verdict = str(e)
    verdict = _broadcast(verdict)
    if verdict is not None:
        raise CheckpointError(verdict)
    app = _app_state(model, optimizer)
    load_state(app, path)
    model.load_state_dict(app["model"])
    if optimizer is not None:
        optimizer.load_state_dict(app["optimizer"])
    return _read_state(path)
