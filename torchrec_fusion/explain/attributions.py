"""Integrated gradients (Sundararajan et al. 2017) of every score of a multi-task model over its inputs
after the lookup: the pooled embedding of each sparse feature and each dense feature.

The baseline is the all-zero input: every bag empty (a pooled embedding of 0, what an empty bag pools
to) and every dense feature 0. The attributions of one row sum to its score minus the baseline's
(completeness). The path integral is adaptive Gauss-Legendre quadrature (:func:`integrate`): a fixed
grid, as Captum's ``IntegratedGradients`` takes, converges only as O(1/steps) at a ReLU network's
kinks (on small untrained models of this package, 512 steps still missed completeness by several
percent), so the segments that miss are halved until it holds to ``tolerance``. Scores are explained in
the units the model computes them in: logits for binary tasks, chains and the fused score; values for
regression tasks. The dense part runs in fp32 here, also for a run trained with ``precision: bf16``."""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.fusion.head import FusionHead
from torchrec_fusion.modules.features import join_features
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain, to_predictions

FUSED = "fused"
DEFAULT_STEPS, MAX_STEPS, TOLERANCE, ATOL, NODES = 32, 2048, 0.002, 1e-5, 8
ScoreFn = Callable[..., torch.Tensor]


def task_model(train: MultiTaskTrain) -> MultiTaskModel:
    """The :class:`MultiTaskModel` a training wrapper holds (ensembles are not explained)."""
    if not isinstance(train.model, MultiTaskModel):
        raise ValueError(f"explanations cover MultiTaskModel (every --arch), not {type(train.model).__name__} "
                         "(an ensemble): explain one member's run")
    return train.model


def pooled_embeddings(model: MultiTaskModel, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """``[B, F, D]``: each sparse feature's pooled embedding, in ``model.feature_arch.feature_names`` order."""
    pooled: Dict[str, torch.Tensor] = model.feature_arch.sparse_arch.embedding_bag_collection(kjt).to_dict()
    return torch.stack([pooled[f] for f in model.feature_arch.feature_names], dim=1)


def feature_vector(model: MultiTaskModel, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The feature vector :class:`~torchrec_fusion.modules.features.FeatureArch` makes, from the pooled
    embeddings ``[B, F, D]`` instead of the ids."""
    arch = model.feature_arch
    return join_features(arch.dense_arch(dense), pooled, arch.interaction_arch)


def fused_logit(head: FusionHead, preds: Dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
    """``head(preds, context)`` with its inputs left attached (the head detaches them so that training the
    fusion never moves the task heads): the same value, differentiable in the predictions and the context."""
    fused: torch.Tensor = head(preds, context, detach_inputs=False)
    return fused


def scores_from(train: MultiTaskTrain, dense: torch.Tensor, pooled: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every explained score ``[B]`` of rows given by their dense features and pooled embeddings: each
    output of one column (binary and chain logits, regression values; not multiclass) and, with a
    fusion head, the fused logit (``"fused"``)."""
    model = task_model(train)
    features = feature_vector(model, dense, pooled)
    outputs = model.task_arch.combine_outputs(model.towers(model.task_arch(features)))
    scores = {k: v for k, v in outputs.items() if v.dim() == 1}
    if train.fusion is not None:
        assert isinstance(train.fusion, FusionHead)
        scores[FUSED] = fused_logit(train.fusion, to_predictions(train.tasks, outputs), features)
    return scores


def _path(inputs: Tuple[torch.Tensor, ...], baselines: Tuple[torch.Tensor, ...], alphas: torch.Tensor
          ) -> List[torch.Tensor]:
    """The points ``baseline + alpha (input - baseline)`` for each alpha, as ``[A * B, ...]`` inputs."""
    return [(b + alphas.view(-1, *[1] * x.dim()) * (x - b)).flatten(0, 1) for x, b in zip(inputs, baselines)]


def _gradients(fn: ScoreFn, inputs: Tuple[torch.Tensor, ...], baselines: Tuple[torch.Tensor, ...],
               alphas: torch.Tensor) -> List[Tuple[torch.Tensor, ...]]:
    """Per score ``k`` of ``fn`` (``[N, K]``), per input, ``[A, B, ...]``: the gradient at each alpha's
    point; one forward for every point and score, one backward per score."""
    points = [p.requires_grad_() for p in _path(inputs, baselines, alphas)]
    out = fn(*points)
    grads = []
    for k in range(out.size(1)):
        g = torch.autograd.grad(out[:, k].sum(), points, retain_graph=k + 1 < out.size(1))
        grads.append(tuple(gi.view(len(alphas), *x.shape) for gi, x in zip(g, inputs)))
    return grads


def integrate(fn: ScoreFn, inputs: Tuple[torch.Tensor, ...], baselines: Tuple[torch.Tensor, ...],
              steps: int = DEFAULT_STEPS, tolerance: float = TOLERANCE, max_steps: int = MAX_STEPS
              ) -> Tuple[List[Tuple[torch.Tensor, ...]], torch.Tensor, torch.Tensor, int]:
    """Path-averaged gradients of each score of ``fn`` (``[B, K]`` for ``B`` rows) on the straight line
    from ``baselines`` to ``inputs``: ``(per score, per input, the averaged gradient; fn(inputs) [B, K];
    fn(baselines); gradient evaluations per row)``. An input's attribution is ``(input - baseline) * grad``.

    Adaptive Gauss-Legendre quadrature: the path is cut into segments of ``NODES`` nodes each
    (``steps // NODES`` to start). On a segment the attributions must add up to ``fn``'s change over
    it, known exactly; the segments that miss by more than their share are halved (a ReLU network's
    gradient jumps at kinks, which a fixed grid meets only at O(1/steps)) until, for every row and score,
    the attributions sum to ``fn(inputs) - fn(baselines)`` within ``tolerance`` of it (plus ``ATOL``),
    or ``max_steps`` evaluations are reached."""
    nodes, weights = (torch.from_numpy(v).float() for v in np.polynomial.legendre.leggauss(NODES))
    edges = torch.linspace(0, 1, max(1, steps // NODES) + 1)
    while True:
        lo, width = edges[:-1], edges.diff()
        alphas = (lo.unsqueeze(1) + width.unsqueeze(1) * (nodes + 1) / 2).flatten()
        w = (width.unsqueeze(1) * weights / 2).flatten()  # the quadrature weight of every node
        grads = _gradients(fn, inputs, baselines, alphas)
        # [K, A, B]: each node's sum of (input - baseline) * gradient, per score
        per_node = torch.stack([torch.stack([((x - b) * g).flatten(2).sum(2) for x, b, g in zip(inputs, baselines, gk)])
                                .sum(0) for gk in grads])
        with torch.no_grad():
            ends = fn(*_path(inputs, baselines, edges)).view(len(edges), -1, len(grads)).permute(2, 0, 1)  # [K, S+1, B]
        seg_sums = (w.view(1, -1, 1) * per_node).view(len(grads), len(lo), NODES, -1).sum(2)
        seg_error = (seg_sums - ends.diff(dim=1)).abs()  # [K, S, B]
        allowed = tolerance * (ends[:, -1] - ends[:, 0]).abs() + ATOL  # [K, B]
        if bool((seg_error.sum(1) <= allowed).all()) or 2 * len(alphas) > max_steps:
            avg = [tuple((w.view(-1, *[1] * (g.dim() - 1)) * g).sum(0) for g in gk) for gk in grads]
            return avg, ends[:, -1].T, ends[:, 0].T, len(alphas)
        split = (seg_error > allowed.unsqueeze(1) / len(lo)).any(2).any(0)  # [S]
        edges = torch.cat([edges, (lo + width / 2)[split]]).sort().values


@dataclass
class Attribution:
    """One score's integrated gradients for a batch of rows (see the module docstring)."""

    value: torch.Tensor  # [B] the score
    baseline: torch.Tensor  # [B] the baseline's score
    dense: torch.Tensor  # [B, num_dense] each dense feature's attribution
    pooled: torch.Tensor  # [B, F, D] the pooled embeddings
    pooled_grads: torch.Tensor  # [B, F, D] their path-averaged gradients (the bags split with them)
    steps: int

    @property
    def features(self) -> torch.Tensor:
        """``[B, F]``: each sparse feature's attribution."""
        return (self.pooled * self.pooled_grads).sum(-1)

    @property
    def delta(self) -> torch.Tensor:
        """``[B]``: the sum of the attributions minus ``value - baseline`` (0 for exact completeness)."""
        return self.dense.sum(1) + self.features.sum(1) - (self.value - self.baseline)


def attribute(train: MultiTaskTrain, dense: torch.Tensor, kjt: KeyedJaggedTensor,
              scores: Optional[Sequence[str]] = None, steps: int = DEFAULT_STEPS, tolerance: float = TOLERANCE,
              max_steps: int = MAX_STEPS
              ) -> Dict[str, Attribution]:
    """The :class:`Attribution` of each score (default every one :func:`scores_from` gives) of the rows
    ``(dense, kjt)``, from a single-process model in eval mode (steps: see :func:`integrate`).

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec_fusion.tasks import TaskSpec
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        train = MultiTaskTrain(MultiTaskModel(ebc, 2, [TaskSpec("like")], arch="mmoe",
                                              arch_kwargs={"num_experts": 2, "expert_layer_sizes": [8]})).eval()
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=torch.tensor([3]), lengths=torch.tensor([1]))
        a = attribute(train, torch.rand(1, 2), kjt)["like"]
        assert a.dense.shape == (1, 2) and a.features.shape == (1, 1)
        assert abs(float(a.delta[0])) <= TOLERANCE * abs(float(a.value[0] - a.baseline[0])) + ATOL
    """
    model = task_model(train)
    with torch.no_grad():
        pooled = pooled_embeddings(model, kjt)
    dense = dense.float()
    names = list(scores) if scores is not None else list(scores_from(train, dense[:1], pooled[:1]))
    zeros = (torch.zeros_like(dense), torch.zeros_like(pooled))

    def fn(d: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        s = scores_from(train, d, p)
        return torch.stack([s[n] for n in names], dim=1)

    grads, value, base, n = integrate(fn, (dense, pooled), zeros, steps, tolerance, max_steps)
    return {name: Attribution(value[:, k], base[:, k], dense * g_dense, pooled, g_pooled, n)
            for k, (name, (g_dense, g_pooled)) in enumerate(zip(names, grads))}


def fusion_contributions(train: MultiTaskTrain, dense: torch.Tensor, kjt: KeyedJaggedTensor,
                         steps: int = DEFAULT_STEPS, tolerance: float = TOLERANCE) -> Optional[Dict[str, torch.Tensor]]:
    """Each fused task's contribution ``[B]`` to the fused logit, and the context's (``"context"``: the
    feature vector a gated or stacking fusion reads): integrated gradients of the fusion head over its
    inputs, from their values at the model's baseline input, so they sum to the fused score minus the
    baseline's, as the feature attributions of ``"fused"`` do. None without a fusion head."""
    head = train.fusion
    if head is None:
        return None
    assert isinstance(head, FusionHead)
    model, names = task_model(train), list(head.task_names)

    def head_inputs(d: torch.Tensor, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = feature_vector(model, d, pooled)
        preds = to_predictions(train.tasks, model.task_arch.combine_outputs(model.towers(model.task_arch(features))))
        return torch.stack([preds[t].float() for t in names], dim=1), features

    def fn(p: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fused = fused_logit(head, {t: p[:, j] for j, t in enumerate(names)}, context)
        return (fused + 0.0 * context.sum(1)).unsqueeze(1)  # the context is an input even where the fusion ignores it

    with torch.no_grad():
        pooled = pooled_embeddings(model, kjt)
        x, base = head_inputs(dense.float(), pooled), head_inputs(torch.zeros_like(dense).float(), pooled * 0)
    ((g_p, g_c),), _, _, _ = integrate(fn, x, base, steps, tolerance)
    contrib = (x[0] - base[0]) * g_p
    out = {t: contrib[:, j] for j, t in enumerate(names)}
    out["context"] = ((x[1] - base[1]) * g_c).sum(1)
    return out


def feature_names(train: MultiTaskTrain, num_dense: int, dense_names: Optional[Sequence[str]] = None
                  ) -> Tuple[List[str], List[str]]:
    """The names of the ``num_dense`` dense columns (``dense_names`` when it has as many, else ``dense_0``...)
    and of the sparse features, in attribution order."""
    dense = list(dense_names) if dense_names and len(dense_names) == num_dense else [f"dense_{j}" for j in
                                                                                     range(num_dense)]
    return dense, list(task_model(train).feature_arch.feature_names)


__all__ = ["Attribution", "FUSED", "attribute", "feature_names", "feature_vector", "fused_logit",
           "fusion_contributions", "integrate", "pooled_embeddings", "scores_from", "task_model"]
