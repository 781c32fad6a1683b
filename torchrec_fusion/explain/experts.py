"""Each task's gate mixture over the experts, for given rows: the weights the architecture's gates put
on each expert (MMoE: the shared experts; PLE and CGC: the last level's, the task's own experts then the
shared ones; AITM: the transferred information and the task's own)."""

from typing import Dict, List, cast

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.explain.attributions import pooled_embeddings, scores_from, task_model
from torchrec_fusion.modules.architectures import AITMArch, MultiTaskArch, PLEArch
from torchrec_fusion.modules.architectures.ple import ExtractionLevel
from torchrec_fusion.modules.model import MultiTaskTrain


def expert_names(arch: MultiTaskArch, task: str, width: int) -> List[str]:
    """The names of the ``width`` columns of ``task``'s gate weights.

    Example::

        arch = PLEArch(8, ["a", "b"], num_levels=1, num_shared_experts=2, num_task_experts=1,
                       expert_layer_sizes=[4])
        assert expert_names(arch, "b", 3) == ["b 0", "shared 0", "shared 1"]
    """
    if isinstance(arch, AITMArch) and width == 2:
        return ["transferred", "own"]
    if isinstance(arch, PLEArch):
        level = cast(ExtractionLevel, arch.levels[-1])
        own = len(cast(nn.ModuleList, level.task_experts[task]))
        if own + len(level.shared_experts) == width:
            return [f"{task} {i}" for i in range(own)] + [f"shared {i}" for i in range(width - own)]
    return [f"expert {i}" for i in range(width)]


def gate_mixtures(train: MultiTaskTrain, dense: torch.Tensor, kjt: KeyedJaggedTensor
                  ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per task with a gate, per expert, the gate weight ``[B]`` of each row (empty for architectures
    without gates: shared-bottom, ESMM, single-task), in fp32 as the attributions are computed."""
    model = task_model(train)
    with torch.no_grad():
        scores_from(train, dense.float(), pooled_embeddings(model, kjt))  # the architecture keeps its gates
        gates = model.gate_weights() or {}
    return {t: dict(zip(expert_names(model.task_arch, t, w.size(1)), w.float().unbind(1))) for t, w in gates.items()}


__all__ = ["expert_names", "gate_mixtures"]
