"""``recommend`` with retrieved candidates: the top N by the retrieval head's dot product (over the item
vectors exported with the run), then ranked by the full model, against scoring every item."""

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import load_run, num_candidates, recommend
from torchrec_fusion.training.item_vectors import ITEM_VECTORS_FILE, export_item_vectors, load_item_vectors, row_vectors
from torchrec_fusion.training.trainer import train

Lists = Dict[int, List[Dict[str, Any]]]


def _export(config: TrainConfig, checkpoint: str, out: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On one rank: writes OUT/item_vectors.pt and returns six training users and their user vectors
    (from rows of an item they never met) and the checkpoint's step."""
    from torchrec_fusion.training.session import start_from_checkpoint

    started, state = start_from_checkpoint(config, checkpoint)
    prepared = started.prepared
    assert prepared.candidates is not None
    export_item_vectors(started, config, state["step"], out)
    users = torch.unique(prepared.splits["train"].extras["user"].long())[:6]
    items = torch.unique(prepared.splits["train"].extras["item"].long())
    met = {(int(u), int(i)) for d in prepared.splits.values() for u, i in zip(d.extras["user"], d.extras["item"])}
    probe = torch.tensor([next(int(i) for i in items if (int(u), int(i)) not in met) for u in users])
    user_vecs, _ = row_vectors(started.session, prepared.candidates(users, probe), started.ctx, 64)
    return users, user_vecs, torch.tensor(state["step"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, List[int], torch.Tensor, int]:
    """A tiny synthetic run with a retrieval head (50 items), its item vectors exported."""
    from torchrec_fusion.distributed.launcher import launch

    out = str(tmp_path_factory.mktemp("retrieval_run"))
    train(TrainConfig.make(dataset="synthetic", synthetic_rows=2000, synthetic_scale=0.01, epochs=1, world_size=1,
                           batch_size=128, history_length=16, history_liked="ctr", retrieval=True,
                           ranking_relevance="ctr", output_dir=out, progress=False, verbose=False, report=False))
    config, ckpt = load_run(out)
    users, user_vecs, step = launch(_export, 1, config, ckpt, out)[0]
    return out, users.tolist(), user_vecs, int(step)


def _by_user(recs: List[Dict[str, Any]]) -> Lists:
    return {r["user"]: r["items"] for r in recs}


def test_retrieved_candidates_rank_as_scoring_every_item(run: Tuple[str, List[int], torch.Tensor, int]) -> None:
    out, users, user_vecs, _ = run
    items, vectors = load_item_vectors(out, run[3]) or pytest.fail("no item vectors exported")
    assert len(items) == 50 and vectors.shape[1] == user_vecs.shape[1]
    full = _by_user(recommend(out, users, k=len(items), candidates=0))  # every unseen item, by the chain
    assert all(r[0]["score"] > r[-1]["score"] for r in full.values())
    # the exported vectors give the model's retrieval logit: user . item
    for j, u in enumerate(users):
        got = torch.tensor([it["scores"]["retrieval"] for it in full[u]])
        dots = vectors[torch.searchsorted(items, torch.tensor([it["item"] for it in full[u]]))] @ user_vecs[j]
        assert torch.allclose(got, dots, atol=1e-4), u
    # by the retrieval logit, its top 5 candidates are the top 5 of the whole catalogue
    by_retrieval = _by_user(recommend(out, users, k=5, by="retrieval", candidates=5))
    # by the chain, over the top 12 candidates: the chain's order among the retrieval logit's top 12
    chain = _by_user(recommend(out, users, k=5, candidates=12))
    for u in users:
        assert by_retrieval[u][0]["rank"] == 1 and len(by_retrieval[u]) == 5
        ranked = sorted(full[u], key=lambda it: -it["scores"]["retrieval"])
        assert [it["item"] for it in by_retrieval[u]] == [it["item"] for it in ranked[:5]]
        pool = sorted(ranked[:12], key=lambda it: -it["score"])
        assert [it["item"] for it in chain[u]] == [it["item"] for it in pool[:5]]
        for it in chain[u]:  # the same rows, scored by the same model
            want = next(w for w in full[u] if w["item"] == it["item"])["scores"]
            assert all(abs(it["scores"][n] - want[n]) < 1e-4 for n in want)
    # with all but one item retrieved (each user has met at least one), the list is the full one
    every = _by_user(recommend(out, users, k=5, candidates=len(items) - 1))
    assert {u: [it["item"] for it in v] for u, v in every.items()} == {
        u: [it["item"] for it in full[u][:5]] for u in users}


def test_recommend_reads_the_exported_vectors_of_its_checkpoint(run: Tuple[str, List[int], torch.Tensor, int],
                                                                tmp_path: Path) -> None:
    out, users, _, step = run
    path = os.path.join(out, ITEM_VECTORS_FILE)
    saved = torch.load(path, weights_only=True)
    honest = _by_user(recommend(out, users[:2], k=5, by="retrieval", candidates=5))
    try:  # the file of another step is ignored; the checkpoint's own is used as it is (negated: the worst first)
        torch.save({**saved, "step": torch.tensor(step + 1)}, path)
        assert load_item_vectors(out, step) is None
        again = _by_user(recommend(out, users[:2], k=5, by="retrieval", candidates=5))
        assert all([it["item"] for it in again[u]] == [it["item"] for it in honest[u]] for u in users[:2])
        torch.save({**saved, "vectors": -saved["vectors"]}, path)
        flipped = _by_user(recommend(out, users[:2], k=5, by="retrieval", candidates=5))
        assert all([it["item"] for it in flipped[u]] != [it["item"] for it in honest[u]] for u in users[:2])
    finally:
        torch.save(saved, path)
    torch.save({"vectors": torch.zeros(3, 2), "items": torch.arange(2), "step": torch.tensor(1)},
               tmp_path / ITEM_VECTORS_FILE)
    with pytest.raises(ValueError, match="not an item-vector file"):
        load_item_vectors(str(tmp_path), 1)


def test_candidate_counts() -> None:
    assert num_candidates(None, 20_000, 10, True) == 20_000  # a small catalogue: every item
    assert num_candidates(None, 20_001, 10, True) == 200 and num_candidates(None, 10**6, 100, True) == 2000
    assert num_candidates(None, 10**6, 10, False) == 10**6  # no retrieval head: every item
    assert num_candidates(5000, 300, 10, True) == 300
    with pytest.raises(ValueError, match="no"):
        num_candidates(100, 10**6, 10, False)
    with pytest.raises(ValueError, match=">= 0"):
        num_candidates(-1, 10, 1, True)
