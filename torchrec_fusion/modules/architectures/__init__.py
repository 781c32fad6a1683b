"""Multi-task architectures, chosen by name. Adding one is adding a file (the architecture and its
``Options``) and a registry line.

Example::

    arch = build_architecture("mmoe", 10, ["a", "b"], dropout=0.1, options={"num_experts": 3})
    assert arch.num_experts == 3 and arch.out_features == MMoEArch.Options().expert_layer_sizes[-1]
    try:
        build_architecture("mmoe", 10, ["a"], options={"experts": 3})
    except ValueError as e:
        assert "unknown option(s) ['experts']" in str(e)
"""

from typing import Any, Callable, Mapping, Optional, Sequence, Type

from torchrec_fusion.modules.architectures.aitm import AITMArch
from torchrec_fusion.modules.architectures.base import MultiTaskArch, mlp
from torchrec_fusion.modules.architectures.esmm import ESMMArch
from torchrec_fusion.modules.architectures.mmoe import MMoEArch
from torchrec_fusion.modules.architectures.ple import CGCArch, PLEArch
from torchrec_fusion.modules.architectures.shared_bottom import SharedBottomArch
from torchrec_fusion.modules.architectures.single_task import SingleTaskArch
from torchrec_fusion.registry import Registry, options_dict

ARCHITECTURES: Registry[Type[MultiTaskArch]] = Registry("architecture")
ARCHITECTURES.register("shared_bottom", SharedBottomArch)
ARCHITECTURES.register("mmoe", MMoEArch)
ARCHITECTURES.register("ple", PLEArch)
ARCHITECTURES.register("cgc", CGCArch)
ARCHITECTURES.register("esmm", ESMMArch)
ARCHITECTURES.register("aitm", AITMArch)
ARCHITECTURES.register("single_task", SingleTaskArch)


def build_architecture(name: str, in_features: int, task_names: Sequence[str], dropout: float = 0.0,
                       options: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> MultiTaskArch:
    """Builds the architecture registered as ``name`` with its options: ``options`` (a config section)
    and ``kwargs`` together (``kwargs`` win), checked against the architecture's ``Options``, whose
    defaults fill the rest. An unknown option or a value of the wrong type is a ``ValueError`` naming it."""
    opts = ARCHITECTURES.options(name, {**(options or {}), **kwargs})
    cls: Callable[..., MultiTaskArch] = ARCHITECTURES[name]
    return cls(in_features, task_names, dropout=dropout, **options_dict(opts))


__all__ = ["ARCHITECTURES", "AITMArch", "CGCArch", "ESMMArch", "MultiTaskArch", "MMoEArch", "PLEArch",
           "SharedBottomArch", "SingleTaskArch", "build_architecture", "mlp"]
