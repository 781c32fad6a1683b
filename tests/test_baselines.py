"""Popularity and EASE baselines: closed forms by hand, the lambda chooser's split, the size guard,
and the reference numbers on MovieLens 100k u1."""

from typing import List, Tuple

import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.evaluation import baselines
from torchrec_fusion.evaluation.baselines import (
    baseline_scores,
    choose_ease_lambda,
    ease,
    ease_scores,
    interaction_matrix,
    popularity_scores,
    validation_split,
)
from torchrec_fusion.evaluation.catalogue import catalogue_report, catalogue_task, relevant_rows
from torchrec_fusion.tasks import TaskSpec

X = [[1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def _rows(users: List[int], items: List[int], likes: List[float], source: str,
          sizes: Tuple[int, int] = (4, 5)) -> MultiTaskData:
    u, i = torch.tensor(users), torch.tensor(items)
    return MultiTaskData(dense=torch.zeros(len(users), 1), sparse={"user": SparseColumn(u), "item": SparseColumn(i)},
                         num_embeddings={"user": sizes[0], "item": sizes[1]}, tasks=[TaskSpec("like")],
                         labels=torch.tensor(likes, dtype=torch.float32)[:, None],
                         masks=torch.ones(len(users), 1, dtype=torch.bool), extras={"user": u, "item": i},
                         source=source)


def _random_rows(n: int, users: int, items: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, users, (n,), generator=g), torch.randint(0, items, (n,), generator=g)


@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_ease_matches_closed_form(lam: float) -> None:
    x = np.array(X, dtype=np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    expected = np.eye(5) - p / np.diag(p)[None, :]
    # the same solution as the constrained least squares: min |X - XB|^2 + lam |B|^2 with diag(B) = 0
    users, items = np.nonzero(x)
    b = ease(interaction_matrix(torch.tensor(users), torch.tensor(items), 4, 5), lam)
    assert b.dtype == torch.float32 and torch.equal(b.diagonal(), torch.zeros(5))
    np.testing.assert_allclose(b.numpy(), expected - np.diag(np.diag(expected)), atol=1e-6)
    np.testing.assert_allclose(ease(torch.tensor(X, dtype=torch.float32), lam).numpy(), b.numpy(), atol=1e-6)
    # KKT of the constrained problem: the gradient of each column vanishes off the diagonal
    grad = (x.T @ x + lam * np.eye(5)) @ b.numpy().astype(np.float64) - x.T @ x
    np.testing.assert_allclose(grad - np.diag(np.diag(grad)), 0, atol=1e-5)
    np.testing.assert_allclose(ease_scores(torch.tensor(X[:2], dtype=torch.float32), b).numpy(),
                               x[:2] @ b.numpy(), atol=1e-6)


def test_interaction_matrix_and_popularity() -> None:
    users, items = torch.tensor([0, 0, 2, 0, 1]), torch.tensor([1, 2, 0, 1, 1])
    x = interaction_matrix(users, items, 3, 4)
    assert x.is_sparse and x.to_dense().tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert popularity_scores(items, 4).tolist() == [1, 3, 1, 0]  # counts every training row


def test_validation_split_is_seeded_per_user() -> None:
    users = torch.tensor([0] * 10 + [1] * 5 + [2] + [3] * 20)[torch.randperm(36, generator=torch.Generator())]
    held = validation_split(users, fraction=0.2, seed=3)
    assert [int(held[users == u].sum()) for u in range(4)] == [2, 1, 0, 4]
    assert torch.equal(held, validation_split(users, fraction=0.2, seed=3))
    assert not torch.equal(held, validation_split(users, fraction=0.2, seed=4))


def test_choose_ease_lambda_reads_training_rows_only_and_is_reproducible() -> None:
    users, items = _random_rows(3000, 60, 40, seed=0)
    relevant = torch.rand(3000, generator=torch.Generator().manual_seed(1)) < 0.5
    lam, ndcgs = choose_ease_lambda(users, items, 40, lambdas=(1.0, 30.0, 1000.0), relevant=relevant, seed=5)
    assert set(ndcgs) == {1.0, 30.0, 1000.0} and ndcgs[lam] == max(ndcgs.values())
    assert (lam, ndcgs) == choose_ease_lambda(users, items, 40, lambdas=(1.0, 30.0, 1000.0), relevant=relevant,
                                              seed=5)
    other = choose_ease_lambda(users, items, 40, lambdas=(1.0, 30.0, 1000.0), relevant=relevant, seed=6)[1]
    assert other != ndcgs  # another seed, another split
    # the relevance mask decides which held-out rows count
    assert choose_ease_lambda(users, items, 40, lambdas=(1.0, 30.0, 1000.0), seed=5)[1] != ndcgs
    # a test split is never an input: adding test interactions to the task does not change the choice
    train = _rows(users.tolist(), items.tolist(), relevant.float().tolist(), "train", (60, 40))
    t_users, t_items = _random_rows(500, 60, 40, seed=2)
    for test_rows in (500, 100):
        test = _rows(t_users[:test_rows].tolist(), t_items[:test_rows].tolist(), [1.0] * test_rows, "test", (60, 40))
        task = catalogue_task(train, test, 40)
        _, info = baseline_scores(train, task, relevant, seed=5, lambdas=(1.0, 30.0, 1000.0))
        assert info == {"ease_lambda": lam, "ease_validation_ndcg@10": {f"{k:g}": v for k, v in ndcgs.items()}}


def test_baseline_scores_and_report_flag() -> None:
    train = _rows([0, 0, 1, 1, 2, 2, 3], [0, 1, 1, 2, 0, 2, 3], [1, 1, 1, 1, 1, 0, 1], "train")
    test = _rows([0, 1, 3], [2, 3, 0], [1, 1, 1], "test")
    task = catalogue_task(train, test, 5)
    scores, info = baseline_scores(train, task, relevant_rows(train), lambdas=(1.0, 10.0))
    assert set(scores) == {"popularity", "ease"} and info["ease_lambda"] in (1.0, 10.0)
    assert scores["popularity"].tolist() == [[2, 2, 2, 1, 0]] * 3
    x = interaction_matrix(train.extras["user"], train.extras["item"], 4, 5).to_dense()
    torch.testing.assert_close(scores["ease"], x[task.users] @ ease(x, info["ease_lambda"]))
    report = catalogue_report({"model": -scores["popularity"], **scores}, task, ks=(2,), num_negatives=2,
                              baselines=scores)
    assert [m.get("baseline") for m in report.values()] == [None, True, True]
    assert all(isinstance(v, float) for m in report.values() for k, v in m.items() if k not in ("users", "baseline"))


def test_size_guard_skips_ease() -> None:
    train = _rows([0, 0, 1, 2], [0, 1, 2, 3], [1, 1, 1, 1], "train")
    task = catalogue_task(train, _rows([0, 1], [2, 3], [1, 1], "test"), 5)
    scores, info = baseline_scores(train, task, max_items=4)
    assert set(scores) == {"popularity"} and "5 items > 4" in info["ease_skipped"]
    with pytest.raises(ValueError, match="at most 4 items"):
        ease(torch.ones(2, 5), 1.0, max_items=4)
    assert baselines.EASE_MAX_ITEMS >= 10_000


@needs_ml100k
def test_movielens_u1_reference_numbers() -> None:
    d = load_dataset("movielens", {"data_dir": str(ML100K)}, seed=0)
    train = d.train.in_memory_rows()
    assert train is not None
    task = catalogue_task(train, d.test, train.num_embeddings["item"], "like")
    scores, info = baseline_scores(train, task, relevant_rows(train, "like"))
    report = catalogue_report(scores, task, baselines=scores)
    assert report["popularity"]["users"] == 456
    assert report["popularity"]["ndcg@10"] == pytest.approx(0.245, abs=0.005)
    assert report["popularity"]["hr@10"] == pytest.approx(0.783, abs=0.005)
    assert info["ease_lambda"] == 300.0, info  # validation NDCG@10 peaks between 300 and 500
    assert report["ease"]["ndcg@10"] >= 0.43 and report["ease"]["hr@10"] >= 0.9, report["ease"]
