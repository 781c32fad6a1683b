"""Checkpoints: exact resume, resharding on load, corruption caught, NaN stops the run, export."""

import os
import shutil

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from torchrec_fusion.cli import main
from torchrec_fusion.serving import load_exported
from torchrec_fusion.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import evaluate_run, load_run
from torchrec_fusion.training.prepare import prepare_data
from torchrec_fusion.training.trainer import train

# PCGrad keeps a torch.Generator and dropout draws from the global RNG: both must be restored
BASE = dict(dataset="synthetic", synthetic_rows=3000, synthetic_scale=0.05, embedding_dim=16, epochs=2,
            progress=False, verbose=False, keep_predictions=True, report=False, balancing="pcgrad", dropout=0.3,
            expert_layer_sizes=[32, 16], tower_layer_sizes=[8], fusion="weighted", checkpoint_every=7)
STEPS = 36  # 2 epochs of 18 global batches of 128


def _train(out, world_size=2, **kw):
    return train(TrainConfig.make(**{**BASE, "world_size": world_size, "batch_size": 128 // world_size,
                                "output_dir": str(out), **kw}))


def _flat(checkpoint: str, tmp) -> dict:
    path = os.path.join(str(tmp), os.path.basename(checkpoint) + ".pt")
    dcp_to_torch_save(checkpoint, path)
    out = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + str(k) + "/")
            else:
                out[prefix + str(k)] = v
    walk(torch.load(path, weights_only=True))
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight")
    return {"out": out, "result": _train(out)}


def test_stop_and_resume_equals_uninterrupted(straight, tmp_path) -> None:
    a = straight["result"]
    b = _train(tmp_path, max_steps=14)  # stops inside the first epoch, checkpoint at 14
    assert b["steps"] == 14 and latest_checkpoint(str(tmp_path / "checkpoints")).endswith("step_000000014")
    c = _train(tmp_path, resume="auto")
    assert c["steps"] == a["steps"] == STEPS
    torch.testing.assert_close(torch.tensor(c["step_losses"]), torch.tensor(a["step_losses"]), rtol=1e-6, atol=1e-7)
    for k in a["predictions"]:
        torch.testing.assert_close(c["predictions"][k], a["predictions"][k], rtol=1e-6, atol=1e-7)
    sa = _flat(latest_checkpoint(str(straight["out"] / "checkpoints")), tmp_path)
    sc = _flat(latest_checkpoint(str(tmp_path / "checkpoints")), tmp_path)
    assert sa.keys() == sc.keys()
    optim = [k for k in sa if k.startswith("optimizer/state/")]
    # the tables' optimizer state (replicated small tables: Adagrad's sum; sharded: the fused momentum1), the dense
    assert any(k.endswith("/sum") or "momentum1" in k for k in optim) and any("exp_avg_sq" in k for k in optim)
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            torch.testing.assert_close(sc[k], sa[k], rtol=1e-6, atol=1e-7, msg=k)
    # the history of the resumed run is the whole run's
    assert [h["epoch"] for h in c["history"]] == [1, 2]


def test_checkpoint_loads_at_another_world_size_and_plan(straight, tmp_path) -> None:
    a = straight["result"]
    assert a["plan"].count("data_parallel") > 0  # small tables, replicated unasked: resharded below
    for world_size, overrides in ((1, {}), (2, {"sharding_type": "column_wise"})):
        r = evaluate_run(str(straight["out"]), world_size=world_size, keep_predictions=True, **overrides)
        assert r["world_size"] == world_size and r["step"] == STEPS
        if overrides:
            assert "column_wise" in r["plan"]
        for k in a["predictions"]:
            torch.testing.assert_close(r["predictions"][k], a["predictions"][k], rtol=1e-5, atol=1e-6)
    # 1 -> 2: saved by one process, trained on by two with another plan
    one = _train(tmp_path / "one", world_size=1, max_steps=18)
    two = evaluate_run(str(tmp_path / "one"), world_size=2, keep_predictions=True, sharding_type="row_wise")
    for k in one["predictions"]:
        torch.testing.assert_close(two["predictions"][k], one["predictions"][k], rtol=1e-5, atol=1e-6)
    resumed = _train(tmp_path / "one", world_size=2, resume="auto", sharding_type="table_wise")
    assert resumed["steps"] == STEPS and resumed["step_losses"][:18] == one["step_losses"]


def test_exported_model_predicts_like_the_sharded_one(straight, tmp_path) -> None:
    assert main(["export", "--run", str(straight["out"]), "--to", str(tmp_path / "export")]) == 0
    model = load_exported(str(tmp_path / "export"))
    assert not torch.distributed.is_initialized()
    config, _ = load_run(str(straight["out"]))
    data = prepare_data(config).eval
    preds: dict = {}
    with torch.no_grad():
        for batch in data.batches(500, drop_last=False):
            _, (_, p, _) = model(batch)
            for k, v in p.items():
                preds.setdefault(k, []).append(v)
    expected = straight["result"]["predictions"]
    assert set(preds) == set(expected)
    for k in expected:
        torch.testing.assert_close(torch.cat(preds[k])[: len(data)], expected[k], rtol=1e-5, atol=1e-6)


def _damage(straight, tmp_path, how: str) -> str:
    run = tmp_path / "run"
    shutil.copytree(straight["out"], run)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    shard = os.path.join(ckpt, "__1_0.distcp")
    if how == "truncate":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    elif how == "flip":
        with open(shard, "r+b") as f:
            f.seek(os.path.getsize(shard) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "manifest":
        os.remove(os.path.join(ckpt, "MANIFEST.json"))
    return str(run)


@pytest.mark.parametrize("how, message", [("truncate", "truncated"), ("flip", "sha256"), ("manifest", "incomplete")])
def test_damaged_checkpoint_is_a_clear_error(straight, tmp_path, capsys, how, message) -> None:
    run = _damage(straight, tmp_path, how)
    with pytest.raises(CheckpointError, match=message):
        evaluate_run(run)
    assert main(["evaluate", "--run", run]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err or "incomplete" in err


def test_unfinished_checkpoint_is_never_the_latest(straight, tmp_path) -> None:
    root = tmp_path / "checkpoints"
    shutil.copytree(straight["out"] / "checkpoints", root)
    newest = latest_checkpoint(str(root))
    (root / "step_000000099.tmp").mkdir()  # a crash while writing step 99
    os.remove(root / "latest")
    assert latest_checkpoint(str(root)) == newest and all(not p.endswith(".tmp") for p in list_checkpoints(str(root)))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    with pytest.raises(FloatingPointError, match="NaN/inf.*last good checkpoint"):
        train(TrainConfig.make(dataset="synthetic", synthetic_rows=3000, synthetic_scale=0.05, embedding_dim=16,
                               epochs=3, batch_size=64, progress=False, verbose=False, report=False,
                               dense_optimizer="sgd", dense_lr=3.0, checkpoint_every=5, output_dir=str(tmp_path)))
    root = str(tmp_path / "checkpoints")
    assert [os.path.basename(p) for p in list_checkpoints(root)] == ["step_000000005"]
    assert evaluate_run(str(tmp_path))["step"] == 5  # loads, and verifies


def test_resume_at_other_world_sizes_counts_epochs_not_steps(tmp_path) -> None:
    """The per-rank batch kept, a world size change changes the steps per epoch: each resume trains
    the epochs left (2 ranks: 6 steps an epoch, 1 rank: 12), never a step count of another world size."""
    base = dict(dataset="synthetic", synthetic_rows=4000, batch_size=256, progress=False, verbose=False,
                report=False, output_dir=str(tmp_path))
    assert train(TrainConfig.make(**base, world_size=2, epochs=1)).steps == 6
    assert train(TrainConfig.make(**base, world_size=1, epochs=2, resume="auto")).steps == 18
    third = train(TrainConfig.make(**base, world_size=2, epochs=3, resume="auto"))
    assert third.steps == 24 and [h["epoch"] for h in third.to_dict()["history"]] == [1, 2, 3]
    again = train(TrainConfig.make(**base, world_size=2, epochs=3, resume="auto"))  # nothing left: same model
    assert again.steps == 24
