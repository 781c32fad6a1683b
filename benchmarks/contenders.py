"""The models compared, each built and stepped the way its authors would.

* ``ours``: our MMoE as the trainer builds it (``build_train_model`` + ``build_session``: planner,
  DMP, fused row-wise Adagrad in backward for the tables, Adam for the dense part,
  ``TrainPipelineSparseDist``), 4 tasks, no fusion head.
* ``ours_fusion``: the same with ``fusion="weighted"`` (the multi-task heads plus fusion).
* ``ours_matched``: MMoE + weighted fusion with its dense compute matched to ``dlrm``'s (4 experts of
  [8], towers [8], no dropout: about 20k multiply-adds per sample against DLRM's 22k), so that its
  step time against DLRM's is what the multi-task heads, gates, losses and fusion cost, not a
  bigger model (``MATCHED``).
* ``dlrm``: TorchRec's single-task ``DLRMTrain(DLRM(...))`` on the same tables (``build_ebc``),
  planned, sharded, optimised and pipelined by the same functions (task ``ctr``).
* ``peers``: the same architecture written the way torch-rechub / DeepCTR-Torch write it: one
  plain ``nn.Embedding`` per feature (the tag bag looked up padded, then masked and summed),
  dense gradients, ``torch.optim.Adam`` over every parameter; DDP replicas over 2 ranks.
* ``plain``: the strongest plain-PyTorch way: ``nn.EmbeddingBag(mode="sum", sparse=True)`` per
  feature, ``torch.optim.SparseAdam`` for the tables and ``torch.optim.Adam`` for the dense part;
  DDP replicas (sparse gradients all-reduced by gloo) over 2 ranks.

``peers`` and ``plain`` reuse our plain modules for everything but the embeddings -- TorchRec's
``DenseArch`` (as our ``FeatureArch`` uses it), our ``MMoEArch``, ``TaskTowers`` and
``MultiTaskTrain`` (losses, label masks, predictions) -- with the trainer's default sizes, so that
only the embedding path and the optimizer differ from ``ours``.
"""

import itertools
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.autograd.profiler import record_function

from benchmarks.common import BAG_FEATURES, CONTENDERS, FEATURES, TASK_NAMES, RawBatch, Workload
from torchrec_fusion.modules.interface import MultiTaskModule

# ours_matched: the trainer's model with DLRM's dense budget (dlrm_layer_sizes): the 320-wide feature
# vector feeds 4 experts of 8 units and 4 x 4 gate logits, towers of 8; DLRM has no dropout either
MATCHED = {"num_experts": 4, "expert_layer_sizes": [8], "tower_layer_sizes": [8], "dropout": 0.0}


def train_config(w: Workload, device: Optional[str], fusion: str = "none", **overrides: Any) -> Any:
    """The model this comparison has always measured, pinned here since the CLI defaults moved (#15):
    MMoE, 4 experts [128, 64], dense arch [64], towers [32], dropout 0.5, no dot interactions, row-wise
    Adagrad 0.05, Adam 1e-3, fp32 (as the peers), at this workload's dim and batch."""
    from torchrec_fusion.training.config import TrainConfig

    pinned = {"expert_layer_sizes": [128, 64], "dense_arch_layer_sizes": [64], "tower_layer_sizes": [32],
              "embedding_lr": 0.05, "dense_lr": 1e-3, "precision": "fp32", "history_length": 64}
    return TrainConfig.make(arch="mmoe", embedding_dim=w.dim, batch_size=w.batch_size, fusion=fusion, device=device,
                            progress=False, verbose=False, report=False, save_model=False,
                            **{**pinned, **overrides})


def schema_data(w: Workload) -> Any:
    """A few rows carrying the workload's features, table sizes and tasks: what ``build_train_model``
    reads to size the model (the batches themselves come from the pool)."""
    from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
    from torchrec_fusion.data.synthetic import SYNTHETIC_TASKS

    n = 8
    sparse = {f: SparseColumn(torch.arange(n) % w.rows) for f in FEATURES if f not in BAG_FEATURES}
    for f in BAG_FEATURES:
        sparse[f] = SparseColumn(torch.arange(2 * n) % w.rows, torch.arange(0, 2 * n + 1, 2))
    labels = torch.tensor([[1.0, 0.0, 1.5, 0.0]] * n)
    return MultiTaskData(dense=torch.zeros(n, w.num_dense), sparse=sparse,
                         num_embeddings=dict.fromkeys(FEATURES, w.rows), tasks=list(SYNTHETIC_TASKS),
                         labels=labels, masks=torch.ones(n, 4, dtype=torch.bool), source="bench/schema")


def _kjt_parts(rb: RawBatch) -> Any:
    return torch.cat([rb.ids[f] for f in FEATURES]), torch.cat([rb.lengths[f] for f in FEATURES])


def _kjt(values: torch.Tensor, lengths: torch.Tensor) -> Any:
    """A new KeyedJaggedTensor (nothing cached on it yet, as one fresh from a loader)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=list(FEATURES), values=values, lengths=lengths)


class Runner:
    """One contender on one rank: ``inputs`` turns a pool batch into its native batch (before the
    clock), ``progress(it)`` runs one step on the next batch of ``it`` (StopIteration when done)."""

    name: str = ""
    floor_rank: int = 0  # bytes this rank must hold for the tables and their optimizer state
    plan: str = ""

    def inputs(self, rb: RawBatch) -> Any:
        raise NotImplementedError

    def fresh(self, native: Any) -> Any:
        """The batch handed to a step: a new object over the pre-built tensors (cheap)."""
        return native

    def train_mode(self, on: bool) -> None:
        raise NotImplementedError

    def progress(self, it: Iterator[Any]) -> Any:
        raise NotImplementedError

    def dense_module(self) -> nn.Module:
        raise NotImplementedError


class PipelineRunner(Runner):
    """A DMP-sharded model driven by ``TrainPipelineSparseDist`` (ours, ours_fusion, dlrm)."""

    def __init__(self, name: str, dmp: nn.Module, pipeline: Any, floor_rank: int, plan: str,
                 make_input: Callable[[RawBatch, Any], Any]) -> None:
        self.name, self.dmp, self.pipeline = name, dmp, pipeline
        self.floor_rank, self.plan, self._make = floor_rank, plan, make_input

    def inputs(self, rb: RawBatch) -> Any:
        return (rb, *_kjt_parts(rb))

    def fresh(self, native: Any) -> Any:
        rb, values, lengths = native
        return self._make(rb, _kjt(values, lengths))

    def train_mode(self, on: bool) -> None:
        self.dmp.train(on)

    def progress(self, it: Iterator[Any]) -> Any:
        if self.dmp.training:
            return self.pipeline.progress(it)
        with torch.no_grad():  # as the trainer's evaluate()
            return self.pipeline.progress(it)

    def dense_module(self) -> nn.Module:
        return self.dmp


def build_ours(w: Workload, ctx: Any, fusion: str = "none", name: str = "", **overrides: Any) -> PipelineRunner:
    from torchrec_fusion.data.batch import MultiTaskBatch
    from torchrec_fusion.distributed.sharding import describe_plan, seed_embedding_tables, shard_bytes_per_rank
    from torchrec_fusion.training.factory import build_train_model
    from torchrec_fusion.training.session import build_session

    config = train_config(w, ctx.device.type, fusion, **overrides)
    data = schema_data(w)
    session = build_session(config, ctx, data)
    seed_embedding_tables(session.dmp, config.seed)
    floor = shard_bytes_per_rank(session.plan, build_train_model(config, data), ctx.world_size)[ctx.rank]

    def make(rb: RawBatch, kjt: Any) -> Any:
        return MultiTaskBatch(rb.dense, kjt, rb.labels, rb.masks, TASK_NAMES)

    name = name or ("ours" if fusion == "none" else "ours_fusion")
    return PipelineRunner(name, session.dmp, session.pipeline, floor, describe_plan(session.plan), make)


def dlrm_layer_sizes(w: Workload) -> Dict[str, List[int]]:
    """DLRM's bottom MLP is our dense arch ([64] + [dim]); its over arch is one of our experts'
    MLPs ([128, 64]) and a logit: the single-task counterpart of one MMoE path."""
    config = train_config(w, None)
    return {"dense_arch": list(config.dense_arch_layer_sizes) + [w.dim],
            "over_arch": list(config.member_options("arch")["expert_layer_sizes"]) + [1]}


def build_dlrm(w: Workload, ctx: Any) -> PipelineRunner:
    from torchrec.datasets.utils import Batch
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.models.dlrm import DLRM, DLRMTrain

    from torchrec_fusion.distributed.sharding import (
        describe_plan,
        make_sharders,
        plan_sharding,
        seed_embedding_tables,
        shard_bytes_per_rank,
        shard_model,
    )
    from torchrec_fusion.training.factory import build_ebc

    config = train_config(w, ctx.device.type)
    sizes = dlrm_layer_sizes(w)
    model = DLRMTrain(DLRM(build_ebc(schema_data(w), w.dim), w.num_dense, sizes["dense_arch"], sizes["over_arch"]))
    sharders = make_sharders()
    plan = plan_sharding(model, ctx, w.batch_size, sharders=sharders, embedding_optimizer=config.embedding_optimizer)
    floor = shard_bytes_per_rank(plan, model, ctx.world_size)[ctx.rank]
    dmp, optimizer = shard_model(model, ctx, plan, embedding_optimizer=config.embedding_optimizer,
                                 embedding_lr=config.embedding_lr, dense_optimizer=config.dense_optimizer,
                                 dense_lr=config.dense_lr, sharders=sharders)
    seed_embedding_tables(dmp, config.seed)
    pipeline = TrainPipelineSparseDist(dmp, optimizer, ctx.device)

    def make(rb: RawBatch, kjt: Any) -> Any:
        return Batch(dense_features=rb.dense, sparse_features=kjt, labels=rb.labels[:, 0])

    return PipelineRunner("dlrm", dmp, pipeline, floor, describe_plan(plan), make)


class PeerMMoE(MultiTaskModule):
    """Our MMoE (same dense arch, MMoE arch, towers, feature order) over plain PyTorch embeddings.

    ``style="peers"``: ``nn.Embedding`` per feature, bags padded to ``max_tags`` and masked-summed
    (torch-rechub's ``SumPooling`` / DeepCTR-Torch's ``SequencePoolingLayer``), dense gradients.
    ``style="plain"``: ``nn.EmbeddingBag(mode="sum", sparse=True)`` per feature over
    (ids, offsets), sparse gradients.
    """

    def __init__(self, w: Workload, style: str, device: torch.device) -> None:
        from torchrec.models.dlrm import DenseArch

        from torchrec_fusion.data.synthetic import SYNTHETIC_TASKS
        from torchrec_fusion.modules.architectures import build_architecture
        from torchrec_fusion.modules.towers import TaskTowers

        super().__init__()
        config = train_config(w, None)
        self.style = style
        self.tasks = list(SYNTHETIC_TASKS)
        if style == "peers":
            self.embeddings = nn.ModuleDict({f: nn.Embedding(w.rows, w.dim, device=device) for f in FEATURES})
        else:
            self.embeddings = nn.ModuleDict({f: nn.EmbeddingBag(w.rows, w.dim, mode="sum", sparse=True, device=device)
                                             for f in FEATURES})
        self.dense_arch = DenseArch(w.num_dense, list(config.dense_arch_layer_sizes) + [w.dim], device=device)
        self.in_features = w.dim + len(FEATURES) * w.dim  # FeatureArch's width without interactions
        self.task_arch = build_architecture("mmoe", self.in_features, [t.name for t in self.tasks],
                                            dropout=config.dropout, options=config.member_options("arch"))
        self.towers = TaskTowers(self.task_arch.out_features, self.tasks, config.tower_layer_sizes, config.dropout)
        self.task_arch.to(device)
        self.towers.to(device)

    @property
    def feature_dim(self) -> int:
        return self.in_features

    def forward_with_features(self, dense: torch.Tensor, sparse: Dict[str, Any]) -> Any:
        parts = [self.dense_arch(dense)]
        for f in FEATURES:
            if self.style == "plain":
                ids, offsets = sparse[f]
                parts.append(self.embeddings[f](ids, offsets))
            elif f in BAG_FEATURES:
                padded, mask = sparse[f]
                parts.append((self.embeddings[f](padded) * mask).sum(1))
            else:
                parts.append(self.embeddings[f](sparse[f]))
        features = torch.cat(parts, dim=1)
        outputs = self.task_arch.combine_outputs(self.towers(self.task_arch(features)))
        return outputs, features

    def label_columns(self) -> None:
        return None

    def regularization(self) -> None:
        return None

    def gate_weights(self) -> Any:
        return self.task_arch.gate_weights()

    def shared_parameters(self) -> List[nn.Parameter]:
        return list(self.dense_arch.parameters()) + list(self.task_arch.parameters())


def peer_inputs(rb: RawBatch, style: str, max_tags: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in FEATURES:
        ids, lens = rb.ids[f], rb.lengths[f]
        if style == "plain":
            out[f] = (ids, torch.cat([lens.new_zeros(1), lens.cumsum(0)[:-1]]))
        elif f in BAG_FEATURES:  # padded [B, L] ids and a [B, L, 1] mask, as the peers' loaders give them
            b = lens.numel()
            pos = torch.arange(max_tags).expand(b, max_tags)
            mask = pos < lens.unsqueeze(1)
            padded = torch.zeros(b, max_tags, dtype=torch.int64)
            padded[mask] = ids
            out[f] = (padded, mask.unsqueeze(2).float())
        else:
            out[f] = ids
    return out


class PeerRunner(Runner):
    def __init__(self, w: Workload, ctx: Any, style: str) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from torchrec_fusion.data.batch import MultiTaskBatch
        from torchrec_fusion.modules.model import MultiTaskTrain

        self.name, self.style, self.w, self.device = style, style, w, ctx.device
        self._batch_cls = MultiTaskBatch
        torch.manual_seed(0)
        self.model = MultiTaskTrain(PeerMMoE(w, style, ctx.device)).to(ctx.device)
        self.module: nn.Module = self.model
        if ctx.world_size > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.model, device_ids=ids)
        tables = list(self.model.model.embeddings.parameters())
        if style == "peers":
            self.optimizers = [torch.optim.Adam(self.model.parameters(), lr=1e-3)]
        else:
            table_ids = {id(p) for p in tables}
            dense = [p for p in self.model.parameters() if id(p) not in table_ids]
            self.optimizers = [torch.optim.SparseAdam(tables, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]
        self.floor_rank = w.floor_bytes("adam")  # every rank holds every table (replicas)
        self.plan = (f"  every table replicated on each of {ctx.world_size} rank(s)"
                     + (" (DDP)" if ctx.world_size > 1 else ""))

    def inputs(self, rb: RawBatch) -> Any:
        return self._batch_cls(rb.dense, peer_inputs(rb, self.style, self.w.max_tags), rb.labels, rb.masks, TASK_NAMES)

    def _to_device(self, batch: Any) -> Any:
        if self.device.type == "cpu":
            return batch
        sparse = {k: tuple(t.to(self.device, non_blocking=True) for t in v) if isinstance(v, tuple)
                  else v.to(self.device, non_blocking=True) for k, v in batch.sparse_features.items()}
        return self._batch_cls(batch.dense_features.to(self.device, non_blocking=True), sparse,
                               batch.labels.to(self.device, non_blocking=True),
                               batch.masks.to(self.device, non_blocking=True), batch.task_names)

    def train_mode(self, on: bool) -> None:
        self.module.train(on)

    def progress(self, it: Iterator[Any]) -> Any:
        # the ranges TrainPipelineSparseDist marks, so that profiles of both read alike
        batch = self._to_device(next(it))
        if not self.module.training:
            with torch.no_grad(), record_function("## forward ##"):
                return self.module(batch)[1]
        with record_function("## zero_grad ##"):
            for opt in self.optimizers:
                opt.zero_grad()
        with record_function("## forward ##"):
            loss, out = self.module(batch)
        with record_function("## backward ##"):
            loss.backward()
        with record_function("## optimizer ##"):
            for opt in self.optimizers:
                opt.step()
        return out

    def dense_module(self) -> nn.Module:
        return self.module


def build(name: str, w: Workload, ctx: Any) -> Runner:
    if name == "ours":
        return build_ours(w, ctx)
    if name == "ours_fusion":
        return build_ours(w, ctx, fusion="weighted")
    if name == "ours_matched":
        return build_ours(w, ctx, fusion="weighted", name=name, **MATCHED)
    if name == "dlrm":
        return build_dlrm(w, ctx)
    if name in ("peers", "plain"):
        return PeerRunner(w, ctx, name)
    raise ValueError(f"unknown contender {name!r}; one of {CONTENDERS}")


def batch_stream(runner: Runner, natives: List[Any], n: int) -> Iterator[Any]:
    """``n`` batches cycling through the pool (a finite iterator: the pipeline drains at its end)."""
    return (runner.fresh(b) for b in itertools.islice(itertools.cycle(natives), n))
