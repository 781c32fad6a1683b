"""Loss-balancing strategies, chosen by name. Adding one is adding a file (the strategy and its
``Options``, if it takes any) and a registry line.

Example::

    from torchrec_fusion.tasks import TaskSpec
    b = build_balancer("dwa", [TaskSpec("a"), TaskSpec("b")], options={"window": 10})
    assert isinstance(b, DynamicWeightAverage) and (b.window, b.temperature) == (10, 2.0)
"""

from typing import Any, Callable, Mapping, Optional, Sequence, Type

from torchrec_fusion.losses.balancing.base import FixedWeights, LossBalancer
from torchrec_fusion.losses.balancing.dwa import DynamicWeightAverage
from torchrec_fusion.losses.balancing.gradient import GradientBalancer
from torchrec_fusion.losses.balancing.gradnorm import GradNorm
from torchrec_fusion.losses.balancing.pcgrad import PCGrad
from torchrec_fusion.losses.balancing.uncertainty import UncertaintyWeighting
from torchrec_fusion.registry import Registry, options_dict
from torchrec_fusion.tasks import TaskSpec

BALANCERS: Registry[Type[LossBalancer]] = Registry("loss balancing")
BALANCERS.register("fixed", FixedWeights)
BALANCERS.register("uncertainty", UncertaintyWeighting)
BALANCERS.register("dwa", DynamicWeightAverage)
BALANCERS.register("gradnorm", GradNorm)
BALANCERS.register("pcgrad", PCGrad)


def build_balancer(name: str, tasks: Sequence[TaskSpec], options: Optional[Mapping[str, Any]] = None,
                   **kwargs: Any) -> LossBalancer:
    """Builds the strategy registered as ``name`` with its options: ``options`` (a config section) and
    ``kwargs`` together (``kwargs`` win), checked against the strategy's ``Options``, whose defaults
    fill the rest. An unknown option or a value of the wrong type is a ``ValueError`` naming it."""
    opts = BALANCERS.options(name, {**(options or {}), **kwargs})
    cls: Callable[..., LossBalancer] = BALANCERS[name]
    return cls(tasks, **options_dict(opts))


__all__ = ["BALANCERS", "DynamicWeightAverage", "FixedWeights", "GradNorm", "GradientBalancer", "LossBalancer",
           "PCGrad", "UncertaintyWeighting", "build_balancer"]
