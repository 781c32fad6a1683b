"""Plain (unsharded) modules; nothing here imports torch.distributed."""

from torchrec_fusion.modules.architectures import ARCHITECTURES, MMoEArch, MultiTaskArch, SharedBottomArch
from torchrec_fusion.modules.features import FeatureArch
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain, to_predictions
from torchrec_fusion.modules.towers import TaskTowers

__all__ = ["ARCHITECTURES", "FeatureArch", "MMoEArch", "MultiTaskArch", "MultiTaskModel", "MultiTaskTrain",
           "SharedBottomArch", "TaskTowers", "to_predictions"]
