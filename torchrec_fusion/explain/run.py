"""Explanations of a finished run, in one process: its checkpoint gathered into whole tables (whatever
world size wrote it) or its export, the rows of (user, item) pairs, and what a reader sees instead of
indices (the dataset's own ids, titles, dense column names). No process group is started."""

import contextlib
import dataclasses
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from torchrec_fusion.explain.attributions import DEFAULT_STEPS
from torchrec_fusion.explain.explanation import Vocabulary, explain_rows
from torchrec_fusion.explain.importance import SAMPLE_ROWS, global_importance
from torchrec_fusion.modules.model import MultiTaskTrain
from torchrec_fusion.training.config import TrainConfig, read_config_file
from torchrec_fusion.training.inference import gathered_model
from torchrec_fusion.training.prepare import PreparedData, prepare_data

logger = logging.getLogger(__name__)
ITEM_BAGS, USER_BAGS, HISTORY_BAGS = ("item", "user_history", "user_liked"), ("user", "item_audience"), \
    ("user_liked", "user_history")


@dataclasses.dataclass
class Explainer:
    """A run's model in one process, with its data (the rows and the vocabulary)."""

    config: TrainConfig
    prepared: PreparedData
    model: MultiTaskTrain
    source: str  # the checkpoint or export it was loaded from


def load_explainer(run_dir: Optional[str] = None, export: Optional[str] = None, checkpoint: Optional[str] = None,
                   allow_plugins: bool = False, data_dir: Optional[str] = None) -> Explainer:
    """The run in ``run_dir`` (its ``checkpoint``: a folder, ``"best"`` or the latest) or the model
    exported to ``export``, with the data its config names (``data_dir`` overrides the folder)."""
    from torchrec_fusion.serving.export import load_exported
    from torchrec_fusion.training.inference import load_run
    from torchrec_fusion.training.session import quiet_third_party_logs

    quiet_third_party_logs()  # as every command that starts a model: TorchRec's tracing chatter off
    if (run_dir is None) == (export is None):
        raise ValueError("explain either a run (--run OUT) or an exported model (--export DIR)")
    if export is not None:
        values = read_config_file(os.path.join(export, "config.yaml"))
        if data_dir:
            values = {**values, "data_dir": data_dir}
        config = TrainConfig.from_dict(values)
        model, prepared = load_exported(export), prepare_data(config)
        return Explainer(config, prepared, model, export)
    assert run_dir is not None
    config, ckpt = load_run(run_dir, checkpoint, allow_plugins=allow_plugins, data_dir=data_dir)
    prepared = prepare_data(config)
    return Explainer(config, prepared, gathered_model(config, prepared.train, ckpt), ckpt)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread inside: an explanation's tensors are small, and waking more threads costs
    more than they save (measured on 2 busy cores: 0.05 s per explanation on one thread, 0.4-1.5 s on
    two; the global importance of 256 rows 0.1 s against 0.7-1.0 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _labeller(ids: Optional[torch.Tensor], titles: Optional[List[str]]) -> Any:
    def label(index: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {"id": int(ids[index]) if ids is not None and index < len(ids) else index}
        if titles is not None and index < len(titles):
            out["title"] = titles[index]
        return out

    return label


def vocabulary(prepared: PreparedData) -> Vocabulary:
    """The dataset's own ids (and titles) of the item-id and user-id features, its dense column names,
    and its history bags."""
    loaded, features = prepared.loaded, prepared.train.feature_names
    assert loaded is not None
    items, users = _labeller(loaded.item_ids, loaded.item_titles), _labeller(loaded.user_ids, None)
    ids = {**{f: items for f in ITEM_BAGS if f in features}, **{f: users for f in USER_BAGS if f in features}}
    dense_names = prepared.info.get("dense_names")
    return Vocabulary(dense_names if isinstance(dense_names, list) else None, ids,
                      [f for f in HISTORY_BAGS if f in features])


def _indices(ids: Optional[torch.Tensor], raw: Sequence[int], what: str) -> torch.Tensor:
    """The table indices of the dataset's own ids ``raw`` (an unknown one is an error)."""
    wanted = torch.tensor([int(r) for r in raw], dtype=torch.long)
    if ids is None:
        return wanted
    idx = torch.searchsorted(ids, wanted).clamp(max=len(ids) - 1)
    unknown = wanted[ids[idx] != wanted]
    if len(unknown):
        raise ValueError(f"unknown {what} id(s) {unknown[:10].tolist()}: not in the run's data")
    return idx


def explain_pairs(explainer: Explainer, users: Sequence[int], items: Sequence[int], steps: int = DEFAULT_STEPS
                  ) -> List[Dict[str, Any]]:
    """One explanation (see :func:`~torchrec_fusion.explain.explanation.explain_rows`) per (user, item)
    pair, by the dataset's own ids, for the row the run would score for that pair (the item's features,
    the user's, and the user's history bags built from the training rows)."""
    prepared = explainer.prepared
    if prepared.candidates is None or prepared.loaded is None:
        raise ValueError(f"dataset {explainer.config.dataset!r} cannot build the row of a (user, item) pair (a table "
                         "needs user_column, item_column and item_features in its spec)")
    if len(users) != len(items):
        raise ValueError(f"{len(users)} users for {len(items)} items: give one user per item")
    rows = prepared.candidates(_indices(prepared.loaded.user_ids, users, "user"),
                               _indices(prepared.loaded.item_ids, items, "item"))
    batch = rows.make_batch(torch.arange(len(rows)))
    vocab = vocabulary(prepared)
    with one_thread():
        out = explain_rows(explainer.model, batch.dense_features, batch.sparse_features, vocab, steps)
    item_idx = _indices(prepared.loaded.item_ids, items, "item")
    titles = [vocab.label("item", i).get("title") for i in item_idx.tolist()] if "item" in vocab.ids else []
    return [{"user": int(u), "item": int(it), **({"title": titles[j]} if j < len(titles) else {}), **e}
            for j, (u, it, e) in enumerate(zip(users, items, out))]


def run_importance(config: TrainConfig, prepared: PreparedData, checkpoint: str, split: Optional[str] = None,
                   sample: int = SAMPLE_ROWS) -> Optional[Dict[str, Any]]:
    """:func:`~torchrec_fusion.explain.importance.global_importance` of ``checkpoint`` over ``sample``
    rows of ``split`` (default: the split the run evaluates on), or None for an ensemble or a streamed
    split. A model it cannot explain gives ``{"error": why}``: a finished run never fails for it."""
    split = split or prepared.eval_split
    rows = prepared.splits[split].in_memory_rows() if split in prepared.splits else None
    if rows is None or config.ensemble or not len(rows):
        return None
    dense_names = prepared.info.get("dense_names")
    try:
        model = gathered_model(config, prepared.train, checkpoint)
        with one_thread():
            result = global_importance(model, rows, sample, seed=config.seed,
                                       dense_names=dense_names if isinstance(dense_names, list) else None)
    except (ValueError, RuntimeError) as e:
        logger.warning("explain: no global importance for %s: %s", checkpoint, e)
        return {"error": str(e)}
    return {"checkpoint": checkpoint, "split": split, **result}


__all__ = ["Explainer", "explain_pairs", "load_explainer", "run_importance", "vocabulary"]
