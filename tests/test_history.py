"""History features: from training rows only, leave-one-out, capped."""

from typing import Dict, List, Optional, Sequence, Set

import pytest
import torch
from conftest import ML100K, needs_ml100k

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.history import InteractionHistory, _grouped_bags, _KeyBags, add_history_features
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.tasks import TaskKind, TaskSpec


def _pairs(users: List[int], items: List[int], source: str, likes: Optional[Sequence[Optional[int]]] = None
           ) -> MultiTaskData:
    """Rows of (user, item) with a ``like`` label (1 unless ``likes`` says; None there: absent)
    and a ``rating`` regression label."""
    n = len(users)
    u, i = torch.tensor(users), torch.tensor(items)
    likes = [1] * n if likes is None else likes
    like = torch.tensor([float(x) if x is not None else 0.0 for x in likes])
    present = torch.tensor([x is not None for x in likes])
    return MultiTaskData(dense=torch.zeros(n, 1), sparse={"user": SparseColumn(u), "item": SparseColumn(i)},
                         num_embeddings={"user": 3, "item": 4},
                         tasks=[TaskSpec("like"), TaskSpec("rating", TaskKind.REGRESSION)],
                         labels=torch.stack([like, like], 1), masks=torch.stack([present, torch.ones(n).bool()], 1),
                         extras={"user": u, "item": i}, source=source)


def _bags(col: SparseColumn) -> List[List[int]]:
    vals, lens = col.values.tolist(), col.lengths().tolist()
    out: List[List[int]] = []
    k = 0
    for n in lens:
        out.append(sorted(vals[k:k + n]))
        k += n
    return out


def test_history_is_leave_one_out_from_train_only() -> None:
    train = _pairs([0, 0, 1, 0], [0, 1, 1, 3], "train")
    test = _pairs([0, 1, 2], [2, 0, 1], "test")
    train, test = add_history_features(train, test, max_len=10)
    assert _bags(train.sparse["user_history"]) == [[1, 3], [0, 3], [], [0, 1]]
    assert _bags(test.sparse["user_history"]) == [[0, 1, 3], [1], []]  # user 2 has no training rows
    assert _bags(train.sparse["item_audience"]) == [[], [1], [0], []]
    assert _bags(test.sparse["item_audience"]) == [[], [0], [0, 1]]
    assert train.pooling["user_history"] == "mean" and train.num_embeddings["user_history"] == 4
    # the bags ride along in batches
    b = train.make_batch(torch.tensor([3, 0]))
    assert b.sparse_features["user_history"].lengths().tolist() == [2, 2]


def test_history_is_capped() -> None:
    train = _pairs([0] * 4 + [1], [0, 1, 2, 3, 0], "train")
    test = _pairs([0], [0], "test")
    train, test = add_history_features(train, test, max_len=2, seed=5)
    assert test.sparse["user_history"].lengths().tolist() == [2]
    assert max(train.sparse["user_history"].lengths().tolist()) <= 2


def test_liked_bag_holds_the_users_other_liked_items() -> None:
    # user 0 liked items 0 and 3 (item 1: label 0, item 2: label absent); user 1 liked nothing
    train = _pairs([0, 0, 0, 0, 1], [0, 1, 2, 3, 1], "train", likes=[1, 0, None, 1, 0])
    test = _pairs([0, 1, 2], [1, 0, 3], "test")
    train, test = add_history_features(train, test, max_len=10_000, liked="like")  # beyond any history
    assert _bags(train.sparse["user_liked"]) == [[3], [0, 3], [0, 3], [0], []]
    assert _bags(test.sparse["user_liked"]) == [[0, 3], [], []]
    assert _bags(train.sparse["user_history"]) == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], []]
    assert train.num_embeddings["user_liked"] == 4 and train.pooling["user_liked"] == "mean"
    b = train.make_batch(torch.tensor([4, 0]))
    assert b.sparse_features["user_liked"].lengths().tolist() == [0, 1]


def test_liked_bag_is_optional_and_needs_a_binary_task() -> None:
    train = _pairs([0, 0, 1], [0, 1, 1], "train")
    plain = InteractionHistory(train, max_len=2).add_to(_pairs([0, 1], [2, 0], "test"))
    assert plain.feature_names == ["user", "item", "user_history", "item_audience"]
    with pytest.raises(ValueError, match="binary"):
        InteractionHistory(train, liked="rating")
    with pytest.raises(ValueError, match="no task"):
        InteractionHistory(train, liked="click")


def _reference(bags: SparseColumn, keys: torch.Tensor, exclude: torch.Tensor) -> List[List[int]]:
    vals, ends = bags.values.tolist(), bags.lengths().cumsum(0).tolist()
    return [[v for v in vals[ends[k] - n:ends[k]] if v != x]
            for k, x, n in zip(keys.tolist(), exclude.tolist(), bags.lengths()[keys].tolist())]


@pytest.mark.parametrize("max_len", [1, 3, 1000])
@pytest.mark.parametrize("repeats", [False, True])
def test_leave_one_out_matches_a_plain_filter(max_len: int, repeats: bool) -> None:
    """The lookup-and-skip gather keeps each bag's order and drops every copy of the row's value."""
    g = torch.Generator().manual_seed(max_len)
    keys = torch.randint(0, 30, (400,), generator=g)
    vals = torch.randint(0, 50, (400,), generator=g)
    if not repeats:  # one value per (key, value) pair, as in a ratings table
        pairs = torch.unique(keys * 50 + vals)
        keys, vals = pairs // 50, pairs % 50
    bags = _grouped_bags(keys, vals, 32, max_len, seed=3)  # keys 30, 31 have empty bags
    row_keys = torch.cat([keys[:200], torch.randint(0, 32, (300,), generator=g)])
    exclude = torch.cat([vals[:200], torch.randint(-1, 60, (300,), generator=g)])  # beyond any value too
    got = _KeyBags(bags).rows(row_keys, exclude)
    assert _in_order(got.values, got.lengths()) == _reference(bags, row_keys, exclude)


def _in_order(vals: torch.Tensor, lens: torch.Tensor) -> List[List[int]]:
    flat, ends = vals.tolist(), lens.cumsum(0).tolist()
    return [flat[e - n:e] for e, n in zip(ends, lens.tolist())]


@needs_ml100k
def test_ml100k_liked_bag_is_every_other_liked_item() -> None:
    loaded = load_dataset("movielens", {"data_dir": str(ML100K)})
    train, test = loaded.train.in_memory_rows(), loaded.test.in_memory_rows()
    assert train is not None and test is not None
    history = InteractionHistory(train, max_len=2048, liked="like")
    history.add_to(train)
    history.add_to(test)
    u, i = train.extras["user"].tolist(), train.extras["item"].tolist()
    like = train.labels[:, train.task_names.index("like")].tolist()
    rated: Dict[int, Set[int]] = {}
    liked: Dict[int, Set[int]] = {}
    for a, b, y in zip(u, i, like):
        rated.setdefault(a, set()).add(b)
        if y == 1:
            liked.setdefault(a, set()).add(b)
    for d in (train, test):
        rows = torch.arange(0, len(d), 97)
        bags, hist = (_in_order(*d.sparse[k].take(rows)) for k in ("user_liked", "user_history"))
        for r, a, b in zip(range(len(rows)), d.extras["user"][rows].tolist(), d.extras["item"][rows].tolist()):
            assert sorted(bags[r]) == sorted(liked.get(a, set()) - {b})
            assert sorted(hist[r]) == sorted(rated.get(a, set()) - {b})
    assert max(len(s) for s in rated.values()) > 64  # full histories, not a cap
