"""How fast the batch builders deliver: ``MultiTaskData.batches`` on the synthetic data and on
MovieLens-100K with the history bags, as the trainer builds them (``prepare_data``).

The trainer calls the iterator inline (``TrainPipelineSparseDist`` pulls the next batch inside
``progress()``; on CPU nothing runs beside it), so the loader's time is part of every step: the
share it takes is ``train steps/s / loader batches/s``. Measured with the threads one rank has at
world size 2 (``cores / 2``), on rank 0's slice of shuffled global batches.
"""

import time
from typing import Any, Dict, Optional

import torch


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
    from torchrec_fusion.training.trainer import prepare_data

    t = time.perf_counter()
    prepared = prepare_data(TrainConfig(dataset="movielens", data_dir=data_dir, history_length=history_length))
    prep = time.perf_counter() - t
    train = prepared.train
    out = loader_rate(train, batch_size, 2, max_batches, threads)
    return {"source": f"movielens-100k + history {history_length} ({len(train):,} train rows)", "prepare_seconds": prep, **out}
