"""Checkpoints load without running code (#13), and survive a crash or a full disk while written.

A payload (an object whose unpickling creates a marker folder) is planted in each file a
checkpoint holds, the manifest re-signed (anyone can recompute sha256 values), and every
command that loads a checkpoint is run on it: the marker never appears and each command ends
in a clear error naming the file. A control shows each plant is live: the loader the file
would get without the restrictions (pickle, ``torch.load(weights_only=False)``, DCP's own
reader) does run it.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator

import pytest
import torch
from torch.distributed.checkpoint.filesystem import FileSystem, _StorageInfo
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex, TensorStorageMetadata

from torchrec_fusion.cli import main
from torchrec_fusion.training import checkpoint as ckpt_module
from torchrec_fusion.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import evaluate_run
from torchrec_fusion.training.trainer import train

# 320 training rows in batches of 64: 5 steps, checkpoints at steps 2 and 4 and the final one at 5
BASE = dict(dataset="synthetic", synthetic_rows=400, synthetic_scale=0.01, embedding_dim=8, epochs=1, batch_size=64,
            world_size=1, progress=False, verbose=False, report=False, checkpoint_every=2, keep_checkpoints=3,
            dropout=0.3, balancing="pcgrad")


def _train(out: Any, **kw: Any) -> Any:
    return train(TrainConfig.make(**{**BASE, "output_dir": str(out), **kw}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: Any) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("trained")
    result = _train(out)
    assert result.steps == 5
    return {"out": out, "result": result}


def _copy(trained: Dict[str, Any], tmp_path: Any) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(trained["out"], run)
    return run


def _resign(folder: str) -> None:
    """Recomputes MANIFEST.json for the files now in ``folder``, as anyone can."""
    manifest = {}
    for name in sorted(os.listdir(folder)):
        if name != "MANIFEST.json":
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(os.path.join(folder, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f)


class Payload:
    """Unpickling it creates the folder ``marker``: the proof that a load ran planted code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def _trusted_metadata(folder: str) -> Any:
    with open(os.path.join(folder, ".metadata"), "rb") as f:
        return pickle.load(f)  # the test's own, unplanted file


def _write_metadata(folder: str, md: Any) -> None:
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(md, f, protocol=2)  # as SafeWriter writes it


def _plant_metadata(folder: str, marker: str) -> None:
    md = _trusted_metadata(folder)
    md.storage_meta.modules = [Payload(marker)]
    _write_metadata(folder, md)


def _plant_shards(folder: str, marker: str) -> None:
    """In every shard: one tensor entry becomes a bytes entry whose item is the payload (DCP reads
    bytes items with ``torch.load(weights_only=False)``)."""
    md = _trusted_metadata(folder)
    for shard in sorted(n for n in os.listdir(folder) if n.endswith(".distcp")):
        index = next(i for i, s in md.storage_data.items() if s.relative_path == shard
                     and isinstance(md.state_dict_metadata[i.fqn], TensorStorageMetadata))
        blob = io.BytesIO()
        torch.save(Payload(marker), blob)
        offset = os.path.getsize(os.path.join(folder, shard))
        with open(os.path.join(folder, shard), "ab") as f:
            f.write(blob.getvalue())
        for i in [i for i in md.storage_data if i.fqn == index.fqn]:
            del md.storage_data[i]
        md.state_dict_metadata[index.fqn] = BytesStorageMetadata()
        md.storage_data[MetadataIndex(index.fqn)] = _StorageInfo(shard, offset, len(blob.getvalue()))
    _write_metadata(folder, md)


def _plant_rng(folder: str, marker: str) -> None:
    torch.save({"torch": Payload(marker), "generators": {}}, os.path.join(folder, "rng_0.pt"))


def _plant_bytes(name: str) -> Callable[[str, str], None]:
    def plant(folder: str, marker: str) -> None:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(pickle.dumps(Payload(marker)))
    return plant


def _stock_pickle(name: str) -> Callable[[str], None]:
    def load(folder: str) -> None:
        with open(os.path.join(folder, name), "rb") as f:
            pickle.load(f)
    return load


# planted file: (how, the unrestricted loader that runs it, the name the error gives)
PLANTS: Dict[str, Any] = {
    ".metadata": (_plant_metadata, _stock_pickle(".metadata"), ".metadata"),
    "distcp": (_plant_shards, lambda folder: dcp_to_torch_save(folder, os.path.join(folder, "..", "flat.pt")),
               ".distcp"),
    "rng_0.pt": (_plant_rng, lambda folder: torch.load(os.path.join(folder, "rng_0.pt"), weights_only=False),
                 "rng_0.pt"),
    "state.json": (_plant_bytes("state.json"), _stock_pickle("state.json"), "state.json"),
    "MANIFEST.json": (_plant_bytes("MANIFEST.json"), _stock_pickle("MANIFEST.json"), "MANIFEST.json"),
}


def _commands(run: str) -> Dict[str, Any]:
    return {
        "evaluate": ["evaluate", "--run", run],
        "recommend": ["recommend", "--run", run, "--user", "0"],
        "export": ["export", "--run", run, "--to", os.path.join(run, "export")],
        "train --resume": ["train", "--config", os.path.join(run, "config.yaml"), "--output-dir", run,
                           "--resume", "auto"],
    }


@pytest.mark.parametrize("planted", list(PLANTS))
def test_planted_payload_never_runs(trained, tmp_path, capsys, planted) -> None:
    run = _copy(trained, tmp_path)
    folder = latest_checkpoint(os.path.join(run, "checkpoints"))
    marker = str(tmp_path / "payload_ran")
    plant, stock_load, named = PLANTS[planted]
    plant(folder, marker)
    if planted != "MANIFEST.json":
        _resign(folder)
    with contextlib.suppress(Exception):
        stock_load(folder)
    assert os.path.isdir(marker), "control: the plant does not run under the unrestricted loader"
    os.rmdir(marker)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        verify_checkpoint(folder)
    for command, argv in _commands(run).items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        assert "checkpoint" in err and named in err, (command, err)
        assert not os.path.exists(marker), f"{command} ran the payload planted in {planted}"
    assert not os.path.exists(os.path.join(run, "export", "model.pt"))


def test_tensor_item_holding_a_payload_is_refused(trained, tmp_path) -> None:
    """A tensor entry whose bytes are a pickled object (not a bytes entry): refused by name."""
    folder = latest_checkpoint(os.path.join(_copy(trained, tmp_path), "checkpoints"))
    md = _trusted_metadata(folder)
    index, info = next(iter(md.storage_data.items()))
    blob = io.BytesIO()
    torch.save(Payload(str(tmp_path / "payload_ran")), blob)
    with open(os.path.join(folder, info.relative_path), "ab") as f:
        f.write(blob.getvalue())
    md.storage_data[index] = _StorageInfo(info.relative_path, os.path.getsize(os.path.join(folder, info.relative_path))
                                          - len(blob.getvalue()), len(blob.getvalue()))
    _write_metadata(folder, md)
    _resign(folder)
    with pytest.raises(CheckpointError, match="other than tensors and plain values"):
        verify_checkpoint(folder)
    assert not os.path.exists(tmp_path / "payload_ran")


def _edit_manifest(folder: str, edit: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    path = os.path.join(folder, "MANIFEST.json")
    with open(path) as f:
        manifest = json.load(f)
    with open(path, "w") as f:
        json.dump(edit(manifest), f)


@pytest.mark.parametrize("case, edit, message", [
    ("empty", lambda m: {}, "not in its MANIFEST"),
    ("a file left out", lambda m: {k: v for k, v in m.items() if k != "rng_0.pt"}, "rng_0.pt is not in its MANIFEST"),
    ("a file outside", lambda m: {**m, "../config.yaml": m["state.json"]}, r"\.\./config\.yaml is missing"),
    ("not a map", lambda m: dict.fromkeys(m, "x"), "not a map of file"),
])
def test_manifest_must_list_every_file(trained, tmp_path, case, edit, message) -> None:
    folder = latest_checkpoint(os.path.join(_copy(trained, tmp_path), "checkpoints"))
    _edit_manifest(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(folder)


def test_extra_or_linked_files_are_refused(trained, tmp_path) -> None:
    folder = latest_checkpoint(os.path.join(_copy(trained, tmp_path), "checkpoints"))
    with open(os.path.join(folder, "optimizer.pkl"), "wb") as f:
        f.write(b"anything")
    _resign(folder)
    with pytest.raises(CheckpointError, match="optimizer.pkl: not a plain file a checkpoint writes"):
        verify_checkpoint(folder)
    os.remove(os.path.join(folder, "optimizer.pkl"))
    os.rename(os.path.join(folder, "rng_0.pt"), str(tmp_path / "rng_0.pt"))
    os.symlink(str(tmp_path / "rng_0.pt"), os.path.join(folder, "rng_0.pt"))
    _resign(folder)
    with pytest.raises(CheckpointError, match="rng_0.pt: not a plain file a checkpoint writes"):
        verify_checkpoint(folder)


def test_saving_refuses_what_would_not_load_back(tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match="only tensors and plain values"):
        ckpt_module.save_checkpoint(str(tmp_path), 1, model, extra={"generators": {"g": torch.Generator()}})
    assert list_checkpoints(str(tmp_path)) == []


class _FullDisk:
    """A write stream with ``room[0]`` bytes left: the write that overflows it writes what fits,
    then calls ``full`` (raise ENOSPC, or kill the process)."""

    def __init__(self, stream: Any, room: list, full: Callable[[], None]) -> None:
        self.stream, self.room, self.full = stream, room, full

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self.room[0]:
            self.stream.write(view[: self.room[0]])
            self.stream.flush()
            self.full()
        self.room[0] -= len(view)
        return int(self.stream.write(view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def _shards_fill_disk(room: int, full: Callable[[], None]) -> Iterator[None]:
    """DCP's shard files go to a disk with ``room`` bytes left."""
    real, left = FileSystem.create_stream, [room]

    @contextlib.contextmanager
    def create_stream(self: Any, path: Any, mode: str) -> Iterator[Any]:
        with real(self, path, mode) as stream:
            yield _FullDisk(stream, left, full) if "w" in mode and str(path).endswith(".distcp") else stream

    FileSystem.create_stream = create_stream  # type: ignore[method-assign]
    try:
        yield
    finally:
        FileSystem.create_stream = real  # type: ignore[method-assign]


def _no_space() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _shard_bytes(trained: Dict[str, Any]) -> int:
    folder = latest_checkpoint(str(trained["out"] / "checkpoints"))
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".distcp"))


def _resumes_to_the_end(trained: Dict[str, Any], run: str) -> None:
    """The latest checkpoint is step 2's and loads; --resume auto continues from it to the run's end,
    exactly as the uninterrupted run."""
    root = os.path.join(run, "checkpoints")
    assert [os.path.basename(p) for p in list_checkpoints(root)] == ["step_000000002"]
    assert verify_checkpoint(latest_checkpoint(root))["step"] == 2
    resumed = _train(run, resume="auto")
    assert resumed.steps == 5
    torch.testing.assert_close(torch.tensor(resumed.step_losses), torch.tensor(trained["result"].step_losses),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("where", ["shard", "MANIFEST.json"])
def test_full_disk_while_writing_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch, where) -> None:
    run = str(tmp_path / "run")
    failed = r"writing checkpoint \S*step_000000004 failed \(.*\); the latest checkpoint is still \S*step_000000002"
    if where == "shard":  # room for one checkpoint and a half: the second fails inside its shard
        # (torch.save's zip writer reports the failed write as an inconsistent position, not as ENOSPC)
        with _shards_fill_disk(_shard_bytes(trained) * 3 // 2, _no_space), pytest.raises(CheckpointError, match=failed):
            _train(run)
    else:
        real, seen = ckpt_module._write, []

        def write(path: str, data: bytes) -> None:
            seen.append(os.path.basename(path))
            if seen.count(where) == 2 and os.path.basename(path) == where:
                real(path, data[: len(data) // 2])
                _no_space()
            real(path, data)

        monkeypatch.setattr(ckpt_module, "_write", write)
        with pytest.raises(CheckpointError, match=failed.replace(r"\(.*\)", r"\(.*No space left on device\)")):
            _train(run)
        monkeypatch.undo()
    assert not os.path.exists(os.path.join(run, "checkpoints", "step_000000004.tmp"))  # its space given back
    _resumes_to_the_end(trained, run)


KILLED_RUN = """
import contextlib, os, signal, sys
sys.path.insert(0, sys.argv[1])
from test_checkpoint_safety import _shards_fill_disk
from torchrec_fusion.cli import main
with _shards_fill_disk(int(sys.argv[2]), lambda: os.kill(os.getpid(), signal.SIGKILL)):
    main(sys.argv[3:])
"""


def test_kill_9_while_writing_keeps_the_previous_checkpoint(trained, tmp_path) -> None:
    """A run killed by SIGKILL in the middle of its second checkpoint's shard (a test-only patch of
    DCP's file stream, in the child process only)."""
    run = str(tmp_path / "run")
    argv = ["train", "--config", str(trained["out"] / "config.yaml"), "--output-dir", run]
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, os.path.dirname(__file__),
                            str(_shard_bytes(trained) * 3 // 2), *argv], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    tmp = os.path.join(run, "checkpoints", "step_000000004.tmp")
    assert os.path.isdir(tmp) and not os.path.exists(os.path.join(tmp, "MANIFEST.json"))  # killed mid-write
    assert evaluate_run(run)["step"] == 2
    _resumes_to_the_end(trained, run)
