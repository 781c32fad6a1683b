"""``recommend`` on MovieLens-100K: a small model with a retrieval head, trained on u1.base, whose top-10
lists for the u1.test users hit their liked held-out items at least as often as popularity's do."""

from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

from conftest import ML100K, needs_ml100k

from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import recommend
from torchrec_fusion.training.trainer import train

Interactions = Dict[int, Set[int]]


def _read(name: str) -> List[Tuple[int, int, int]]:
    rows = [line.split("\t") for line in (ML100K / name).read_text().splitlines()]
    return [(int(u), int(i), int(r)) for u, i, r, _ in rows]


def _hits(lists: Dict[int, List[int]], liked: Interactions) -> Tuple[int, float]:
    """Liked held-out items found in the lists, and the share of users with at least one (HR@10)."""
    found = [len(set(lists[u]) & liked[u]) for u in liked]
    return sum(found), sum(f > 0 for f in found) / len(liked)


@needs_ml100k
def test_recommend_hits_liked_held_out_items_at_least_as_often_as_popularity(tmp_path: Path) -> None:
    base, test = _read("u1.base"), _read("u1.test")
    seen: Interactions = defaultdict(set)
    liked: Interactions = defaultdict(set)
    for u, i, _ in base:
        seen[u].add(i)
    for u, i, r in test:
        if r >= 4:
            liked[u].add(i)
    train(TrainConfig.make(dataset="movielens", data_dir=str(ML100K), arch="shared_bottom", world_size=1, epochs=1,
                           embedding_dim=32, batch_size=1024, embedding_lr=0.15, history_length=32,
                           history_liked="like", retrieval=True, output_dir=str(tmp_path), progress=False,
                           verbose=False, report=False))
    users = sorted(liked)
    # the 200 best items by the retrieval head's dot product, ranked by the model's chain; only the
    # u1.base items are left out (the u1.test ones are what is looked for), as in the ranking protocol
    recs = recommend(str(tmp_path), users, k=10, candidates=200, seen_splits=["train"], users_per_chunk=512)
    assert all(r["by"] == "retrieval_x_like" and r["candidates"] == 200 and len(r["items"]) == 10 for r in recs)
    ours = {r["user"]: [it["item"] for it in r["items"]] for r in recs}
    assert not any(set(ours[u]) & seen[u] for u in users)
    counts = Counter(i for _, i, _ in base)
    popular = sorted(counts, key=lambda i: (-counts[i], i))
    by_popularity = {u: [i for i in popular if i not in seen[u]][:10] for u in users}
    (hits, hr), (pop_hits, pop_hr) = _hits(ours, liked), _hits(by_popularity, liked)
    print(f"u1.test, {len(users)} users: recommend {hits} hits (HR@10 {hr:.4f}), popularity {pop_hits} "
          f"(HR@10 {pop_hr:.4f})")
    assert hits >= pop_hits and hr >= pop_hr, (hits, hr, pop_hits, pop_hr)
