"""Plain (unsharded) modules; nothing here imports torch.distributed, nor the training package."""

from torchrec_fusion.modules.architectures import ARCHITECTURES, MMoEArch, MultiTaskArch, SharedBottomArch
from torchrec_fusion.modules.features import FeatureArch
from torchrec_fusion.modules.interface import MultiTaskModule
from torchrec_fusion.modules.model import MultiTaskModel, MultiTaskTrain, to_predictions
from torchrec_fusion.modules.towers import TaskTowers

__all__ = ["ARCHITECTURES", "FeatureArch", "MMoEArch", "MultiTaskArch", "MultiTaskModel", "MultiTaskModule",
           "MultiTaskTrain", "SharedBottomArch", "TaskTowers", "to_predictions"]
