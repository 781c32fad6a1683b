"""The dataset names' former home: :mod:`torchrec_fusion.data.registry` (``DATASETS``,
``load_dataset``), :mod:`torchrec_fusion.data.types` (``LoadedData``) and
:mod:`torchrec_fusion.data.candidates` (``candidate_builder``), re-exported."""

from torchrec_fusion.data.candidates import candidate_builder
from torchrec_fusion.data.registry import DATASETS, load_dataset
from torchrec_fusion.data.types import LoadedData

__all__ = ["DATASETS", "LoadedData", "candidate_builder", "load_dataset"]
