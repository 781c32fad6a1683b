from torchrec_fusion.losses.balancing import BALANCERS, FixedWeights, LossBalancer, build_balancer
from torchrec_fusion.losses.task_losses import masked_mean, task_loss, task_losses

__all__ = ["BALANCERS", "FixedWeights", "LossBalancer", "build_balancer", "masked_mean", "task_loss", "task_losses"]
