"""A seeded synthetic multi-task dataset with planted, learnable structure.

Ids are Zipf-distributed (a popular head and a long tail, scattered over the
table by a seeded permutation). Every id has a latent vector and a bias; a shared
affinity ``z`` (user-item dot product plus biases of the other features, the tag
bag and a linear term in the dense features) drives three tasks that share it
but differ:

* ``ctr`` (binary, every row): ``click ~ Bernoulli(sigmoid(2 z - 1 + noise))``;
* ``cvr`` (binary, clicked rows only): ``sigmoid(z + 1.5 q_item - 0.5 + noise)``
  with ``q_item`` a per-item quality factor that ``ctr`` does not see;
* ``watch_time`` (regression, every row): ``softplus(z + 0.7 l_item + 0.5 + noise)``
  with ``l_item`` a per-item length factor;
* ``ctcvr`` (binary, every row): click and conversion, the label ESMM supervises
  over the entire impression space (``--arch esmm --tasks ctr ctcvr``).

Example::

    train, test = make_synthetic(SyntheticConfig(num_rows=100_000, seed=1))
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from torchrec_fusion.data.candidates import candidate_builder
from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.types import LoadedData
from torchrec_fusion.tasks import TaskKind, TaskSpec

__all__ = ["SyntheticConfig", "SyntheticReader", "make_synthetic", "SYNTHETIC_TASKS", "zipf_ids"]

SYNTHETIC_TASKS: Tuple[TaskSpec, ...] = (
    TaskSpec("ctr", TaskKind.BINARY),
    TaskSpec("cvr", TaskKind.BINARY),
    TaskSpec("watch_time", TaskKind.REGRESSION),
    TaskSpec("ctcvr", TaskKind.BINARY),
)


@dataclass
class SyntheticConfig:
    """Size and shape of the synthetic dataset.

    Args:
        num_rows: rows before the train/test split.
        table_sizes: single-id features and their table sizes; ``user`` and
            ``item`` are required, any others (``category`` by default) add a
            per-id bias to the affinity.
        num_tags: table size of the multi-id bag feature ``tags``.
        max_tags: bags hold 0..``max_tags`` tags, uniformly (some are empty).
        num_dense: width of the dense features (standard normal).
        latent_dim: size of the user and item latent vectors.
        zipf_a: Zipf exponent of the id distributions (0 is uniform).
        noise: standard deviation of the logistic/regression noise.
        test_fraction: share of rows in the test set.
        seed: seed of everything (the same seed gives the same data).
    """

    num_rows: int = 200_000
    table_sizes: Dict[str, int] = field(
        default_factory=lambda: {"user": 10_000, "item": 5_000, "category": 100}
    )
    num_tags: int = 1_000
    max_tags: int = 5
    num_dense: int = 4
    latent_dim: int = 8
    zipf_a: float = 1.1
    noise: float = 0.5
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        missing = {"user", "item"} - set(self.table_sizes)
        if missing:
            raise ValueError(f"table_sizes needs 'user' and 'item', missing {sorted(missing)}")
        if "tags" in self.table_sizes:
            raise ValueError("'tags' is the bag feature sized by num_tags; remove it from table_sizes")
        small = {k: v for k, v in self.table_sizes.items() if v < 1}
        if small or self.num_tags < 1:
            raise ValueError(f"table sizes must be >= 1, got {small or {'tags': self.num_tags}}")
        if self.num_rows < 2 or self.max_tags < 0 or self.num_dense < 0 or self.latent_dim < 1:
            raise ValueError("need num_rows >= 2, max_tags >= 0, num_dense >= 0 and latent_dim >= 1")
        if not (self.zipf_a >= 0 and self.noise >= 0):
            raise ValueError(f"zipf_a and noise must be >= 0, got {self.zipf_a} and {self.noise}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


class SyntheticReader:
    """Dataset ``synthetic``: :func:`make_synthetic` with ``synthetic_rows`` rows and every table
    (the tag vocabulary too) ``synthetic_scale`` times its default size, seeded by the run's seed;
    candidate rows take the item's ``item``, ``category`` and ``tags``.

    Example::

        d = SyntheticReader.load(SyntheticReader.Options(synthetic_rows=1000, synthetic_scale=0.1), seed=0)
        assert d.train.num_embeddings["user"] == 1000 and len(d.train) + len(d.test) == 1000
    """

    @dataclass(frozen=True)
    class Options:
        """``synthetic_rows``: rows before the split; ``synthetic_scale``: multiplies the table sizes."""

        synthetic_rows: int = field(default=200_000, metadata={"help": "rows generated, before the train/test split"})
        synthetic_scale: float = field(default=1.0, metadata={"help": "multiplies every table's size (its ids)"})

    @staticmethod
    def load(options: "SyntheticReader.Options", seed: int) -> LoadedData:
        base, scale = SyntheticConfig(), options.synthetic_scale
        sizes = {k: max(1, int(v * scale)) for k, v in base.table_sizes.items()}
        cfg = SyntheticConfig(num_rows=options.synthetic_rows, table_sizes=sizes,
                              num_tags=max(1, int(base.num_tags * scale)), seed=seed)
        train, test = make_synthetic(cfg)
        return LoadedData(train, test, {"dataset": "synthetic", "rows": options.synthetic_rows},
                          candidates=candidate_builder(train, ["item", "category", "tags"]))


def zipf_ids(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """Draws ``n`` ids in ``[0, size)`` with ``P(rank r) ~ r^-a`` (truncated Zipf),
    the ranks mapped to ids by a seeded permutation so popular ids are scattered."""
    cdf = np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -a)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(max=size - 1)
    return np.asarray(rng.permutation(size)[ranks], dtype=np.int64)


def make_synthetic(config: Optional[SyntheticConfig] = None) -> Tuple[MultiTaskData, MultiTaskData]:
    """Generates the synthetic dataset and splits it.

    Args:
        config: sizes and seed; the defaults of :class:`SyntheticConfig` if None.

    Returns:
        ``(train, test)`` with features ``user``, ``item``, the other
        ``table_sizes`` keys and the bag ``tags``; ``num_dense`` dense features;
        tasks ``ctr``, ``cvr`` (masked to clicked rows) and ``watch_time``; and
        ``extras`` ``user`` and ``item``.
    """
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_rows
    ids = {name: zipf_ids(rng, n, size, cfg.zipf_a) for name, size in cfg.table_sizes.items()}
    tag_lengths = rng.integers(0, cfg.max_tags + 1, n)
    tag_values = zipf_ids(rng, int(tag_lengths.sum()), cfg.num_tags, cfg.zipf_a)
    dense = rng.standard_normal((n, cfg.num_dense)).astype(np.float32)
    z = _affinity(cfg, rng, ids, tag_lengths, tag_values, dense)
    labels, masks = _labels(cfg, rng, z, ids["item"])

    # rows are i.i.d., so a contiguous cut is a random split (and avoids a gather)
    offsets = np.concatenate([[0], np.cumsum(tag_lengths)])
    num_embeddings = {**cfg.table_sizes, "tags": cfg.num_tags}

    def rows(lo: int, hi: int, source: str) -> MultiTaskData:
        sparse = {name: SparseColumn(torch.from_numpy(v[lo:hi])) for name, v in ids.items()}
        tags = tag_values[offsets[lo] : offsets[hi]]
        tag_offsets = torch.from_numpy(offsets[lo : hi + 1] - offsets[lo])
        sparse["tags"] = SparseColumn(torch.from_numpy(tags), tag_offsets)
        return MultiTaskData(
            dense=torch.from_numpy(dense[lo:hi]),
            sparse=sparse,
            num_embeddings=dict(num_embeddings),
            tasks=list(SYNTHETIC_TASKS),
            labels=torch.from_numpy(labels[lo:hi]),
            masks=torch.from_numpy(masks[lo:hi]),
            extras={"user": sparse["user"].values, "item": sparse["item"].values},
            source=source,
        )

    cut = min(max(n - int(round(n * cfg.test_fraction)), 1), n - 1)
    return rows(0, cut, "synthetic/train"), rows(cut, n, "synthetic/test")


def _affinity(cfg: SyntheticConfig, rng: np.random.Generator, ids: Dict[str, np.ndarray], tag_lengths: np.ndarray,
              tag_values: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The planted, standardised affinity ``z`` of each row: a user-item dot product of latent
    vectors with unit-variance products, per-id biases, the tag bag's mean bias and a linear
    term in the dense features."""
    n, d = cfg.num_rows, cfg.latent_dim
    scale = d**-0.25
    user_vec = rng.standard_normal((cfg.table_sizes["user"], d)) * scale
    item_vec = rng.standard_normal((cfg.table_sizes["item"], d)) * scale
    bias_std = {"user": 0.5, "item": 0.7}
    z = np.einsum("nd,nd->n", user_vec[ids["user"]], item_vec[ids["item"]])
    for name, size in cfg.table_sizes.items():
        z += (rng.standard_normal(size) * bias_std.get(name, 0.5))[ids[name]]
    tag_bias = rng.standard_normal(cfg.num_tags) * 0.7
    tag_rows = np.repeat(np.arange(n), tag_lengths)
    z += np.bincount(tag_rows, tag_bias[tag_values], n) / np.maximum(tag_lengths, 1)
    if cfg.num_dense:
        w = rng.standard_normal(cfg.num_dense)
        z += dense.astype(np.float64) @ (0.8 * w / np.linalg.norm(w))
    return np.asarray((z - z.mean()) / z.std())


def _labels(cfg: SyntheticConfig, rng: np.random.Generator, z: np.ndarray,
            item: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``[N, 4]`` labels and masks of ``ctr``, ``cvr`` (clicked rows only), ``watch_time`` and ``ctcvr``."""
    n = cfg.num_rows
    quality = rng.standard_normal(cfg.table_sizes["item"])[item]
    length = rng.standard_normal(cfg.table_sizes["item"])[item]
    eps = rng.standard_normal((3, n)) * cfg.noise
    click = rng.random(n) < _sigmoid(2.0 * z - 1.0 + eps[0])
    convert = click & (rng.random(n) < _sigmoid(z + 1.5 * quality - 0.5 + eps[1]))
    watch = np.logaddexp(0.0, z + 0.7 * length + 0.5 + eps[2])
    labels = np.stack([click, convert, watch, convert], 1).astype(np.float32)
    every = np.ones(n, dtype=bool)
    return labels, np.stack([every, click, every, every], 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))
