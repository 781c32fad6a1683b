"""Atomic, verifiable, reshardable checkpoints of a DMP model and its optimizers.

A checkpoint is a folder ``<root>/step_<N>`` written by every rank with
``torch.distributed.checkpoint`` (each rank writes its own shards, so no rank
ever holds a whole table), plus:

- ``state.json``: the training position (global step, epoch, batch in epoch),
  the run's history so far and whatever else the trainer hands in;
- ``rng_<rank>.pt``: each rank's torch RNG state (dropout), restored on an
  exact resume at the same world size;
- ``MANIFEST.json``: size and sha256 of every file, written last.

It is written into ``step_<N>.tmp`` and renamed into place only once every
rank has finished and the manifest is on disk, then ``<root>/latest`` is
replaced atomically: a crash while writing leaves the previous checkpoint as
the latest, never a half-written one. Loading verifies the manifest first, so
a truncated or corrupted file is a :class:`CheckpointError` naming the file,
never a silently wrong model. Loading into a model sharded differently (another
world size or plan) reshards: DCP reads each destination shard's slice.
"""

import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

MANIFEST = "MANIFEST.json"
STATE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupted on disk."""


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


def _app_state(model: nn.Module, optimizer: Optional[Any]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


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
        extra: this rank's own objects (generator states), saved beside its RNG state in ``rng_<rank>.pt``.

    Returns:
        The published checkpoint folder.
    """
    final = os.path.join(root, step_name(step))
    tmp = final + ".tmp"
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a crash while writing
        os.makedirs(tmp)
    _barrier()
    dcp_save(_app_state(model, optimizer), checkpoint_id=tmp)
    torch.save({"torch": torch.get_rng_state(), **(extra or {})}, os.path.join(tmp, f"rng_{_rank()}.pt"))
    if _rank() == 0:
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump({**(state or {}), "step": step,
                       "world_size": dist.get_world_size() if dist.is_initialized() else 1}, f)
    _barrier()  # every rank's files are complete
    if _rank() == 0:
        manifest = {p: {"bytes": os.path.getsize(os.path.join(tmp, p)), "sha256": _sha256(os.path.join(tmp, p))}
                    for p in _files(tmp)}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # published whole
        with open(os.path.join(root, "latest.tmp"), "w") as f:
            f.write(step_name(step))
        os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


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
            path = os.path.join(root, f.read().strip())
        if os.path.isdir(path):
            return path
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(path: str) -> Dict[str, Any]:
    """Checks every file of checkpoint ``path`` against its manifest; returns its ``state.json``.

    Raises:
        CheckpointError: a missing manifest or file, or a size or sha256 that differs.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: no {MANIFEST} (the run stopped while writing it)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} is corrupted: {MANIFEST} is not valid JSON ({e})") from None
    for name, want in manifest.items():
        p = os.path.join(path, name)
        if not os.path.exists(p):
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        size = os.path.getsize(p)
        if size != want["bytes"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} has {size} bytes, expected "
                                  f"{want['bytes']} (truncated?)")
        if _sha256(p) != want["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} does not match its sha256")
    return _read_state(path)


def _read_state(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, STATE)) as f:
        state = json.load(f)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is corrupted: {STATE} is not a JSON object")
    return state


def load_checkpoint(path: str, model: nn.Module, optimizer: Optional[Any] = None) -> Dict[str, Any]:
    """Loads checkpoint ``path`` into ``model`` (and ``optimizer``), resharding as needed;
    every rank calls it. Rank 0 verifies the files first. Returns the saved ``state.json``
    (the RNG states in ``rng_<rank>.pt`` are the caller's to restore)."""
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
    dcp_load(app, checkpoint_id=path)
    model.load_state_dict(app["model"])
    if optimizer is not None:
        optimizer.load_state_dict(app["optimizer"])
    return _read_state(path)
