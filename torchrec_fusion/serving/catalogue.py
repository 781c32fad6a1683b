"""Recommending with an exported model: the catalogue, candidate rows and seen items of the run's data.

The export holds the model; the rows the model scores for (user, item) pairs are the run's data
(features of the user's and of the item's training rows, history bags), so the server reads the
run's dataset once at start (``prepare_data`` of the export's config, ``--data-dir`` where it moved)
and ranks as ``torchrec-fusion recommend`` does: every item of a catalogue of up to
``FULL_SCORING_MAX`` items (or without a retrieval head), else the top candidates by the retrieval
head's ``user . item`` over item vectors computed at start; the items the user met in any split of
the run's data are left out, and the default ranking score is ``recommend``'s.
"""

from typing import Any, Callable, Dict, List, Optional

import torch

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.evaluation.retrieval import top_k
from torchrec_fusion.modules.model import RETRIEVAL
from torchrec_fusion.serving.rows import RowError
from torchrec_fusion.tasks import TaskKind
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.evaluate import FUSED_RANKING, derived_scores
from torchrec_fusion.training.inference import (
    AUTO_CANDIDATES_MIN,
    AUTO_CANDIDATES_PER_K,
    FULL_SCORING_MAX,
    seen_mask,
    seen_pairs,
)
from torchrec_fusion.training.item_vectors import catalogue_items
from torchrec_fusion.training.prepare import PreparedData, prepare_data

Scorer = Callable[[MultiTaskBatch], Dict[str, torch.Tensor]]


class Catalogue:
    """The run's items, users, seen pairs and candidate rows (``prepared``: the run's prepared data)."""

    def __init__(self, config: TrainConfig, prepared: PreparedData, tasks: Dict[str, TaskKind]) -> None:
        if prepared.candidates is None or prepared.loaded is None:
            raise ValueError(f"dataset {config.dataset!r} cannot build candidate rows for recommendations")
        self.config, self.prepared, self.tasks = config, prepared, tasks
        self.items = catalogue_items(prepared)
        self.pairs = seen_pairs(prepared, self.items)
        self.user_ids, self.item_ids = prepared.loaded.user_ids, prepared.loaded.item_ids
        self.titles = prepared.loaded.item_titles
        self.users = torch.unique(prepared.splits["train"].extras["user"].long()) if self.user_ids is None else None
        self.item_vectors: Optional[torch.Tensor] = None

    @classmethod
    def load(cls, config: TrainConfig, tasks: Dict[str, TaskKind]) -> "Catalogue":
        return cls(config, prepare_data(config), tasks)

    def user_index(self, user: int) -> int:
        """The model's index of the dataset's user id ``user``; an unknown one is a :class:`RowError`."""
        if self.user_ids is not None:
            i = int(torch.searchsorted(self.user_ids, torch.tensor(user)).clamp(max=len(self.user_ids) - 1))
            if int(self.user_ids[i]) == user:
                return i
        elif self.users is not None and bool(torch.isin(torch.tensor([user]), self.users).item()):
            return user
        raise RowError("user", f"unknown user id {user}: no such user in the run's training data")

    def rows(self, user: int, items: torch.Tensor) -> MultiTaskBatch:
        """The candidate rows of user index ``user`` and item indices ``items``, as one batch."""
        assert self.prepared.candidates is not None
        data = self.prepared.candidates(torch.full((len(items),), user, dtype=torch.long), items)
        return next(iter(data.batches(len(items), drop_last=False)))

    def index_items(self, score: Scorer, chunk: int = 8192) -> None:
        """Computes the item vectors of the retrieval head (rows: first training user, every item)."""
        first = int(self.prepared.splits["train"].extras["user"][0])
        parts = [score(self.rows(first, self.items[s:s + chunk]))["_item_vectors"]
                 for s in range(0, len(self.items), chunk)]
        self.item_vectors = torch.cat(parts)

    def default_by(self, scores: List[str]) -> str:
        """``recommend``'s default ranking score among ``scores``."""
        chain = f"{RETRIEVAL}_x_{self.config.ranking_relevance}"
        binary = [t for t, k in self.tasks.items() if k == TaskKind.BINARY]
        for name in ([FUSED_RANKING] if self.config.ranking_fusion else []) + [chain, "fused"] + binary:
            if name in scores:
                return name
        return scores[0]

    def candidates(self, k: int, retrieval: bool) -> int:
        n = len(self.items)
        return n if n <= FULL_SCORING_MAX or not retrieval else min(n, max(AUTO_CANDIDATES_PER_K * k,
                                                                            AUTO_CANDIDATES_MIN))

    def recommend(self, score: Scorer, user: int, k: int, by: Optional[str], exclude_seen: bool) -> Dict[str, Any]:
        """User ``user``'s (the dataset's id) top-``k`` items with every score, ranked by ``by``."""
        u = self.user_index(user)
        seen = seen_mask(self.pairs, torch.tensor([u]), len(self.items))[0] if exclude_seen else \
            torch.zeros(len(self.items), dtype=torch.bool)
        n = self.candidates(k, self.item_vectors is not None)
        cols, hide = torch.arange(len(self.items)), seen
        if n < len(self.items) and self.item_vectors is not None:  # the top n by the retrieval logit
            first_unseen = int((~seen).to(torch.int8).argmax())
            user_vec = score(self.rows(u, self.items[first_unseen:first_unseen + 1]))["_user_vectors"]
            _, pos = top_k(user_vec, self.item_vectors, n, exclude=seen.unsqueeze(0) if exclude_seen else None)
            cols, hide = pos[0].clamp_min(0), pos[0] < 0
        out = score(self.rows(u, self.items[cols]))
        scores = {s: v for s, v in out.items() if not s.startswith("_") and v.dim() == 1}
        regression = [t for t, kind in self.tasks.items() if kind == TaskKind.REGRESSION]
        scores.update(derived_scores(scores, self.config, regression))
        by = by or self.default_by(list(scores))
        if by not in scores:
            raise RowError("by", f"{by!r} is not a score of this model: one of {sorted(scores)}")
        top = scores[by].masked_fill(hide, float("-inf")).topk(min(k, len(cols)))
        items = []
        for r, (s, c) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if s == float("-inf"):
                break  # fewer unseen items than k
            item = int(self.items[cols[c]])
            rec: Dict[str, Any] = {"rank": r + 1, "item": int(self.item_ids[item]) if self.item_ids is not None
                                   else item, "score": s, "scores": {n: float(v[c]) for n, v in scores.items()}}
            if self.titles is not None:
                rec["title"] = self.titles[item]
            items.append(rec)
        return {"user": user, "by": by, "candidates": len(cols), "items": items}
