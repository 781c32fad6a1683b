"""Loss-balancing strategies, chosen by name."""

from typing import Any, Dict, Sequence, Type

from torchrec_fusion.losses.balancing.base import FixedWeights, LossBalancer
from torchrec_fusion.losses.balancing.dwa import DynamicWeightAverage
from torchrec_fusion.losses.balancing.gradient import GradientBalancer
from torchrec_fusion.losses.balancing.gradnorm import GradNorm
from torchrec_fusion.losses.balancing.pcgrad import PCGrad
from torchrec_fusion.losses.balancing.uncertainty import UncertaintyWeighting
from torchrec_fusion.tasks import TaskSpec

BALANCERS: Dict[str, Type[LossBalancer]] = {
    "fixed": FixedWeights,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
}


def build_balancer(name: str, tasks: Sequence[TaskSpec], **kwargs: Any) -> LossBalancer:
    """Builds the strategy registered as ``name``."""
    if name not in BALANCERS:
        raise ValueError(f"unknown loss balancing {name!r}; choose one of {sorted(BALANCERS)}")
    return BALANCERS[name](tasks, **kwargs)


__all__ = ["BALANCERS", "DynamicWeightAverage", "FixedWeights", "GradNorm", "GradientBalancer", "LossBalancer",
           "PCGrad", "UncertaintyWeighting", "build_balancer"]
