"""History features: from training rows only, leave-one-out, capped."""

import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.history import add_history_features
from torchrec_fusion.tasks import TaskSpec


def _pairs(users, items, source) -> MultiTaskData:
    n = len(users)
    u, i = torch.tensor(users), torch.tensor(items)
    return MultiTaskData(dense=torch.zeros(n, 1), sparse={"user": SparseColumn(u), "item": SparseColumn(i)},
                         num_embeddings={"user": 3, "item": 4}, tasks=[TaskSpec("like")],
                         labels=torch.ones(n, 1), masks=torch.ones(n, 1, dtype=torch.bool),
                         extras={"user": u, "item": i}, source=source)


def _bags(col: SparseColumn):
    vals, lens = col.values.tolist(), col.lengths().tolist()
    out, k = [], 0
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
