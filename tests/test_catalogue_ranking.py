"""Ranking the whole catalogue: the task's bookkeeping by hand, and the sharded run on MovieLens."""

import torch
from conftest import ML100K, needs_ml100k

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.evaluation.catalogue import catalogue_report, catalogue_task
from torchrec_fusion.fusion.rank_aggregation import aggregate_lists
from torchrec_fusion.tasks import TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.trainer import train


def _rows(users, items, likes, source):
    u, i = torch.tensor(users), torch.tensor(items)
    return MultiTaskData(dense=torch.zeros(len(users), 1), sparse={"user": SparseColumn(u), "item": SparseColumn(i)},
                         num_embeddings={"user": 5, "item": 5}, tasks=[TaskSpec("like")],
                         labels=torch.tensor(likes, dtype=torch.float32)[:, None],
                         masks=torch.ones(len(users), 1, dtype=torch.bool), extras={"user": u, "item": i},
                         source=source)


def test_catalogue_task_bookkeeping() -> None:
    train = _rows([0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 0, 1, 1, 0], "train")
    # user 0 likes 2 and 4 held out; user 1 dislikes its held-out item: not evaluated; user 3 likes 0;
    # user 4 likes 1 but has no training row to score items with: not evaluated
    test = _rows([0, 0, 1, 3, 4], [2, 4, 3, 0, 1], [1, 1, 0, 1, 1], "test")
    t = catalogue_task(train, test, num_items=5)
    assert t.users.tolist() == [0, 3]
    assert t.positives.int().tolist() == [[0, 0, 1, 0, 1], [1, 0, 0, 0, 0]]
    assert t.seen.int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]]
    assert t.heldout[1] == 0 and t.heldout[0] in (2, 4)
    # a score that puts the liked items first; the seen items (scored highest) must not count
    scores = torch.tensor([[9.0, 8.0, 3.0, 1.0, 2.0], [0.5, 0.4, 0.3, 0.6, 0.1]])
    both = {"s": scores, "flipped": -scores}
    r = catalogue_report({**both, **aggregate_lists(both, unlisted=t.seen)}, t, ks=(2,), num_negatives=2)
    assert r["s"]["hr@2"] == 1.0 and r["s"]["ndcg@2"] == 1.0 and r["s"]["mrr"] == 1.0
    assert r["flipped"]["mrr"] < 1.0 and set(r) == {"s", "flipped", "rrf", "borda", "combsum"}


@needs_ml100k
def test_movielens_catalogue_ranking_with_fusion_two_ranks() -> None:
    r = train(TrainConfig.make(dataset="movielens", data_dir=str(ML100K), world_size=2, epochs=1, ranking_eval=True,
                               fusion="weighted", progress=False, verbose=False))
    ranking = r["ranking"]
    assert set(ranking) == {"like", "rating", "fused", "rrf", "borda", "combsum", "popularity", "ease"}
    # the simple answers, on the same candidates and metric code (the reference numbers)
    assert ranking["popularity"]["baseline"] is True and abs(ranking["popularity"]["ndcg@10"] - 0.245) < 0.005
    assert ranking["ease"]["baseline"] is True and ranking["ease"]["ndcg@10"] > 0.43
    assert ranking["ease"]["ease_lambda"] > 0  # chosen on a split of the training rows
    users = {m["users"] for m in ranking.values()}
    assert users == {456}  # u1.test users with a liked held-out item they did not rate in training
    for name, m in ranking.items():
        assert 0 <= m["ndcg@10"] <= m["hr@10"] <= 1, (name, m)
        # better than random: 10 of ~1,600 unseen items is 0.6% per positive
        assert m["hr@10"] > 0.2 and m["sampled_hr@10"] > 0.3, (name, m)
