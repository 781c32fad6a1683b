"""How fast the batch builders deliver: ``MultiTaskData.batches`` on the synthetic data and on
MovieLens-100K with the history bags, as the trainer builds them (``prepare_data``).

The trainer calls the iterator inline (``TrainPipelineSparseDist`` pulls the next batch inside
``progress()``; on CPU nothing runs beside it), so the loader's time is part of every step: the
share it takes is ``train steps/s / loader batches/s``. Measured with the threads one rank has at
world size 2 (``cores / 2``), on rank 0's slice of shuffled global batches. :func:`datapath` is the
suite's section 3: these rates against the training step rates the suite measured.
"""

import time
from typing import Any, Dict, List, Optional

import torch

from benchmarks.suite import ML_CONFIG, Suite, fmt_rows, num


def loader_rate(data: Any, batch_size: int, world_size: int, max_batches: int, threads: int) -> Dict[str, float]:
    """Batches/s and samples/s of rank 0's ``data.batches(...)`` over up to ``max_batches``
    batches (best of two passes: the first warms the allocator)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = None
        for epoch in range(2):
            it = data.batches(batch_size, shuffle=True, seed=0, epoch=epoch, rank=0, world_size=world_size)
            n = 0
            t = time.perf_counter()
            for _ in it:
                n += 1
                if n >= max_batches:
                    break
            s = time.perf_counter() - t
            if n and (best is None or n / s > best[0] / best[1]):
                best = (n, s)
        n, s = best if best else (0, 1.0)
        return {"batch_size": batch_size, "batches": n, "threads": threads,
                "batches_per_s": n / s, "samples_per_s": n * batch_size / s}
    finally:
        torch.set_num_threads(old)


def synthetic_loader(batch_size: int, rows: int, max_batches: int, threads: int) -> Dict[str, Any]:
    from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic

    t = time.perf_counter()
    train, _ = make_synthetic(SyntheticConfig(num_rows=rows))
    prep = time.perf_counter() - t
    out = loader_rate(train, batch_size, 2, max_batches, threads)
    return {"source": f"synthetic ({len(train):,} train rows)", "prepare_seconds": prep, **out}


def movielens_loader(data_dir: str, batch_size: int, max_batches: int, threads: int,
                     history_length: int = 64) -> Optional[Dict[str, Any]]:
    """``prepare_data`` of MovieLens-100K (u1 split, history bags of ``history_length``), then its loader."""
    from torchrec_fusion.training.config import TrainConfig
    from torchrec_fusion.training.prepare import prepare_data

    t = time.perf_counter()
    prepared = prepare_data(TrainConfig.make(dataset="movielens", data_dir=data_dir, history_length=history_length))
    prep = time.perf_counter() - t
    train = prepared.train
    out = loader_rate(train, batch_size, 2, max_batches, threads)
    source = f"movielens-100k + history {history_length} ({len(train):,} train rows)"
    return {"source": source, "prepare_seconds": prep, **out}


# ---- section 3 of the suite ----------------------------------------------------------------------

def _against_training(rate: Dict[str, Any], against: str, steps_per_s: float) -> Dict[str, Any]:
    return {**rate, "against": against, "train_steps_per_s": steps_per_s,
            "loader_over_train": rate["batches_per_s"] / steps_per_s,
            "loader_share_of_step": steps_per_s / rate["batches_per_s"]}


def _loader_rates(suite: Suite, threads: int) -> List[Dict[str, Any]]:
    """The synthetic loader against ours at each world size, and MovieLens's against its run."""
    from torchrec_fusion.training.config import read_config_file

    plan, dp = suite.plan, []
    syn = synthetic_loader(plan.batch_size, plan.synthetic_rows, plan.loader_batches, threads)
    for ws in suite.world_sizes:
        ours = suite.find("ours", plan.compare_rows, plan.dim, ws)
        if ours:
            dp.append(_against_training(syn, f"ours, {fmt_rows(plan.compare_rows)} rows, ws={ws}",
                                        1000.0 / ours["train_ms_per_step"]))
    if not dp:
        dp.append({**syn, "against": None})
    if suite.ml_ok:
        from torchrec_fusion.training.config import TrainConfig

        mlc = TrainConfig.from_dict(read_config_file(str(ML_CONFIG)))  # the file's settings over the defaults
        ml = movielens_loader(suite.ml_dir, mlc.batch_size, plan.loader_batches, threads, mlc.history_length)
        if suite.ml_rate:
            steps_per_s = suite.ml_rate / (mlc.batch_size * suite.result["movielens"]["world_size"])
            dp.append(_against_training(ml, "ML-100K run, make movielens", steps_per_s))
        else:
            dp.append({**ml, "against": None})
    return dp


def datapath(suite: Suite) -> None:
    """Section 3: batches/s of the batch builders against the training step rate."""
    say = suite.say
    threads = max(1, suite.cores // 2)
    say(f"\n== 3. data path: batches/s of MultiTaskData.batches ({threads} thread(s), a rank's share at ws=2) "
        f"against the training step rate ==")
    say("the pipeline pulls each batch inline on CPU: the loader's share of a step is (train steps/s) / "
        "(loader batches/s)")
    dp = _loader_rates(suite, threads)
    say(f"{'source':<48} {'batch':>5} {'batches/s':>10} {'samples/s':>11} {'vs training':<24} "
        f"{'steps/s':>8} {'loader/train':>12} {'share':>6}")
    for d in dp:
        say(f"{d['source']:<48} {d['batch_size']:>5} {d['batches_per_s']:>10,.1f} {d['samples_per_s']:>11,.0f} "
            f"{(d['against'] or '-'):<24} {num(d.get('train_steps_per_s'), 1):>8} "
            + (f"{d['loader_over_train']:>11.1f}x {100 * d['loader_share_of_step']:>5.1f}%"
               if d.get("loader_over_train") else ""))
    suite.result["datapath"] = dp
