"""Score normalisation before fusion: fitted statistics, frozen at inference.

Methods (``METHODS``): ``none``; ``minmax`` ((x - min) / (max - min)); ``zscore`` ((x - mean) / std);
``logit`` (log(p / (1 - p)) of a probability clamped to [eps, 1 - eps], no statistics); ``rank`` (the
percentile of x in [0, 1] against the fitted reference distribution, kept as ``num_quantiles`` quantiles
and interpolated linearly).

:class:`ScoreNormalizer` fits its statistics on a reference set (:meth:`ScoreNormalizer.fit`) or, with
``track_running_stats=True``, updates them as running estimates while ``self.training``; in eval mode they
are never recomputed from the batch. :func:`normalize` is the per-list functional form (statistics taken
from each list itself, as ranx normalises each query's run), with NaN meaning "not in the list".
"""

import torch
from torch import nn

METHODS = ("none", "minmax", "zscore", "logit", "rank")


def check_scores(scores: torch.Tensor, name: str = "scores", allow_nan: bool = False) -> torch.Tensor:
    """Raises ``ValueError`` if ``scores`` holds +/-inf, or NaN unless ``allow_nan`` (NaN = missing).

    Example::

        check_scores(torch.tensor([0.5, float("nan")]), allow_nan=True)
        try:
            check_scores(torch.tensor([0.5, float("inf")]))
        except ValueError as e:
            assert "inf" in str(e)
    """
    if not torch.is_floating_point(scores):
        raise ValueError(f"{name} must be a floating-point tensor, got {scores.dtype}")
    if torch.isinf(scores).any():
        raise ValueError(f"{name} contains +/-inf; scores must be finite" + (" (use NaN for a missing candidate)"
                                                                           if allow_nan else ""))
    if not allow_nan and torch.isnan(scores).any():
        raise ValueError(f"{name} contains NaN; scores must be finite")
    return scores


def minmax(scores: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(scores - lo) / (hi - lo)``; a constant reference (hi == lo) maps to 0.

    Example::

        assert minmax(torch.tensor([1., 2., 3.]), torch.tensor(1.), torch.tensor(3.)).tolist() == [0., .5, 1.]
    """
    return (scores - lo) / (hi - lo).clamp_min(eps)


def zscore(scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(scores - mean) / std``.

    Example::

        assert zscore(torch.tensor([1., 3.]), torch.tensor(2.), torch.tensor(1.)).tolist() == [-1., 1.]
    """
    return (scores - mean) / std.clamp_min(eps)


def logit(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``log(p / (1 - p))`` with ``p`` clamped to ``[eps, 1 - eps]`` (so 0 and 1 stay finite).

    Example::

        z = logit(torch.tensor([0.5, 0.0, 1.0]))
        assert z[0] == 0 and torch.isfinite(z).all() and torch.isclose(z[1], -z[2], rtol=1e-3)
    """
    return torch.logit(probs, eps=eps)


def percentile(scores: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Percentile in [0, 1] of each value against sorted ``quantiles`` ``[..., Q]`` (at levels
    ``j / (Q - 1)``): linear interpolation between neighbouring quantiles, the middle level for a value
    equal to a run of tied quantiles, 0 below the first and 1 above the last. ``scores`` is ``[..., M]``
    with the same leading dimensions as ``quantiles``.

    Example::

        q = torch.tensor([0., 1., 2., 4.])                       # levels 0, 1/3, 2/3, 1
        p = percentile(torch.tensor([-1., 1., 3., 9.]), q)
        assert torch.allclose(p, torch.tensor([0., 1 / 3, 5 / 6, 1.]))
    """
    q = quantiles.to(scores.dtype).contiguous()
    x = scores.contiguous()
    n = q.shape[-1] - 1
    lo = torch.searchsorted(q, x)                      # first index with q >= x
    hi = torch.searchsorted(q, x, right=True)          # first index with q > x
    j = hi.clamp(1, n)
    q0, q1 = q.gather(-1, j - 1), q.gather(-1, j)
    frac = ((x - q0) / (q1 - q0).clamp_min(torch.finfo(x.dtype).tiny)).clamp(0, 1)
    return torch.where(lo < hi, (lo + hi - 1).to(x.dtype) / 2, j - 1 + frac) / n


def normalize(scores: torch.Tensor, method: str, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Normalises each list along ``dim`` with its own statistics (per user / query). NaN marks a
    candidate missing from the list: it is ignored by the statistics and stays NaN; +/-inf raise.
    A constant list is 0 under ``minmax`` and ``zscore``. ``rank`` gives the mid-rank percentile
    ``(#below + (#equal - 1) / 2) / (n - 1)`` among the list's ``n`` values (0 for a list of one).

    Example::

        s = torch.tensor([[1., 3., float("nan"), 2.]])
        assert torch.allclose(normalize(s, "minmax"), torch.tensor([[0., 1., float("nan"), .5]]), equal_nan=True)
        assert torch.allclose(normalize(s, "rank"), torch.tensor([[0., 1., float("nan"), .5]]), equal_nan=True)
        assert normalize(torch.full((1, 7), .3), "zscore").eq(0).all()
    """
    check_scores(scores, allow_nan=True)
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {METHODS}")
    x = scores.movedim(dim, -1)
    if x.shape[-1] == 0 or method == "none":
        return scores.clone()
    miss = torch.isnan(x)
    n = (~miss).sum(-1, keepdim=True)
    lo = torch.where(miss, torch.inf, x).amin(-1, keepdim=True)
    hi = torch.where(miss, -torch.inf, x).amax(-1, keepdim=True)
    if method == "logit":
        out = logit(x)
    elif method == "minmax":
        out = minmax(x, lo, hi, eps)
    elif method == "zscore":
        mean = x.nanmean(-1, keepdim=True)
        std = ((x - mean) ** 2).nansum(-1, keepdim=True).div(n.clamp_min(1)).sqrt()
        # a constant list is 0, exactly: the mean's rounding error over a clamped std would not be
        out = torch.where(hi == lo, 0.0, zscore(x, mean, std, eps))
    else:
        s = torch.where(miss, torch.inf, x).sort(-1).values.contiguous()
        below = torch.searchsorted(s, x.contiguous())
        equal = torch.searchsorted(s, x.contiguous(), right=True) - below
        out = (below + (equal - 1) / 2) / (n - 1).clamp_min(1)
    return torch.where(miss, torch.nan, out.to(x.dtype)).movedim(-1, dim)


# the statistics each method reads (the others are kept for fit() and inspection)
_NEEDS = {"minmax": ("lo",), "zscore": ("mean",), "rank": ("quantiles",)}


class ScoreNormalizer(nn.Module):
    """Normalises ``num_scores`` score columns with fitted, then frozen, statistics.

    Input is ``[..., num_scores]`` (or ``[B]`` when ``num_scores == 1``). Statistics (buffers ``lo``,
    ``hi``, ``mean``, ``std``, ``quantiles`` ``[num_scores, num_quantiles]``, ``num_batches_tracked``)
    come from :meth:`fit` on a reference set, or, if ``track_running_stats`` and in training mode, from
    an exponential moving average of each batch's statistics (``momentum``; the first batch is copied)
    which is then applied to that batch. In eval mode they are never recomputed. ``none`` and ``logit``
    need no statistics; the other methods raise ``RuntimeError`` before any are fitted. NaN or inf in the
    input raise ``ValueError``.

    Args:
        method: one of ``none``, ``minmax``, ``zscore``, ``logit``, ``rank``.
        num_scores: number of score columns (each gets its own statistics).
        track_running_stats: update running statistics in training mode.
        momentum: weight of the new batch in the running average.
        num_quantiles: quantiles kept for ``rank`` (at least 2).
        eps: clamp for ``logit`` and the floor of the ``minmax``/``zscore`` denominators.

    Example::

        norm = ScoreNormalizer("zscore", num_scores=2).fit(torch.tensor([[0., 10.], [2., 30.]]))
        assert norm(torch.tensor([[1., 20.]])).tolist() == [[0., 0.]]
        rank = ScoreNormalizer("rank", 1, num_quantiles=5).fit(torch.arange(5.)).eval()
        assert rank(torch.tensor([2., 2.5, 9.])).tolist() == [.5, .625, 1.]
    """

    lo: torch.Tensor
    hi: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    quantiles: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, method: str = "minmax", num_scores: int = 1, track_running_stats: bool = False,
                 momentum: float = 0.1, num_quantiles: int = 101, eps: float = 1e-6) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown normalisation {method!r}; expected one of {METHODS}")
        if num_quantiles < 2:
            raise ValueError("num_quantiles must be >= 2")
        self.method, self.num_scores, self.track_running_stats = method, num_scores, track_running_stats
        self.momentum, self.num_quantiles, self.eps = momentum, num_quantiles, eps
        for name in ("lo", "mean"):
            self.register_buffer(name, torch.zeros(num_scores))
        for name in ("hi", "std"):
            self.register_buffer(name, torch.ones(num_scores))
        self.register_buffer("quantiles", torch.linspace(0, 1, num_quantiles).repeat(num_scores, 1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _columns(self, scores: torch.Tensor) -> torch.Tensor:
        check_scores(scores)
        x = scores.unsqueeze(-1) if scores.dim() == 1 and self.num_scores == 1 else scores
        if x.dim() == 0 or x.shape[-1] != self.num_scores:
            raise ValueError(f"expected scores [..., {self.num_scores}], got {tuple(scores.shape)}")
        return x

    @torch.no_grad()
    def _update(self, x: torch.Tensor, momentum: float, only_needed: bool = False) -> None:
        """Moves the statistics towards those of ``x``: all of them (``fit``), or while training
        only those the method reads (``only_needed``: a sort of the batch for ``rank`` alone)."""
        x = x.reshape(-1, self.num_scores).to(self.lo.dtype)
        if x.shape[0] == 0:
            raise ValueError("cannot fit normalisation statistics on an empty set")
        need = _NEEDS.get(self.method, ()) if only_needed else ("lo", "hi", "mean", "std", "quantiles")
        if "lo" in need:
            self.lo.lerp_(x.amin(0), momentum)
            self.hi.lerp_(x.amax(0), momentum)
        if "mean" in need:
            std, mean = torch.std_mean(x, 0, correction=0)
            self.mean.lerp_(mean, momentum)
            self.std.lerp_(std, momentum)
        if "quantiles" in need:
            levels = torch.linspace(0, 1, self.num_quantiles, dtype=x.dtype)
            self.quantiles.lerp_(torch.quantile(x, levels, dim=0).T, momentum)
        self.num_batches_tracked += 1

    def fit(self, scores: torch.Tensor) -> "ScoreNormalizer":
        """Sets the statistics from a reference set ``[..., num_scores]`` (replacing earlier ones).

        Example::

            norm = ScoreNormalizer("minmax").fit(torch.tensor([2., 4.]))
            assert (norm.lo.item(), norm.hi.item()) == (2., 4.)
        """
        self._update(self._columns(scores), 1.0)
        return self

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        x = self._columns(scores)
        if self.method in ("none", "logit"):
            out = x if self.method == "none" else logit(x, self.eps)
            return out.reshape(scores.shape)
        if self.training and self.track_running_stats:
            self._update(x, 1.0 if self.num_batches_tracked == 0 else self.momentum, only_needed=True)
        if self.num_batches_tracked == 0:
            raise RuntimeError(f"ScoreNormalizer({self.method!r}) has no statistics: call fit() or train "
                               "with track_running_stats=True first")
        if self.method == "minmax":
            out = minmax(x, self.lo, self.hi, self.eps)
        elif self.method == "zscore":
            out = zscore(x, self.mean, self.std, self.eps)
        else:
            cols = x.reshape(-1, self.num_scores).T
            out = percentile(cols, self.quantiles).T.reshape(x.shape)
        return out.reshape(scores.shape)

    def extra_repr(self) -> str:
        return f"{self.method!r}, num_scores={self.num_scores}, track_running_stats={self.track_running_stats}"
