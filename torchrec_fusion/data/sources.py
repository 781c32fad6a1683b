"""Datasets by name: the synthetic default and MovieLens from a local directory."""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from torchrec_fusion.data.dataset import MultiTaskData

DATASETS = ("synthetic", "movielens")


@dataclass
class LoadedData:
    train: MultiTaskData
    test: MultiTaskData
    info: Dict[str, object] = field(default_factory=dict)
    item_titles: Optional[List[str]] = None
    # rows for arbitrary (user, item) index pairs, for ranking the catalogue (None: not available)
    candidates: Optional[Callable[[torch.Tensor, torch.Tensor], MultiTaskData]] = None


def load_dataset(name: str, data_dir: Optional[str] = None, split: Optional[str] = "auto", seed: int = 0,
                 synthetic_rows: int = 200_000, synthetic_scale: float = 1.0) -> LoadedData:
    """Loads ``name`` ("synthetic" or "movielens") as train and test splits."""
    if name == "synthetic":
        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic

        base = SyntheticConfig()
        sizes = {k: max(1, int(v * synthetic_scale)) for k, v in base.table_sizes.items()}
        cfg = SyntheticConfig(num_rows=synthetic_rows, table_sizes=sizes,
                              num_tags=max(1, int(base.num_tags * synthetic_scale)), seed=seed)
        train, test = make_synthetic(cfg)
        return LoadedData(train, test, {"dataset": "synthetic", "rows": synthetic_rows})
    if name == "movielens":
        if not data_dir:
            raise ValueError("--dataset movielens needs --data-dir, the folder of the official MovieLens files")
        from torchrec_fusion.data.movielens import load_movielens

        ml = load_movielens(data_dir, split=split, seed=seed)
        info = {"dataset": ml.variant, "data_dir": str(data_dir), "num_items": ml.num_items}
        return LoadedData(ml.train, ml.test, info, ml.item_titles, ml.candidates)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
