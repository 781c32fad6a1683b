"""A sharded checkpoint gathered into one single-process inference model.

``export_run(OUT)`` reads the run's config and its latest checkpoint (written by any
number of ranks under any plan), gathers every shard of every table into whole
tensors on the CPU, and writes ``OUT/export/``:

- ``model.pt``: the state_dict of the whole model (towers, experts, fusion head and
  every embedding table, unsharded);
- ``config.yaml`` and ``schema.json``: the run's config and the data schema (features,
  table sizes, pooling, tasks, dense width) that rebuild the module, and under ``"tables"`` each
  embedding table's dtype and bytes (``"quantization"``: the ``--quantize`` dtype, or null).

``export_run(OUT, quantize="int8", table_dtypes={"item": "int4"})`` writes the tables quantized by
TorchRec's inference quantization (:mod:`torchrec_fusion.serving.quantize`): fp16, or row-wise int8
or int4, per table; the dense part stays fp32.

``load_exported(OUT/export)`` rebuilds the module (``MultiTaskTrain``: call it on a
:class:`~torchrec_fusion.data.batch.MultiTaskBatch`) with plain ``torch.load``: no
process group, no torch.distributed. TorchRec's EBC takes KeyedJaggedTensors, which
TorchScript and ``torch.export`` handle only for some TorchRec versions and modules;
the state_dict plus config is the format that works for every architecture here.
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from torchrec_fusion.modules.model import MultiTaskTrain
from torchrec_fusion.outputs import write_json
from torchrec_fusion.serving.quantize import (
    QUANT_DTYPES,
    load_plain_state,
    plain_state_dict,
    quantize_tables,
    table_bytes,
)
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig, read_config_file
from torchrec_fusion.training.factory import ModelSchema, build_train_model
from torchrec_fusion.training.inference import gathered_model, load_run
from torchrec_fusion.training.prepare import prepare_data


@dataclass
class DataSchema:
    """What a model needs to know of its data to be rebuilt: features, tables, tasks."""

    feature_names: List[str]
    num_embeddings: Dict[str, int]
    pooling: Dict[str, str]
    tasks: List[TaskSpec]
    num_dense: int

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def label_means(self) -> torch.Tensor:
        return torch.full((len(self.tasks),), float("nan"))  # output biases come with the weights

    @classmethod
    def of(cls, data: ModelSchema) -> "DataSchema":
        return cls(list(data.feature_names), dict(data.num_embeddings), dict(data.pooling), list(data.tasks),
                   int(data.num_dense))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = [{**dataclasses.asdict(t), "kind": t.kind.value} for t in self.tasks]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DataSchema":
        return cls(**{**d, "tasks": [TaskSpec(**t) for t in d["tasks"]]})


def _rank_export(config: TrainConfig, checkpoint: str, out_dir: str, quantize: Optional[str] = None,
                 table_dtypes: Optional[Dict[str, str]] = None) -> str:
    schema = DataSchema.of(prepare_data(config).train)
    model = gathered_model(config, schema, checkpoint)  # every shard, gathered into whole tensors (safe reader)
    fp32 = table_bytes(model)
    dtypes = quantize_tables(model, quantize, table_dtypes) if quantize else dict.fromkeys(fp32, "fp32")
    tables = {t: {"dtype": dtypes[t], "bytes": b, "fp32_bytes": fp32[t]} for t, b in table_bytes(model).items()}
    os.makedirs(out_dir, exist_ok=True)
    torch.save(plain_state_dict(model), os.path.join(out_dir, "model.pt.tmp"))
    os.replace(os.path.join(out_dir, "model.pt.tmp"), os.path.join(out_dir, "model.pt"))
    config.save(os.path.join(out_dir, "config.yaml"))
    write_json(os.path.join(out_dir, "schema.json"), {**schema.to_dict(), "checkpoint": os.path.abspath(checkpoint),
                                                      "quantization": quantize, "tables": tables}, indent=1)
    return out_dir


def export_run(run_dir: str, out_dir: Optional[str] = None, checkpoint: Optional[str] = None,
               allow_plugins: bool = False, quantize: Optional[str] = None,
               table_dtypes: Optional[Dict[str, str]] = None) -> str:
    """Writes the single-process inference model of the run in ``run_dir`` (default
    ``run_dir/export``) from its latest checkpoint (or ``checkpoint``); returns the folder. A run
    whose config names plugin modules is refused unless ``allow_plugins`` (see ``load_run``).
    ``quantize`` ("fp16", "int8", "int4") quantizes the embedding tables, ``table_dtypes`` gives some
    tables (by table or feature name) another of those dtypes."""
    if table_dtypes and not quantize:
        raise ValueError("--quantize-table needs --quantize DTYPE (the dtype of the other tables)")
    if quantize is not None and quantize not in QUANT_DTYPES:
        raise ValueError(f"--quantize {quantize!r}: one of {sorted(QUANT_DTYPES)}")
    config, ckpt = load_run(run_dir, checkpoint, allow_plugins=allow_plugins)
    return _rank_export(dataclasses.replace(config, world_size=1), ckpt, out_dir or os.path.join(run_dir, "export"),
                        quantize, table_dtypes)


def load_exported(path: str) -> MultiTaskTrain:
    """The model ``export_run`` wrote to ``path``, on the CPU, in eval mode; no process group needed.

    Returns a ``MultiTaskTrain``: ``loss, (_, predictions, labels) = model(batch)``;
    ``model.model(dense, kjt)`` gives the raw task outputs.
    """
    for name in ("model.pt", "config.yaml", "schema.json"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(f"{path} is not an exported model: {name} is missing (run export first)")
    config = TrainConfig.from_dict(read_config_file(os.path.join(path, "config.yaml")))
    with open(os.path.join(path, "schema.json")) as f:
        meta = json.load(f)
    tables = meta.pop("tables", None) or {}
    quantize = meta.pop("quantization", None)
    meta.pop("checkpoint", None)
    model = build_train_model(config, DataSchema.from_dict(meta), device="cpu")
    model.eval()
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    if quantize:
        quantize_tables(model, quantize, {t: v["dtype"] for t, v in tables.items()})
        load_plain_state(model, state)
    else:
        model.load_state_dict(state)
    return model
