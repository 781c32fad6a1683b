"""torchrec_fusion: multi-task models and score fusion for TorchRec.

The names below are imported on first use (PEP 562), so that ``import torchrec_fusion`` and the
command line's ``--help`` do not pay for importing torch and TorchRec.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MultiTaskBatch": "torchrec_fusion.data.batch",
    "MMoEArch": "torchrec_fusion.modules",
    "MultiTaskModel": "torchrec_fusion.modules",
    "MultiTaskTrain": "torchrec_fusion.modules",
    "SharedBottomArch": "torchrec_fusion.modules",
    "TaskKind": "torchrec_fusion.tasks",
    "TaskSpec": "torchrec_fusion.tasks",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'torchrec_fusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
