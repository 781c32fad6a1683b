"""Per-user ranking metrics (issue 4): hand-computed cases, both protocols, edge users.

1/log2(3) = 0.6309297536, 1/log2(4) = 0.5, 1/log2(5) = 0.4306765581.
"""

import math

import pytest
import torch

from torchrec_fusion.evaluation.ranking import (
    as_mask,
    group_to_padded,
    hit_rate,
    mrr,
    ndcg,
    ranking_metrics,
    recall,
    sample_negatives,
    sampled_ranking_metrics,
)

NAN = float("nan")

SCORES = torch.tensor([
    [.9, .8, .7, .6, .5],   # u0: positives 1, 3 at ranks 2 and 4
    [.1, .2, .3, .4, .5],   # u1: every item positive
    [.3, .2, .1, .0, .9],   # u2: no positive
    [.9, .8, .1, .2, .3],   # u3: positive 4; items 0, 1 seen -> ranked 4, 3, 2
])
POSITIVES = [[1, 3], [0, 1, 2, 3, 4], [], [4]]
SEEN = [[], [], [], [0, 1]]


def close(a: torch.Tensor, b, tol: float = 1e-9) -> bool:
    return torch.allclose(a.double(), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0, equal_nan=True)


def test_full_protocol_hand_case() -> None:
    m = ranking_metrics(SCORES, POSITIVES, ks=(2, 5), exclude=SEEN)
    assert (m.num_users, m.num_skipped) == (3, 1)
    assert close(m.per_user["hr@2"], [1., 1., NAN, 1.])
    assert close(m.per_user["recall@2"], [.5, .4, NAN, 1.])           # 1/2, 2/5, 1/1
    # u0: DCG@2 = 1/log2(3), IDCG@2 = 1 + 1/log2(3) -> 0.3868528072; u1, u3 ideal
    assert close(m.per_user["ndcg@2"], [0.3868528072, 1., NAN, 1.])
    # u0: (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)) = 0.6509209298
    assert close(m.per_user["ndcg@5"], [0.6509209298, 1., NAN, 1.])
    assert close(m.per_user["recall@5"], [1., 1., NAN, 1.])
    assert close(m.per_user["mrr"], [.5, 1., NAN, 1.])
    assert m.mean["hr@2"] == 1.
    assert m.mean["recall@2"] == pytest.approx(0.6333333333)            # (.5 + .4 + 1) / 3
    assert m.mean["ndcg@2"] == pytest.approx(0.7956176024)              # (0.3868528072 + 2) / 3
    assert m.mean["mrr"] == pytest.approx(2.5 / 3)


def test_seen_items_excluded_changes_rank() -> None:
    # without excluding u3's seen items its positive is third: HR@2 0, MRR 1/3, NDCG@5 1/log2(4)
    m = ranking_metrics(SCORES[3:], POSITIVES[3:], ks=(2, 5))
    assert m.per_user["hr@2"].tolist() == [0.] and close(m.per_user["mrr"], [1 / 3])
    assert close(m.per_user["ndcg@5"], [.5])
    # mask form equals index lists
    mask = as_mask(SEEN, SCORES.shape)
    a = ranking_metrics(SCORES, POSITIVES, (2,), SEEN)
    b = ranking_metrics(SCORES, as_mask(POSITIVES, (4, 5)), (2,), mask)
    assert a.mean == b.mean


def test_single_function_forms_match() -> None:
    m = ranking_metrics(SCORES, POSITIVES, ks=(2,), exclude=SEEN)
    for fn, name in ((hit_rate, "hr@2"), (recall, "recall@2"), (ndcg, "ndcg@2")):
        per_user, mean = fn(SCORES, POSITIVES, 2, exclude=SEEN)
        assert close(per_user, m.per_user[name]) and mean == m.mean[name]
    assert mrr(SCORES, POSITIVES, exclude=SEEN)[1] == m.mean["mrr"]
    # MRR with a cutoff: u0's first positive is at rank 2 -> 0 at k = 1
    assert close(mrr(SCORES, POSITIVES, exclude=SEEN, k=1)[0], [0., 1., NAN, 1.])


def test_ties_missing_and_small_lists() -> None:
    # ties: lower index first, so the positive at index 1 of three equal scores ranks 2nd
    assert mrr(torch.tensor([[.5, .5, .5]]), [[1]])[1] == .5
    # NaN score = not a candidate: its positive does not count -> user skipped
    m = ranking_metrics(torch.tensor([[NAN, .1, .2]]), [[0]])
    assert m.num_skipped == 1 and math.isnan(m.mean["mrr"])
    # a seen positive does not count either
    assert ranking_metrics(torch.tensor([[.9, .1]]), [[0]], exclude=[[0]]).num_skipped == 1
    # K beyond the list: [.1, .2] ranks item 1 first; positive 0 at rank 2
    m = ranking_metrics(torch.tensor([[.1, .2]]), [[0]], ks=(10,))
    assert m.mean["hr@10"] == 1. and m.mean["recall@10"] == 1. and m.mean["ndcg@10"] == pytest.approx(0.6309297536)
    # single item, empty lists
    assert ranking_metrics(torch.tensor([[3.]]), [[0]], ks=(1,)).mean == {"hr@1": 1., "ndcg@1": 1., "recall@1": 1.,
                                                                             "mrr": 1.}
    empty = ranking_metrics(torch.zeros(2, 0), [[], []], ks=(1,))
    assert empty.num_skipped == 2 and all(math.isnan(v) for v in empty.mean.values())
    with pytest.raises(ValueError, match=r"\[U, N\]"):
        ranking_metrics(torch.zeros(3), [[0]])


def test_sample_negatives() -> None:
    heldout = torch.tensor([0, 1, 2, -1])
    seen = [[3, 4], [], [0, 1, 3, 4, 5], []]
    neg = sample_negatives(heldout, num_items=6, num_negatives=3, seen=seen, seed=7)
    assert neg.shape == (4, 3)
    allowed = [{1, 2, 5}, {0, 2, 3, 4, 5}, set(), set(range(6))]
    for u in range(4):
        drawn = [i for i in neg[u].tolist() if i >= 0]
        assert set(drawn) <= allowed[u] and len(set(drawn)) == len(drawn) == min(3, len(allowed[u]))
    assert neg[2].tolist() == [-1, -1, -1]
    assert torch.equal(neg, sample_negatives(heldout, 6, 3, seen=seen, seed=7))
    with pytest.raises(ValueError, match="num_negatives"):
        sample_negatives(heldout, 6, 7)


def test_sampled_protocol() -> None:
    scores = torch.arange(10.).repeat(3, 1)                      # item 9 best
    heldout = torch.tensor([9, 0, -1])
    m = sampled_ranking_metrics(scores, heldout, num_negatives=4, ks=(1, 5))
    # u0 beats every negative; u1 (worst item) ranks 5th of 5: NDCG@5 = 1/log2(6); u2 has no held-out item
    assert close(m.per_user["hr@1"], [1., 0., NAN]) and close(m.per_user["mrr"], [1., .2, NAN])
    assert close(m.per_user["ndcg@5"], [1., 1 / math.log2(6), NAN]) and m.num_skipped == 1
    # ties count against the positive: a constant scorer puts it last
    flat = sampled_ranking_metrics(torch.zeros(2, 10), torch.tensor([3, 7]), num_negatives=4, ks=(1,))
    assert flat.mean["hr@1"] == 0. and flat.mean["mrr"] == .2
    # seeded: same seed same result, users with too few negatives keep the ones they have
    again = sampled_ranking_metrics(scores, heldout, num_negatives=4, ks=(1, 5))
    assert again.mean == m.mean
    few = sampled_ranking_metrics(scores[:1], torch.tensor([0]), num_negatives=4, seen=[[1, 2, 3, 4, 5, 6, 7]])
    assert few.per_user["mrr"].tolist() == [1 / 3]                # only items 8, 9 left as negatives


def test_group_to_padded() -> None:
    s, y = group_to_padded(torch.tensor([5, 2, 5, 5]), torch.tensor([.1, .2, .3, .4]), torch.tensor([1., 1., 0., 0.]))
    assert close(s, [[.2, NAN, NAN], [.1, .3, .4]], 1e-6) and y.tolist() == [[1., 0., 0.], [1., 0., 0.]]
