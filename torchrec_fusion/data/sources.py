"""Datasets by name: the synthetic default, MovieLens, the user's own tables, Criteo's raw TSV."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from torchrec_fusion.data.dataset import MultiTaskData

DATASETS = ("synthetic", "movielens", "table", "criteo")


@dataclass
class LoadedData:
    train: MultiTaskData
    test: MultiTaskData
    info: Dict[str, object] = field(default_factory=dict)
    item_titles: Optional[List[str]] = None
    # rows for arbitrary (user, item) index pairs, for ranking the catalogue (None: not available)
    candidates: Optional[Callable[[torch.Tensor, torch.Tensor], MultiTaskData]] = None
    # the dataset's own ids of user and item indices (None: the indices are the ids)
    user_ids: Optional[torch.Tensor] = None
    item_ids: Optional[torch.Tensor] = None


def load_dataset(name: str, data_dir: Optional[str] = None, split: Optional[str] = "auto", seed: int = 0,
                 synthetic_rows: int = 200_000, synthetic_scale: float = 1.0,
                 table: Optional[Dict[str, Any]] = None) -> LoadedData:
    """Loads ``name`` (one of :data:`DATASETS`) as train and test splits; ``table`` is the
    column spec of dataset "table" (see :class:`torchrec_fusion.data.tabular.TableSpec`)."""
    if name == "synthetic":
        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic

        base = SyntheticConfig()
        sizes = {k: max(1, int(v * synthetic_scale)) for k, v in base.table_sizes.items()}
        cfg = SyntheticConfig(num_rows=synthetic_rows, table_sizes=sizes,
                              num_tags=max(1, int(base.num_tags * synthetic_scale)), seed=seed)
        train, test = make_synthetic(cfg)
        return LoadedData(train, test, {"dataset": "synthetic", "rows": synthetic_rows},
                          candidates=candidate_builder(train, ["item", "category", "tags"]))
    if name == "movielens":
        if not data_dir:
            raise ValueError("--dataset movielens needs --data-dir, the folder of the official MovieLens files")
        from torchrec_fusion.data.movielens import load_movielens

        ml = load_movielens(data_dir, split=split, seed=seed)
        info = {"dataset": ml.variant, "data_dir": str(data_dir), "num_items": ml.num_items}
        return LoadedData(ml.train, ml.test, info, ml.item_titles, ml.candidates,
                          torch.as_tensor(ml._users.ids), torch.as_tensor(ml._items.ids))
    if name == "table":
        if not table:
            raise ValueError("dataset 'table' needs a 'table' section in the config: the columns of your files "
                             "(see torchrec_fusion.data.tabular.TableSpec)")
        from torchrec_fusion.data.tabular import TableSpec, load_tabular

        spec = TableSpec.from_dict(table)
        loaded = load_tabular(spec, seed)
        item_features = list(getattr(spec, "item_features", None) or [])
        in_memory = isinstance(loaded.train, MultiTaskData)  # a streamed train split has no rows to copy
        if loaded.candidates is None and in_memory and {"user", "item"} <= set(loaded.train.extras) and item_features:
            loaded.candidates = candidate_builder(loaded.train, item_features)
        return loaded
    if name == "criteo":
        if not data_dir:
            raise ValueError("--dataset criteo needs --data-dir, a Criteo TSV file or a folder of them")
        from torchrec_fusion.data.criteo import load_criteo

        return load_criteo(data_dir, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")


def candidate_builder(train: MultiTaskData, item_features: List[str], user: str = "user", item: str = "item"
                      ) -> Callable[[torch.Tensor, torch.Tensor], MultiTaskData]:
    """Rows for arbitrary (user, item) index pairs, to score items a user has not met: the
    ``item_features`` come from the item's last training row, every other feature (and the
    dense columns) from the user's last training row. Users or items never seen in training
    have no row to copy and raise ``ValueError``.

    Example::

        from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic
        tr, _ = make_synthetic(SyntheticConfig(num_rows=2000))
        user, item = tr.extras["user"][:2], tr.extras["item"][5:7]  # met in training
        rows = candidate_builder(tr, ["item", "category", "tags"])(user, item)
        assert torch.equal(rows.sparse["item"].values, item) and not rows.masks.any()
    """
    missing = [k for k in (user, item) if k not in train.extras]
    if missing:
        raise ValueError(f"{train.source}: candidate rows need the extras {missing}")
    unknown = sorted(set(item_features) - set(train.feature_names))
    if unknown:
        raise ValueError(f"item features {unknown} are not features of the data {train.feature_names}")
    u, i = train.extras[user].long(), train.extras[item].long()
    rows = torch.arange(len(train))
    last_u = torch.full((int(u.max()) + 1,), -1, dtype=torch.long).scatter_reduce(0, u, rows, "amax")
    last_i = torch.full((int(i.max()) + 1,), -1, dtype=torch.long).scatter_reduce(0, i, rows, "amax")

    def lookup(table: torch.Tensor, ids: torch.Tensor, what: str) -> torch.Tensor:
        ok = (ids >= 0) & (ids < len(table))
        r = torch.where(ok, table[ids.clamp(0, len(table) - 1)], torch.full_like(ids, -1))
        if (r < 0).any():
            raise ValueError(f"{what} {int(ids[r < 0][0])} has no training row to take its features from")
        return r

    def make(users: torch.Tensor, items: torch.Tensor) -> MultiTaskData:
        from torchrec_fusion.data.dataset import SparseColumn

        ru, ri = lookup(last_u, users.long(), "user"), lookup(last_i, items.long(), "item")
        sparse = {}
        for f, col in train.sparse.items():
            values, lengths = col.take(ri if f in item_features else ru)
            sparse[f] = SparseColumn(values, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))
        n = len(users)
        return MultiTaskData(train.dense[ru], sparse, dict(train.num_embeddings), list(train.tasks),
                             torch.zeros(n, len(train.tasks)), torch.zeros(n, len(train.tasks), dtype=torch.bool),
                             extras={user: users.long(), item: items.long()}, source="candidates",
                             pooling=dict(train.pooling))

    return make
