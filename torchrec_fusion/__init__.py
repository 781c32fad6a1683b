"""torchrec_fusion: multi-task models and score fusion for TorchRec."""

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.modules import MMoEArch, MultiTaskModel, MultiTaskTrain, SharedBottomArch
from torchrec_fusion.tasks import TaskKind, TaskSpec

__version__ = "0.1.0"
__all__ = ["MMoEArch", "MultiTaskBatch", "MultiTaskModel", "MultiTaskTrain", "SharedBottomArch", "TaskKind",
           "TaskSpec", "__version__"]
