"""Several complete models, each with its own tables, trained and fused as one module."""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.modules.interface import MultiTaskModule
from torchrec_fusion.tasks import TaskKind, TaskSpec


class DLRMMember(MultiTaskModule):
    """TorchRec's own :class:`~torchrec.models.dlrm.DLRM` as an ensemble member for one binary task.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        m = DLRMMember(DLRM(ebc, 2, [8, 4], [8, 1]), TaskSpec("click"))
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=torch.tensor([1, 2]),
                                                  lengths=torch.tensor([1, 1]))
        out, _ = m.forward_with_features(torch.rand(2, 2), kjt)
        assert out["click"].shape == (2,)
    """

    def __init__(self, dlrm: DLRM, task: TaskSpec) -> None:
        super().__init__()
        if task.kind != TaskKind.BINARY:
            raise ValueError(f"a DLRM member predicts one binary task, got {task.kind.value} task {task.name!r}")
        self.dlrm = dlrm
        self.tasks = [task]

    @property
    def feature_dim(self) -> int:
        """0: DLRM's feature vector stays inside it."""
        return 0

    def forward_with_features(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
                              ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        logits: torch.Tensor = self.dlrm(dense_features, sparse_features).squeeze(1)
        return {self.tasks[0].name: logits}, logits.new_zeros(logits.size(0), 0)

    def label_columns(self) -> Optional[List[int]]:
        return None

    def shared_parameters(self) -> List[nn.Parameter]:
        return []

    def regularization(self) -> Optional[torch.Tensor]:
        return None

    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        return None


class ModelEnsemble(MultiTaskModule):
    """Runs several complete models on the same batch and exposes their outputs as
    the tasks ``<member>_<task>`` of one multi-task model, so that
    :class:`~torchrec_fusion.modules.model.MultiTaskTrain` trains every member on
    its own loss and a fusion head fuses all of them. Each member keeps its own
    EmbeddingBagCollection: under DMP the planner sees and shards the tables of
    every member together.

    Args:
        members: name -> :class:`~torchrec_fusion.modules.interface.MultiTaskModule` (a
            :class:`MultiTaskModel` or a :class:`DLRMMember`).
        label_tasks: the batch's task names, in column order; each member task
            is supervised by the batch column of the same name.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec_fusion.modules.model import MultiTaskModel
        def ebc(prefix):
            return EmbeddingBagCollection(tables=[EmbeddingBagConfig(
                name=f"{prefix}_user", embedding_dim=4, num_embeddings=10, feature_names=["user"])])
        tasks = [TaskSpec("click"), TaskSpec("rating", "regression")]
        ens = ModelEnsemble({"mmoe": MultiTaskModel(ebc("a"), 2, tasks, arch="mmoe"),
                             "dlrm": DLRMMember(DLRM(ebc("b"), 2, [8, 4], [8, 1]), tasks[0])},
                            label_tasks=["click", "rating"])
        assert [t.name for t in ens.tasks] == ["mmoe_click", "mmoe_rating", "dlrm_click"]
        assert ens.label_columns() == [0, 1, 0]
    """

    def __init__(self, members: Mapping[str, MultiTaskModule], label_tasks: Sequence[str]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleDict(dict(members))
        self.tasks: List[TaskSpec] = []
        self._cols: List[int] = []
        self._names: List[Tuple[str, str, str]] = []  # (member, task, ensemble task)
        for m, model in self._member_models():
            for t in model.tasks:
                if t.name not in label_tasks:
                    raise ValueError(f"member {m!r} predicts {t.name!r}, which has no label in {list(label_tasks)}")
                name = f"{m}_{t.name}"
                self.tasks.append(TaskSpec(name, t.kind, t.loss_weight, t.num_classes))
                self._cols.append(list(label_tasks).index(t.name))
                self._names.append((m, t.name, name))
        self._feature_dim = sum(model.feature_dim for _, model in self._member_models())

    def _member_models(self) -> List[Tuple[str, MultiTaskModule]]:
        return [(m, cast(MultiTaskModule, model)) for m, model in self.members.items()]

    @property
    def feature_dim(self) -> int:
        """The members' feature vectors side by side."""
        return self._feature_dim

    def forward_with_features(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
                              ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        outputs, features = {}, []
        for m, model in self._member_models():
            out, feats = model.forward_with_features(dense_features, sparse_features)
            # index by task name: under the pipeline's FX tracing ``out`` is a proxy, not a dict
            outputs.update({f"{m}_{t.name}": out[t.name] for t in model.tasks})
            features.append(feats)
        return outputs, torch.cat(features, dim=1)

    def label_columns(self) -> List[int]:
        return list(self._cols)

    def shared_parameters(self) -> List[nn.Parameter]:
        return [p for _, model in self._member_models() for p in model.shared_parameters()]

    def regularization(self) -> Optional[torch.Tensor]:
        terms = [r for _, model in self._member_models() if (r := model.regularization()) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        out = {}
        for m, model in self._member_models():
            out.update({f"{m}_{t}": w for t, w in (model.gate_weights() or {}).items()})
        return out or None
