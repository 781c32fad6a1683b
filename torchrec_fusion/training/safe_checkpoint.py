"""Reading a DCP checkpoint folder without running code that someone put in it.

``torch.distributed.checkpoint`` reads ``.metadata`` and every non-tensor item with unrestricted
unpickling: a file planted in a checkpoint folder runs its code on load, and a manifest of sha256
values does not stop it (anyone can recompute them). Here:

- :class:`SafeWriter` writes ``.metadata`` from the in-memory ``Metadata`` at pickle protocol 2,
  the form torch's weights-only unpickler reads; :func:`read_metadata` reads it with that
  unpickler (``torch.load(weights_only=True)``'s own), allowing only DCP's metadata classes and
  paths beside torch's defaults: any other class or function is refused, so nothing is called;
- the metadata is checked: every item lies inside a ``*.distcp`` file of the folder, with no
  stream transforms (this project writes none);
- every item of every shard is read with ``torch.load(weights_only=True)`` (tensors and plain
  values only); :func:`check_shards` does it for every item at once on the meta device (the
  pickles are read, the tensor bytes are not), :func:`load_state` at load time.

Any refusal is a :class:`CheckpointError` naming the file.
"""

import io
import os
import pathlib
import pickle
import warnings
from typing import Any, BinaryIO, Callable, Dict, List, Tuple, Union

import torch
from torch import _weights_only_unpickler as weights_only_unpickler
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.storage import WriteResult
from torch.distributed.checkpoint.utils import _create_file_view

METADATA = ".metadata"
SHARD_SUFFIX = ".distcp"

# what DCP's .metadata holds beyond torch's own weights-only defaults (torch.Size, dtypes, layouts)
_METADATA_CLASSES: List[Union[Callable[..., Any], Tuple[Callable[..., Any], str]]] = [
    Metadata, TensorStorageMetadata, BytesStorageMetadata, TensorProperties, ChunkStorageMetadata, MetadataIndex,
    StorageMeta, _MEM_FORMAT_ENCODING, _StorageInfo, pathlib.PosixPath, pathlib.PurePosixPath]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted, or holds something it must not."""


class SafeWriter(FileSystemWriter):
    """DCP's file writer, then ``.metadata`` written again from memory at pickle protocol 2 (DCP's
    own is protocol 4, whose framing torch's weights-only unpickler does not read)."""

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        super().finish(metadata, results)  # completes ``metadata`` (storage data and meta) in memory
        path = os.path.join(str(self.path), METADATA)
        with open(path + ".p2", "wb") as f:
            f.write(pickle.dumps(metadata, protocol=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".p2", path)


def unpickle_metadata(source: BinaryIO) -> Any:
    """DCP metadata read by torch's weights-only unpickler (DCP's classes allowed, nothing else).

    Example::

        md = Metadata({"w": BytesStorageMetadata()})
        assert unpickle_metadata(io.BytesIO(pickle.dumps(md, protocol=2))) == md
        try:
            unpickle_metadata(io.BytesIO(pickle.dumps(os.getcwd, protocol=2)))
            raise AssertionError("a function was unpickled")
        except pickle.UnpicklingError:
            pass
    """
    with torch.serialization.safe_globals(_METADATA_CLASSES):
        return weights_only_unpickler.load(source)


def _bad(folder: str, name: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {folder} is unsafe or corrupted: {name} {why}; nothing in it was loaded")


def _reason(error: BaseException) -> str:
    """What a torch.load(weights_only=True) refusal refused, without torch's advice to retry unrestricted."""
    boilerplate = ("Weights only load failed", "Check the documentation")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    return lines[0] if lines else type(error).__name__


def load_plain(source: Union[str, BinaryIO, io.IOBase], folder: str, name: str, meta: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of a file (or stream) of checkpoint ``folder``: tensors and
    plain values only (``meta``: tensors on the meta device, their bytes left unread)."""
    try:
        return torch.load(source, map_location="meta" if meta else "cpu", weights_only=True)  # type: ignore[arg-type]
    except Exception as e:
        raise _bad(folder, name, f"holds something other than tensors and plain values ({_reason(e)})") from None


def _check_item(folder: str, index: Any, info: Any, sizes: Dict[str, int]) -> None:
    if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
        raise _bad(folder, METADATA, "has an entry that is not DCP storage metadata")
    rel = info.relative_path
    if not (isinstance(rel, str) and rel in sizes):
        raise _bad(folder, METADATA, f"names a file that is not a {SHARD_SUFFIX} shard of the folder: {rel!r}")
    ints = isinstance(info.offset, int) and isinstance(info.length, int)
    if not ints or info.offset < 0 or info.length < 0 or info.offset + info.length > sizes[rel]:
        raise _bad(folder, METADATA, f"places {index.fqn!r} outside {rel}")
    if info.transform_descriptors:
        raise _bad(folder, METADATA, f"asks for stream transforms {info.transform_descriptors!r} (none are written)")


def read_metadata(folder: str) -> Metadata:
    """The checked DCP metadata of checkpoint ``folder``, read by :func:`unpickle_metadata`."""
    try:
        with open(os.path.join(folder, METADATA), "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on the protocol of a refused file
            md = unpickle_metadata(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {METADATA} is missing") from None
    except Exception as e:  # a refused global, bytes that are no pickle, or a checkpoint not written by SafeWriter
        raise _bad(folder, METADATA, f"cannot be read safely ({type(e).__name__}: {e}; checkpoints written "
                                     "before this check came in must be re-trained)") from None
    if not (isinstance(md, Metadata) and isinstance(md.state_dict_metadata, dict)
            and isinstance(md.storage_data, dict)):
        raise _bad(folder, METADATA, "is not DCP metadata")
    for fqn, item in md.state_dict_metadata.items():
        if not (isinstance(fqn, str) and isinstance(item, (TensorStorageMetadata, BytesStorageMetadata))):
            raise _bad(folder, METADATA, f"describes {fqn!r} with a {type(item).__name__}")
    shards = [n for n in os.listdir(folder) if n.endswith(SHARD_SUFFIX)]
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in shards if os.path.isfile(os.path.join(folder, n))}
    for index, info in md.storage_data.items():
        _check_item(folder, index, info, sizes)
    return md


def check_shards(folder: str, md: Metadata) -> None:
    """Reads every item of every shard with ``torch.load(weights_only=True)`` on the meta device
    (tensor bytes are not read) and checks that a tensor entry holds a tensor."""
    per_file: Dict[str, List[Tuple[MetadataIndex, _StorageInfo]]] = {}
    for index, info in md.storage_data.items():
        per_file.setdefault(info.relative_path, []).append((index, info))
    for rel, items in sorted(per_file.items()):
        with open(os.path.join(folder, rel), "rb") as f:
            for index, info in items:
                obj = load_plain(_create_file_view(f, info.offset, info.length), folder, f"{rel} ({index.fqn})",
                                 meta=True)
                if (isinstance(md.state_dict_metadata.get(index.fqn), TensorStorageMetadata)
                        and not isinstance(obj, torch.Tensor)):
                    raise _bad(folder, rel, f"holds a {type(obj).__name__} where {index.fqn!r} is a tensor")


class SafeReader(FileSystemReader):
    """DCP's file reader with the metadata read by :func:`read_metadata` (no rank-local metadata)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"checkpoint {self.path}: only the global {METADATA} is read")
        md = read_metadata(str(self.path))
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor items with ``weights_only=True``."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = load_plain(value, self.folder, f"item {fqn}")
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes, with weights_only=True
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load_state(state: Dict[str, Any], folder: str, no_dist: bool = False) -> None:
    """``dcp_load(state)`` from checkpoint ``folder`` (in place, resharding as needed) through
    :class:`SafeReader` and :class:`SafePlanner`; any failure is a :class:`CheckpointError`."""
    try:
        with warnings.catch_warnings():  # no_dist is asked for: DCP's "assuming ... a single process" says so again
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp_load(state, storage_reader=SafeReader(folder), planner=SafePlanner(folder), no_dist=no_dist)
    except CheckpointException as e:
        for error, _ in e.failures.values():  # our own refusal, as it was raised
            if isinstance(error, CheckpointError):
                raise error from None
        raise CheckpointError(f"checkpoint {folder} could not be loaded: {_reason(e)}") from None
