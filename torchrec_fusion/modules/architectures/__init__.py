"""Multi-task architectures, chosen by name. Adding one is adding a file and a registry line."""

from typing import Any, Dict, Sequence, Type

from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp
from torchrec_fusion.modules.architectures.mmoe import MMoEArch
from torchrec_fusion.modules.architectures.shared_bottom import SharedBottomArch

ARCHITECTURES: Dict[str, Type[MultiTaskArch]] = {
    "shared_bottom": SharedBottomArch,
    "mmoe": MMoEArch,
}


def build_architecture(name: str, in_features: int, task_names: Sequence[str], **kwargs: Any) -> MultiTaskArch:
    """Builds the architecture registered as ``name``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](in_features, task_names, **kwargs)


__all__ = ["ARCHITECTURES", "MultiTaskArch", "MMoEArch", "SharedBottomArch", "build_architecture", "mlp"]
