"""A finished run, reloaded: evaluate its checkpoint on a split, or recommend items to users.

Both rebuild the run from ``OUT/config.yaml``, shard the model over the world size the
user asks for (any: the checkpoint is resharded on load) and score with the same
pipeline as training.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from torchrec_fusion.data.types import BatchSource
from torchrec_fusion.distributed.launcher import launch
from torchrec_fusion.distributed.sharding import describe_plan
from torchrec_fusion.evaluation.gates import GateStats
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.evaluation.retrieval import ItemIndex, top_k
from torchrec_fusion.modules.model import FUSED_TASK, RETRIEVAL, MultiTaskTrain
from torchrec_fusion.tasks import TaskKind
from torchrec_fusion.training.checkpoint import best_checkpoint, latest_checkpoint, verify_checkpoint
from torchrec_fusion.training.config import TrainConfig, read_config_file
from torchrec_fusion.training.evaluate import FUSED_RANKING, derived_scores, evaluate, evaluate_metrics
from torchrec_fusion.training.factory import ModelSchema, build_train_model
from torchrec_fusion.training.item_vectors import (
    catalogue_items,
    has_retrieval,
    item_vectors,
    load_item_vectors,
    row_vectors,
)
from torchrec_fusion.training.prepare import PreparedData, read_file
from torchrec_fusion.training.safe_checkpoint import CheckpointError, load_state
from torchrec_fusion.training.session import Session, Started, start_from_checkpoint

FULL_SCORING_MAX = 20_000  # catalogues up to this size are scored whole by default
AUTO_CANDIDATES_PER_K, AUTO_CANDIDATES_MIN = 20, 200  # else max(20 k, 200) retrieved candidates


def load_run(run_dir: str, checkpoint: Optional[str] = None, **overrides: Any) -> Tuple[TrainConfig, str]:
    """The config of the run in ``run_dir`` (with ``overrides``; ``allow_plugins=True`` to import the
    plugin modules its config names, refused otherwise) and its checkpoint to load:
    ``checkpoint`` (a folder, or ``"best"``: the best epoch of ``--early-stopping``, or ``"latest"``),
    else the latest under ``run_dir/checkpoints``."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise ValueError(f"{run_dir} is not a run folder: no config.yaml (train with --output-dir {run_dir})")
    allow_plugins = bool(overrides.pop("allow_plugins", False))
    values = {**read_config_file(path), **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("plugins") and not allow_plugins:  # a run handed over must not run code by being read
        raise ValueError(f"{path} names plugin modules {values['plugins']}: reading the run would import them "
                         "(run their code); pass --allow-plugins (allow_plugins=True) if you trust them")
    config = TrainConfig.from_dict(values, source=path)
    config = dataclasses.replace(config, resume=None, progress=False, verbose=False, output_dir=None)
    root = os.path.join(run_dir, "checkpoints")
    if checkpoint == "best":
        ckpt = best_checkpoint(root)
        if ckpt is None:
            raise CheckpointError(f"{run_dir} has no best checkpoint: only a run trained with --early-stopping "
                                  "METRIC (and its model saved) keeps one")
    else:
        ckpt = checkpoint if checkpoint not in (None, "latest") else latest_checkpoint(root)
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (was it trained with --no-save-model?)")
    return config, ckpt


def gathered_model(config: TrainConfig, schema: ModelSchema, checkpoint: str) -> MultiTaskTrain:
    """The model of ``checkpoint`` in this process, every shard of every table gathered into whole
    tensors on the CPU, in eval mode: the same weights at any world size (``export`` and the
    explanations start here)."""
    verify_checkpoint(checkpoint)
    model = build_train_model(config, schema, device="cpu")
    state = {"model": model.state_dict()}
    load_state(state, checkpoint, no_dist=True)  # the safe reader: tensors and plain values only
    model.load_state_dict(state["model"])
    return model.eval()


def _evaluate_rank(config: TrainConfig, checkpoint: str, split: Optional[str], data: Optional[str] = None
                   ) -> Dict[str, Any]:
    started, state = start_from_checkpoint(config, checkpoint)
    ctx, prepared, session = started.ctx, started.prepared, started.session
    split = split or ("data" if data else prepared.eval_split)
    if data:
        rows: BatchSource = read_file(config, prepared, data)
    elif split in prepared.splits:
        rows = prepared.splits[split]
    else:
        raise ValueError(f"split {split!r} is not one of {sorted(prepared.splits)} for this run")
    gates = GateStats()
    tasks = list(session.model.tasks) + ([FUSED_TASK] if session.model.fusion is not None else [])
    if config.keep_predictions:  # every prediction gathered, the exact metrics
        preds, labels = evaluate(session.pipeline, session.dmp, rows, ctx, config.eval_batch_size, gates)
        metrics = task_metrics(tasks, preds, labels)
    else:  # streamed where the predictions are, as the trainer's evaluations
        metrics = evaluate_metrics(session.pipeline, session.dmp, rows, ctx, config.eval_batch_size, tasks, gates)
    out = {"split": split, **({"data": os.path.abspath(data)} if data else {}), "rows": len(rows),
           "checkpoint": checkpoint, "step": state["step"], "world_size": ctx.world_size,
           "plan": describe_plan(session.plan), "tasks": metrics, "gates": gates.result()}
    if config.keep_predictions:
        out["predictions"], out["labels"] = preds, labels
    return out


def evaluate_run(run_dir: str, split: Optional[str] = None, world_size: int = 1, checkpoint: Optional[str] = None,
                 data: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
    """Metrics of every task (and the fused score) of a run's checkpoint (``"best"`` too: see
    :func:`load_run`) on ``split`` ("test", "validation" or "train"; default: the split the run
    evaluated on), or on the rows of ``data``: any file (path, glob, folder) the run's table spec
    can read, with the run's table sizes (its result's split is then ``"data"``)."""
    if split and data:
        raise ValueError(f"evaluate either a split of the run ({split!r}) or a file (--data {data}), not both")
    config, ckpt = load_run(run_dir, checkpoint, world_size=world_size, **overrides)
    result: Dict[str, Any] = launch(_evaluate_rank, config.world_size, config, ckpt, split, data)[0]
    return result


def ranked_by(session: Session, by: Optional[str], relevance: str, fused_ranking: bool = False
              ) -> Tuple[List[str], str]:
    """The scores a recommendation shows (every non-multiclass task, the fused score, the retrieval
    score and its chain with the relevance task, and ``fused_ranking`` when the run has ranking fusion
    weights) and the one it ranks by (default: ``fused_ranking``, else the chain, else fused, else the
    first binary task)."""
    binary = [t.name for t in session.model.tasks if t.kind == TaskKind.BINARY]
    scored = [t.name for t in session.model.tasks if t.kind != TaskKind.MULTICLASS]
    shown = scored + (["fused"] if session.model.fusion is not None else [])
    chain = None
    if getattr(session.model.model, "retrieval", None) is not None:
        chain = f"{RETRIEVAL}_x_{relevance}" if relevance in binary else None
        shown += [RETRIEVAL] + ([chain] if chain else [])
    if fused_ranking:
        shown.append(FUSED_RANKING)
    by = by or (FUSED_RANKING if fused_ranking else None) or chain or (
        "fused" if session.model.fusion is not None else (binary or scored)[0])
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


SeenPairs = Tuple[torch.Tensor, torch.Tensor]


def seen_pairs(prepared: PreparedData, items: torch.Tensor, splits: Optional[Sequence[str]] = None) -> SeenPairs:
    """The interactions the data records in ``splits`` (default every split: train, validation and
    test) as (user index, position of the item in ``items``) pairs."""
    unknown = sorted(set(splits or ()) - set(prepared.splits))
    if unknown:
        raise ValueError(f"seen splits {unknown} are not splits of this run: {sorted(prepared.splits)}")
    chosen = [d for name, d in prepared.splits.items() if splits is None or name in splits]
    num = max([int(items.max())] + [int(d.extras["item"].max()) for d in chosen if len(d)]) + 1
    item_pos = torch.full((num,), -1, dtype=torch.long)
    item_pos[items] = torch.arange(len(items))
    users, pos = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.long)]
    for d in chosen:
        p = item_pos[d.extras["item"].long()]
        users.append(d.extras["user"].long()[p >= 0])
        pos.append(p[p >= 0])
    return torch.cat(users), torch.cat(pos)


def seen_mask(pairs: SeenPairs, idx: torch.Tensor, num_items: int) -> torch.Tensor:
    """``[users, items]``: True where user ``idx[r]`` interacted with the item at position ``p``."""
    seen = torch.zeros(len(idx), num_items, dtype=torch.bool)
    top = max(int(idx.max()), int(pairs[0].max()) if len(pairs[0]) else 0)
    user_row = torch.full((top + 1,), -1, dtype=torch.long)
    user_row[idx] = torch.arange(len(idx))
    r = user_row[pairs[0]]
    seen[r[r >= 0], pairs[1][r >= 0]] = True
    return seen


def _derived_scores(scores: Dict[str, torch.Tensor], config: TrainConfig, session: Session
                    ) -> Dict[str, torch.Tensor]:
    """The ranking scores derived from the model's (``scores``: task name to ``[users, items]``), the
    same for every way of choosing the candidates and as ``--ranking-eval`` computes them: the chain
    ``retrieval_x_<relevance>`` (P(interaction) x P(relevant | interaction)) and, with
    ``ranking_fusion`` weights, ``fused_ranking``."""
    regression = [t.name for t in session.model.tasks if t.kind == TaskKind.REGRESSION]
    return derived_scores(scores, config, regression)


def _items_of(top: Any, j: int, items: torch.Tensor, scores: Dict[str, torch.Tensor], prepared: PreparedData
              ) -> List[Dict[str, Any]]:
    """User ``j``'s ranked items with every score (and titles where the dataset has them); column
    ``c`` of the score rows is item ``items[c]``."""
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


def num_candidates(candidates: Optional[int], num_items: int, k: int, retrieval: bool) -> int:
    """How many items the full model scores per user: ``candidates`` (0: all) when given, else all of
    a catalogue of up to ``FULL_SCORING_MAX`` items (or without a retrieval head), else
    ``max(AUTO_CANDIDATES_PER_K * k, AUTO_CANDIDATES_MIN)`` retrieved ones.

    Example::

        assert num_candidates(None, 1682, 10, True) == 1682 and num_candidates(None, 10**6, 10, True) == 200
        assert num_candidates(50, 10**6, 10, True) == 50 and num_candidates(0, 10**6, 10, True) == 10**6
    """
    if candidates is not None and candidates < 0:
        raise ValueError(f"--candidates must be >= 0 (0: score every item), got {candidates}")
    if candidates and not retrieval:
        raise ValueError("--candidates N retrieves candidates with the run's retrieval head: this run has none "
                         "(train with --retrieval), so every item is scored; drop --candidates")
    if candidates is None:
        auto = num_items <= FULL_SCORING_MAX or not retrieval
        candidates = 0 if auto else max(AUTO_CANDIDATES_PER_K * k, AUTO_CANDIDATES_MIN)
    return num_items if candidates == 0 else min(candidates, num_items)


def _user_vectors(started: Started, u: torch.Tensor, items: torch.Tensor, seen: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """``[U, d]``: each user's vector from two rows of items the user has not met (whose history bags
    are then whole); the two must agree, or the user tower reads item-side features."""
    assert started.prepared.candidates is not None
    unseen = (~seen).to(torch.int8)
    first, last = unseen.argmax(1), len(items) - 1 - unseen.flip(1).argmax(1)
    rows = started.prepared.candidates(u.repeat(2), items[torch.cat([first, last])])
    vectors, _ = row_vectors(started.session, rows, started.ctx, batch_size)
    a, b = vectors[:len(u)], vectors[len(u):]
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise ValueError("the retrieval user tower changes with the item of the row (it reads an item-side "
                         "feature): candidates cannot be retrieved by user vector; use --candidates 0")
    return a


def _catalogue_vectors(started: Started, run_dir: str, step: int, items: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    """``[N, d]``: the run's exported item vectors when they are the checkpoint's (and cover ``items``),
    else computed now by the item tower."""
    stored = load_item_vectors(run_dir, step)
    if stored is not None and torch.equal(stored[0], items):
        return stored[1]
    return item_vectors(started, batch_size)[1]


@dataclasses.dataclass
class Ranking:
    """How a recommendation ranks: the scores it shows, the one it ranks by, the items kept per user,
    the candidates the full model scores per user (retrieved when fewer than the catalogue), and
    whether the user's seen items are left out."""

    shown: List[str]
    by: str
    k: int
    candidates: int
    exclude_seen: bool = True


def rank_users(started: Started, config: TrainConfig, ranking: Ranking, u: torch.Tensor, items: torch.Tensor,
               index: Optional[ItemIndex], seen: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Any]:
    """One chunk of users (indices ``u``) ranked over the catalogue ``items`` (``seen``: their
    ``[U, N]`` interactions): every item, or with ``index`` (the item vectors) the top
    ``ranking.candidates`` by ``user . item`` (exact search), scored by the full model. Returns the
    ``[U, C]`` items scored, their scores and the ``topk`` of the ranking score (``-inf``: nothing
    left to show)."""
    prepared, session = started.prepared, started.session
    assert prepared.candidates is not None
    if index is None:  # every item of the catalogue
        cols, hide = items.expand(len(u), -1), seen if ranking.exclude_seen else torch.zeros_like(seen)
    else:  # the top n by the retrieval logit, then ranked by the full model
        user_vecs = _user_vectors(started, u, items, seen, config.eval_batch_size)
        _, pos = top_k(user_vecs, index, ranking.candidates, exclude=seen if ranking.exclude_seen else None)
        cols, hide = items[pos.clamp_min(0)], pos < 0  # -1: fewer allowed items than n
    rows = prepared.candidates(u.repeat_interleave(cols.size(1)), cols.reshape(-1))
    preds, _ = evaluate(session.pipeline, session.dmp, rows, started.ctx, config.eval_batch_size)
    scores = {name: preds[name].view(len(u), -1) for name in ranking.shown if name in preds}
    scores.update({name: v for name, v in _derived_scores(scores, config, session).items() if name in ranking.shown})
    top = scores[ranking.by].masked_fill(hide, float("-inf")).topk(min(ranking.k, cols.size(1)), dim=1)
    return cols, scores, top


def _recommend_rank(config: TrainConfig, checkpoint: str, run_dir: str, users: Sequence[int], k: int,
                    by: Optional[str], exclude_seen: bool, users_per_chunk: int, candidates: Optional[int],
                    seen_splits: Optional[Sequence[str]], data: Optional[str] = None) -> List[Dict[str, Any]]:
    started, state = start_from_checkpoint(config, checkpoint)
    prepared, session = started.prepared, started.session
    if prepared.candidates is None or prepared.loaded is None:
        raise ValueError(f"dataset {config.dataset!r} cannot build candidate rows for recommendations (a table "
                         "needs user_column, item_column and item_features in its spec)")
    if data:  # a file of newer interactions: its items count as seen too
        prepared.splits["data"] = read_file(config, prepared, data)
        seen_splits = None if seen_splits is None else [*seen_splits, "data"]
    shown, by = ranked_by(session, by, config.ranking_relevance, bool(config.ranking_fusion))
    items = catalogue_items(prepared)
    ranking = Ranking(shown, by, k, num_candidates(candidates, len(items), k, has_retrieval(session)), exclude_seen)
    index = ItemIndex(_catalogue_vectors(started, run_dir, state["step"], items, config.eval_batch_size)) \
        if ranking.candidates < len(items) else None
    raw, idx = _user_rows(prepared, users)
    pairs = seen_pairs(prepared, items, seen_splits)
    out: List[Dict[str, Any]] = []
    for c in range(0, len(idx), users_per_chunk):
        u = idx[c:c + users_per_chunk]
        cols, scores, top = rank_users(started, config, ranking, u, items, index, seen_mask(pairs, u, len(items)))
        out += [{"user": int(raw[c + j]), "by": by, "candidates": cols.size(1),
                 "items": _items_of(top, j, cols[j], scores, prepared)} for j in range(len(u))]
    return out


def recommend(run_dir: str, users: Sequence[int], k: int = 10, by: Optional[str] = None, exclude_seen: bool = True,
              world_size: int = 1, checkpoint: Optional[str] = None, users_per_chunk: int = 64,
              candidates: Optional[int] = None, seen_splits: Optional[Sequence[str]] = None,
              data: Optional[str] = None, explain: bool = False, **overrides: Any) -> List[Dict[str, Any]]:
    """Top-``k`` items for each of ``users`` (the dataset's own user ids) from a run's checkpoint,
    ranked by ``by`` (a task, "fused", "retrieval", the chain or "fused_ranking"; default
    fused_ranking when the run has ranking fusion weights, else the chain, else the fused score, else
    the first binary task), with every score; items the user already interacted with (in
    ``seen_splits``: default every split, ``["train"]`` to rank held-out items too; and the rows of
    ``data``, a file the run's table spec reads) are left out.

    The full model scores ``candidates`` items per user (see :func:`num_candidates`: by default every
    item of a catalogue of up to 20,000): with fewer than the catalogue, the top ones by the retrieval
    logit ``user . item`` (exact search, seen items excluded) over the item vectors exported with the
    run (``OUT/item_vectors.pt`` of the same checkpoint step, else computed now). Each user's entry
    says how many items were scored (``"candidates"``). With ``explain``, each item carries its
    ``"explanation"`` (see :func:`explain_recommendations`)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not users:
        raise ValueError("no users to recommend for")
    config, ckpt = load_run(run_dir, checkpoint, world_size=world_size, **overrides)
    users = list(dict.fromkeys(int(u) for u in users))  # each user once, in the order given
    recs: List[Dict[str, Any]] = launch(_recommend_rank, config.world_size, config, ckpt, run_dir, list(users), k,
                                        by, exclude_seen, users_per_chunk, candidates, seen_splits, data)[0]
    if explain:
        explain_recommendations(run_dir, recs, checkpoint, allow_plugins=bool(overrides.get("allow_plugins")),
                                data_dir=overrides.get("data_dir"))
    return recs


def explain_recommendations(run_dir: str, recs: List[Dict[str, Any]], checkpoint: Optional[str] = None,
                            **load: Any) -> List[Dict[str, Any]]:
    """Adds to every recommended item of ``recs`` its ``"explanation"``: every score's attributions to
    the features and the history items, the gate mixtures, the fusion's contributions
    (:func:`torchrec_fusion.explain.run.explain_pairs`, from the checkpoint gathered in this process)."""
    from torchrec_fusion.explain.run import explain_pairs, load_explainer

    pairs = [(r["user"], item) for r in recs for item in r["items"]]
    if not pairs:
        return recs
    explained = explain_pairs(load_explainer(run_dir, checkpoint=checkpoint, **load), [u for u, _ in pairs],
                              [item["item"] for _, item in pairs])
    for (_, item), e in zip(pairs, explained):
        item["explanation"] = {k: e[k] for k in ("scores", "gates", "fusion") if k in e}
    return recs
