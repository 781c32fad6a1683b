"""The retrieval head's vectors, computed with the sharded model: the item vector of every item of the
catalogue (exported with a run as ``OUT/item_vectors.pt``) and the user vector of given users.

An item vector carries the item bias as a trailing coordinate and a user vector a trailing 1 (see
:class:`~torchrec_fusion.modules.retrieval.RetrievalArch`), so ``user . item`` is the retrieval logit
the model scores that (user, item) row with, and a top-N search needs nothing but the two.
"""

import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from torchrec_fusion.data.types import BatchSource
from torchrec_fusion.distributed.launcher import DistContext
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.prepare import PreparedData
from torchrec_fusion.training.session import Session, Started

ITEM_VECTORS_FILE = "item_vectors.pt"


def has_retrieval(session: Session) -> bool:
    """Whether the session's model has a retrieval head (user and item towers)."""
    return getattr(session.model.model, "retrieval", None) is not None


def catalogue_items(prepared: PreparedData) -> torch.Tensor:
    """The item indices a recommendation ranks: every item the dataset names, else every item of the
    training rows (candidate rows copy an item's features from its training row)."""
    assert prepared.loaded is not None
    item_ids = prepared.loaded.item_ids
    if item_ids is not None:
        return torch.arange(len(item_ids))
    items: torch.Tensor = torch.unique(prepared.splits["train"].extras["item"].long())
    return items


def _gather_rows(parts: List[torch.Tensor], n: int, ctx: DistContext) -> torch.Tensor:
    """This rank's ``[B, d]`` batch outputs of a split cut by ``batches(drop_last=False)``, as the
    ``[n, d]`` rows of the whole split in row order (batch ``i`` of rank ``r`` holds rows
    ``i*G + r*B ...``, ``G = B * world``; padding lies past ``n``)."""
    local = torch.stack(parts)  # nb x B x d
    if ctx.world_size > 1:
        everyone = [torch.empty_like(local) for _ in range(ctx.world_size)]
        dist.all_gather(everyone, local)
        local = torch.stack(everyone, 1)  # nb x world x B x d
    return local.reshape(-1, local.size(-1))[:n].cpu()


@torch.no_grad()
def row_vectors(session: Session, rows: BatchSource, ctx: DistContext, batch_size: int
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(user [n, d], item [n, d])``: the retrieval towers' vectors of every row of ``rows``, run
    through the sharded model by the same pipeline as scoring; every rank calls it and gets all rows."""
    inner = session.model.model
    if not has_retrieval(session):
        raise ValueError("the run's model has no retrieval head (train with --retrieval)")
    session.dmp.eval()
    users: List[torch.Tensor] = []
    items: List[torch.Tensor] = []
    it = rows.batches(batch_size, rank=ctx.rank, world_size=ctx.world_size, drop_last=False)
    try:
        while True:
            try:
                session.pipeline.progress(it)
            except StopIteration:
                break
            vectors = inner.retrieval_vectors()  # the forward just run: the batch the pipeline returned
            assert vectors is not None
            users.append(vectors[0].detach())
            items.append(vectors[1].detach())
    finally:
        session.dmp.train()
    if not users:
        raise ValueError("no rows to compute retrieval vectors for")
    return _gather_rows(users, len(rows), ctx), _gather_rows(items, len(rows), ctx)


def item_vectors(started: Started, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(items [N], vectors [N, d])``: the item tower over every catalogue item's features. The
    rows are (first training user, item): the item tower reads only the item's features."""
    prepared = started.prepared
    if prepared.candidates is None or prepared.loaded is None:
        raise ValueError("item vectors need a dataset that builds candidate rows (movielens, synthetic, or a table "
                         "with user_column, item_column and item_features)")
    items = catalogue_items(prepared)
    user = prepared.splits["train"].extras["user"].long()[:1].expand(len(items))
    _, vectors = row_vectors(started.session, prepared.candidates(user, items), started.ctx, batch_size)
    return items, vectors


def _write(path: str, payload: Dict[str, torch.Tensor]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def export_item_vectors(started: Started, config: TrainConfig, step: int, out_dir: Optional[str] = None
                        ) -> Optional[str]:
    """Writes ``OUT/item_vectors.pt`` (``out_dir`` or ``config.output_dir``): a dict of tensors
    ``vectors`` ``[N, d]`` (float32, the item bias last), ``items`` ``[N]`` (item indices) and
    ``step`` (the checkpoint's global step), written by rename on rank 0. Every rank calls it (the
    model is sharded). Returns the path, or None when the model has no retrieval head, the data
    builds no candidate rows or there is no output folder."""
    out = out_dir or config.output_dir
    prepared = started.prepared
    if not out or not has_retrieval(started.session) or prepared.candidates is None or prepared.loaded is None:
        return None
    items, vectors = item_vectors(started, config.eval_batch_size)
    path = os.path.join(out, ITEM_VECTORS_FILE)
    if started.ctx.is_main:
        _write(path, {"vectors": vectors.float().contiguous(), "items": items.long(),
                      "step": torch.tensor(step, dtype=torch.long)})
    return path


def load_item_vectors(run_dir: str, step: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(items, vectors)`` of ``run_dir/item_vectors.pt`` when it was written for checkpoint ``step``;
    None when the file is absent or belongs to another step. Read with ``weights_only=True``
    (tensors only); a file of the wrong shape is a ``ValueError``."""
    path = os.path.join(run_dir, ITEM_VECTORS_FILE)
    if not os.path.exists(path):
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    ok = isinstance(payload, dict) and all(isinstance(payload.get(k), torch.Tensor)
                                           for k in ("vectors", "items", "step"))
    if ok:
        vectors, items = payload["vectors"], payload["items"]
        ok = vectors.dim() == 2 and items.dim() == 1 and len(items) == len(vectors) and payload["step"].numel() == 1
    if not ok:
        raise ValueError(f"{path}: not an item-vector file (a dict of 'vectors' [N, d], 'items' [N] and 'step')")
    if int(payload["step"]) != step:
        return None
    return payload["items"].long(), payload["vectors"].float()
