"""Top-N costs: what sampled negatives cost training, and what retrieval saves ``recommend``.

(a) Training samples/s on MovieLens-100K (u1.base) as the trainer reports them (observed rows per
    second; each also brings K sampled rows), configs/movielens-100k-topn.yaml with ``--negatives 4``
    against ``--negatives 0``, everything else the same (``--epochs`` of it, no ranking evaluation).
(b) ``recommend`` time per user on a catalogue of 10^6 items: a small synthetic run with a retrieval
    head is trained, its item vectors computed (``item_vectors``, the export), and the catalogue
    made of 10^6 entries that repeat its items (each entry's vector is its item's plus a little
    noise, so the search is a real 10^6-way one; the model's cost per row does not depend on the
    id). Then :func:`~torchrec_fusion.training.inference.rank_users`, recommend's own code, ranks
    for users one at a time and in chunks of 64: the user vector, exact top-N search (FAISS when
    installed, else ``torch.topk``; both timed) and the full model over the N candidates; against
    the full model over all 10^6 items for one user (``--candidates 0``). One process, world size 1.

    python -m benchmarks.topn [--part train recommend] [--data-dir ../shared/data/ml-100k] [--quick]
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from benchmarks.suite import DEFAULT_ML, ROOT
from torchrec_fusion.distributed.launcher import launch
from torchrec_fusion.training.config import TrainConfig, read_config_file

TOPN_CONFIG = ROOT / "configs" / "movielens-100k-topn.yaml"
_QUIET = {"progress": False, "verbose": False, "report": False}


def train_rates(data_dir: str, epochs: int, negatives: int, max_steps: Optional[int]) -> List[Dict[str, Any]]:
    """(a): one run per K in (0, ``negatives``), in one sitting, the trainer's samples/s of each."""
    from torchrec_fusion.training.trainer import train

    out = []
    for k in (0, negatives):
        values = {**read_config_file(str(TOPN_CONFIG)), "epochs": epochs, "max_steps": max_steps, "negatives": k,
                  "ranking_eval": False, "save_model": False, "output_dir": None, **_QUIET}
        values["data"] = {**values.get("data", {}), "data_dir": data_dir}
        res = train(TrainConfig.from_dict(values))
        out.append({"negatives": k, "samples_per_s": res.samples_per_second,
                    "rows_per_s": res.samples_per_second * (1 + k), "steps": res.steps,
                    "world_size": res.world_size, "train_seconds": res.train_seconds})
    return out


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _time_candidates(started: Any, config: TrainConfig, ranking: Any, who: torch.Tensor, items: torch.Tensor,
                     vecs: torch.Tensor, backends: List[str]) -> Dict[str, Any]:
    """Seconds per user of ranking ``ranking.candidates`` retrieved items: users one at a time
    (median), in one chunk of up to 64; and the search alone per backend (median of 5)."""
    from torchrec_fusion.evaluation.retrieval import ItemIndex, top_k
    from torchrec_fusion.training.inference import rank_users

    index = {b: ItemIndex(vecs, b) for b in backends}

    def no_seen(n: int) -> torch.Tensor:
        return torch.zeros(n, len(items), dtype=torch.bool)

    best = index[backends[-1]]  # FAISS when installed, as recommend's "auto"
    rank_users(started, config, ranking, who[:1], items, best, no_seen(1))  # warm-up
    one = [_timed(rank_users, started, config, ranking, who[j:j + 1], items, best, no_seen(1)) for j in range(len(who))]
    chunk = who[:64]
    many = _timed(rank_users, started, config, ranking, chunk, items, best, no_seen(len(chunk))) / len(chunk)
    row = {"candidates": ranking.candidates, "per_user_s": statistics.median(one), "per_user_in_64_s": many}
    for b in backends:
        row[f"search_{b}_s"] = statistics.median(
            _timed(top_k, vecs[j:j + 1], index[b], ranking.candidates) for j in range(5))
    return row


def _time_ranking(config: TrainConfig, checkpoint: str, catalogue: int, candidates: List[int], users: int,
                  full: bool) -> Dict[str, Any]:
    """(b), on one rank: seconds per user of each way of ranking the ``catalogue``-entry catalogue."""
    from torchrec_fusion.evaluation.retrieval import faiss_module
    from torchrec_fusion.training.inference import Ranking, rank_users, ranked_by
    from torchrec_fusion.training.item_vectors import item_vectors
    from torchrec_fusion.training.session import start_from_checkpoint

    started, _ = start_from_checkpoint(config, checkpoint)
    shown, by = ranked_by(started.session, None, config.ranking_relevance)
    real, real_vecs = item_vectors(started, config.eval_batch_size)
    export_s = _timed(lambda: item_vectors(started, config.eval_batch_size))
    g = torch.Generator().manual_seed(0)
    entry = torch.arange(catalogue) % len(real)
    items = real[entry]
    vecs = real_vecs[entry] + 0.01 * real_vecs.std() * torch.randn(catalogue, real_vecs.size(1), generator=g)
    who = torch.unique(started.prepared.splits["train"].extras["user"].long())[:users]
    res: Dict[str, Any] = {"catalogue": catalogue, "real_items": len(real), "dim": vecs.size(1), "by": by,
                           "export_seconds_real_catalogue": export_s, "faiss": faiss_module() is not None,
                           "rows": []}
    backends = ["torch", "faiss"] if res["faiss"] else ["torch"]
    for n in candidates:
        res["rows"].append(_time_candidates(started, config, Ranking(shown, by, 10, n), who, items, vecs, backends))
    if full:
        ranking = Ranking(shown, by, 10, catalogue)
        res["full_one_user_s"] = _timed(rank_users, started, config, ranking, who[:1], items, None,
                                        torch.zeros(1, catalogue, dtype=torch.bool))
    return res


def recommend_times(catalogue: int, candidates: List[int], users: int, full: bool, rows: int) -> Dict[str, Any]:
    """(b): trains the small synthetic retrieval run in a temporary folder, then times it."""
    from torchrec_fusion.training.inference import load_run
    from torchrec_fusion.training.trainer import train

    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig.make(dataset="synthetic", synthetic_rows=rows, synthetic_scale=0.2, epochs=1,
                               world_size=1, batch_size=512, embedding_dim=64, history_length=32,
                               history_liked="ctr", retrieval=True, ranking_relevance="ctr", output_dir=out,
                               **_QUIET))
        config, ckpt = load_run(out)
        config = dataclasses.replace(config, world_size=1)
        res: Dict[str, Any] = launch(_time_ranking, 1, config, ckpt, catalogue, candidates, users, full)[0]
    return res


def _print(train_rows: List[Dict[str, Any]], rec: Optional[Dict[str, Any]]) -> None:
    if train_rows:
        base = train_rows[0]["samples_per_s"]
        print(f"(a) ML-100K {TOPN_CONFIG.name}, world size {train_rows[0]['world_size']}: trainer's samples/s")
        print(f"{'K':>3} {'samples/s':>10} {'rows/s':>10} {'ratio':>6} {'steps':>6}")
        for r in train_rows:
            print(f"{r['negatives']:>3} {r['samples_per_s']:>10,.0f} {r['rows_per_s']:>10,.0f} "
                  f"{r['samples_per_s'] / base:>6.2f} {r['steps']:>6}")
    if rec:
        print(f"(b) recommend on {rec['catalogue']:,} items (vectors of dim {rec['dim']}, {rec['real_items']} real "
              f"items repeated), by {rec['by']}, k = 10; item vectors of the {rec['real_items']} real items: "
              f"{rec['export_seconds_real_catalogue']:.2f} s")
        print(f"{'N':>6} {'ms/user':>8} {'ms/user (64)':>13} " + " ".join(
            f"{'search ' + b + ' ms':>16}" for b in ("torch", "faiss") if f"search_{b}_s" in rec["rows"][0]))
        for r in rec["rows"]:
            searches = " ".join(f"{r[f'search_{b}_s'] * 1e3:>16.1f}" for b in ("torch", "faiss")
                                if f"search_{b}_s" in r)
            print(f"{r['candidates']:>6} {r['per_user_s'] * 1e3:>8.1f} {r['per_user_in_64_s'] * 1e3:>13.1f} {searches}")
        if "full_one_user_s" in rec:
            print(f"every item scored by the full model (--candidates 0), one user: {rec['full_one_user_s']:.2f} s")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.topn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", choices=["train", "recommend"], default=["train", "recommend"])
    p.add_argument("--data-dir", default=str(DEFAULT_ML), help="MovieLens-100K folder (read, never copied)")
    p.add_argument("--epochs", type=int, default=1, help="(a) epochs of each training run")
    p.add_argument("--max-steps", type=int, default=None, help="(a) stop each training run after this many steps")
    p.add_argument("--negatives", type=int, default=4, help="(a) K against 0")
    p.add_argument("--catalogue", type=int, default=10**6, help="(b) items in the catalogue")
    p.add_argument("--candidates", type=int, nargs="+", default=[200, 1000], help="(b) N retrieved per user")
    p.add_argument("--users", type=int, default=20, help="(b) users timed one at a time")
    p.add_argument("--no-full", action="store_true", help="(b) skip scoring every item for one user")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs")
    args = p.parse_args(argv)
    if args.quick:
        args.catalogue, args.candidates, args.users, args.epochs = 20_000, [50], 3, 1
    max_steps = 4 if args.quick else args.max_steps
    train_rows = train_rates(args.data_dir, args.epochs, args.negatives, max_steps) if "train" in args.part else []
    rec = (recommend_times(args.catalogue, args.candidates, args.users, not args.no_full,
                           3000 if args.quick else 40_000) if "recommend" in args.part else None)
    _print(train_rows, rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
