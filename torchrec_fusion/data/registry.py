"""The dataset registry: the synthetic default, MovieLens, the user's own tables, Criteo's raw TSV.

:data:`DATASETS` holds each dataset's reader (a class with an ``Options`` dataclass and a static
``load``, see :class:`~torchrec_fusion.data.types.DatasetReader`); :func:`load_dataset` loads one
from the ``data:`` section of a run config. Adding a dataset is one module with its reader, and its
import and ``register`` line here.

Example::

    d = load_dataset("synthetic", {"synthetic_rows": 1000, "synthetic_scale": 0.1}, seed=1)
    assert len(d.train) + len(d.test) == 1000 and d.candidates is not None
    try:
        load_dataset("synthetic", {"rows": 1000})
    except ValueError as e:
        assert "unknown option(s) ['rows']" in str(e)
"""

from typing import Any, Mapping, Optional

from torchrec_fusion.data.criteo import CriteoReader
from torchrec_fusion.data.movielens import MovieLensReader
from torchrec_fusion.data.synthetic import SyntheticReader
from torchrec_fusion.data.tabular import TableReader
from torchrec_fusion.data.types import DatasetReader, LoadedData
from torchrec_fusion.registry import Registry

__all__ = ["DATASETS", "load_dataset"]

DATASETS: Registry[DatasetReader] = Registry("dataset")
DATASETS.register("synthetic", SyntheticReader)
DATASETS.register("movielens", MovieLensReader)
DATASETS.register("table", TableReader)
DATASETS.register("criteo", CriteoReader)


def load_dataset(name: str, options: Optional[Mapping[str, Any]] = None, seed: int = 0) -> LoadedData:
    """Loads dataset ``name`` (a key of :data:`DATASETS`) as train and test splits.

    Args:
        name: the dataset.
        options: its options by name (the ``data:`` section; absent keys take the defaults of
            the reader's ``Options``).
        seed: seed of any random split or generation.

    Raises:
        ValueError: an unknown dataset, an unknown option or a value of the wrong type (naming
            ``data.<key>``), or a required option missing.
    """
    reader = DATASETS[name]
    return reader.load(DATASETS.options(name, options, where="data"), seed)
