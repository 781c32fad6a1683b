"""Empty bags and batches where no task has a label: finite losses and gradients, for every balancer;
a whole sharded run with empty bags trains."""

import pytest
import torch

from torchrec_fusion.data.dataset import SparseColumn
from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.distributed.sharding import seed_embedding_tables
from torchrec_fusion.losses import BALANCERS
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.factory import build_train_model
from torchrec_fusion.training.trainer import train


def _empty_bags(data, feature: str, every: int = 1) -> None:
    """Empties the bag of ``feature`` on every ``every``-th row."""
    col = data.sparse[feature]
    lengths = col.lengths().clone()
    lengths[::every] = 0
    keep = torch.repeat_interleave(lengths > 0, col.lengths())
    data.sparse[feature] = SparseColumn(col.values[keep], torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))


@pytest.mark.parametrize("balancing", sorted(BALANCERS))
def test_all_masked_batch_with_empty_bags_is_finite(balancing: str) -> None:
    data, _ = make_synthetic(SyntheticConfig(num_rows=2000))
    for f in ("tags", "category"):
        _empty_bags(data, f)
    data.masks[:] = False
    model = build_train_model(TrainConfig.make(balancing=balancing, fusion="weighted"), data, device="cpu")
    seed_embedding_tables(model, 0)
    for _ in range(2):  # the second step sees the state the first left (DWA windows, GradNorm's start)
        loss, (_, preds, labels) = model(data.make_batch(torch.arange(64)))
        loss.backward()
        assert torch.isfinite(loss) and float(loss) == 0.0
        assert all(torch.isfinite(p).all() for p in preds.values())
        assert all(v.isnan().all() for v in labels.values())  # no label anywhere
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_sharded_run_with_empty_bags_trains() -> None:
    r = train(TrainConfig.make(dataset="synthetic", synthetic_rows=3000, synthetic_scale=0.05, epochs=1,
                               batch_size=64, world_size=2, progress=False, verbose=False, report=False,
                               history_length=0, tasks=["ctr", "cvr"]))
    assert all(torch.isfinite(torch.tensor(r["step_losses"])))
