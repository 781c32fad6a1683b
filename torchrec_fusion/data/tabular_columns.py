"""A table spec's columns read from a file and converted to tensors, chunk by chunk."""

import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch

from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.data.tabular_files import (
    CSV_NULLS,
    csv_bad_row,
    fnv1a_64,
    is_list,
    is_numeric,
    is_str,
    parquet_batches,
    parquet_file,
)
from torchrec_fusion.data.tabular_spec import TableSpec
from torchrec_fusion.tasks import TaskKind

__all__ = ["TableColumns"]


class TableColumns:
    """The columns a spec reads from each file, and their conversion to tensors."""

    def __init__(self, spec: TableSpec, fmt: str) -> None:
        self.spec, self.fmt = spec, fmt
        self.tasks = [t.spec() for t in spec.tasks]
        self.num_embeddings: Dict[str, Optional[int]] = {k: o.num_embeddings for k, o in spec.sparse.items()}
        self.pooling = {k: o.pooling for k, o in spec.sparse.items()}
        ids = [c for c in (spec.user_column, spec.item_column) if c]
        self.needed = list(dict.fromkeys([*spec.sparse, *spec.dense, *(t.column for t in spec.tasks), *ids]))

    def role(self, c: str) -> str:
        if c in self.spec.sparse:
            return "sparse column"
        if c in self.spec.dense:
            return "dense column"
        tasks = [t.name for t in self.spec.tasks if t.column == c]
        return f"label column (task {tasks[0]!r})" if tasks else "id column"

    def named(self, c: str) -> str:
        """The column with its role, e.g. "label column 'y' (task 'click')"."""
        head, _, tail = self.role(c).partition(" column")
        return f"{head} column {c!r}{tail}"

    def check_file(self, path: str) -> None:
        """Missing columns and, for Parquet, column types; raises ``ValueError``."""
        if self.fmt == "csv":
            names, types = self._csv_header(path), None
        else:
            schema = parquet_file(path).schema_arrow
            names, types = schema.names, {f.name: f.type for f in schema}
        missing = [c for c in self.needed if c not in names]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {missing}; its columns are {list(names)}")
        if types is None:
            return  # CSV columns get their types when read (csv_types)
        for c in self.needed:
            t = types[c]
            base = t.value_type if pa.types.is_dictionary(t) else t
            o = self.spec.sparse.get(c)
            if o is None:
                integer = self.role(c) == "id column"
                if not (pa.types.is_integer(base) if integer else is_numeric(base)):
                    raise ValueError(f"{self.role(c)} {c!r} in {path} has type {t}; it must be "
                                     f"{'integer' if integer else 'numeric'}")
                continue
            inner = base.value_type if is_list(base) else base
            hashed = o.out_of_range == "hash"
            if is_list(base) and not o.multi_valued:
                raise ValueError(f"sparse column {c!r} in {path} is a list column ({t}); set multi_valued: true")
            if o.multi_valued and is_str(base):
                continue  # ids joined by the separator
            if o.multi_valued and not is_list(base):
                raise ValueError(f"sparse column {c!r} in {path} has type {t}; a multi_valued column must be a "
                                 f"list of ids or a string of ids joined by {o.separator!r}")
            if not (pa.types.is_integer(inner) or (hashed and is_str(inner))):
                raise ValueError(f"sparse column {c!r} in {path} has type {t}; ids must be integers >= 0 "
                                 "(string ids need out_of_range: hash and num_embeddings)")

    def _csv_header(self, path: str) -> List[str]:
        try:
            with pa.input_stream(path, compression="detect") as f:
                head = f.read(1 << 20).split(b"\n", 1)[0]
            table = pacsv.read_csv(pa.BufferReader(head + b"\n"), parse_options=self._parse_options(path))
            return list(table.schema.names)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read a CSV header: {e}") from None

    def _parse_options(self, path: str) -> pacsv.ParseOptions:
        tsv = os.path.splitext(path.lower().replace(".gz", ""))[1] == ".tsv"
        return pacsv.ParseOptions(delimiter=self.spec.delimiter or ("\t" if tsv else ","))

    def csv_types(self) -> Dict[str, pa.DataType]:
        types = {c: pa.float64() for c in self.needed}
        for c in (self.spec.user_column, self.spec.item_column):
            if c:
                types[c] = pa.int64()
        for c, o in self.spec.sparse.items():
            types[c] = pa.string() if o.multi_valued or o.out_of_range == "hash" else pa.int64()
        return types

    def record_batches(self, path: str) -> Iterator[pa.RecordBatch]:
        """The file's rows in record batches of at most ``chunk_rows`` rows, needed columns only."""
        n = self.spec.chunk_rows
        if self.fmt == "parquet":
            yield from parquet_batches(path, batch_size=n, columns=self.needed)
            return
        names = self._csv_header(path)
        types = self.csv_types()
        convert = pacsv.ConvertOptions(column_types=types, include_columns=self.needed, null_values=CSV_NULLS)
        try:
            reader = pacsv.open_csv(path, parse_options=self._parse_options(path), convert_options=convert)
            for rb in reader:
                for i in range(0, rb.num_rows, n):
                    yield rb.slice(i, n)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise self._csv_error(path, names, types, e) from None

    def _csv_error(self, path: str, names: List[str], types: Dict[str, pa.DataType], e: Exception) -> ValueError:
        """pyarrow's error ``e`` reading a CSV file, with the column and the row it is about."""
        m = re.search(r"column #(\d+)", str(e))
        c = names[int(m.group(1))] if m and int(m.group(1)) < len(names) else None
        delimiter = self._parse_options(path).delimiter
        if re.search(r"Expected \d+ columns, got \d+", str(e)):
            where = csv_bad_row(path, delimiter)
            return ValueError(f"{path}{' ' + where if where else ''}: a row of the wrong number of cells "
                              f"({len(names)} columns in the header): {e}")
        if c is None:
            return ValueError(f"{path}: not a readable CSV file ({e})")
        where = csv_bad_row(path, delimiter, c, types.get(c))
        hint = "; ids must be integers >= 0 (string ids need out_of_range: hash)" if c in self.spec.sparse else ""
        return ValueError(f"{path}: {self.named(c)} holds a value of the wrong type"
                          f"{' in ' + where if where else ''} ({e}){hint}")

    def ids(self, a: pa.Array, name: str, rows: np.ndarray, path: str) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
        """The ids of one chunk of a sparse column, with per-row lengths (``None``: one id
        per row). Nulls and empty strings are no id (an empty bag)."""
        o, n_emb, n = self.spec.sparse[name], self.num_embeddings[name], len(a)
        if pa.types.is_dictionary(a.type):
            a = a.dictionary_decode()
        joined = o.multi_valued and is_str(a.type)
        if joined:
            a = pc.split_pattern(a, o.separator)
        parents = pc.list_parent_indices(a).to_numpy() if is_list(a.type) else None
        flat = pc.list_flatten(a) if is_list(a.type) else a
        keep = flat.is_valid()
        if is_str(flat.type):
            keep = pc.and_kleene(keep, pc.not_equal(flat, ""))
        if flat.null_count or not pc.all(keep).as_py():
            mask = keep.to_numpy(zero_copy_only=False)
            parents = (np.arange(n) if parents is None else parents)[mask]
            flat = flat.filter(keep)
        if o.out_of_range == "hash" and n_emb is not None:  # the spec gives num_embeddings with hash
            h = fnv1a_64(flat if is_str(flat.type) else flat.cast(pa.string()))
            ids = np.remainder(h, np.uint64(n_emb)).astype(np.int64)
        else:
            try:
                ids = np.array(flat.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                what = f"strings joined by {o.separator!r} " if joined else ""
                raise ValueError(f"sparse column {name!r} in {path}: {what}{e}; ids must be integers >= 0 "
                                 "(string ids need out_of_range: hash)") from None
            bad = ids < 0 if n_emb is None or o.out_of_range == "modulo" else (ids < 0) | (ids >= n_emb)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                row = rows[j if parents is None else parents[j]]
                why = "is negative; ids must be integers >= 0" if ids[j] < 0 else (
                    f"is outside [0, num_embeddings={n_emb}); raise num_embeddings or set out_of_range: modulo")
                raise ValueError(f"sparse column {name!r}: id {ids[j]} in {path} row {row} {why}")
            if o.out_of_range == "modulo":
                ids %= n_emb
        lengths = None if parents is None else np.bincount(parents, minlength=n)
        return torch.from_numpy(ids), lengths

    def labels(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[n, T]`` labels (0 where absent) and masks (False where the label is null); a NaN or inf
        label is an error naming the column, file and row."""
        y = np.zeros((rb.num_rows, len(self.tasks)), np.float32)
        m = np.zeros(y.shape, bool)
        for j, (t, tc) in enumerate(zip(self.tasks, self.spec.tasks)):
            col = rb.column(tc.column)
            v = col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            present = col.is_valid().to_numpy(zero_copy_only=False)  # null: no label; NaN: an error
            bad = present & ~np.isfinite(v)
            if t.kind == TaskKind.BINARY:
                bad |= present & (v != 0) & (v != 1)
            elif t.kind == TaskKind.MULTICLASS:
                bad |= present & ((v < 0) | (v >= t.num_classes) | (v != np.round(v)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                want = {TaskKind.BINARY: "0 or 1", TaskKind.MULTICLASS: f"a class in 0..{t.num_classes - 1}"}
                raise ValueError(f"label column {tc.column!r} (task {t.name!r}) in {path} row {rows[i]} is {v[i]}; "
                                 f"expected {want.get(t.kind, 'a finite number')} or null")
            y[:, j], m[:, j] = np.where(present, v, 0), present
        return torch.from_numpy(y), torch.from_numpy(m)

    def dense(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> torch.Tensor:
        x = np.zeros((rb.num_rows, len(self.spec.dense)), np.float32)
        for j, c in enumerate(self.spec.dense):
            v = rb.column(c).cast(pa.float64(), safe=False).fill_null(0).to_numpy(zero_copy_only=False)
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise ValueError(f"dense column {c!r} in {path} row {rows[i]} is {v[i]}; expected a finite number")
            x[:, j] = v
        out = torch.from_numpy(x)
        return torch.log1p(out.clamp_min(0)) if self.spec.dense_transform == "log1p" else out

    def convert(self, rb: pa.RecordBatch, rows: np.ndarray, path: str) -> MultiTaskData:
        """One chunk as :class:`MultiTaskData`; ``rows`` are the file rows of ``rb``'s rows."""
        sparse: Dict[str, SparseColumn] = {}
        n_emb: Dict[str, int] = {}
        for name in self.spec.sparse:
            ids, lengths = self.ids(rb.column(name), name, rows, path)
            offsets = None if lengths is None else torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
            sparse[name] = SparseColumn(ids, offsets)
            n_emb[name] = self.num_embeddings[name] or (int(ids.max()) + 1 if ids.numel() else 1)
        extras: Dict[str, torch.Tensor] = {}
        for key, c in (("user", self.spec.user_column), ("item", self.spec.item_column)):
            if not c:
                continue
            col = sparse.get(c)
            if col is not None and col.offsets is None:
                extras[key] = col.values  # the ids the model sees (after modulo or hash)
                continue
            v = rb.column(c)
            absent = col.lengths() != 1 if col is not None else ~v.is_valid().to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(absent)
            if len(bad):
                raise ValueError(f"{key}_column {c!r} in {path} row {rows[bad[0]]} must hold one id, got "
                                 f"{v[int(bad[0])].as_py()!r}")
            extras[key] = torch.from_numpy(v.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64))
        labels, masks = self.labels(rb, rows, path)
        return MultiTaskData(self.dense(rb, rows, path), sparse, n_emb, list(self.tasks), labels, masks,
                             extras=extras, source=path, pooling=dict(self.pooling))

    def empty(self, source: str) -> MultiTaskData:
        t = len(self.tasks)
        return MultiTaskData(torch.zeros(0, len(self.spec.dense)),
                             {k: SparseColumn(torch.zeros(0, dtype=torch.int64)) for k in self.spec.sparse},
                             {k: v or 1 for k, v in self.num_embeddings.items()}, list(self.tasks),
                             torch.zeros(0, t), torch.zeros(0, t, dtype=torch.bool),
                             extras={k: torch.zeros(0, dtype=torch.int64) for k, c in
                                     (("user", self.spec.user_column), ("item", self.spec.item_column)) if c},
                             source=source, pooling=dict(self.pooling))

    def concat(self, parts: List[MultiTaskData], source: str) -> MultiTaskData:
        """The parts' rows as one dataset, with the final ``num_embeddings``."""
        if not parts:
            return self.empty(source)
        sparse = {}
        for name in self.spec.sparse:
            cols = [p.sparse[name] for p in parts]
            offsets = None
            if any(c.offsets is not None for c in cols):
                lengths = torch.cat([c.lengths() for c in cols])
                offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            sparse[name] = SparseColumn(torch.cat([c.values for c in cols]), offsets)
        n_emb = {k: v or max(p.num_embeddings[k] for p in parts) for k, v in self.num_embeddings.items()}
        return MultiTaskData(torch.cat([p.dense for p in parts]), sparse, n_emb, list(self.tasks),
                             torch.cat([p.labels for p in parts]), torch.cat([p.masks for p in parts]),
                             extras={k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras},
                             source=source, pooling=dict(self.pooling))

    def read(self, path: str) -> Iterator[MultiTaskData]:
        row = 0
        for rb in self.record_batches(path):
            yield self.convert(rb, np.arange(row, row + rb.num_rows), path)
            row += rb.num_rows

