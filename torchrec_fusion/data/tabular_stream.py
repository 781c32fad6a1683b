"""Parquet rows read from disk batch by batch: a train split larger than memory."""

from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.tabular_columns import TableColumns
from torchrec_fusion.data.tabular_files import held_out_mask, parquet_batches, parquet_file
from torchrec_fusion.data.tabular_spec import TableSpec
from torchrec_fusion.tasks import TaskSpec

__all__ = ["TableStream", "scan_num_embeddings"]


class TableStream:
    """Parquet rows read from disk batch by batch: a :class:`~torchrec_fusion.data.types.BatchSource`.

    Row counts come from the Parquet metadata. In training (``drop_last=True``) rank
    ``r`` of ``W`` reads only the contiguous rows ``[r*N//W, (r+1)*N//W)``, row group
    by row group, shuffled (``shuffle=True``) by row-group order and within a buffer of
    ``chunk_rows`` rows. With ``drop_last=False`` (evaluation) global batch ``i`` holds
    rows ``[i*G, (i+1)*G)`` in file order, ``G = batch_size * W``, rank ``r`` taking its
    ``r``-th slice and padding with masked-out rows, exactly as ``MultiTaskData.batches``
    does, so that gathering the ranks' batches restores the row order (each rank then
    reads every row group). Every rank yields exactly :meth:`num_batches` batches.

    Built by :func:`load_tabular` for ``stream: true``.

    Args:
        spec: the table spec (its ``train`` entries are not read here).
        files: Parquet files, in row order.
        num_embeddings: every sparse feature's table size.
        held_out: ``(fraction, seed)``: leave out the rows of a seeded per-row coin
            (the test rows), or ``None`` to keep every row.
        source: a name for error messages.
    """

    def __init__(self, spec: TableSpec, files: List[str], num_embeddings: Mapping[str, int],
                 held_out: Optional[Tuple[float, int]] = None, source: str = "table/train") -> None:
        self._cols = TableColumns(spec, "parquet")
        missing = sorted(set(spec.sparse) - set(num_embeddings))
        if missing:
            raise ValueError(f"{source}: no num_embeddings for the sparse column(s) {missing}")
        self._cols.num_embeddings.update(num_embeddings)
        self.files, self._held, self.source = list(files), held_out, source
        self.tasks: List[TaskSpec] = list(self._cols.tasks)
        self.num_embeddings: Dict[str, int] = {k: int(num_embeddings[k]) for k in spec.sparse}
        self.pooling: Dict[str, str] = dict(self._cols.pooling)
        segs = []  # file, row group, first row in the file, first global row, rows, kept rows
        start = 0
        for f, path in enumerate(self.files):
            md, in_file = parquet_file(path).metadata, 0
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                kept = n - int(self._held_mask(start, n).sum()) if held_out else n
                segs.append((f, g, in_file, start, n, kept))
                start, in_file = start + n, in_file + n
        self._segs = np.array(segs, dtype=np.int64).reshape(-1, 6)
        self._first = np.concatenate([[0], np.cumsum(self._segs[:, 5])])  # first kept row of each segment
        self._label_means: Optional[torch.Tensor] = None

    def _held_mask(self, start: int, n: int) -> np.ndarray:
        """Whether each of the global rows ``start..start+n-1`` is held out (none is without ``held_out``)."""
        if self._held is None:
            return np.zeros(n, dtype=bool)
        fraction, seed = self._held
        return held_out_mask(np.arange(start, start + n), fraction, seed)

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def feature_names(self) -> List[str]:
        return list(self._cols.spec.sparse)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    @property
    def num_dense(self) -> int:
        return len(self._cols.spec.dense)

    @property
    def extras(self) -> Dict[str, torch.Tensor]:
        """None: per-row columns are read with the rows, batch by batch, not held in memory."""
        return {}

    @property
    def in_memory(self) -> bool:
        """False: the rows stay on disk; they cannot be split, subset or cut to fewer tasks."""
        return False

    def in_memory_rows(self) -> Optional[MultiTaskData]:
        """None: the rows are not in memory."""
        return None

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        g = batch_size * world_size
        return len(self) // g if drop_last else -(-len(self) // g)

    def _parts(self, order: np.ndarray, select: Callable[[np.ndarray], np.ndarray], held: bool = False,
               columns: Optional[List[str]] = None) -> Iterator[Tuple[pa.RecordBatch, np.ndarray, str]]:
        """Record batches of the rows chosen by ``select`` (over kept-row indices), or of
        the held-out rows when ``held``; with their file rows and file."""
        files: Dict[int, pq.ParquetFile] = {}
        for s in order:
            f, g, in_file, start, n, _ = (int(v) for v in self._segs[s])
            if held:
                pos = np.flatnonzero(self._held_mask(start, n))
            else:
                k = int(self._segs[s, 5])
                chosen = select(np.arange(self._first[s], self._first[s] + k))
                if not chosen.any():
                    continue
                kept = np.flatnonzero(~self._held_mask(start, n)) if self._held else np.arange(n)
                pos = kept[chosen]
            if not len(pos):
                continue
            pf = files.setdefault(f, parquet_file(self.files[f]))
            p0 = 0
            for rb in parquet_batches(self.files[f], pf, batch_size=self._cols.spec.chunk_rows, row_groups=[g],
                                      columns=columns or self._cols.needed):
                m = rb.num_rows
                lo, hi = np.searchsorted(pos, [p0, p0 + m])
                local = pos[lo:hi] - p0
                if len(local):
                    yield (rb if len(local) == m else rb.take(pa.array(local))), in_file + p0 + local, self.files[f]
                p0 += m

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, start: int = 0) -> Iterator[MultiTaskBatch]:
        """This rank's batches of ``batch_size`` rows, exactly :meth:`num_batches` of them;
        ``start`` skips the first batches (a resumed epoch)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        n, b, g = len(self), batch_size, batch_size * world_size
        total = self.num_batches(batch_size, world_size, drop_last)
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        select: Callable[[np.ndarray], np.ndarray] = (
            (lambda t: (t >= lo) & (t < hi)) if drop_last
            else (lambda t: (t % g >= rank * b) & (t % g < (rank + 1) * b)))
        order = np.arange(len(self._segs))
        mix = seed * 100003 + epoch
        if shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(mix)).numpy()
        gen = torch.Generator().manual_seed(mix * 1009 + rank)
        buf: List[MultiTaskData] = []
        size, done, cap = 0, 0, max(self._cols.spec.chunk_rows, b)

        def perm(k: int) -> torch.Tensor:
            return torch.randperm(k, generator=gen) if shuffle else torch.arange(k)

        for rb, rows, path in self._parts(order, select):
            buf.append(self._cols.convert(rb, rows, path))
            size += rb.num_rows
            if size < cap:
                continue
            data = self._cols.concat(buf, self.source)
            idx = perm(size)
            full = min(size // b, total - done)
            for i in range(full):
                if done >= start:
                    yield data.make_batch(idx[i * b : (i + 1) * b])
                done += 1
            if done == total:
                return
            rest = idx[full * b :]
            buf, size = [data.subset(rest)], len(rest)
        data = self._cols.concat(buf, self.source)
        idx = perm(size)
        while done < total:
            piece = idx[:b]
            if drop_last and len(piece) < b:
                raise RuntimeError(f"{self.source}: rank {rank} ran out of rows after {done} of {total} batches")
            if done >= start:
                yield data.make_batch(piece, pad_to=b)
            idx, done = idx[b:], done + 1

    def held_out_rows(self, source: str = "table/test") -> MultiTaskData:
        """The rows this stream leaves out (its test split), in memory."""
        if self._held is None:
            raise ValueError(f"{self.source}: no rows are held out")
        parts = [self._cols.convert(rb, rows, path)
                 for rb, rows, path in self._parts(np.arange(len(self._segs)), lambda t: t, held=True)]
        return self._cols.concat(parts, source)

    def label_means(self) -> torch.Tensor:
        """``[T]`` mean of each task's present labels over the stream's rows (NaN where a
        task has none), like ``MultiTaskData.label_means``; one pass over the label columns."""
        if self._label_means is None:
            cols = list(dict.fromkeys(t.column for t in self._cols.spec.tasks))
            total = torch.zeros(len(self.tasks), dtype=torch.float64)
            count = torch.zeros(len(self.tasks), dtype=torch.float64)
            everything = np.arange(len(self._segs))
            for rb, rows, path in self._parts(everything, lambda t: np.ones(len(t), bool), columns=cols):
                y, m = self._cols.labels(rb, rows, path)
                total += (y.double() * m).sum(0)
                count += m.sum(0)
            self._label_means = (total / count).float()
        return self._label_means


def scan_num_embeddings(columns: TableColumns, files: List[str]) -> Dict[str, int]:
    """Max id + 1 of every sparse column without ``num_embeddings``, reading only those columns."""
    todo = [k for k, v in columns.num_embeddings.items() if v is None]
    out = dict.fromkeys(todo, 1)
    for path in files if todo else []:
        row = 0
        for rb in parquet_batches(path, batch_size=columns.spec.chunk_rows, columns=todo):
            rows = np.arange(row, row + rb.num_rows)
            for k in todo:
                ids, _ = columns.ids(rb.column(k), k, rows, path)
                if ids.numel():
                    out[k] = max(out[k], int(ids.max()) + 1)
            row += rb.num_rows
    return out

