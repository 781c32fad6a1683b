"""The sharded training loop: planner, DMP, fused optimizer, TrainPipelineSparseDist."""

import dataclasses
import itertools
import json
import logging
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import KeyedOptimizerWrapper

from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.history import InteractionHistory
from torchrec_fusion.data.sources import LoadedData, load_dataset
from torchrec_fusion.distributed.buffers import average_buffers, replicated_float_buffers
from torchrec_fusion.distributed.launcher import DistContext, init_distributed, launch
from torchrec_fusion.distributed.sharding import (
    describe_plan,
    make_sharders,
    plan_sharding,
    seed_embedding_tables,
    shard_model,
)
from torchrec_fusion.evaluation.catalogue import CatalogueTask, candidate_chunks, catalogue_report, catalogue_task
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.fusion.files import write_scores
from torchrec_fusion.fusion.head import FusionHead
from torchrec_fusion.losses import build_balancer
from torchrec_fusion.modules.ensemble import DLRMMember, ModelEnsemble
from torchrec_fusion.modules.model import FUSED_TASK, MultiTaskModel, MultiTaskTrain
from torchrec_fusion.tasks import TaskKind, select_tasks
from torchrec_fusion.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, step_name
from torchrec_fusion.training.config import TrainConfig


class _DropBenign(logging.Filter):
    """TorchRec's planner warns on the root logger for every data_parallel table (they have no
    sharding spec, by design)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found for ")


def quiet_third_party_logs() -> None:
    """Silences TorchRec's and torch's planner/deprecation chatter; our own log stays."""
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropBenign) for f in root.filters):
        root.addFilter(_DropBenign())
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torchrec|torch|torchrec_fusion)(\.|$)")


def build_ebc(data: MultiTaskData, embedding_dim: int, device: str = "meta", prefix: str = "") -> EmbeddingBagCollection:
    """One table ``<prefix>t_<feature>`` per sparse feature, sized from the data; on ``meta``
    by default so that no rank ever materialises a whole table before sharding."""
    pooling = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
    tables = [
        EmbeddingBagConfig(name=f"{prefix}t_{f}", embedding_dim=embedding_dim, num_embeddings=data.num_embeddings[f],
                           feature_names=[f], pooling=pooling[data.pooling.get(f, "sum")])
        for f in data.feature_names
    ]
    return EmbeddingBagCollection(tables=tables, device=torch.device(device))


def build_model(config: TrainConfig, data: MultiTaskData, arch: str, device: str = "meta",
                prefix: str = "") -> torch.nn.Module:
    """One complete model of architecture ``arch`` (or TorchRec's DLRM, ``"dlrm"``) with its own tables."""
    ebc = build_ebc(data, config.embedding_dim, device, prefix)
    if arch == "dlrm":
        binary = [t for t in data.tasks if t.kind == TaskKind.BINARY]
        if not binary:
            raise ValueError("a dlrm ensemble member needs a binary task")
        target = next((t for t in binary if t.name == config.fusion_target), binary[0])
        dlrm = DLRM(ebc, data.num_dense, list(config.dense_arch_layer_sizes) + [config.embedding_dim],
                    list(config.tower_layer_sizes) + [1])
        return DLRMMember(dlrm, target)
    model = MultiTaskModel(
        ebc,
        dense_in_features=data.num_dense,
        tasks=data.tasks,
        arch=arch,
        arch_kwargs=dataclasses.replace(config, arch=arch).arch_kwargs(),
        dense_arch_layer_sizes=config.dense_arch_layer_sizes,
        tower_layer_sizes=config.tower_layer_sizes,
        interaction=config.interaction,
        dropout=config.dropout,
        embedding_l2=config.embedding_l2,
        precision=config.precision,
    )
    means = data.label_means()
    for j, t in enumerate(data.tasks):
        if t.kind == TaskKind.REGRESSION and not torch.isnan(means[j]):
            model.set_output_bias(t.name, float(means[j]))
    return model


def build_train_model(config: TrainConfig, data: MultiTaskData, device: str = "meta") -> MultiTaskTrain:
    """The model of ``config`` for ``data``'s features and tasks (an ensemble of complete
    models with ``config.ensemble``), wrapped for training with its balancing and fusion."""
    target = config.fusion_target
    if config.ensemble:
        names = [f"{a}{i}" if config.ensemble.count(a) > 1 else a for i, a in enumerate(config.ensemble)]
        model: torch.nn.Module = ModelEnsemble(
            {n: build_model(config, data, a, device, prefix=f"{n}_") for n, a in zip(names, config.ensemble)},
            data.task_names)
        if target is not None:  # the fused score is supervised by the batch column of that task
            target = next((t.name for t in model.tasks if t.name.endswith(f"_{target}")), target)
    else:
        model = build_model(config, data, config.arch, device)
    fusion = None
    if config.fusion != "none":
        fusion = FusionHead(config.fusion, [t.name for t in model.tasks], model.feature_dim,
                            config.fusion_normalizer, config.fusion_weights)
    return MultiTaskTrain(model, build_balancer(config.balancing, model.tasks), fusion, target,
                          config.fusion_loss_weight)


@dataclasses.dataclass
class PreparedData:
    """The rows a run trains and evaluates on, and how to build candidate rows for ranking."""

    train: MultiTaskData
    eval: MultiTaskData
    eval_split: str
    info: Dict[str, Any]
    candidates: Optional[Callable[[torch.Tensor, torch.Tensor], MultiTaskData]] = None
    splits: Dict[str, MultiTaskData] = dataclasses.field(default_factory=dict)  # train, test (, validation)
    loaded: Optional[LoadedData] = None


def prepare_data(config: TrainConfig) -> PreparedData:
    """The dataset's train split, and its test split or a validation split carved from
    train (``eval_split`` says which); history bags and candidate rows from the training
    rows only."""
    loaded = load_dataset(config.dataset, config.data_dir, config.split, config.seed, config.synthetic_rows,
                          config.synthetic_scale, config.table)
    train, test = loaded.train, loaded.test
    keep = select_tasks(train.tasks, config.tasks) if config.tasks else None
    streamed = not isinstance(train, MultiTaskData)  # a TableStream: rows read from disk batch by batch
    if streamed and (keep is not None or config.validation_fraction > 0):
        raise ValueError("a streamed table (stream: true) trains every task of its spec on all its train rows: "
                         "drop --tasks / --validation-fraction, or list fewer tasks and a test file in the spec")

    def select(d: MultiTaskData) -> MultiTaskData:
        if keep is not None and isinstance(d, MultiTaskData):
            cols = [d.task_names.index(t.name) for t in keep]
            d.tasks, d.labels, d.masks = list(keep), d.labels[:, cols], d.masks[:, cols]
            d.weights = None if d.weights is None else d.weights[:, cols]
        return d

    train, test = select(train), select(test)
    splits = {"test": test}
    split = "test"
    if config.validation_fraction > 0:  # the test split is then never read by training
        train, splits["validation"] = train.split(config.validation_fraction, config.seed)
        split = "validation"
    splits["train"] = train
    history = None
    if config.history_length > 0 and {"user", "item"} <= set(getattr(train, "extras", {})):
        history = InteractionHistory(train, config.history_length, config.seed)  # from the training rows only
        for d in splits.values():
            history.add_to(d)
    candidates = None
    if loaded.candidates is not None:
        def candidates(user: torch.Tensor, item: torch.Tensor) -> MultiTaskData:
            rows = select(loaded.candidates(user, item))
            return history.add_to(rows) if history is not None else rows
    return PreparedData(train, splits[split], split, loaded.info, candidates, splits, loaded)


@torch.no_grad()
def evaluate(pipeline: TrainPipelineSparseDist, model: torch.nn.Module, data: MultiTaskData, ctx: DistContext,
             batch_size: int, gates: Optional[GateStats] = None
             ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Predictions and labels of every row of ``data`` (NaN labels for padding and
    absent labels), gathered from all ranks in row order; gate statistics of the
    architecture go into ``gates`` when given."""
    model.eval()
    inner = getattr(model, "module", model).model
    preds: Dict[str, List[torch.Tensor]] = {}
    labels: Dict[str, List[torch.Tensor]] = {}
    it = data.batches(batch_size, rank=ctx.rank, world_size=ctx.world_size, drop_last=False)
    try:
        while True:
            _, p, y = pipeline.progress(it)
            for k in p:
                preds.setdefault(k, []).append(p[k])  # stays on the device until gathered
                labels.setdefault(k, []).append(y[k])
            if gates is not None:  # rows with any label: padding rows have none
                keep = ~torch.stack(list(y.values()), 1).isnan().all(1)
                gates.update({t: w.cpu() for t, w in (inner.gate_weights() or {}).items()}, keep.cpu())
    except StopIteration:
        pass
    model.train()
    if gates is not None and ctx.world_size > 1:
        flat = {t: v.to(ctx.device) for t, v in gates.tensors().items()}  # nccl reduces device tensors
        for v in flat.values():
            dist.all_reduce(v)
        gates.load_tensors({t: v.cpu() for t, v in flat.items()})
    out_p, out_y = {}, {}
    for k in preds:
        p, y = torch.stack(preds[k]), torch.stack(labels[k])  # nb x B (x C), on the device
        if ctx.world_size > 1:
            gp = [torch.empty_like(p) for _ in range(ctx.world_size)]
            gy = [torch.empty_like(y) for _ in range(ctx.world_size)]
            dist.all_gather(gp, p)
            dist.all_gather(gy, y)
            p, y = torch.stack(gp, 1), torch.stack(gy, 1)  # nb x world x B: global row order
        # flat position i*G + r*B + k is data row i*G + r*B + k; padding only lies past len(data)
        n = len(data)
        out_p[k] = p.reshape(y.numel(), -1)[:n].squeeze(1).cpu()
        out_y[k] = y.reshape(-1)[:n].cpu()
    return out_p, out_y


def rank_catalogue(pipeline: TrainPipelineSparseDist, model: torch.nn.Module, prepared: PreparedData,
                   ctx: DistContext, config: TrainConfig, task_names: List[str]
                   ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, torch.Tensor], CatalogueTask]:
    """Scores every (evaluated user, item) pair with the sharded model and reports the ranking
    metrics of each task score, of the fused score, and of rank aggregations of the task scores;
    also returns the ``[U, N]`` score matrices and the ranking task."""
    if prepared.candidates is None:
        raise ValueError(f"--ranking-eval needs a dataset that can build candidate rows (movielens), "
                         f"not {config.dataset!r}")
    train, evald = prepared.train, prepared.eval
    if config.ranking_relevance not in evald.task_names:
        raise ValueError(f"ranking relevance task {config.ranking_relevance!r} is not one of {evald.task_names}")
    task = catalogue_task(train, evald, train.num_embeddings["item"], config.ranking_relevance, config.seed)
    scores: Dict[str, torch.Tensor] = {}
    for rows_of, rows in candidate_chunks(task, prepared.candidates):
        preds, _ = evaluate(pipeline, model, rows, ctx, config.eval_batch_size)
        for name, p in preds.items():
            if p.dim() == 1:  # one score per row (multiclass outputs are not ranked)
                scores.setdefault(name, torch.empty(task.positives.shape))[rows_of] = p.view(-1, task.num_items)
    fuse_over = [n for n in task_names if n in scores]
    report = catalogue_report(scores, task, config.ranking_k, fuse_over=fuse_over, seed=config.seed)
    return report, scores, task


@dataclasses.dataclass
class Session:
    """A model ready to train or score: sharded by the planner, with its optimizer and pipeline."""

    model: MultiTaskTrain  # the unsharded module DMP wraps
    dmp: torch.nn.Module
    optimizer: Any
    pipeline: TrainPipelineSparseDist
    plan: Any


def build_session(config: TrainConfig, ctx: DistContext, data: MultiTaskData) -> Session:
    """Builds ``config``'s model for ``data`` on the meta device, plans it with the memory budget
    of ``config.rank_memory_mb``, and shards it with DMP (tables are not initialised here)."""
    model = build_train_model(config, data)
    constraints = {t: ParameterConstraints(**c) for t, c in (config.constraints or {}).items()}
    sharders = make_sharders(config.sharding_type, constraints)
    budget = {} if config.rank_memory_mb is None else {"memory_budget_bytes": int(config.rank_memory_mb * 2**20)}
    plan = plan_sharding(model, ctx, config.batch_size, config.sharding_type, constraints, sharders,
                         embedding_optimizer=config.embedding_optimizer, **budget)
    dmp, optimizer = shard_model(
        model, ctx, plan,
        embedding_optimizer=config.embedding_optimizer, embedding_lr=config.embedding_lr,
        dense_optimizer=config.dense_optimizer, dense_lr=config.dense_lr,
        dense_optimizer_kwargs={"weight_decay": config.dense_weight_decay} if config.dense_weight_decay else None,
        sharders=sharders,
    )
    return Session(model, dmp, optimizer, TrainPipelineSparseDist(dmp, optimizer, ctx.device), plan)


def _generators(module: torch.nn.Module) -> Dict[str, torch.Generator]:
    """Every torch.Generator a submodule keeps (PCGrad's, for one): their state is part of a resume."""
    return {f"{path}.{k}": v for path, m in module.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Generator)}


def init_optimizer_state(optimizer: Any) -> None:
    """Creates the lazily built state of the dense optimizers (a zero-gradient step), so that a
    checkpoint can be loaded into it in place; fused embedding optimizers have theirs already."""
    for _, opt in getattr(optimizer, "optimizers", [("", optimizer)]):
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()
            for p in opt.params.values():
                p.grad = None


def restore(session: Session, path: str, ctx: DistContext, exact: bool = True) -> Dict[str, Any]:
    """Loads checkpoint ``path`` into ``session`` (resharding to this world size and plan).
    ``exact``: also restore the RNG states when the world size is the saved one."""
    init_optimizer_state(session.optimizer)
    state = load_checkpoint(path, session.dmp, session.optimizer)
    if exact and state.get("world_size") == ctx.world_size:
        rng = torch.load(os.path.join(path, f"rng_{ctx.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        for name, g in _generators(session.dmp).items():
            if name in rng["generators"]:
                g.set_state(rng["generators"][name])
    return state


def _all_finite(losses: List[torch.Tensor], ctx: DistContext) -> bool:
    """Whether every rank's losses are finite (a collective: every rank calls it at the same step)."""
    ok = torch.tensor([float(torch.stack(losses).isfinite().all()) if losses else 1.0])
    if ctx.world_size > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def _mean_over_ranks(values: List[torch.Tensor], ctx: DistContext) -> List[float]:
    if not values:
        return []
    t = torch.stack(values).float()
    if ctx.world_size > 1:
        dist.all_reduce(t)
        t /= ctx.world_size
    return t.tolist()


def resolve_resume(config: TrainConfig) -> Optional[str]:
    """The checkpoint ``config.resume`` names: "auto" is the latest under OUT/checkpoints (None
    when there is none yet, a fresh start); a path must hold a published checkpoint."""
    if not config.resume:
        return None
    if config.resume == "auto":
        if not config.output_dir:
            raise ValueError("--resume auto needs --output-dir (it looks in OUT/checkpoints)")
        return latest_checkpoint(os.path.join(config.output_dir, "checkpoints"))
    path = config.resume
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a run folder
        path = latest_checkpoint(os.path.join(path, "checkpoints")) or path
    elif os.path.exists(os.path.join(path, "latest")):  # a checkpoints folder
        path = latest_checkpoint(path) or path
    return path


def run(config: TrainConfig) -> Dict[str, Any]:
    """One rank's whole run; returns the metrics. Rank 0 writes OUT/config.yaml (the resolved
    config), OUT/metrics.json and OUT/report.md; every rank writes its shards of the checkpoints."""
    quiet_third_party_logs()
    ctx = init_distributed(config.device)
    torch.manual_seed(config.seed)
    log = print if (ctx.is_main and config.verbose) else (lambda *a, **k: None)
    out = config.output_dir
    if ctx.is_main and out:
        os.makedirs(out, exist_ok=True)
        config.save(os.path.join(out, "config.yaml"))
    prepared = prepare_data(config)
    train, evald, eval_split, info = prepared.train, prepared.eval, prepared.eval_split, prepared.info
    log(f"data: {info.get('dataset')} train={len(train)} {eval_split}={len(evald)} "
        f"features={train.feature_names} tasks={train.task_names}")
    if config.precision == "bf16" and ctx.device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log("warning: precision bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX): its matrix products "
            "are emulated and slower than fp32 here; use --precision fp32")
    session = build_session(config, ctx, train)
    dmp, optimizer, pipeline, plan = session.dmp, session.optimizer, session.pipeline, session.plan
    log(describe_plan(plan))
    tasks = session.model.tasks
    ckpt_root = os.path.join(out, "checkpoints") if out else None
    if config.checkpoint_every and not ckpt_root:
        raise ValueError("--checkpoint-every needs --output-dir (checkpoints go to OUT/checkpoints)")

    state: Dict[str, Any] = {}
    resume_from = resolve_resume(config)
    if resume_from:
        state = restore(session, resume_from, ctx)
        log(f"resumed from {resume_from} at step {state['step']} (saved at world size {state['world_size']})")
    else:
        seed_embedding_tables(dmp, config.seed)
    history: List[Dict[str, Any]] = state.get("history", [])
    step_losses: List[float] = state.get("step_losses", [])
    step_task_losses: Dict[str, List[float]] = state.get("step_task_losses", {})
    global_step, epoch0, batch0 = state.get("step", 0), state.get("epoch", 0), state.get("batch_in_epoch", 0)
    train_seconds, samples = 0.0, 0
    steps_per_epoch = train.num_batches(config.batch_size, ctx.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training rows make no batch of {config.batch_size} x {ctx.world_size} ranks")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    task_keys = [t.name for t in tasks] + (["fused"] if dmp.module.fusion is not None else [])
    preds: Dict[str, torch.Tensor] = {}
    labels: Dict[str, torch.Tensor] = {}
    evaluated_at = history[-1]["step"] if history and "step" in history[-1] else -1

    def save(epoch: int, batch_in_epoch: int, epoch_losses: List[float], epoch_task_losses: Dict[str, List[float]]
             ) -> None:
        path = save_checkpoint(ckpt_root, global_step, dmp, optimizer, {
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": history, "step_losses": step_losses,
            "step_task_losses": step_task_losses, "epoch_losses": epoch_losses,
            "epoch_task_losses": epoch_task_losses, "config": config.to_dict(), "plan": describe_plan(plan),
        }, keep=config.keep_checkpoints, extra={"generators": {k: g.get_state() for k, g in _generators(dmp).items()}})
        log(f"checkpoint: {path}")

    def evaluate_now(epoch: float) -> None:
        nonlocal preds, labels, evaluated_at
        gate_stats = GateStats()
        preds, labels = evaluate(pipeline, dmp, evald, ctx, config.eval_batch_size, gate_stats)
        metrics = task_metrics(tasks, preds, labels)
        gates, task_weights = gate_stats.result(), dmp.module.balancer.task_weights()
        entry = {"epoch": epoch, "step": global_step, "train_loss": float("nan"), "tasks": metrics, "gates": gates,
                 "task_weights": task_weights}
        if dmp.module.fusion is not None:
            entry["fused"] = {**task_metrics([FUSED_TASK], preds, labels)["fused"], **dmp.module.fusion.describe()}
        if history and evaluated_at == global_step:  # resumed at the very end: the same model again
            history[-1] = {**entry, "epoch": history[-1]["epoch"], "train_loss": history[-1]["train_loss"]}
        else:
            history.append(entry)
        evaluated_at = global_step

    pending: Optional[Tuple[int, int, List[float], Dict[str, List[float]]]] = None
    replicated = replicated_float_buffers(dmp) if ctx.world_size > 1 else []
    for epoch in range(epoch0, config.epochs):
        start = batch0 if epoch == epoch0 else 0
        n = min(steps_per_epoch - start, total_steps - global_step)
        if n <= 0:
            break
        resumed_here = epoch == epoch0 and start > 0
        prior = state.get("epoch_losses", []) if resumed_here else []
        prior_tasks = state.get("epoch_task_losses", {}) if resumed_here else {}
        dmp.train()
        it = itertools.islice(train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                                            rank=ctx.rank, world_size=ctx.world_size, start=start), n)
        bar = None
        if ctx.is_main and config.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch", leave=False, dynamic_ncols=True)
        losses: List[torch.Tensor] = []
        task_losses: Dict[str, List[torch.Tensor]] = {k: [] for k in task_keys}
        t0 = time.perf_counter()
        try:
            while True:
                loss, _, _ = pipeline.progress(it)
                average_buffers(replicated)  # running statistics stay equal on every rank
                losses.append(loss)
                for k, v in dmp.module.last_task_losses.items():
                    task_losses.setdefault(k, []).append(v)
                global_step += 1
                if bar is not None:
                    bar.update(1)
                if config.checkpoint_every and global_step % config.checkpoint_every == 0:
                    if not _all_finite(losses, ctx):
                        raise FloatingPointError(
                            f"training loss became NaN/inf before step {global_step} (epoch {epoch + 1}); the last "
                            "good checkpoint is kept untouched; lower the learning rates or check the data")
                    save(epoch, start + len(losses), prior + _mean_over_ranks(losses, ctx),
                         {k: prior_tasks.get(k, []) + _mean_over_ranks(v, ctx) for k, v in task_losses.items()})
        except StopIteration:
            pass
        train_seconds += time.perf_counter() - t0
        samples += len(losses) * config.batch_size * ctx.world_size
        if bar is not None:
            bar.close()
        if not _all_finite(losses, ctx):
            raise FloatingPointError(f"training loss became NaN/inf in epoch {epoch + 1} (by step {global_step}); "
                                     "the last good checkpoint is kept untouched; lower the learning rates or "
                                     "check the data")
        epoch_losses = prior + _mean_over_ranks(losses, ctx)
        epoch_task_losses = {k: prior_tasks.get(k, []) + _mean_over_ranks(v, ctx) for k, v in task_losses.items()}
        if start + n < steps_per_epoch:  # stopped inside the epoch (max_steps): saved as a partial epoch
            pending = (epoch, start + n, epoch_losses, epoch_task_losses)
            break
        step_losses += epoch_losses
        for k, v in epoch_task_losses.items():
            step_task_losses.setdefault(k, []).extend(v)
        evaluate_now(epoch + 1)
        entry = history[-1]
        entry["train_loss"] = sum(epoch_losses) / len(epoch_losses)
        shown = {**entry["tasks"], **({"fused": entry["fused"]} if "fused" in entry else {})}
        log(f"epoch {epoch + 1}/{config.epochs} train_loss={entry['train_loss']:.4f} " + " ".join(
            f"{t}:" + ",".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)) for t, m in shown.items()))
        if entry["gates"]:
            log("  gates: " + "  ".join(
                f"{t}=[{' '.join(f'{w:.2f}' for w in g['mean_weight'])}] H={g['normalised_entropy']:.2f}"
                + (" COLLAPSED" if g["collapsed"] else "") for t, g in entry["gates"].items()))

    if evaluated_at != global_step or not preds:  # stopped mid-epoch, or resumed at the end
        evaluate_now(global_step / steps_per_epoch)
    if ckpt_root and config.save_model and not os.path.isdir(os.path.join(ckpt_root, step_name(global_step))):
        save(*(pending or (*divmod(global_step, steps_per_epoch), [], {})))
    if pending:  # the partial epoch's losses count in the result
        step_losses += pending[2]
        for k, v in pending[3].items():
            step_task_losses.setdefault(k, []).extend(v)
    if config.ranking_eval:
        ranking, ranking_scores, ranking_task = rank_catalogue(pipeline, dmp, prepared, ctx, config, task_keys[:len(tasks)])
        log("ranking (full catalogue, seen items excluded): " + "; ".join(
            f"{name} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith(("hr@", "ndcg@")))
            for name, m in ranking.items()))
    last = history[-1]
    result: Dict[str, Any] = {
        "tasks": last["tasks"], "gates": last["gates"], "task_weights": last["task_weights"],
        "fused": last.get("fused", {}),
        "samples_per_second": samples / train_seconds if train_seconds else 0.0,
        "world_size": ctx.world_size,
        "eval_split": eval_split,
        "train_seconds": train_seconds,
        "steps": global_step,
        "history": history,
        "step_losses": step_losses,
        "step_task_losses": step_task_losses,
        "ranking": ranking if config.ranking_eval else {},
        "plan": describe_plan(plan),
        "data": info,
        "config": config.to_dict(),
        "checkpoint": latest_checkpoint(ckpt_root) if ckpt_root else None,
    }
    if ctx.is_main and out:
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        log(f"samples/s={result['samples_per_second']:.0f}; wrote {os.path.join(out, 'metrics.json')}")
        if config.report:
            from torchrec_fusion.evaluation.report import write_report

            log(f"report: {write_report(result, out)}")
        if config.save_scores:
            keys = ({k: evald.extras[k] for k in ("user", "item")} if {"user", "item"} <= set(evald.extras)
                    else {"row": torch.arange(len(evald))})
            one_d = [k for k, v in preds.items() if v.dim() == 1]
            write_scores(os.path.join(out, "scores.csv"), keys,
                         {k: labels[k] for k in one_d}, {k: preds[k] for k in one_d})
    if config.keep_predictions:
        result["predictions"], result["labels"] = preds, labels
        if config.ranking_eval:
            result["ranking_scores"], result["ranking_task"] = ranking_scores, ranking_task
    return result


def train(config: TrainConfig) -> Dict[str, Any]:
    """Runs ``config`` on ``config.world_size`` local processes (or under torchrun)
    and returns rank 0's result."""
    return launch(run, config.world_size, config)[0]
