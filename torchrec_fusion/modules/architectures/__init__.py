"""Multi-task architectures, chosen by name. Adding one is adding a file and a registry line."""

from typing import Any, Dict, Sequence, Type

from torchrec_fusion.modules.architectures.aitm import AITMArch
from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp
from torchrec_fusion.modules.architectures.esmm import ESMMArch
from torchrec_fusion.modules.architectures.mmoe import MMoEArch
from torchrec_fusion.modules.architectures.ple import CGCArch, PLEArch
from torchrec_fusion.modules.architectures.shared_bottom import SharedBottomArch
from torchrec_fusion.modules.architectures.single_task import SingleTaskArch

ARCHITECTURES: Dict[str, Type[MultiTaskArch]] = {
    "shared_bottom": SharedBottomArch,
    "mmoe": MMoEArch,
    "ple": PLEArch,
    "cgc": CGCArch,
    "esmm": ESMMArch,
    "aitm": AITMArch,
    "single_task": SingleTaskArch,
}


def build_architecture(name: str, in_features: int, task_names: Sequence[str], **kwargs: Any) -> MultiTaskArch:
    """Builds the architecture registered as ``name``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](in_features, task_names, **kwargs)


__all__ = ["ARCHITECTURES", "AITMArch", "CGCArch", "ESMMArch", "MultiTaskArch", "MMoEArch", "PLEArch",
           "SharedBottomArch", "SingleTaskArch", "build_architecture", "mlp"]
