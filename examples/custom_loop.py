"""Drop torchrec_fusion's MMoE into a plain TorchRec training loop (planner, DMP, pipeline).

Run: ``python examples/custom_loop.py`` (one process), or
``torchrun --nproc-per-node 2 examples/custom_loop.py`` (two ranks).
"""

import os

import torch
import torch.distributed as dist
from torchrec import optim as trec_optim
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_fusion import MultiTaskModel, MultiTaskTrain
from torchrec_fusion.data.synthetic import SyntheticConfig, make_synthetic


def main(rows: int = 20_000, batch_size: int = 256) -> "tuple[float, float]":
    os.environ.setdefault("RANK", "0"), os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1"), os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    train, test = make_synthetic(SyntheticConfig(num_rows=rows))

    # 1. the model, with its tables on the meta device: DMP materialises only each rank's shards
    ebc = EmbeddingBagCollection(device=torch.device("meta"), tables=[
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=16, num_embeddings=train.num_embeddings[f], feature_names=[f])
        for f in train.feature_names])
    model = MultiTaskTrain(MultiTaskModel(ebc, train.dense.size(1), train.tasks, arch="mmoe"))

    # 2. fused row-wise Adagrad for the tables, planner, DMP, Adam for the dense part
    apply_optimizer_in_backward(trec_optim.RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    plan = EmbeddingShardingPlanner(Topology(world_size=world, compute_device="cpu")).collective_plan(model)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adam(ps, lr=1e-3))
    pipeline = TrainPipelineSparseDist(dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), torch.device("cpu"))

    # 3. train one epoch on this rank's slice of each global batch
    batches = train.batches(batch_size, shuffle=True, rank=rank, world_size=world)
    losses = []
    try:
        while True:
            losses.append(pipeline.progress(batches)[0].item())
    except StopIteration:
        pass
    if rank == 0:
        print(f"{len(losses)} steps, loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f}")
    dist.destroy_process_group()
    return losses[0], sum(losses[-10:]) / 10  # first loss, mean of the last ten


if __name__ == "__main__":
    main()
