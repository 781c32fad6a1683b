"""``export --quantize``: TorchRec's quantized tables written as plain tensors, read back with a
weights-only load, the bytes and dtype of every table recorded, scores close to the fp32 export's."""

import json
import os
from typing import Any, Dict

import pytest
import torch

from torchrec_fusion.cli import main
from torchrec_fusion.serving import load_exported
from torchrec_fusion.serving.inference_module import InferenceModule, script_inference
from torchrec_fusion.serving.quantize import parse_table_dtypes
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import load_run
from torchrec_fusion.training.prepare import prepare_data
from torchrec_fusion.training.trainer import train

TINY = dict(dataset="synthetic", synthetic_rows=1500, synthetic_scale=0.05, embedding_dim=16, epochs=1, progress=False,
            verbose=False, report=False, world_size=1, batch_size=128, fusion="gated", arch="ple",
            expert_layer_sizes=[16], tower_layer_sizes=[8])


@pytest.fixture(scope="module")
def run(tmp_path_factory: Any) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig.make(**TINY, output_dir=str(out)))
    assert main(["export", "--run", str(out), "--to", str(out / "fp32")]) == 0
    config, _ = load_run(str(out))
    batch = next(iter(prepare_data(config).eval.batches(200, drop_last=False)))
    return {"out": out, "batch": batch, "fp32": _scores(str(out / "fp32"), batch)}


def _scores(path: str, batch: Any) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        _, (_, preds, _) = load_exported(path)(batch)
    return preds


def _meta(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, "schema.json")) as f:
        return dict(json.load(f))


def test_int8_with_an_int4_table_is_smaller_and_scores_alike(run: Dict[str, Any]) -> None:
    out = run["out"]
    assert main(["export", "--run", str(out), "--to", str(out / "q"), "--quantize", "int8",
                 "--quantize-table", "item=int4"]) == 0
    meta, fp32 = _meta(str(out / "q")), _meta(str(out / "fp32"))
    assert meta["quantization"] == "int8" and fp32["quantization"] is None
    dtypes = {t: v["dtype"] for t, v in meta["tables"].items()}
    assert dtypes.pop("t_item") == "int4" and set(dtypes.values()) == {"int8"}
    for t, v in meta["tables"].items():  # 16-dim rows: int8 16 + 4 (scale, bias) bytes, int4 8 + 4, padded
        assert v["fp32_bytes"] == fp32["tables"][t]["bytes"] == 64 * meta["num_embeddings"][t[2:]]
        assert v["bytes"] == v["fp32_bytes"] // (4 if t == "t_item" else 2)
    state = torch.load(str(out / "q" / "model.pt"), weights_only=True)  # plain tensors: the safe loader reads it
    assert state["model.feature_arch.sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight"].dtype \
        == torch.uint8
    assert os.path.getsize(out / "q" / "model.pt") < os.path.getsize(out / "fp32" / "model.pt")
    q = _scores(str(out / "q"), run["batch"])
    for k, v in run["fp32"].items():
        assert (q[k] - v).abs().max() < 0.02, k  # quantized rows, not other weights
    assert any(not torch.equal(q[k], v) for k, v in run["fp32"].items())  # the tables did change


@pytest.mark.parametrize("dtype", ["fp16", "int4"])
def test_every_dtype_loads_back(run: Dict[str, Any], dtype: str) -> None:
    path = str(run["out"] / dtype)
    assert main(["export", "--run", str(run["out"]), "--to", path, "--quantize", dtype]) == 0
    meta = _meta(path)
    assert {v["dtype"] for v in meta["tables"].values()} == {dtype}
    q = _scores(path, run["batch"])
    tol = 1e-3 if dtype == "fp16" else 0.05
    for k, v in run["fp32"].items():
        assert (q[k] - v).abs().max() < tol, k


def test_bad_quantize_options_are_refused(run: Dict[str, Any], capsys: Any) -> None:
    out = str(run["out"])
    assert main(["export", "--run", out, "--to", out + "/x", "--quantize", "int8", "--quantize-table", "nope=int4"]) \
        == 2
    assert "no table or feature 'nope'" in capsys.readouterr().err
    assert main(["export", "--run", out, "--to", out + "/y", "--quantize-table", "item=int4"]) == 2
    assert "needs --quantize" in capsys.readouterr().err
    with pytest.raises(ValueError, match="TABLE=DTYPE"):
        parse_table_dtypes(["item=int3"])


def test_the_quantized_module_scripts_and_reloads(run: Dict[str, Any], tmp_path: Any) -> None:
    path = str(run["out"] / "q")
    if not os.path.exists(path):
        assert main(["export", "--run", str(run["out"]), "--to", path, "--quantize", "int8"]) == 0
    module = InferenceModule(load_exported(path)).eval()
    b = run["batch"]
    scripted = script_inference(module, b.dense_features, b.sparse_features)
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        eager = module(b.dense_features, b.sparse_features)
        got = loaded(b.dense_features, b.sparse_features)
    assert set(got) == set(eager) == {"ctr", "cvr", "watch_time", "ctcvr", "fused"}
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], rtol=1e-5, atol=1e-6)
