"""The deployable inference module: its scores are MultiTaskTrain's predictions, and its TorchScript
form (TorchRec's FX trace + script of the lookup, the dense part traced) gives the same scores for every
architecture, fusion and precision here, at any batch size, after a save and load; what the route
cannot carry (a retrieval head, an ensemble) is refused with the reason."""

import io
from typing import Any, Dict

import pytest
import torch

from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.serving.export import DataSchema
from torchrec_fusion.serving.inference_module import InferenceModule, score_names, script_inference
from torchrec_fusion.serving.quantize import quantize_tables
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.factory import build_train_model

DATA, _ = make_synthetic(SyntheticConfig(num_rows=400, table_sizes={"user": 200, "item": 100, "category": 5},
                                         num_tags=50))
CASES = [  # arch, tasks, options
    ("shared_bottom", None, {"fusion": "weighted"}),
    ("mmoe", None, {"fusion": "stacking", "precision": "bf16"}),
    ("ple", None, {"fusion": "gated", "interaction": False}),
    ("cgc", None, {"fusion": "none"}),
    ("esmm", ["ctr", "ctcvr"], {"fusion": "weighted"}),
    ("aitm", ["ctr", "cvr"], {"fusion": "weighted"}),
    ("single_task", None, {"fusion": "weighted"}),
]


def _model(arch: str, tasks: Any, **options: Any) -> Any:
    config = TrainConfig.make(dataset="synthetic", arch=arch, embedding_dim=8, tower_layer_sizes=[8],
                              **({"tasks": tasks} if tasks else {}), **options)
    keep = [t for t in DATA.tasks if tasks is None or t.name in tasks]
    schema = DataSchema(list(DATA.feature_names), dict(DATA.num_embeddings), dict(DATA.pooling),
                        [TaskSpec(t.name, t.kind, t.num_classes) for t in keep], DATA.num_dense)
    model = build_train_model(config, schema, device="cpu")
    with torch.no_grad():
        model(_batch(200))  # a training-mode forward: the fusion's score statistics
    return model.eval()


def _batch(n: int) -> Any:
    return next(iter(DATA.batches(n, drop_last=False)))


@pytest.mark.parametrize("arch,tasks,options", CASES, ids=[c[0] for c in CASES])
def test_scripted_module_equals_eager_and_train_predictions(arch: str, tasks: Any, options: Dict[str, Any]) -> None:
    train = _model(arch, tasks, **options)
    if arch == "mmoe":
        quantize_tables(train, "int8", {"item": "int4"})
    module = InferenceModule(train).eval()
    b = _batch(64)
    with torch.no_grad():
        _, (_, preds, _) = train(b)
        eager = module(b.dense_features, b.sparse_features)
    assert sorted(eager) == sorted(preds) == sorted(score_names(train))
    for k in preds:
        torch.testing.assert_close(eager[k], preds[k])
    buf = io.BytesIO()
    torch.jit.save(script_inference(module, b.dense_features, b.sparse_features), buf)
    buf.seek(0)
    scripted = torch.jit.load(buf)
    # bf16: the traced graph's casts round a few values differently from eager autocast
    tol = {"rtol": 1e-2, "atol": 2e-3} if options.get("precision") == "bf16" else {"rtol": 1e-5, "atol": 1e-6}
    for n in (1, 5, 300):  # other batch sizes than the traced one
        b = _batch(n)
        with torch.no_grad():
            want, got = module(b.dense_features, b.sparse_features), scripted(b.dense_features, b.sparse_features)
        for k in want:
            torch.testing.assert_close(got[k], want[k], **tol)


def test_what_the_scripted_route_cannot_carry_is_refused() -> None:
    b = _batch(8)
    retrieval = InferenceModule(_model("mmoe", None, retrieval=True, retrieval_user_features=["user"])).eval()
    with torch.no_grad():
        assert "retrieval" in retrieval(b.dense_features, b.sparse_features)
    with pytest.raises(ValueError, match="retrieval head"):
        script_inference(retrieval, b.dense_features, b.sparse_features)
    ensemble = InferenceModule(_model("mmoe", None, ensemble=["mmoe", "ple"])).eval()
    with pytest.raises(ValueError, match="ensemble"):
        script_inference(ensemble, b.dense_features, b.sparse_features)
