"""The training loop over epochs: pipeline steps, checkpoints, NaN checks and an evaluation after
every epoch, all reading and writing one :class:`TrainState`."""

import itertools
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from torchrec_fusion.distributed.buffers import average_buffers, replicated_float_buffers
from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.distributed.sharding import describe_plan
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.fusion.head import FusionHead
from torchrec_fusion.modules.model import FUSED_TASK
from torchrec_fusion.training.checkpoint import best_checkpoint, mark_best, save_checkpoint, step_name
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.early_stopping import StopMetric, best_epoch, should_stop, summary
from torchrec_fusion.training.evaluate import evaluate, evaluate_metrics
from torchrec_fusion.training.session import Started, generators
from torchrec_fusion.training.state import Evaluation, TrainState

Log = Callable[[str], None]
TaskLosses = Dict[str, List[torch.Tensor]]


def all_finite(losses: List[torch.Tensor], ctx: DistContext) -> bool:
    """Whether every rank's losses are finite (a collective: every rank calls it at the same step)."""
    ok = torch.tensor([float(torch.stack(losses).isfinite().all()) if losses else 1.0])
    if ctx.world_size > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def mean_over_ranks(values: List[torch.Tensor], ctx: DistContext) -> List[float]:
    """Each value averaged over the ranks (a collective)."""
    if not values:
        return []
    t = torch.stack(values).float()
    if ctx.world_size > 1:
        dist.all_reduce(t)
        t /= ctx.world_size
    out: List[float] = t.tolist()
    return out


def _nan_error(where: str) -> FloatingPointError:
    return FloatingPointError(f"training loss became NaN/inf {where}; the last good checkpoint is kept untouched; "
                              "lower the learning rates or check the data")


class TrainLoop:
    """Trains ``started``'s model for ``config.epochs`` from ``state`` (a fresh one or a checkpoint's).

    After :meth:`run`, ``state`` holds the whole run's history and losses, ``samples_per_second`` and
    ``eval_samples_per_second`` the training and evaluation throughputs, and, when the config asks for
    them (``save_scores``, ``keep_predictions``), ``predictions`` and ``labels`` the last evaluation's.
    Every other evaluation streams its metrics (no prediction gathered)."""

    def __init__(self, config: TrainConfig, started: Started, state: TrainState, log: Log) -> None:
        self.config, self.ctx, self.state, self.log = config, started.ctx, state, log
        self.session, self.eval_data = started.session, started.prepared.eval
        self.train_data, self.eval_split = started.prepared.train, started.prepared.eval_split
        self.dmp = started.session.dmp
        self.steps_per_epoch = self.train_data.num_batches(config.batch_size, self.ctx.world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_data)} training rows make no batch of {config.batch_size} x "
                             f"{self.ctx.world_size} ranks: pass a smaller --batch-size (per rank; the default, "
                             "4096, suits tens of thousands of rows and more)")
        # the steps left, from where the state stands: a run resumed at another world size (other steps per
        # epoch) trains its remaining epochs, not a step count computed with today's steps per epoch
        into = min(state.batch_in_epoch, self.steps_per_epoch)
        self.total_steps = state.step + max(0, (config.epochs - state.epoch) * self.steps_per_epoch - into)
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.ckpt_root = os.path.join(config.output_dir, "checkpoints") if config.output_dir else None
        if config.checkpoint_every and not self.ckpt_root:
            raise ValueError("--checkpoint-every needs --output-dir (checkpoints go to OUT/checkpoints)")
        tasks = [t.name for t in self.session.model.tasks]
        self.task_keys = tasks + (["fused"] if self.session.model.fusion is not None else [])
        self.replicated = replicated_float_buffers(self.dmp) if self.ctx.world_size > 1 else []
        self.predictions: Dict[str, torch.Tensor] = {}
        self.labels: Dict[str, torch.Tensor] = {}
        self.train_seconds, self.samples = 0.0, 0
        self.eval_seconds, self.eval_samples = 0.0, 0
        self.want_predictions = config.save_scores or config.keep_predictions
        self.stop_metric = self._stop_metric()

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0

    @property
    def eval_samples_per_second(self) -> float:
        return self.eval_samples / self.eval_seconds if self.eval_seconds else 0.0

    def run(self) -> None:
        """Every remaining epoch, the final evaluation and the final checkpoint."""
        partial = False
        for epoch in range(self.state.epoch, self.config.epochs):
            if self._stopped():  # also a resumed run that had stopped early
                break
            done = self._epoch(epoch)
            if done is None:
                break
            if not done:
                partial = True
                break
            self._keep_best()
        if (self.state.evaluated_at != self.state.step or not self.eval_samples  # mid-epoch stop, resumed at the end
                or (self.want_predictions and not self.predictions)):  # or stopped early: the last one streamed
            position = self.state.epoch + min(self.state.batch_in_epoch, self.steps_per_epoch) / self.steps_per_epoch
            self.evaluate_now(position, predictions=self.want_predictions)
        if self.ckpt_root and self.config.save_model and not os.path.isdir(
                os.path.join(self.ckpt_root, step_name(self.state.step))):
            self.save()  # the state stands where the run stopped: after its last epoch, or inside one
        if partial:  # the partial epoch's losses count in the result
            self.state.finish_epoch()

    def _stop_metric(self) -> Optional[StopMetric]:
        """``--early-stopping``'s metric, checked against the run's tasks and evaluated split."""
        if not self.config.early_stopping:
            return None
        metric = StopMetric.parse(self.config.early_stopping)
        metric.check(self.session.model.tasks, "fused" in self.task_keys)
        if self.eval_split != "validation":
            raise ValueError(f"--early-stopping {metric} chooses the epoch on a validation split, and this run has "
                             "none (it evaluates on test): add validation: files to the table spec, or pass "
                             "--validation-fraction F")
        if self.config.patience < 1:
            raise ValueError(f"--patience must be >= 1 (epochs without improvement), got {self.config.patience}")
        return metric

    def _stopped(self) -> bool:
        """Whether early stopping has run out of patience (logged with the best epoch)."""
        m = self.stop_metric
        if m is None or not should_stop(self.state.history, m, self.config.patience):
            return False
        best = best_epoch(self.state.history, m)
        self.log(f"early stopping: no better {self.eval_split} {m} in {self.config.patience} epoch(s); best: "
                 + (f"epoch {int(best.epoch)} ({m}={m.value(best):.4f})" if best else "none"))
        return True

    def _keep_best(self) -> None:
        """After an epoch: when its evaluation is the best so far, its checkpoint becomes ``best``."""
        m, history = self.stop_metric, self.state.history
        if m is None or self.ckpt_root is None or not self.config.save_model or best_epoch(history, m) is not \
                history[-1]:
            return
        path = os.path.join(self.ckpt_root, step_name(self.state.step))
        if not os.path.isdir(path):
            self.save()
        self.log(f"best {self.eval_split} {m} so far: {mark_best(self.ckpt_root, path)}")

    def best(self) -> Optional[Dict[str, Any]]:
        """The best epoch for ``metrics.json`` (None without ``--early-stopping``)."""
        if self.stop_metric is None:
            return None
        ckpt = best_checkpoint(self.ckpt_root) if self.ckpt_root else None
        return summary(self.state.history, self.stop_metric, self.config.patience, self.config.epochs,
                       self.eval_split, ckpt)

    def _epoch(self, epoch: int) -> Optional[bool]:
        """One epoch from the state's position: True when it ended (and was evaluated), False when it
        stopped inside (max_steps), None when no step was left to run."""
        state, config = self.state, self.config
        start = min(state.batch_in_epoch, self.steps_per_epoch) if epoch == state.epoch else 0
        n = min(self.steps_per_epoch - start, self.total_steps - state.step)
        if n <= 0 and start < self.steps_per_epoch:  # start == steps: saved at its last step, not yet evaluated
            return None
        if start == 0:  # a fresh epoch (a resumed one keeps the losses of its first part)
            state.epoch_losses, state.epoch_task_losses = [], {}
        state.epoch = epoch
        self.dmp.train()
        it = itertools.islice(self.train_data.batches(
            config.batch_size, shuffle=True, seed=config.seed, epoch=epoch, rank=self.ctx.rank,
            world_size=self.ctx.world_size, start=start), n)
        losses, task_losses = self._steps(it, epoch, start)
        if not all_finite(losses, self.ctx):
            raise _nan_error(f"in epoch {epoch + 1} (by step {state.step})")
        self._record(losses, task_losses, start)
        if start + n < self.steps_per_epoch:  # stopped inside the epoch (max_steps): saved as a partial epoch
            state.batch_in_epoch = start + n
            return False
        train_loss = sum(state.epoch_losses) / len(state.epoch_losses) if state.epoch_losses else float("nan")
        state.finish_epoch()
        state.epoch, state.batch_in_epoch = epoch + 1, 0  # where a checkpoint saved now resumes
        entry = self.evaluate_now(epoch + 1, predictions=self.want_predictions and state.step >= self.total_steps)
        entry.train_loss = train_loss
        self._log_epoch(entry)
        return True

    def _record(self, losses: List[torch.Tensor], task_losses: TaskLosses, start: int) -> None:
        """The epoch's losses so far (this part's, averaged over ranks, after the part before ``start``)."""
        prior, prior_tasks = self.state.epoch_losses, self.state.epoch_task_losses
        self.state.epoch_losses = prior + mean_over_ranks(losses, self.ctx)
        self.state.epoch_task_losses = {k: prior_tasks.get(k, []) + mean_over_ranks(v, self.ctx)
                                        for k, v in task_losses.items()}

    def _steps(self, it: Iterator[Any], epoch: int, start: int) -> Tuple[List[torch.Tensor], TaskLosses]:
        """Runs the pipeline over ``it``, checkpointing every ``checkpoint_every`` global steps."""
        config, state = self.config, self.state
        bar = self._progress_bar(epoch, start)
        losses: List[torch.Tensor] = []
        task_losses: TaskLosses = {k: [] for k in self.task_keys}
        prior, prior_tasks = list(state.epoch_losses), dict(state.epoch_task_losses)
        t0 = time.perf_counter()
        for loss in self._losses(it):
            losses.append(loss)
            for k, v in self.session.module.last_task_losses.items():
                task_losses.setdefault(k, []).append(v)
            state.step += 1
            if bar is not None:
                bar.update(1)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                if not all_finite(losses, self.ctx):
                    raise _nan_error(f"before step {state.step} (epoch {epoch + 1})")
                state.epoch_losses, state.epoch_task_losses = prior, prior_tasks
                self._record(losses, task_losses, start)
                state.batch_in_epoch = start + len(losses)
                self.save()
                state.epoch_losses, state.epoch_task_losses = prior, prior_tasks
        self.train_seconds += time.perf_counter() - t0
        self.samples += len(losses) * config.batch_size * self.ctx.world_size
        if bar is not None:
            bar.close()
        return losses, task_losses

    def _losses(self, it: Iterator[Any]) -> Iterator[torch.Tensor]:
        pipeline = self.session.pipeline
        while True:
            try:
                loss, _, _ = pipeline.progress(it)
            except StopIteration:
                return
            average_buffers(self.replicated)  # running statistics stay equal on every rank
            yield loss

    def _progress_bar(self, epoch: int, start: int) -> Any:
        if not (self.ctx.is_main and self.config.progress):
            return None
        import threading

        from tqdm import tqdm

        # a thread lock, not tqdm's default multiprocessing one: a rank leaves by os._exit, and the
        # semaphore behind that lock would be reported as leaked when the program ends
        tqdm.set_lock(threading.RLock())
        return tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                    unit="batch", leave=False, dynamic_ncols=True)

    def evaluate_now(self, epoch: float, predictions: bool = False) -> Evaluation:
        """Evaluates the model on the held-out split and records it in the history: streamed metrics,
        or with ``predictions``, exact ones over every prediction (kept in ``self.predictions``)."""
        gate_stats = GateStats()
        module = self.session.module
        fusion = module.fusion if isinstance(module.fusion, FusionHead) else None
        tasks = list(module.tasks) + ([FUSED_TASK] if fusion is not None else [])
        t0 = time.perf_counter()
        if predictions:
            self.predictions, self.labels = evaluate(self.session.pipeline, self.dmp, self.eval_data, self.ctx,
                                                     self.config.eval_batch_size, gate_stats)
            metrics = task_metrics(tasks, self.predictions, self.labels)
        else:
            self.predictions, self.labels = {}, {}
            metrics = evaluate_metrics(self.session.pipeline, self.dmp, self.eval_data, self.ctx,
                                       self.config.eval_batch_size, tasks, gate_stats)
        self.eval_seconds += time.perf_counter() - t0
        self.eval_samples += len(self.eval_data)
        entry = Evaluation(epoch=epoch, step=self.state.step, tasks={t.name: metrics[t.name] for t in module.tasks},
                           gates=gate_stats.result(), task_weights=module.balancer.task_weights())
        if fusion is not None:
            entry.fused = {**metrics[FUSED_TASK.name], **fusion.describe()}
        history = self.state.history
        if history and history[-1].step == self.state.step:  # resumed at the very end: the same model again
            entry.epoch, entry.train_loss = history[-1].epoch, history[-1].train_loss
            history[-1] = entry
        else:
            history.append(entry)
        return entry

    def save(self) -> None:
        """A checkpoint of the model, the optimizers and the state at the current step."""
        assert self.ckpt_root is not None
        payload = {**self.state.to_payload(), "config": self.config.to_dict(),
                   "plan": describe_plan(self.session.plan)}
        path = save_checkpoint(self.ckpt_root, self.state.step, self.dmp, self.session.optimizer, payload,
                               keep=self.config.keep_checkpoints,
                               extra={"generators": {k: g.get_state() for k, g in generators(self.dmp).items()}})
        self.log(f"checkpoint: {path}")

    def _log_epoch(self, entry: Evaluation) -> None:
        shown = {t: m for t, m in {**entry.tasks, **({"fused": entry.fused} if entry.fused else {})}.items()
                 if any(isinstance(v, float) for v in m.values())}  # a task without scored rows is left out
        metrics = " ".join(f"{t}:" + ",".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
                           for t, m in shown.items())
        self.log(f"epoch {int(entry.epoch)}/{self.config.epochs} train_loss={entry.train_loss:.4f} samples/s="
                 f"{self.samples_per_second:.0f} eval_samples/s={self.eval_samples_per_second:.0f} {metrics}")
        if entry.gates:
            self.log("  gates: " + "  ".join(
                f"{t}=[{' '.join(f'{w:.2f}' for w in g['mean_weight'])}] H={g['normalised_entropy']:.2f}"
                + (" COLLAPSED" if g["collapsed"] else "") for t, g in entry.gates.items()))
