"""Rank and score aggregation (RRF, Borda, CombSUM/MNZ/ANZ/MAX/MIN/MED), batched over users.

Input ``scores`` is a list of K tensors ``[U, N]`` (one per ranker; column j is the same candidate in
all of them), or one tensor ``[K, U, N]``; any leading shape ``[..., N]`` works. Conventions:

* higher score = better; ``NaN`` = the candidate is not in that ranker's list (lists of unequal length);
  +/-inf raise ``ValueError``.
* :func:`ranks` is 1-based, ties broken by candidate index (lower index ranks first).
* a candidate missing from a ranker contributes nothing to that ranker's term (0 for RRF and CombSUM,
  left out of MAX/MIN/MED/ANZ); Borda spreads the points a ranker left unassigned (see :func:`borda`).
* the fused output is ``[U, N]``, higher = better, and ``NaN`` for a candidate no ranker listed.
* score-based methods (``comb*``) combine scores as given: normalise them first, e.g. ``fuse(...,
  norm="minmax")`` normalises each ranker's list per user (:func:`~torchrec_fusion.fusion.normalize.normalize`).
* ``weights`` (one per ranker, finite, >= 0, not all 0) scale each ranker's contribution where supported
  (RRF, Borda, CombSUM, CombMNZ); MAX/MIN/MED/ANZ take none (a weight would change a score's scale, not
  its say, and :func:`aggregate` refuses them there).

:data:`RANK_FUSIONS` registers each method with what it supports (:class:`RankFusion`: weights, its
normalisation, its options); :func:`aggregate` runs one as registered. Adding a method is its function
and one ``RANK_FUSIONS.register`` line.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch

from torchrec_fusion.fusion.normalize import METHODS, check_scores, normalize
from torchrec_fusion.registry import NoOptions, Registry, options_dict

Scores = Union[torch.Tensor, Sequence[torch.Tensor]]


def stack_scores(scores: Scores) -> torch.Tensor:
    """Stacks K ranker tensors ``[..., N]`` into ``[K, ..., N]`` and checks them (NaN = missing, no inf).

    Example::

        assert stack_scores([torch.zeros(2, 3), torch.ones(2, 3)]).shape == (2, 2, 3)
    """
    s = scores if isinstance(scores, torch.Tensor) else torch.stack(list(scores))
    if s.dim() < 2 or s.shape[0] == 0:
        raise ValueError(f"expected K >= 1 ranker tensors [..., N], got shape {tuple(s.shape)}")
    return check_scores(s if s.is_floating_point() else s.float(), allow_nan=True)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim (highest score = 1), ties broken by lower index first; NaN
    (missing) stays NaN and does not take a rank.

    Example::

        r = ranks(torch.tensor([[0.2, 0.9, float("nan"), 0.2]]))
        assert r[0, [0, 1, 3]].tolist() == [2., 1., 3.] and r[0, 2].isnan()
    """
    check_scores(scores, allow_nan=True)
    miss = torch.isnan(scores)
    order = torch.sort(torch.where(miss, -torch.inf, scores), dim=-1, descending=True, stable=True).indices
    pos = torch.arange(1, scores.shape[-1] + 1, dtype=scores.dtype).expand_as(scores)
    return torch.where(miss, torch.nan, torch.empty_like(scores).scatter_(-1, order, pos))


def _weights(weights: Optional[Sequence[float]], s: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones((), dtype=s.dtype)
    w = torch.as_tensor(weights, dtype=s.dtype)
    if w.shape != (s.shape[0],):
        raise ValueError(f"expected {s.shape[0]} weights (one per ranker), got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError(f"weights must be finite and >= 0, not all 0; got {w.tolist()}")
    return w.reshape(-1, *[1] * (s.dim() - 1))


def _finish(fused: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """NaN where no ranker listed the candidate."""
    return torch.where(torch.isnan(s).all(0), torch.nan, fused)


def _ranks_of(scores: Scores, ranked: bool) -> torch.Tensor:
    s = stack_scores(scores)
    return s if ranked else ranks(s)


def rrf(scores: Scores, k: float = 60.0, weights: Optional[Sequence[float]] = None,
        ranked: bool = False) -> torch.Tensor:
    """Reciprocal rank fusion (Cormack et al., 2009): ``sum_k w_k / (k + rank_k)``, 1-based ranks,
    missing candidates contribute 0; ``k`` is finite and >= 0. ``ranked=True``: the inputs already are
    1-based ranks (NaN = missing).

    Example::

        a = torch.tensor([[3., 2., 1.]])                        # ranks 1, 2, 3
        b = torch.tensor([[1., float("nan"), 2.]])              # ranks 2, -, 1
        f = rrf([a, b], k=1)                                    # 1/2 + 1/3, 1/3, 1/4 + 1/2
        assert torch.allclose(f, torch.tensor([[5 / 6, 1 / 3, 3 / 4]]))
    """
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"RRF k must be finite and >= 0, got {k}")
    r = _ranks_of(scores, ranked)
    return _finish((_weights(weights, r) / (k + r)).nansum(0), r)


def borda(scores: Scores, weights: Optional[Sequence[float]] = None, ranked: bool = False) -> torch.Tensor:
    """Borda count with the points left by short lists spread evenly (Borda-fuse, Aslam & Montague
    2001). Per user, ``n`` is the number of candidates listed by at least one ranker; a ranker gives its
    candidate at rank ``r`` ``n - r + 1`` points, and each of the ``n - m`` candidates it does not list
    (``m`` = its list length) the average of the remaining points 1..n-m, i.e. ``(n - m + 1) / 2``.
    With complete lists this is the plain Borda count.

    Example::

        a = torch.tensor([[3., 2., 1.]])                        # 3, 2, 1 points (n = 3)
        b = torch.tensor([[float("nan"), 5., float("nan")]])    # B: 3 points, A and C share 2 + 1: 1.5
        assert borda([a, b]).tolist() == [[4.5, 5., 2.5]]
    """
    r = _ranks_of(scores, ranked)
    listed = ~torch.isnan(r)
    n = listed.any(0).sum(-1, keepdim=True).to(r.dtype)
    m = listed.sum(-1, keepdim=True).to(r.dtype)
    points = torch.where(listed, n - r + 1, (n - m + 1) / 2)
    return _finish((_weights(weights, r) * points).sum(0), r)


def combsum(scores: Scores, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """CombSUM (Fox & Shaw, 1994): ``sum_k w_k * s_k`` over the rankers that list the candidate.

    Example::

        nan = float("nan")
        assert combsum([torch.tensor([[.5, .2, nan]]), torch.tensor([[.1, nan, nan]])]).allclose(
            torch.tensor([[.6, .2, nan]]), equal_nan=True)
    """
    s = stack_scores(scores)
    return _finish((_weights(weights, s) * s).nansum(0), s)


def combmnz(scores: Scores, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """CombMNZ: CombSUM times the number of rankers that list the candidate.

    Example::

        nan = float("nan")
        f = combmnz([torch.tensor([[.5, .2]]), torch.tensor([[.1, nan]])])   # (.5 + .1) * 2, .2 * 1
        assert f.allclose(torch.tensor([[1.2, .2]]))
    """
    s = stack_scores(scores)
    return combsum(s, weights) * (~torch.isnan(s)).sum(0)


def combanz(scores: Scores) -> torch.Tensor:
    """CombANZ: CombSUM divided by the number of rankers that list the candidate (mean over them).

    Example::

        assert combanz([torch.tensor([[.5, .2]]), torch.tensor([[.1, float("nan")]])]).allclose(
            torch.tensor([[.3, .2]]))
    """
    return stack_scores(scores).nanmean(0)


def combmax(scores: Scores) -> torch.Tensor:
    """CombMAX: the highest score any ranker gives the candidate.

    Example::

        s = [torch.tensor([[.5, .2]]), torch.tensor([[.1, float("nan")]])]
        assert combmax(s).allclose(torch.tensor([[.5, .2]]))
    """
    s = stack_scores(scores)
    return _finish(torch.where(torch.isnan(s), -torch.inf, s).amax(0), s)


def combmin(scores: Scores) -> torch.Tensor:
    """CombMIN: the lowest score a listing ranker gives the candidate.

    Example::

        s = [torch.tensor([[.5, .2]]), torch.tensor([[.1, float("nan")]])]
        assert combmin(s).allclose(torch.tensor([[.1, .2]]))
    """
    s = stack_scores(scores)
    return _finish(torch.where(torch.isnan(s), torch.inf, s).amin(0), s)


def combmed(scores: Scores) -> torch.Tensor:
    """CombMED: the median over the listing rankers (mean of the two middle ones for an even count).

    Example::

        s = [torch.tensor([[.1, .4]]), torch.tensor([[.2, float("nan")]]), torch.tensor([[.9, .6]])]
        assert combmed(s).allclose(torch.tensor([[.2, .5]]))
    """
    s = stack_scores(scores)
    srt = torch.where(torch.isnan(s), torch.inf, s).sort(0).values      # missing sorted last
    m = (~torch.isnan(s)).sum(0, keepdim=True)
    mid = srt.gather(0, ((m - 1) // 2).clamp_min(0)) + srt.gather(0, m // 2)
    return _finish(mid[0] / 2, s)


@dataclass(frozen=True)
class RrfOptions:
    """Options of :func:`rrf`."""

    k: float = field(default=60.0, metadata={"help": "RRF constant: each ranker adds w / (k + rank)"})


@dataclass(frozen=True)
class RankFusion:
    """A registered rank or score aggregation and what it supports.

    Attributes:
        fn: ``fn(scores, **kwargs)``, the fused ``[..., N]`` (calling the entry calls it).
        takes_weights: it accepts ``weights``, one per ranker.
        norm: the per-list normalisation :func:`aggregate` applies first (score-based methods combine
            scores, which must share a scale); None for rank-based ones.
        Options: its options dataclass (:class:`~torchrec_fusion.registry.NoOptions`: it takes none).

    Example::

        entry = RankFusion(combsum, takes_weights=True, norm="minmax")
        assert entry([torch.tensor([[.5]]), torch.tensor([[.25]])]).tolist() == [[.75]]
    """

    fn: Callable[..., torch.Tensor]
    takes_weights: bool = False
    norm: Optional[str] = None
    Options: type = NoOptions

    def __call__(self, scores: Scores, **kwargs: Any) -> torch.Tensor:
        return self.fn(scores, **kwargs)


RANK_FUSIONS: Registry[RankFusion] = Registry("fusion")
RANK_FUSIONS.register("rrf", RankFusion(rrf, takes_weights=True, Options=RrfOptions))
RANK_FUSIONS.register("borda", RankFusion(borda, takes_weights=True))
RANK_FUSIONS.register("combsum", RankFusion(combsum, takes_weights=True, norm="minmax"))
RANK_FUSIONS.register("combmnz", RankFusion(combmnz, takes_weights=True, norm="minmax"))
RANK_FUSIONS.register("combanz", RankFusion(combanz, norm="minmax"))
RANK_FUSIONS.register("combmax", RankFusion(combmax, norm="minmax"))
RANK_FUSIONS.register("combmin", RankFusion(combmin, norm="minmax"))
RANK_FUSIONS.register("combmed", RankFusion(combmed, norm="minmax"))
# a weighted sum of per-user z-scores: CombSUM on another scale
RANK_FUSIONS.register("weighted", RankFusion(combsum, takes_weights=True, norm="zscore"))


def fuse(name: str, scores: Scores, norm: Optional[str] = None, **kwargs: Any) -> torch.Tensor:
    """Runs ``RANK_FUSIONS[name]``; ``norm`` first normalises each ranker's list per user
    (``minmax``, ``zscore``, ``rank``, ...; NaN stays missing).

    Example::

        a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[1., 0., float("nan")]])
        assert fuse("combsum", [a, b], norm="minmax").allclose(torch.tensor([[1., .5, 1.]]))
        assert fuse("rrf", [a, b], k=0).allclose(torch.tensor([[1 / 3 + 1, 1 / 2 + 1 / 2, 1.]]))
    """
    fusion = RANK_FUSIONS[name]
    s = stack_scores(scores)
    if norm is not None:
        s = normalize(s, norm, dim=-1)
    return fusion(s, **kwargs)


def _norm_of(name: str, fusion: RankFusion, norm: str) -> Optional[str]:
    """The normalisation :func:`aggregate` applies: the entry's (``auto``), none, or one of ``METHODS``,
    which a rank-based fusion refuses (its ranks would not change)."""
    if norm not in ("auto", *METHODS):
        raise ValueError(f"unknown normalisation {norm!r}; expected 'auto' or one of {METHODS}")
    if norm == "auto":
        return fusion.norm
    if fusion.norm is None and norm != "none":
        takers = sorted(n for n, f in RANK_FUSIONS.items() if f.norm is not None)
        raise ValueError(f"fusion {name!r} fuses ranks, which normalisation {norm!r} does not change; "
                         f"a normalisation applies to {takers}")
    return None if norm == "none" else norm


def aggregate(name: str, scores: Scores, weights: Optional[Sequence[float]] = None,
              options: Optional[Mapping[str, Any]] = None, norm: str = "auto") -> torch.Tensor:
    """Runs fusion ``name`` as registered: each list normalised per user by the entry's ``norm`` (or
    by ``norm``: ``none`` fuses raw scores; a rank-based fusion takes ``auto`` or ``none`` only), its
    ``options`` checked against the entry's ``Options``, ``weights`` only where the entry takes them.

    Example::

        a, b = torch.tensor([[0., 5., 10.]]), torch.tensor([[1., 0., float("nan")]])
        assert aggregate("combsum", [a, b]).allclose(fuse("combsum", [a, b], norm="minmax"))
        assert aggregate("combsum", [a, b], norm="none").allclose(torch.tensor([[1., 5., 10.]]))
        assert aggregate("rrf", [a, b], [2., 1.], {"k": 0}).allclose(torch.tensor([[2 / 3 + 1, 1 + 1 / 2, 2.]]))
    """
    fusion = RANK_FUSIONS[name]
    used = _norm_of(name, fusion, norm)
    kwargs = options_dict(RANK_FUSIONS.options(name, options, where=f"fusion {name!r} options"))
    if weights is not None:
        if not fusion.takes_weights:
            takers = sorted(n for n, f in RANK_FUSIONS.items() if f.takes_weights)
            raise ValueError(f"fusion {name!r} takes no weights; these do: {takers}")
        kwargs["weights"] = list(weights)
    return fuse(name, scores, norm=used, **kwargs)


def aggregate_lists(scores: Mapping[str, torch.Tensor], methods: Sequence[str] = ("rrf", "borda", "combsum"),
                    unlisted: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Each of ``methods`` (by :func:`aggregate`) over the ``[U, N]`` score lists in ``scores``, where
    ``unlisted`` (bool ``[U, N]``) marks candidates no list holds; fewer than two lists: none.

    Example::

        s = {"a": torch.tensor([[3., 2., 1.]]), "b": torch.tensor([[1., 2., 3.]])}
        fused = aggregate_lists(s, ("borda",), unlisted=torch.tensor([[False, False, True]]))
        assert fused["borda"][0, :2].tolist() == [3., 3.] and bool(fused["borda"][0, 2].isnan())
    """
    if len(scores) < 2:
        return {}
    lists = [s if unlisted is None else s.masked_fill(unlisted, float("nan")) for s in scores.values()]
    return {name: aggregate(name, lists) for name in methods}
