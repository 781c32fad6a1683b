"""Sampled negatives: never an observed item, seeded per (seed, epoch, rank, step), popularity^alpha
frequencies, and the labels, masks and features of the mixed batches."""

import time
from typing import Any, Dict, Set, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.conftest import ML100K, needs_ml100k
from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.candidates import candidate_builder
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.negatives import (
    INTERACTION,
    NegativeSampledData,
    NegativeSampler,
    observed_rows,
    with_interaction,
)
from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
from torchrec_fusion.data.types import BatchSource, CandidateRows

ITEM_FEATURES = ["item", "category", "tags"]


@pytest.fixture(scope="module")
def synthetic() -> Tuple[MultiTaskData, CandidateRows]:
    sizes = {"user": 300, "item": 200, "category": 20}
    train, _ = make_synthetic(SyntheticConfig(num_rows=20_000, table_sizes=sizes, num_tags=50, seed=3))
    return train, candidate_builder(train, ITEM_FEATURES)


def _observed(users: torch.Tensor, items: torch.Tensor) -> Set[Tuple[int, int]]:
    return set(zip(users.tolist(), items.tolist()))


def _by_key(kjt: KeyedJaggedTensor) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    return {k: (jt.values(), jt.lengths()) for k, jt in kjt.to_dict().items()}


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_sampled_items_are_never_observed(synthetic: Tuple[MultiTaskData, CandidateRows], distribution: str) -> None:
    train, _ = synthetic
    users, items = train.extras["user"], train.extras["item"]
    sampler = NegativeSampler.from_data(train, num_negatives=8, distribution=distribution, alpha=0.75)
    batch_users = users[:3000]
    drawn = sampler.sample(batch_users, epoch=1, rank=0, step=2)
    assert drawn.shape == (3000, 8)
    seen = _observed(users, items)
    pairs = zip(batch_users.repeat_interleave(8).tolist(), drawn.flatten().tolist())
    assert not any(p in seen for p in pairs)
    assert torch.isin(drawn, items).all()  # only items with a training row, whose features exist


@pytest.mark.parametrize("distribution, max_rounds", [("uniform", 8), ("popularity", 8), ("uniform", 0)])
def test_user_who_saw_all_but_two_items(distribution: str, max_rounds: int) -> None:
    num_items = 50
    heavy = torch.tensor([i for i in range(num_items) if i not in (17, 41)])
    other = torch.randint(num_items, (400,), generator=torch.Generator().manual_seed(0))
    users = torch.cat([torch.zeros(len(heavy), dtype=torch.long), 1 + torch.arange(400) % 20])
    items = torch.cat([heavy, other])
    items[-num_items:] = torch.arange(num_items)  # every item has a training row
    sampler = NegativeSampler(users, items, num_items, num_negatives=16, distribution=distribution,
                              max_rounds=max_rounds)
    drawn = sampler.sample(torch.zeros(200, dtype=torch.long), epoch=0)
    assert set(drawn.flatten().tolist()) == {17, 41}
    mixed = sampler.sample(users[-100:], epoch=0)
    seen = _observed(users, items)
    assert not any(p in seen for p in zip(users[-100:].repeat_interleave(16).tolist(), mixed.flatten().tolist()))


def test_user_who_saw_everything_is_refused() -> None:
    users, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="user 0 interacted with every item"):
        NegativeSampler(users, items, 3, num_negatives=1)
    with pytest.raises(ValueError, match="distribution"):
        NegativeSampler(users[1:], items[1:], 3, num_negatives=1, distribution="zipf")


def test_seeded_reproducible_and_different_per_rank_epoch_step(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, _ = synthetic
    users = train.extras["user"][:512]
    a = NegativeSampler.from_data(train, 4, seed=7)
    b = NegativeSampler.from_data(train, 4, seed=7)
    base = a.sample(users, epoch=1, rank=0, step=3)
    assert torch.equal(base, b.sample(users, epoch=1, rank=0, step=3))
    for other in (a.sample(users, epoch=1, rank=1, step=3), a.sample(users, epoch=2, rank=0, step=3),
                  a.sample(users, epoch=1, rank=0, step=4), NegativeSampler.from_data(train, 4, seed=8).sample(
                      users, epoch=1, rank=0, step=3)):
        assert (other != base).float().mean() > 0.5


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_popularity_frequencies_follow_counts_to_the_alpha(alpha: float) -> None:
    num_items = 30
    counts = torch.arange(1, num_items + 1) * 10  # item i has 10 (i + 1) rows
    items = torch.repeat_interleave(torch.arange(num_items), counts)
    users = 2 + torch.arange(items.numel()) % 50
    users[0], items[0] = 0, 0  # user 0 saw item 0 only: drawn by rejection
    users[-25:], items[-25:] = 1, torch.arange(5, 30)  # user 1 saw all but items 0..4: drawn exactly
    counts = torch.bincount(items)
    sampler = NegativeSampler(users, items, num_items, num_negatives=1000, distribution="popularity", alpha=alpha)
    assert sampler.seen_mass[0] < 0.5 < sampler.seen_mass[1]
    for user, unseen in ((0, torch.arange(1, num_items)), (1, torch.arange(5))):
        drawn = sampler.sample(torch.full((200,), user), epoch=0).flatten()
        assert torch.isin(drawn, unseen).all()
        freq = torch.bincount(drawn, minlength=num_items).double()[unseen] / drawn.numel()
        want = counts[unseen].double() ** alpha
        assert torch.allclose(freq, want / want.sum(), rtol=0.06)
    q = sampler.log_q(torch.arange(num_items)).exp().double()
    assert torch.allclose(q, counts.double() ** alpha / (counts.double() ** alpha).sum(), rtol=1e-5)


def _check_mixed_batch(train: MultiTaskData, candidates: CandidateRows, data: NegativeSampledData,
                       batch: MultiTaskBatch, idx: torch.Tensor, epoch: int, rank: int, step: int) -> None:
    """The observed rows as ``train.make_batch`` builds them, then the candidate rows of the same draws."""
    b, k, t = idx.numel(), data.num_negatives, len(train.tasks)
    assert batch.batch_size == b * (1 + k) and batch.task_names == (*train.task_names, INTERACTION)
    want = train.make_batch(idx)
    users = train.extras["user"][idx]
    drawn = data.sampler.sample(users, epoch, rank, step)
    rows = candidates(users.repeat_interleave(k), drawn.flatten())
    neg = rows.make_batch(torch.arange(len(rows)))
    got = batch.sparse_features.to_dict()
    for key, (v, lens) in _by_key(want.sparse_features).items():
        nv, nl = _by_key(neg.sparse_features)[key]
        assert torch.equal(got[key].values(), torch.cat([v, nv])) and torch.equal(got[key].lengths(),
                                                                                  torch.cat([lens, nl]))
    assert torch.equal(batch.dense_features, torch.cat([want.dense_features, neg.dense_features]))
    assert torch.equal(batch.labels[:b, :t], want.labels) and torch.equal(batch.masks[:b, :t], want.masks)
    assert batch.label(INTERACTION)[:b].eq(1).all() and batch.mask(INTERACTION).all()
    assert not batch.labels[b:].any() and not batch.masks[b:, :t].any()
    assert torch.equal(observed_rows(batch), torch.arange(b * (1 + k)) < b)


def test_mixed_batches(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, candidates = synthetic
    data = NegativeSampledData(train, candidates, NegativeSampler.from_data(train, 3, seed=1))
    assert isinstance(data, BatchSource) and not data.in_memory and data.in_memory_rows() is None
    assert data.task_names == [*train.task_names, INTERACTION] and len(data) == len(train)
    assert data.num_batches(64, 2) == train.num_batches(64, 2)
    assert torch.allclose(data.label_means()[:-1], train.label_means(), equal_nan=True)
    assert data.label_means()[-1] == 0.25
    kw: Dict[str, Any] = dict(shuffle=True, seed=5, epoch=2, rank=1, world_size=2, start=3)
    cut = list(train.batch_indices(64, **kw))
    got = list(data.batches(64, **kw))
    assert len(got) == len(cut) == train.num_batches(64, 2) - 3
    for (step, idx), batch in list(zip(cut, got))[:3]:
        _check_mixed_batch(train, candidates, data, batch, idx, epoch=2, rank=1, step=step)
    again = next(data.batches(64, **kw))
    assert torch.equal(again.sparse_features.values(), got[0].sparse_features.values())


def test_padded_last_batch_and_weights(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, candidates = synthetic
    small = train.subset(torch.arange(100))
    small.weights = torch.full((100, len(small.tasks)), 2.0)
    data = NegativeSampledData(small, candidates, NegativeSampler.from_data(train, 2))
    last = list(data.batches(64, drop_last=False))[-1]  # 36 rows, padded to 64 (and 72 sampled to 128)
    assert last.batch_size == 64 * 3 and int(observed_rows(last).sum()) == 36
    present = torch.zeros(192, dtype=torch.bool)
    present[:36], present[64:64 + 72] = True, True
    assert torch.equal(last.mask(INTERACTION), present) and not last.masks[~present].any()
    assert last.weights is not None and last.weights[:36, :-1].eq(2).all() and last.weights[:36, -1].eq(1).all()
    assert last.sparse_features.lengths().view(len(small.sparse), -1)[:, ~present].eq(0).all()


def test_candidates_must_match_the_training_features(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, candidates = synthetic

    def without_tags(u: torch.Tensor, i: torch.Tensor) -> MultiTaskData:
        rows = candidates(u, i)
        del rows.sparse["tags"]
        return rows

    data = NegativeSampledData(train, without_tags, NegativeSampler.from_data(train, 2))
    with pytest.raises(ValueError, match="candidate rows have features"):
        next(data.batches(16))
    with pytest.raises(ValueError, match="already has a task"):
        NegativeSampledData(with_interaction(train), candidates, NegativeSampler.from_data(train, 2))


def test_with_interaction(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, _ = synthetic
    d = with_interaction(train.subset(torch.arange(50)))
    assert d.task_names[-1] == INTERACTION and not d.masks[:, -1].any() and len(train.tasks) == 4
    assert torch.equal(d.labels[:, :-1], train.labels[:50]) and torch.equal(d.masks[:, :-1], train.masks[:50])
    scored = with_interaction(train.subset(torch.arange(5)), evaluate=True)
    assert scored.masks[:, -1].all() and scored.labels[:, -1].eq(1).all()
    batch = d.make_batch(torch.arange(40), pad_to=48)
    assert torch.equal(observed_rows(batch), torch.arange(48) < 40)


def test_micro_timing_2048_rows_k4(synthetic: Tuple[MultiTaskData, CandidateRows]) -> None:
    train, candidates = synthetic
    data = NegativeSampledData(train, candidates, NegativeSampler.from_data(train, 4))
    idx = torch.arange(2048)
    data.make_batch(idx)
    t = time.perf_counter()
    for step in range(5):
        batch = data.make_batch(idx, step=step)
    plain = time.perf_counter()
    for _ in range(5):
        train.make_batch(idx)
    end = time.perf_counter()
    print(f"\n2048-row batch: K=4 {(plain - t) / 5 * 1e3:.1f} ms ({batch.batch_size} rows), "
          f"K=0 {(end - plain) / 5 * 1e3:.1f} ms")
    assert batch.batch_size == 2048 * 5


@needs_ml100k
def test_movielens_with_history() -> None:
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.prepare import prepare_data

    prepared = prepare_data(TrainConfig.make(dataset="movielens", data_dir=str(ML100K), history_length=16))
    train, candidates = prepared.train.in_memory_rows(), prepared.candidates
    assert train is not None and candidates is not None and "user_history" in train.sparse
    sampler = NegativeSampler.from_data(train, 4, distribution="popularity", alpha=0.5, seed=2)
    data = NegativeSampledData(train, candidates, sampler)
    cut = list(train.batch_indices(256, shuffle=True, epoch=1))
    for (step, idx), batch in list(zip(cut, data.batches(256, shuffle=True, epoch=1)))[:2]:
        _check_mixed_batch(train, candidates, data, batch, idx, epoch=1, rank=0, step=step)
    users = train.extras["user"]
    drawn = sampler.sample(users, epoch=0)  # a negative for every training row
    seen = _observed(users, train.extras["item"])
    assert not any(p in seen for p in zip(users.repeat_interleave(4).tolist(), drawn.flatten().tolist()))
