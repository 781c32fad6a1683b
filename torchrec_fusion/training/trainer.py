"""A training run as a few named steps: start (data, planner, DMP), restore or initialise, train,
rank the catalogue, write the results. The steps live in their own modules: ``session`` (start-up),
``factory`` (the model), ``prepare`` (the data), ``loop`` (epochs and checkpoints), ``evaluate``."""

import contextlib
import dataclasses
import os
from typing import Callable, Optional

import torch

from torchrec_fusion.distributed.launcher import cpu_cores, launch, under_torchrun
from torchrec_fusion.distributed.replication import REPLICATE_TABLE_BYTES
from torchrec_fusion.distributed.sharding import describe_plan, seed_embedding_tables, summarize_plan
from torchrec_fusion.fusion.files import write_scores
from torchrec_fusion.outputs import write_json
from torchrec_fusion.training.checkpoint import latest_checkpoint
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.early_stopping import StopMetric
from torchrec_fusion.training.evaluate import rank_catalogue
from torchrec_fusion.training.item_vectors import export_item_vectors
from torchrec_fusion.training.loop import TrainLoop
from torchrec_fusion.training.precision import device_type, native_bf16, resolve_precision
from torchrec_fusion.training.preflight import preflight
from torchrec_fusion.training.run_folder import hold_run_folder
from torchrec_fusion.training.session import Started, restore, resume_path, start
from torchrec_fusion.training.state import RunResult, TrainState

Log = Callable[[str], None]


def _log_for(config: TrainConfig, is_main: bool) -> Log:
    def log(message: str) -> None:
        print(message)

    def quiet(message: str) -> None:
        pass

    return log if (is_main and config.verbose) else quiet


def _describe_start(started: Started, config: TrainConfig, log: Log, reason: str) -> None:
    prepared = started.prepared
    train, evald = prepared.train, prepared.eval
    log(f"data: {prepared.info.get('dataset')} train={len(train)} {prepared.eval_split}={len(evald)} "
        f"features={train.feature_names} tasks={train.task_names}")
    log(f"precision: {config.precision} ({reason})")
    if config.precision == "bf16" and started.ctx.device.type == "cpu" and not native_bf16():
        log("warning: precision bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX): its matrix products "
            "are emulated and slower than fp32 here; use --precision fp32 (or auto)")
    threads = torch.get_num_threads()
    log(f"threads: {threads} per rank" + (" (--threads)" if config.threads else
        f" ({cpu_cores()} core(s) / {started.ctx.local_world_size} local rank(s); --threads N to change)"))
    log(_plan_text(started, config))


def _plan_text(started: Started, config: TrainConfig) -> str:
    """The plan in a few lines (every table under ``train --verbose``)."""
    plan, data = started.session.plan, started.prepared.train
    if config.full_plan:
        return describe_plan(plan)
    features = sorted(data.feature_names, key=len, reverse=True)  # table names end in t_<feature>
    owner = {t: next((f for f in features if t.endswith("t_" + f)), None) for p in plan.plan.values() for t in p}
    shapes = {t: (data.num_embeddings[f], config.embedding_dim) for t, f in owner.items() if f is not None}
    text = summarize_plan(plan, started.ctx.world_size, shapes, config.embedding_optimizer, config.batch_size)
    replicated = sum(ps.sharding_type == "data_parallel" and t not in (config.constraints or {})
                     for p in plan.plan.values() for t, ps in p.items())
    if replicated and config.sharding_type is None:
        text += (f"\n  {replicated} table(s) of at most {REPLICATE_TABLE_BYTES / 2**20:g} MiB replicated unasked "
                 "(no all-to-all for them); --sharding-type or constraints choose otherwise")
    return text + "\n  (train --verbose prints every table)"


def _initial_state(started: Started, config: TrainConfig, log: Log) -> TrainState:
    """The state of the checkpoint ``config.resume`` names, else fresh tables and a fresh state."""
    path = resume_path(config)
    if not path:
        seed_embedding_tables(started.session.dmp, config.seed)
        return TrainState()
    payload = restore(started.session, path, started.ctx)
    log(f"resumed from {path} at step {payload['step']} (saved at world size {payload['world_size']})")
    return TrainState.from_payload(payload)


def _result(config: TrainConfig, started: Started, loop: TrainLoop) -> RunResult:
    last = loop.state.history[-1]
    ckpt_root = loop.ckpt_root
    return RunResult(
        tasks=last.tasks, gates=last.gates, task_weights=last.task_weights, fused=last.fused or {},
        samples_per_second=loop.samples_per_second, world_size=started.ctx.world_size,
        eval_split=started.prepared.eval_split, train_seconds=loop.train_seconds, steps=loop.state.step,
        history=loop.state.history, step_losses=loop.state.step_losses,
        step_task_losses=loop.state.step_task_losses, ranking={}, plan=describe_plan(started.session.plan),
        data=started.prepared.info, config=config.to_dict(),
        checkpoint=latest_checkpoint(ckpt_root) if ckpt_root else None, best=loop.best())


def _rank(config: TrainConfig, started: Started, loop: TrainLoop, result: RunResult, log: Log) -> None:
    """The ranking of the whole catalogue for each evaluated user (``--ranking-eval``)."""
    session = started.session
    tasks = [t.name for t in session.model.tasks]
    ranking, scores, task = rank_catalogue(session.pipeline, session.dmp, started.prepared, started.ctx, config,
                                           tasks)
    log("ranking (full catalogue, seen items excluded): " + "; ".join(
        f"{name}{' (baseline)' if m.get('baseline') is True else ''} "
        + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith(("hr@", "ndcg@")))
        for name, m in ranking.items()))
    result.ranking = ranking
    if config.keep_predictions:
        result.ranking_scores, result.ranking_task = scores, task


def _write_outputs(config: TrainConfig, started: Started, loop: TrainLoop, result: RunResult, log: Log) -> None:
    """Rank 0 writes OUT/metrics.json, the report and (asked) the scores file."""
    out = config.output_dir
    assert out is not None
    path, written = os.path.join(out, "metrics.json"), result.to_dict()
    if result.checkpoint and config.explain:  # the model explained: feature importance and expert reliance
        from torchrec_fusion.explain.run import run_importance

        written["explain"] = run_importance(config, started.prepared, result.checkpoint)
    write_json(path, written)
    log(f"samples/s={result.samples_per_second:.0f}; wrote {path}")
    if config.report:
        from torchrec_fusion.evaluation.report import write_report

        log(f"report: {write_report(written, out)}")
    if config.save_scores:
        evald, preds, labels = started.prepared.eval, loop.predictions, loop.labels
        extras = getattr(evald, "extras", {})
        keys = ({k: extras[k] for k in ("user", "item")} if {"user", "item"} <= set(extras)
                else {"row": torch.arange(len(evald))})
        one_d = [k for k, v in preds.items() if v.dim() == 1]
        write_scores(os.path.join(out, "scores.csv"), keys, {k: labels[k] for k in one_d},
                     {k: preds[k] for k in one_d})


def run(config: TrainConfig) -> RunResult:
    """One rank's whole run. Rank 0 writes OUT/config.yaml (the resolved config), OUT/metrics.json
    and OUT/report.md; every rank writes its shards of the checkpoints."""
    precision, reason = resolve_precision(config.precision, device_type(config.device))
    config = dataclasses.replace(config, precision=precision)  # saved as run, in OUT/config.yaml
    started = start(config)
    log = _log_for(config, started.ctx.is_main)
    _describe_start(started, config, log, reason)
    if started.ctx.is_main and config.output_dir:  # once the run has started cleanly
        os.makedirs(config.output_dir, exist_ok=True)
        # overwrite acts once, on the folder: the saved config repeats the run, never a deletion
        dataclasses.replace(config, overwrite=False).save(os.path.join(config.output_dir, "config.yaml"))
    loop = TrainLoop(config, started, _initial_state(started, config, log), log)
    loop.run()
    if config.save_model:  # OUT/item_vectors.pt, when the model has a retrieval head (every rank: sharded)
        export_item_vectors(started, config, loop.state.step)
    result = _result(config, started, loop)
    if config.ranking_eval:
        _rank(config, started, loop, result, log)
    if started.ctx.is_main and config.output_dir:
        _write_outputs(config, started, loop, result, log)
    if config.keep_predictions:
        result.predictions, result.labels = loop.predictions, loop.labels
    return result


def check_run_config(config: TrainConfig) -> None:
    """What a run needs before it starts: at least one epoch (and step) to train."""
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs} (a run of no epoch would save an untrained model)")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {config.max_steps}")
    if config.early_stopping:  # its syntax here; its task and the validation split once the data is read
        StopMetric.parse(config.early_stopping)


def train(config: TrainConfig, world_size: Optional[int] = None) -> RunResult:
    """Runs ``config`` on ``config.world_size`` local processes (or under torchrun)
    and returns rank 0's result.

    With an output folder, this process (rank 0's under torchrun) holds ``OUT/.lock`` for the
    whole run: a second run there is refused while it lives, and a folder holding an earlier run is
    refused unless ``config.resume`` continues it or ``config.overwrite`` replaces it
    (:mod:`torchrec_fusion.training.run_folder`)."""
    check_run_config(config)
    preflight(config)  # a config that cannot work fails here, before any process starts
    out = config.output_dir if not under_torchrun() or os.environ.get("RANK") == "0" else None
    with hold_run_folder(out, config.resume, config.overwrite) if out else contextlib.nullcontext():
        result: RunResult = launch(run, world_size or config.world_size, config, device=config.device)[0]
    return result
