"""Score fusion (issue 4): normalisation, rank aggregation, voting / cascade, fusion modules, fit_weights.

Expected values are computed by hand in the comments and written literally.
"""

import math

import pytest
import torch

from torchrec_fusion.evaluation.metrics import auc
from torchrec_fusion.fusion import (
    RANK_FUSIONS,
    GatedFusion,
    RankFusion,
    ScoreNormalizer,
    StackingFusion,
    WeightedFusion,
    aggregate,
    aggregate_lists,
    borda,
    cascade,
    combanz,
    combmax,
    combmed,
    combmin,
    combmnz,
    combsum,
    fit_weights,
    fuse,
    majority_vote,
    normalize,
    ranks,
    rrf,
    votes,
    weighted_vote,
)

NAN, INF = float("nan"), float("inf")


def close(a: torch.Tensor, b, tol: float = 1e-5) -> bool:
    return torch.allclose(a.double(), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------- normalize

def test_minmax_fitted_then_frozen_in_eval() -> None:
    norm = ScoreNormalizer("minmax", num_scores=2).fit(torch.tensor([[0., 10.], [4., 30.]]))
    assert norm(torch.tensor([[2., 20.]])).tolist() == [[.5, .5]]
    norm.eval()
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    # (100 - 0) / 4 = 25, (-100 - 10) / 20 = -5.5: the other batch's range is not used
    assert norm(torch.tensor([[100., -100.]])).tolist() == [[25., -5.5]]
    assert all(torch.equal(state[k], v) for k, v in norm.state_dict().items())


def test_running_stats_update_in_training_only() -> None:
    norm = ScoreNormalizer("zscore", 1, track_running_stats=True, momentum=.5).train()
    norm(torch.tensor([0., 2.]))                   # first batch copied: mean 1, std 1
    out = norm(torch.tensor([4., 6.]))             # batch mean 5 -> 1 + .5 * (5 - 1) = 3, std 1
    assert norm.mean.tolist() == [3.] and norm.std.tolist() == [1.] and out.tolist() == [1., 3.]
    norm.eval()
    assert norm(torch.tensor([10., 20.])).tolist() == [7., 17.]    # (x - 3) / 1, stats unchanged
    assert norm.mean.tolist() == [3.] and int(norm.num_batches_tracked) == 2


def test_training_without_tracking_does_not_update() -> None:
    norm = ScoreNormalizer("zscore", 1).fit(torch.tensor([0., 2.])).train()
    norm(torch.tensor([100., 300.]))
    assert norm.mean.tolist() == [1.] and norm.std.tolist() == [1.]


def test_rank_percentile_interpolates_quantiles() -> None:
    norm = ScoreNormalizer("rank", 1, num_quantiles=3).fit(torch.tensor([0., 10.])).eval()   # quantiles 0, 5, 10
    assert norm.quantiles.tolist() == [[0., 5., 10.]]
    # 2.5: halfway 0..5 -> .25; 7.5 -> .75; below/above the range -> 0/1; 5 -> level 1/2
    assert norm(torch.tensor([2.5, 7.5, -1., 11., 5.])).tolist() == [.25, .75, 0., 1., .5]
    norm(torch.tensor([100., 200.]))
    assert norm.quantiles.tolist() == [[0., 5., 10.]]


def test_rank_percentile_tied_quantiles() -> None:
    # [1, 1, 1, 3] at levels 0, .25, .5, .75, 1 -> positions 0, .75, 1.5, 2.25, 3 -> 1, 1, 1, 1.5, 3
    norm = ScoreNormalizer("rank", 1, num_quantiles=5).fit(torch.tensor([1., 1., 1., 3.]))
    assert close(norm.quantiles, [[1., 1., 1., 1.5, 3.]])
    # 1 equals quantiles 0..2 -> middle level 1/4; 2 is 1/3 of the way from 1.5 to 3 -> (3 + 1/3) / 4 = 5/6
    assert close(norm(torch.tensor([1., 2.])), [.25, 5 / 6])


def test_logit_and_none_need_no_fit() -> None:
    assert close(ScoreNormalizer("logit", 1)(torch.tensor([.5, .75])), [0., math.log(3)])
    assert ScoreNormalizer("none", 2)(torch.tensor([[1., 2.]])).tolist() == [[1., 2.]]


def test_normalizer_errors() -> None:
    norm = ScoreNormalizer("minmax", 2)
    with pytest.raises(RuntimeError, match="fit"):
        norm.eval()(torch.tensor([[1., 2.]]))
    with pytest.raises(ValueError, match="NaN"):
        norm.fit(torch.tensor([[1., NAN]]))
    with pytest.raises(ValueError, match="inf"):
        norm.fit(torch.tensor([[1., INF]]))
    norm.fit(torch.tensor([[0., 0.], [1., 1.]]))
    with pytest.raises(ValueError, match="inf"):
        norm(torch.tensor([[-INF, 0.]]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        norm(torch.tensor([[1., 2., 3.]]))
    with pytest.raises(ValueError, match="unknown"):
        ScoreNormalizer("softmax")


def test_functional_normalize_per_list() -> None:
    s = torch.tensor([[1., 2., 3., NAN], [5., 5., 5., 5.]])
    # row 0: mean 2, population std sqrt(2/3) = .816497 -> -1.224745, 0, 1.224745; row 1 constant -> 0
    assert close(normalize(s, "zscore"), [[-1.224745, 0., 1.224745, NAN], [0., 0., 0., 0.]])
    assert close(normalize(s, "minmax"), [[0., .5, 1., NAN], [0., 0., 0., 0.]])
    # ties get the mid-rank: [3, 1, 3, 2] -> 3: (2 below + (2 - 1) / 2) / 3 = 5/6; 1 -> 0; 2 -> 1/3
    assert close(normalize(torch.tensor([3., 1., 3., 2.]), "rank"), [5 / 6, 0., 5 / 6, 1 / 3])
    assert normalize(torch.tensor([[7.]]), "rank").tolist() == [[0.]]
    assert close(normalize(s.T, "minmax", dim=0), normalize(s, "minmax").T)
    assert normalize(torch.zeros(2, 0), "minmax").shape == (2, 0)
    with pytest.raises(ValueError, match="inf"):
        normalize(torch.tensor([1., INF]), "minmax")


# ----------------------------------------------------------------------------------------- rank aggregation

def test_ranks_ties_missing_empty() -> None:
    # .9 first; the two .5 by index (0 before 2); NaN takes no rank
    assert close(ranks(torch.tensor([[.5, .9, .5, NAN, .1]])), [[2., 1., 3., NAN, 4.]])
    assert ranks(torch.full((1, 3), NAN)).isnan().all()
    assert ranks(torch.zeros(2, 0)).shape == (2, 0)
    assert ranks(torch.tensor([[4.]])).tolist() == [[1.]]


def test_rrf_hand_case() -> None:
    a = torch.tensor([[.9, .5, .1]])          # ranks 1, 2, 3
    b = torch.tensor([[.2, .8, NAN]])         # ranks 2, 1, missing
    # k = 60: A = 1/61 + 1/62 = 0.0325224749, B the same, C = 1/63 = 0.0158730159
    assert close(rrf([a, b]), [[0.0325224749, 0.0325224749, 0.0158730159]], 1e-7)
    # weights 2, 1, k = 0: A = 2/1 + 1/2 = 2.5, B = 2/2 + 1/1 = 2, C = 2/3
    assert close(rrf([a, b], k=0, weights=[2., 1.]), [[2.5, 2., 2 / 3]])
    assert close(rrf([ranks(a), ranks(b)], k=0, weights=[2., 1.], ranked=True), [[2.5, 2., 2 / 3]])


def test_borda_spreads_unassigned_points() -> None:
    a = torch.tensor([[.9, .5, .1, NAN, NAN]])   # lists A, B, C
    b = torch.tensor([[NAN, .3, NAN, .7, NAN]])  # lists D, B; E listed by nobody
    # n = 4 (A-D). a: A 4, B 3, C 2, D gets (4 - 3 + 1) / 2 = 1. b: D 4, B 3, A and C (4 - 2 + 1) / 2 = 1.5
    assert close(borda([a, b]), [[5.5, 6., 3.5, 5., NAN]])
    # complete lists: plain Borda 3, 2, 1 per ranker
    assert borda([torch.tensor([[3., 2., 1.]]), torch.tensor([[1., 2., 3.]])]).tolist() == [[4., 4., 4.]]


def test_score_combinations_hand_case() -> None:
    s = [torch.tensor([[.2, .4, NAN, .0]]), torch.tensor([[.6, NAN, NAN, .5]]), torch.tensor([[.1, .1, NAN, .9]])]
    # listed by 3, 2, 0, 3 rankers
    assert close(combsum(s), [[.9, .5, NAN, 1.4]])
    assert close(combmnz(s), [[2.7, 1.0, NAN, 4.2]])
    assert close(combanz(s), [[.3, .25, NAN, 1.4 / 3]])
    assert close(combmax(s), [[.6, .4, NAN, .9]])
    assert close(combmin(s), [[.1, .1, NAN, .0]])
    assert close(combmed(s), [[.2, .25, NAN, .5]])
    assert close(combsum(s, weights=[1., 0., 2.]), [[.4, .6, NAN, 1.8]])


def test_fusions_batched_over_users() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 4, 6, generator=g)
    s[0, 1, :2] = NAN
    s[2, 3, 4:] = NAN
    for name, fn in RANK_FUSIONS.items():
        rows = torch.cat([fn(s[:, u:u + 1]) for u in range(4)])
        assert close(fn(s), rows, 1e-6), name


@pytest.mark.parametrize("name", sorted(RANK_FUSIONS))
def test_inf_raises_and_edge_lists(name: str) -> None:
    fn = RANK_FUSIONS[name]
    with pytest.raises(ValueError, match="inf"):
        fn([torch.tensor([[.1, INF]]), torch.tensor([[.1, .2]])])
    with pytest.raises(ValueError, match="inf"):
        fn([torch.tensor([[.1, -INF]])])
    assert fn([torch.zeros(2, 0), torch.zeros(2, 0)]).shape == (2, 0)          # empty lists
    assert fn([torch.full((1, 2), NAN), torch.full((1, 2), NAN)]).isnan().all()  # nothing listed
    single = fn([torch.tensor([[.5]]), torch.tensor([[.3]])])                     # one candidate
    assert single.shape == (1, 1) and torch.isfinite(single).all()


def test_single_item_values() -> None:
    one = [torch.tensor([[.5]]), torch.tensor([[.3]])]
    assert close(rrf(one), [[2 / 61]]) and borda(one).tolist() == [[2.]] and close(combsum(one), [[.8]])


def test_fuse_registry_and_norm() -> None:
    a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[2., 1., NAN]])
    # per-user min-max: a -> 0, .5, 1; b -> 1, 0, missing; CombSUM 1, .5, 1
    assert close(fuse("combsum", [a, b], norm="minmax"), [[1., .5, 1.]])
    assert close(fuse("rrf", [a, b], k=0), rrf([a, b], k=0))
    assert close(fuse("combmnz", torch.stack([a, b])), combmnz([a, b]))
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse("condorcet", [a, b])
    with pytest.raises(ValueError, match="weights"):
        rrf([a, b], weights=[1.])


def test_rank_registry_lists_members_and_capabilities() -> None:
    assert sorted(RANK_FUSIONS) == ["borda", "combanz", "combmax", "combmed", "combmin", "combmnz", "combsum", "rrf",
                                    "weighted"]
    assert sorted(n for n, f in RANK_FUSIONS.items() if f.takes_weights) == ["borda", "combmnz", "combsum", "rrf",
                                                                           "weighted"]
    assert {n: f.norm for n, f in RANK_FUSIONS.items() if f.norm} == {
        "combsum": "minmax", "combmnz": "minmax", "combanz": "minmax", "combmax": "minmax", "combmin": "minmax",
        "combmed": "minmax", "weighted": "zscore"}
    assert RANK_FUSIONS.options("rrf").k == 60.0 and RANK_FUSIONS.options("rrf", {"k": 1}).k == 1.0


def test_aggregate_reads_weights_norm_and_options_from_the_registry() -> None:
    a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[2., 1., NAN]])
    # comb*: per-user min-max first (a -> 0, .5, 1; b -> 1, 0, missing); weights 1, 2: 2, .5, 1
    assert close(aggregate("combsum", [a, b], [1., 2.]), [[2., .5, 1.]])
    assert close(aggregate("combmax", [a, b]), [[1., .5, 1.]])
    # weighted: per-user z-scores (a -> -1.224745, 0, 1.224745; b -> 1, -1, missing), weights 1, 2
    assert close(aggregate("weighted", [a, b], [1., 2.]), [[.775255, -2., 1.224745]])
    # rrf on ranks, options checked: k = 0 -> a ranks 3, 2, 1; b ranks 1, 2, -
    assert close(aggregate("rrf", [a, b], options={"k": 0}), [[1 / 3 + 1, 1., 1.]])
    with pytest.raises(ValueError, match=r"fusion 'combmax' takes no weights; these do: \['borda', 'combmnz'"):
        aggregate("combmax", [a, b], [1., 2.])
    with pytest.raises(ValueError, match=r"fusion 'borda' options: unknown option\(s\) \['k'\]; known: none"):
        aggregate("borda", [a, b], options={"k": 1})
    with pytest.raises(ValueError, match=r"fusion 'rrf' options.k: expected a number"):
        aggregate("rrf", [a, b], options={"k": "60"})


def test_a_registered_rank_fusion_is_aggregated_as_registered() -> None:
    RANK_FUSIONS.register("first", RankFusion(lambda s: s[0], norm="minmax"))
    try:
        a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[2., 1., NAN]])
        assert close(aggregate("first", [a, b]), [[0., .5, 1.]])
        with pytest.raises(ValueError, match="'first' takes no weights"):
            aggregate("first", [a, b], [1., 1.])
    finally:
        del RANK_FUSIONS["first"]


def test_aggregate_lists_masks_unlisted_candidates() -> None:
    s = {"a": torch.tensor([[9., 1., 2.]]), "b": torch.tensor([[9., 2., 1.]])}
    seen = torch.tensor([[True, False, False]])
    out = aggregate_lists(s, unlisted=seen)
    assert list(out) == ["rrf", "borda", "combsum"] and all(v[0, 0].isnan() for v in out.values())
    # without the seen item: a ranks 2, 1; b ranks 1, 2 -> a tie under every method
    assert close(out["borda"], [[NAN, 3., 3.]]) and close(out["combsum"], [[NAN, 1., 1.]])
    assert aggregate_lists({"a": s["a"]}) == {}


# ----------------------------------------------------------------------------------------- decision

def test_majority_and_weighted_vote() -> None:
    a, b = torch.tensor([[.9, .2, .7, .5]]), torch.tensor([[.6, .7, .1, .4]])
    c = torch.tensor([[.1, .8, NAN, .5]])
    # yes votes (>= .5): col0 a b; col1 b c; col2 a (c missing = no); col3 a c
    assert majority_vote([a, b, c]).tolist() == [[True, True, False, True]]
    assert majority_vote([a, b]).tolist() == [[True, False, False, False]]   # 1 of 2 is a tie -> no
    # per-ranker thresholds .8, .5, .0: col0 a b c; col1 b c; col2 none (a .7 < .8); col3 c
    assert majority_vote([a, b, c], thresholds=[.8, .5, .0]).tolist() == [[True, True, False, False]]
    # weights 3, 1, 1: shares 4/5, 2/5, 3/5, 4/5
    assert close(votes([a, b, c], weights=[3., 1., 1.]), [[.8, .4, .6, .8]])
    assert weighted_vote([a, b, c], [3., 1., 1.]).tolist() == [[True, False, True, True]]
    assert weighted_vote([a, b, c], [3., 1., 1.], quota=.7).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError, match="threshold"):
        votes([a, b], thresholds=[.5, .5, .5])
    with pytest.raises(ValueError, match="inf"):
        majority_vote([a, torch.tensor([[INF, 0., 0., 0.]])])


def test_cascade_demote_and_exclude() -> None:
    p = torch.tensor([[.9, .1, .6, NAN, .8], [.0, .0, .0, .0, .0]])
    v = torch.tensor([[1., 5., 3., 4., NAN], [2., 1., 3., 0., 0.]])
    # row 0: kept A, C (E missing from v stays NaN); B, D filtered (D: filter NaN); span 5 - 1 + 1 = 5
    # row 1: nothing kept; span 3 - 0 + 1 = 4 -> all shifted, order unchanged
    out = cascade(p, v, .5)
    assert close(out, [[1., 0., 3., -1., NAN], [-2., -3., -1., -4., -4.]])
    assert ranks(out)[0, :4].tolist() == [2., 3., 1., 4.]
    assert close(cascade(p, v, .5, exclude=True), [[1., -INF, 3., -INF, NAN], [-INF] * 5])
    with pytest.raises(ValueError, match="shape"):
        cascade(p, v[:, :2], .5)
    with pytest.raises(ValueError, match="inf"):
        cascade(p, v.clone().fill_(INF), .5)


# ----------------------------------------------------------------------------------------- fusion modules

PREDS = {"click": torch.tensor([1., 0., .5]), "like": torch.tensor([0., 1., .5])}


def test_weighted_fusion_modes() -> None:
    fixed = WeightedFusion(["click", "like"], [2., -1.])
    assert fixed(PREDS).tolist() == [2., -1., .5] and not list(fixed.parameters())
    learned = WeightedFusion(["click", "like"], [2., 1.], mode="learned")
    assert close(learned.weights(), [2., 1.]) and close(learned(PREDS), [2., 1., 1.5])
    uniform = WeightedFusion(["click", "like"], mode="simplex")
    assert close(uniform.weights(), [.5, .5])
    with pytest.raises(ValueError, match="non-negative"):
        WeightedFusion(["click", "like"], [1., -1.], mode="learned")
    with pytest.raises(ValueError, match="2 weights"):
        WeightedFusion(["click", "like"], [1.])
    with pytest.raises(KeyError, match="like"):
        fixed({"click": torch.zeros(3)})


@pytest.mark.parametrize("mode", ["simplex", "learned"])
def test_learned_weights_stay_feasible_after_steps(mode: str) -> None:
    fusion = WeightedFusion(["click", "like"], [.3, .7], mode=mode)
    opt = torch.optim.SGD(fusion.parameters(), lr=5.0)
    for _ in range(20):                 # push towards "click", and everything down
        opt.zero_grad()
        (-(fusion(PREDS) * torch.tensor([1., -3., -1.])).sum()).backward()
        opt.step()
    w = fusion.weights().detach()
    assert (w >= 0).all() and w[0] > .3
    if mode == "simplex":
        assert abs(float(w.sum()) - 1) < 1e-6


def test_weighted_fusion_with_fitted_normalizer() -> None:
    fusion = WeightedFusion(["click", "like"], [.5, .5], normalizer="minmax")
    ref = {"click": torch.tensor([0., 2.]), "like": torch.tensor([10., 30.])}
    fusion.normalizer.fit(fusion.stack(ref))
    fusion.eval()
    # click 1 -> .5, like 30 -> 1 -> .75
    assert fusion({"click": torch.tensor([1.]), "like": torch.tensor([30.])}).tolist() == [.75]


def test_gated_fusion_learns_context_dependent_weights() -> None:
    torch.manual_seed(0)
    fusion = GatedFusion(["a", "b"], context_dim=2, hidden=(8,))
    ctx = torch.tensor([[1., 0.], [0., 1.]]).repeat(16, 1)
    preds = {"a": torch.rand(32), "b": torch.rand(32)}
    target = torch.where(ctx[:, 0] > 0, preds["a"], preds["b"])          # context 0 -> a is right, 1 -> b
    w0 = fusion.gate_weights(ctx)
    assert close(w0, torch.full((32, 2), .5))
    opt = torch.optim.Adam(fusion.parameters(), lr=.1)
    for _ in range(100):
        opt.zero_grad()
        ((fusion(preds, ctx) - target) ** 2).mean().backward()
        opt.step()
    w = fusion.gate_weights(ctx[:2]).detach()
    assert w[0, 0] > .9 and w[1, 1] > .9 and close(w.sum(-1), [1., 1.])


def test_stacking_fusion() -> None:
    lin = StackingFusion(["click", "like"], extra_dim=1, hidden=())
    with torch.no_grad():
        lin.mlp[0].weight.copy_(torch.tensor([[1., 2., 3.]]))
        lin.mlp[0].bias.fill_(-1.)
    # 1*s_click + 2*s_like + 3*extra - 1: [1 - 1, 2 - 1, .5 + 1 + 3 - 1]
    assert close(lin(PREDS, torch.tensor([[0.], [0.], [1.]])), [0., 1., 3.5])
    with pytest.raises(ValueError, match="extra"):
        lin(PREDS)
    assert StackingFusion(["click", "like"], hidden=(4, 4))(PREDS).shape == (3,)


# ----------------------------------------------------------------------------------------- fit_weights

def test_fit_weights_grid_auc() -> None:
    y = torch.tensor([0., 0., 1., 1.])
    good, noise = torch.tensor([.1, .2, .8, .9]), torch.tensor([.9, .1, .1, .3])
    # weights (good, noise) on a .25 grid: (0, 1) .5, (.25, .75) .5, (.5, .5) .75, (.75, .25) 1 first -> kept
    fit = fit_weights({"good": good, "noise": noise}, y, steps=4)
    assert fit.weights == {"good": .75, "noise": .25} and fit.value == 1.0


def test_fit_weights_logloss() -> None:
    y = torch.tensor([0., 0., 1., 1.])
    good, bad = torch.tensor([.2, .1, .9, .8]), torch.tensor([.9, .8, .1, .2])
    fit = fit_weights({"good": good, "bad": bad}, y, objective="logloss")
    # all weight on "good": -(ln .8 + ln .9 + ln .9 + ln .8) / 4 = 0.1642520
    assert fit.weights["good"] == 1.0 and abs(fit.value - 0.1642520) < 1e-6


def test_fit_weights_ndcg_per_user() -> None:
    groups = torch.tensor([1, 1, 1, 2, 2])
    y = torch.tensor([1., 0., 0., 0., 1.])
    a = torch.tensor([.9, .1, .2, .3, .8])
    b = torch.tensor([.1, .9, .2, .9, .2])
    # user 1 needs w_a > .5 (.1 + .8 w_a > .9 - .8 w_a), user 2 w_a > 7/12 (.2 + .6 w_a > .9 - .6 w_a):
    # on the .1 grid the first point with NDCG 1 for both is w_a = .6
    fit = fit_weights({"a": a, "b": b}, y, objective="ndcg", groups=groups, k=3)
    assert fit.weights["a"] == pytest.approx(.6) and fit.value == 1.0
    with pytest.raises(ValueError, match="groups"):
        fit_weights({"a": a, "b": b}, y, objective="ndcg")


def test_fit_weights_many_scores_search_is_deterministic() -> None:
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(200, generator=g) > .5).float()
    scores = {f"s{i}": torch.rand(200, generator=g) for i in range(5)}
    scores["s3"] = y * .4 + torch.rand(200, generator=g) * .5       # the informative one (overlapping)
    fit = fit_weights(scores, y, seed=3)
    assert max(fit.weights, key=fit.weights.get) == "s3" and abs(sum(fit.weights.values()) - 1) < 1e-9
    assert fit.value >= auc(scores["s3"], y)                       # one-hot s3 is a candidate
    assert fit_weights(scores, y, seed=3) == fit
    assert fit_weights(scores, y, objective=lambda s, t: -float(((s - t) ** 2).mean()), rounds=5).weights["s3"] > .3


def test_fit_weights_errors() -> None:
    s = {"a": torch.tensor([.1, .2])}
    with pytest.raises(ValueError, match="both classes"):
        fit_weights(s, torch.tensor([1., 1.]))
    with pytest.raises(ValueError, match="unknown objective"):
        fit_weights(s, torch.tensor([0., 1.]), objective="map")
    with pytest.raises(ValueError, match="inf"):
        fit_weights({"a": torch.tensor([.1, INF])}, torch.tensor([0., 1.]))


# ------------------------------------------------------------------------ issue 13: bad numbers in fusion

def test_zscore_of_a_constant_list_is_exactly_zero() -> None:
    # float32: nanmean of seven 0.3 is not 0.3 exactly; (x - mean) / clamped std gave 1.0 for every item
    assert normalize(torch.full((1, 7), .3), "zscore").tolist() == [[0.] * 7]
    assert normalize(torch.full((2, 5), .1, dtype=torch.float64), "zscore").eq(0).all()
    # a constant list beside missing candidates, and a varying list next to it, keep their values
    s = torch.tensor([[.3, .3, NAN, .3], [1., 2., 3., NAN]])
    assert close(normalize(s, "zscore"), [[0., 0., NAN, 0.], [-1.224745, 0., 1.224745, NAN]])
    # the flip it caused: run a is constant over items 0..6, run b lists items 0..7 (7 best, z = .35 / .229129
    # = 1.527525; item 6: 1.091089). With a at 1.0, items 0..6 got +1 and item 6 overtook item 7
    a, b = torch.full((1, 8), .3), torch.arange(8.).unsqueeze(0) / 10
    a[0, 7] = NAN
    fused = aggregate("weighted", [a, b])
    assert close(fused[0, 6:], [1.091089, 1.527525]) and int(fused.argmax()) == 7


@pytest.mark.parametrize("weights", [[NAN, 1.], [INF, 1.], [-1., 2.], [0., 0.]])
def test_bad_weights_are_refused(weights) -> None:
    a, b = torch.tensor([[3., 2., 1.]]), torch.tensor([[1., 2., 3.]])
    for name in ("rrf", "borda", "combsum", "combmnz", "weighted"):
        with pytest.raises(ValueError, match=r"weights must be finite and >= 0, not all 0"):
            aggregate(name, [a, b], weights)
    with pytest.raises(ValueError, match="vote weights must be finite"):
        votes([a, b], weights=weights)


def test_rrf_k_is_checked_and_used() -> None:
    a, b = torch.tensor([[3., 2., 1.]]), torch.tensor([[1., 2., 3.]])
    # k = 10: 1/11 + 1/13, 2/12, 1/13 + 1/11
    assert close(aggregate("rrf", [a, b], options={"k": 10}), [[1 / 11 + 1 / 13, 2 / 12, 1 / 13 + 1 / 11]])
    for k in (-1., NAN, INF):
        with pytest.raises(ValueError, match="RRF k must be finite and >= 0"):
            aggregate("rrf", [a, b], options={"k": k})


def test_aggregate_norm_overrides_the_registered_one() -> None:
    a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[2., 1., NAN]])
    assert close(aggregate("combsum", [a, b], norm="none"), [[2., 6., 10.]])          # raw scores
    assert close(aggregate("combmax", [a, b], norm="rank"), [[1., .5, 1.]])           # a: 0 .5 1; b: 1 0 -
    assert close(aggregate("weighted", [a, b], [1., 1.], norm="minmax"), aggregate("combsum", [a, b]))
    assert close(aggregate("rrf", [a, b], norm="none"), aggregate("rrf", [a, b]))
    with pytest.raises(ValueError, match="fusion 'borda' fuses ranks, which normalisation 'minmax' does not"):
        aggregate("borda", [a, b], norm="minmax")
    with pytest.raises(ValueError, match="unknown normalisation 'max'"):
        aggregate("combsum", [a, b], norm="max")
