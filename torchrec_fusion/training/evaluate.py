"""Scoring with the sharded model: the per-task metrics of a split (streamed: summed where the
predictions are, reduced once), every row of a split (predictions gathered from all ranks in row
order), and the ranking of the whole item catalogue for each evaluated user."""

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_fusion.data.types import BatchSource
from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.evaluation.baselines import baseline_scores
from torchrec_fusion.evaluation.catalogue import (
    CatalogueTask,
    candidate_chunks,
    catalogue_report,
    catalogue_task,
    relevant_rows,
)
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.streaming import StreamingMetrics
from torchrec_fusion.fusion.rank_aggregation import aggregate_lists
from torchrec_fusion.fusion.ranking_weights import fit_ranking_weights, fuse_ranking, log_form
from torchrec_fusion.modules.model import RETRIEVAL
from torchrec_fusion.tasks import TaskKind, TaskSpec
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.prepare import PreparedData
from torchrec_fusion.training.session import train_module

Scores = Dict[str, torch.Tensor]


def _batches(pipeline: TrainPipelineSparseDist, it: Iterator[object]) -> Iterator[Tuple[Scores, Scores]]:
    """The pipeline's (predictions, labels) per batch until the data runs out."""
    while True:
        try:
            _, p, y = pipeline.progress(it)
        except StopIteration:
            return
        yield p, y


def _reduce_gates(gates: GateStats, ctx: DistContext) -> None:
    flat = {t: v.to(ctx.device) for t, v in gates.tensors().items()}  # nccl reduces device tensors
    for v in flat.values():
        dist.all_reduce(v)
    gates.load_tensors({t: v.cpu() for t, v in flat.items()})


def _gather(values: List[torch.Tensor], labels: List[torch.Tensor], n: int, ctx: DistContext
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    p, y = torch.stack(values), torch.stack(labels)  # nb x B (x C), on the device
    if ctx.world_size > 1:
        gp = [torch.empty_like(p) for _ in range(ctx.world_size)]
        gy = [torch.empty_like(y) for _ in range(ctx.world_size)]
        dist.all_gather(gp, p)
        dist.all_gather(gy, y)
        p, y = torch.stack(gp, 1), torch.stack(gy, 1)  # nb x world x B: global row order
    # flat position i*G + r*B + k is data row i*G + r*B + k; padding only lies past len(data)
    return p.reshape(y.numel(), -1)[:n].squeeze(1).cpu(), y.reshape(-1)[:n].cpu()


@torch.no_grad()
def _score(pipeline: TrainPipelineSparseDist, model: nn.Module, data: BatchSource, ctx: DistContext,
           batch_size: int, gates: Optional[GateStats], consume: Callable[[Scores, Scores], None]) -> None:
    """Hands each batch's (predictions, labels) of this rank's rows of ``data`` to ``consume``;
    gate statistics go into ``gates`` (summed over ranks) when given."""
    model.eval()
    inner = train_module(model).model
    it = data.batches(batch_size, rank=ctx.rank, world_size=ctx.world_size, drop_last=False)
    for p, y in _batches(pipeline, it):
        consume(p, y)
        if gates is not None:  # rows with any label: padding rows have none
            keep = ~torch.stack(list(y.values()), 1).isnan().all(1)
            gates.update({t: w.cpu() for t, w in (inner.gate_weights() or {}).items()}, keep.cpu())
    model.train()
    if gates is not None and ctx.world_size > 1:
        _reduce_gates(gates, ctx)


def evaluate(pipeline: TrainPipelineSparseDist, model: nn.Module, data: BatchSource, ctx: DistContext,
             batch_size: int, gates: Optional[GateStats] = None) -> Tuple[Scores, Scores]:
    """Predictions and labels of every row of ``data`` (NaN labels for padding and
    absent labels), gathered from all ranks in row order; gate statistics of the
    architecture go into ``gates`` when given. For metrics alone, :func:`evaluate_metrics`."""
    preds: Dict[str, List[torch.Tensor]] = {}
    labels: Dict[str, List[torch.Tensor]] = {}

    def keep(p: Scores, y: Scores) -> None:
        for k in p:
            preds.setdefault(k, []).append(p[k])  # stays on the device until gathered
            labels.setdefault(k, []).append(y[k])

    _score(pipeline, model, data, ctx, batch_size, gates, keep)
    out_p, out_y = {}, {}
    for k in preds:
        out_p[k], out_y[k] = _gather(preds[k], labels[k], len(data), ctx)
    return out_p, out_y


def evaluate_metrics(pipeline: TrainPipelineSparseDist, model: nn.Module, data: BatchSource, ctx: DistContext,
                     batch_size: int, tasks: Sequence[TaskSpec], gates: Optional[GateStats] = None
                     ) -> Dict[str, Dict[str, float]]:
    """The metrics of ``tasks`` (:func:`~torchrec_fusion.evaluation.metrics.task_metrics`' names,
    the AUC binned: :mod:`~torchrec_fusion.evaluation.streaming`) over every row of ``data``: each
    rank sums its own batches where its predictions are, and the sums are added over the ranks in
    one ``all_reduce``; no prediction leaves its rank."""
    metrics = StreamingMetrics(tasks, ctx.device)
    _score(pipeline, model, data, ctx, batch_size, gates, metrics.update)
    if ctx.world_size > 1:
        dist.all_reduce(metrics.state())
    return metrics.compute()


def rank_catalogue(pipeline: TrainPipelineSparseDist, model: nn.Module, prepared: PreparedData,
                   ctx: DistContext, config: TrainConfig, task_names: List[str]
                   ) -> Tuple[Dict[str, Dict[str, float]], Scores, CatalogueTask]:
    """Scores every (evaluated user, item) pair with the sharded model and reports the ranking
    metrics of each task score, of the fused score, and of rank aggregations of the task scores;
    also returns the ``[U, N]`` score matrices and the ranking task."""
    if prepared.candidates is None:
        raise ValueError(f"--ranking-eval needs a dataset that can build candidate rows (movielens), "
                         f"not {config.dataset!r}")
    train, evald = prepared.splits["train"].in_memory_rows(), prepared.eval.in_memory_rows()
    if train is None or evald is None:
        raise ValueError("--ranking-eval needs the training and evaluation rows in memory (not stream: true)")
    if config.ranking_relevance not in evald.task_names:
        raise ValueError(f"ranking relevance task {config.ranking_relevance!r} is not one of {evald.task_names}")
    task = catalogue_task(train, evald, train.num_embeddings["item"], config.ranking_relevance, config.seed)
    scores: Scores = {}
    for rows_of, rows in candidate_chunks(task, prepared.candidates):
        preds, _ = evaluate(pipeline, model, rows, ctx, config.eval_batch_size)
        for name, p in preds.items():
            if p.dim() == 1:  # one score per row (multiclass outputs are not ranked)
                scores.setdefault(name, torch.empty(task.positives.shape))[rows_of] = p.view(-1, task.num_items)
    regression = [t.name for t in evald.tasks if t.kind == TaskKind.REGRESSION]
    weights = None
    if config.fit_ranking_fusion:  # weights chosen on this split's rankings (run it on validation)
        logs = {n: log_form(s, probability=n not in regression + [RETRIEVAL]) for n, s in scores.items()}
        weights, _ = fit_ranking_weights(logs, task.positives, config.ranking_k[0], exclude=task.seen)
    scores.update(derived_scores(scores, config, regression, weights))
    fused = aggregate_lists({n: scores[n] for n in task_names if n in scores}, unlisted=task.seen)
    base, info = baseline_scores(train, task, relevant_rows(train, config.ranking_relevance), config.seed)
    report = catalogue_report({**scores, **fused, **base}, task, config.ranking_k, seed=config.seed, baselines=base)
    for name, value in info.items():  # the EASE lambda chosen on the training rows, or why EASE was skipped
        report.setdefault("ease", {})[name] = value
    if FUSED_RANKING in report:
        report[FUSED_RANKING]["weights"] = dict(weights or config.ranking_fusion or {})  # type: ignore[assignment]
    return report, scores, task


FUSED_RANKING = "fused_ranking"


def derived_scores(scores: Scores, config: TrainConfig, regression: Sequence[str],
                   weights: Optional[Dict[str, float]] = None) -> Scores:
    """The scores derived from a model's ``[U, N]`` scores: the chain ``retrieval_x_<relevance>``
    (the retrieval logit plus log P(relevant)) and, with ranking fusion weights (``weights``, else
    ``config.ranking_fusion``), ``fused_ranking``: the weighted sum of the scores' log forms."""
    out: Scores = {}
    relevance = config.ranking_relevance
    if RETRIEVAL in scores and relevance in scores:  # the chain: P(interaction) x P(relevant | interaction)
        out[f"{RETRIEVAL}_x_{relevance}"] = scores[RETRIEVAL] + log_form(scores[relevance], True)
    weights = weights or config.ranking_fusion
    if weights:
        logs = {n: log_form(s, probability=n not in list(regression) + [RETRIEVAL])
                for n, s in {**scores, **out}.items() if n != f"{RETRIEVAL}_x_{relevance}"}
        out[FUSED_RANKING] = fuse_ranking(logs, weights)
    return out
