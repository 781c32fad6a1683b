"""A finished run, reloaded: evaluate its checkpoint on a split, or recommend items to users.

Both rebuild the run from ``OUT/config.yaml``, shard the model over the world size the
user asks for (any: the checkpoint is resharded on load) and score with the same
pipeline as training.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from torchrec_fusion.distributed.launcher import launch
from torchrec_fusion.distributed.sharding import describe_plan
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.modules.model import FUSED_TASK, RETRIEVAL
from torchrec_fusion.tasks import TaskKind
from torchrec_fusion.training.checkpoint import CheckpointError, latest_checkpoint
from torchrec_fusion.training.config import TrainConfig, read_config_file
from torchrec_fusion.training.evaluate import evaluate
from torchrec_fusion.training.prepare import PreparedData
from torchrec_fusion.training.session import Session, start_from_checkpoint


def load_run(run_dir: str, checkpoint: Optional[str] = None, **overrides: Any) -> Tuple[TrainConfig, str]:
    """The config of the run in ``run_dir`` (with ``overrides``) and its checkpoint to load
    (``checkpoint``, else the latest under ``run_dir/checkpoints``)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise ValueError(f"{run_dir} is not a run folder: no config.yaml (train with --output-dir {run_dir})")
    values = {**read_config_file(path), **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig.from_dict(values, source=path)
    config = dataclasses.replace(config, resume=None, progress=False, verbose=False, output_dir=None)
    ckpt = checkpoint or latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (was it trained with --no-save-model?)")
    return config, ckpt


def _evaluate_rank(config: TrainConfig, checkpoint: str, split: str) -> Dict[str, Any]:
    started, state = start_from_checkpoint(config, checkpoint)
    ctx, prepared, session = started.ctx, started.prepared, started.session
    if split not in prepared.splits:
        raise ValueError(f"split {split!r} is not one of {sorted(prepared.splits)} for this run")
    gates = GateStats()
    preds, labels = evaluate(session.pipeline, session.dmp, prepared.splits[split], ctx, config.eval_batch_size, gates)
    tasks = list(session.model.tasks) + ([FUSED_TASK] if session.model.fusion is not None else [])
    out = {"split": split, "rows": len(prepared.splits[split]), "checkpoint": checkpoint, "step": state["step"],
           "world_size": ctx.world_size, "plan": describe_plan(session.plan),
           "tasks": task_metrics(tasks, preds, labels), "gates": gates.result()}
    if config.keep_predictions:
        out["predictions"], out["labels"] = preds, labels
    return out


def evaluate_run(run_dir: str, split: Optional[str] = None, world_size: int = 1, checkpoint: Optional[str] = None,
                 **overrides: Any) -> Dict[str, Any]:
    """Metrics of every task (and the fused score) of a run's checkpoint on ``split``
    ("test", "validation" or "train"; default: the split the run evaluated on)."""
    config, ckpt = load_run(run_dir, checkpoint, world_size=world_size, **overrides)
    split = split or ("validation" if config.validation_fraction > 0 else "test")
    result: Dict[str, Any] = launch(_evaluate_rank, config.world_size, config, ckpt, split)[0]
    return result


def _ranked_by(session: Session, by: Optional[str], relevance: str) -> Tuple[List[str], str]:
    """The scores a recommendation shows (every non-multiclass task, the fused score, the retrieval
    score and its chain with the relevance task) and the one it ranks by (default: the chain, else
    fused, else the first binary task)."""
    binary = [t.name for t in session.model.tasks if t.kind == TaskKind.BINARY]
    scored = [t.name for t in session.model.tasks if t.kind != TaskKind.MULTICLASS]
    shown = scored + (["fused"] if session.model.fusion is not None else [])
    chain = None
    if getattr(session.model.model, "retrieval", None) is not None:
        chain = f"{RETRIEVAL}_x_{relevance}" if relevance in binary else None
        shown += [RETRIEVAL] + ([chain] if chain else [])
    by = by or chain or ("fused" if session.model.fusion is not None else (binary or scored)[0])
    if by not in shown:
        raise ValueError(f"--by {by!r}: rank by one of {shown}")
    return shown, by


def _user_rows(prepared: PreparedData, users: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The given user ids and their row indices in the model's user table (unknown ids: an error)."""
    assert prepared.loaded is not None
    user_ids, train = prepared.loaded.user_ids, prepared.splits["train"]
    raw = torch.tensor(list(users), dtype=torch.long)
    if user_ids is not None:
        idx = torch.searchsorted(user_ids, raw).clamp(max=len(user_ids) - 1)
        unknown = raw[user_ids[idx] != raw]
    else:
        idx, unknown = raw, raw[~torch.isin(raw, torch.unique(train.extras["user"].long()))]
    if len(unknown):
        raise ValueError(f"unknown user id(s) {unknown[:10].tolist()}: no such user in the training data")
    return raw, idx


def _seen(prepared: PreparedData, idx: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``[users, items]``: every interaction the data records (train, validation and test rows)."""
    seen = torch.zeros(len(idx), len(items), dtype=torch.bool)
    item_pos = torch.full((int(items.max()) + 1,), -1, dtype=torch.long)
    item_pos[items] = torch.arange(len(items))
    user_row = torch.full((int(idx.max()) + 1,), -1, dtype=torch.long)
    user_row[idx] = torch.arange(len(idx))
    for d in prepared.splits.values():
        u, i = d.extras["user"].long(), d.extras["item"].long()
        ok = (u < len(user_row)) & (i < len(item_pos))
        r, p = user_row[u[ok]], item_pos[i[ok]]
        hit = (r >= 0) & (p >= 0)
        seen[r[hit], p[hit]] = True
    return seen


def _items_of(top: Any, j: int, items: torch.Tensor, scores: Dict[str, torch.Tensor], prepared: PreparedData
              ) -> List[Dict[str, Any]]:
    """User ``j``'s ranked items with every score (and titles where the dataset has them)."""
    assert prepared.loaded is not None
    item_ids, titles = prepared.loaded.item_ids, prepared.loaded.item_titles
    recs: List[Dict[str, Any]] = []
    for r, (s, col) in enumerate(zip(top.values[j].tolist(), top.indices[j].tolist())):
        if s == float("-inf"):
            break  # fewer unseen items than k
        item = int(items[col])
        rec = {"rank": r + 1, "item": int(item_ids[item]) if item_ids is not None else item,
               "score": s, "scores": {n: float(v[j, col]) for n, v in scores.items()}}
        if titles is not None:
            rec["title"] = titles[item]
        recs.append(rec)
    return recs


def _recommend_rank(config: TrainConfig, checkpoint: str, users: Sequence[int], k: int, by: Optional[str],
                    exclude_seen: bool, users_per_chunk: int) -> List[Dict[str, Any]]:
    started, _ = start_from_checkpoint(config, checkpoint)
    ctx, prepared, session = started.ctx, started.prepared, started.session
    if prepared.candidates is None or prepared.loaded is None:
        raise ValueError(f"dataset {config.dataset!r} cannot build candidate rows for recommendations (a table "
                         "needs user_column, item_column and item_features in its spec)")
    shown, by = _ranked_by(session, by, config.ranking_relevance)
    item_ids = prepared.loaded.item_ids
    items = (torch.arange(len(item_ids)) if item_ids is not None
             else torch.unique(prepared.splits["train"].extras["item"].long()))
    raw, idx = _user_rows(prepared, users)
    seen = _seen(prepared, idx, items) if exclude_seen else torch.zeros(len(raw), len(items), dtype=torch.bool)
    out: List[Dict[str, Any]] = []
    for c in range(0, len(idx), users_per_chunk):
        u = idx[c:c + users_per_chunk]
        rows = prepared.candidates(u.repeat_interleave(len(items)), items.repeat(len(u)))
        preds, _ = evaluate(session.pipeline, session.dmp, rows, ctx, config.eval_batch_size)
        scores = {n: preds[n].view(len(u), len(items)) for n in shown if n in preds}
        for n in shown:  # the chain: the retrieval logit plus log P(relevant)
            if n not in scores:
                scores[n] = scores[RETRIEVAL] + scores[config.ranking_relevance].clamp_min(1e-12).log()
        top = scores[by].masked_fill(seen[c:c + len(u)], float("-inf")).topk(min(k, len(items)), dim=1)
        out += [{"user": int(raw[c + j]), "by": by, "items": _items_of(top, j, items, scores, prepared)}
                for j in range(len(u))]
    return out


def recommend(run_dir: str, users: Sequence[int], k: int = 10, by: Optional[str] = None, exclude_seen: bool = True,
              world_size: int = 1, checkpoint: Optional[str] = None, users_per_chunk: int = 64,
              **overrides: Any) -> List[Dict[str, Any]]:
    """Top-``k`` items for each of ``users`` (the dataset's own user ids) from a run's checkpoint,
    ranked by ``by`` (a task, or "fused"; default the fused score, else the first binary task),
    with every task's score; items the user already interacted with are left out."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not users:
        raise ValueError("no users to recommend for")
    config, ckpt = load_run(run_dir, checkpoint, world_size=world_size, **overrides)
    users = list(dict.fromkeys(int(u) for u in users))  # each user once, in the order given
    recs: List[Dict[str, Any]] = launch(_recommend_rank, config.world_size, config, ckpt, list(users), k, by,
                                        exclude_seen, users_per_chunk)[0]
    return recs
