"""Users' tables (Parquet, CSV) and Criteo TSV as multi-task data: contents, errors, streaming."""

import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED_DATA
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.data.criteo import load_criteo, read_criteo
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.registry import load_dataset
from torchrec_fusion.data.tabular import TableSpec, TableStream, fnv1a_64, load_tabular
from torchrec_fusion.data.types import BatchSource

CRITEO = SHARED_DATA / "criteo-tsv-sample"

USER = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
ITEM = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
TAGS: List[Any] = [[1, 2], [], None, [7], [0, 0, 3], [2], [5, 1], [], [4], [6, 6]]
CITY = ["paris", "rome", "a", "paris", None, "oslo", "rome", "a", "", "x"]
AGE = [20.5, None, 30.0, 41.0, 18.0, None, 65.0, 33.0, 27.0, 50.0]
VISITS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 100]
CLICK = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
RATING = [4.5, 3.0, 1.0, 5.0, 2.5, 3.5, 4.0, 1.5, 2.0, 3.0]
BUY = [1, None, 0, None, 1, 0, None, 1, 0, None]


def _table(csv: bool = False) -> pa.Table:
    tags = pa.array(["|".join(map(str, t)) if t else "" for t in TAGS]) if csv else pa.array(TAGS, pa.list_(pa.int64()))
    return pa.table({"user": USER, "item": ITEM, "tags": tags, "city": CITY, "age": AGE, "visits": VISITS,
                     "click": CLICK, "rating": RATING, "buy": pa.array(BUY, pa.float64())})


def _test_table(csv: bool = False) -> pa.Table:  # the largest user and tag ids are here
    t = _table(csv).slice(0, 2)
    tags = pa.array(["9", ""]) if csv else pa.array([[9], None], pa.list_(pa.int64()))
    return t.set_column(0, "user", pa.array([11, 0])).set_column(2, "tags", tags)


def _spec(train: Any, test: Any = None, **kw: Any) -> Dict[str, Any]:
    spec = {
        "train": str(train),
        "sparse": {"user": {}, "tags": {"multi_valued": True, "pooling": "mean"},
                   "city": {"num_embeddings": 1000, "out_of_range": "hash"}},
        "dense": ["age", "visits"],
        "tasks": [{"name": "click"}, {"name": "rating", "kind": "regression", "weight": 0.5},
                  {"name": "purchase", "column": "buy"}],
        "user_column": "user",
        "item_column": "item",
    }
    if test is not None:
        spec["test"] = str(test)
    return {**spec, **kw}


@pytest.fixture()
def files(tmp_path: Path) -> Dict[str, Path]:
    out = {"parquet": tmp_path / "train.parquet", "parquet_test": tmp_path / "test.parquet",
           "csv": tmp_path / "train.csv", "csv_test": tmp_path / "test.csv"}
    pq.write_table(_table(), out["parquet"])
    pq.write_table(_test_table(), out["parquet_test"])
    pacsv.write_csv(_table(csv=True), out["csv"])
    pacsv.write_csv(_test_table(csv=True), out["csv_test"])
    return out


def _same(a: MultiTaskData, b: MultiTaskData) -> None:
    assert a.num_embeddings == b.num_embeddings and a.task_names == b.task_names
    for name in a.sparse:
        assert torch.equal(a.sparse[name].values, b.sparse[name].values), name
        assert torch.equal(a.sparse[name].lengths(), b.sparse[name].lengths()), name
    for k in ("dense", "labels", "masks"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.extras.keys() == b.extras.keys() and all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)


def test_parquet_exact_contents(files: Dict[str, Path]) -> None:
    d = load_tabular(_spec(files["parquet"], files["parquet_test"]))
    tr = d.train
    assert d.info == {"dataset": "table", "format": "parquet",
                      "files": [str(files["parquet"]), str(files["parquet_test"])],
                      "rows": 12, "train_rows": 10, "test_rows": 2, "stream": False}
    assert tr.feature_names == ["user", "tags", "city"] and tr.task_names == ["click", "rating", "purchase"]
    assert [t.loss_weight for t in tr.tasks] == [1.0, 0.5, 1.0] and tr.pooling["tags"] == "mean"
    assert tr.num_embeddings == {"user": 12, "tags": 10, "city": 1000}  # inferred over train and test
    assert tr.sparse["user"].values.tolist() == USER and tr.sparse["user"].offsets is None
    assert tr.sparse["tags"].values.tolist() == [1, 2, 7, 0, 0, 3, 2, 5, 1, 4, 6, 6]
    assert tr.sparse["tags"].offsets.tolist() == [0, 2, 2, 2, 3, 6, 7, 9, 9, 10, 12]
    cities = [c for c in CITY if c]
    assert tr.sparse["city"].values.tolist() == (fnv1a_64(cities) % np.uint64(1000)).astype(np.int64).tolist()
    assert tr.sparse["city"].lengths().tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0, 1]  # null and "" are no id
    assert tr.dense.tolist() == [[a or 0.0, float(v)] for a, v in zip(AGE, VISITS)]
    assert tr.labels[:, 0].tolist() == CLICK and tr.labels[:, 1].tolist() == RATING
    assert tr.labels[:, 2].tolist() == [b or 0.0 for b in BUY]
    assert tr.masks[:, :2].all() and tr.masks[:, 2].tolist() == [b is not None for b in BUY]
    assert tr.extras["user"].tolist() == USER and tr.extras["item"].tolist() == ITEM
    assert d.test.sparse["user"].values.tolist() == [11, 0] and d.test.sparse["tags"].offsets.tolist() == [0, 1, 1]
    assert torch.allclose(tr.label_means()[:2], torch.tensor([0.5, sum(RATING) / 10]))


def test_csv_matches_parquet_and_chunking(files: Dict[str, Path]) -> None:
    ref = load_tabular(_spec(files["parquet"], files["parquet_test"]))
    for train, test in ((files["parquet"], files["parquet_test"]), (files["csv"], files["csv_test"])):
        for chunk_rows in (3, 1, 65536):  # 10 rows in chunks of 3: the same data as one chunk
            d = load_tabular(_spec(train, test, chunk_rows=chunk_rows))
            _same(d.train, ref.train)
            _same(d.test, ref.test)


def test_hash_is_stable_and_policies(files: Dict[str, Path], tmp_path: Path) -> None:
    assert int(fnv1a_64(["a"])[0] % np.uint64(1000)) == 996  # a fixed value: no salted hash()
    d = load_tabular(_spec(files["parquet"], files["parquet_test"]))
    a_bucket = d.train.sparse["city"].values[2]
    assert a_bucket == 996 and d.train.sparse["city"].values[6] == a_bucket  # same id, same bucket
    assert d.test.sparse["city"].values[0] == d.train.sparse["city"].values[0]  # "paris" in both files
    # hash of integer ids: their decimal strings
    d = load_tabular(_spec(files["parquet"], sparse={"user": {"num_embeddings": 7, "out_of_range": "hash"}}))
    hashed = torch.from_numpy((fnv1a_64([str(u) for u in USER]) % np.uint64(7)).astype(np.int64))
    assert torch.equal(torch.sort(torch.cat([d.train.sparse["user"].values, d.test.sparse["user"].values]))[0],
                       torch.sort(hashed)[0])
    d = load_tabular(_spec(files["parquet"], files["parquet_test"],
                           sparse={"user": {"num_embeddings": 4, "out_of_range": "modulo"},
                                   "tags": {"multi_valued": True, "num_embeddings": 5, "out_of_range": "modulo"}}))
    assert d.train.sparse["user"].values.tolist() == [u % 4 for u in USER]
    assert d.train.sparse["tags"].values.tolist() == [v % 5 for t in TAGS if t for v in t]
    assert d.train.num_embeddings == {"user": 4, "tags": 5}
    with pytest.raises(ValueError, match=r"sparse column 'user': id 5 in .*train.parquet row 4 is outside "
                                         r"\[0, num_embeddings=5\)"):
        load_tabular(_spec(files["parquet"], files["parquet_test"], sparse={"user": {"num_embeddings": 5}}))
    with pytest.raises(ValueError, match=r"sparse column 'tags': id 7 in .*train.csv row 3 is outside"):
        load_tabular(_spec(files["csv"], files["csv_test"],
                           sparse={"tags": {"multi_valued": True, "num_embeddings": 5}}))
    with pytest.raises(ValueError, match=r"sparse column 'tags': id 9 in .*test.parquet row 0 is outside"):
        load_tabular(_spec(files["parquet"], files["parquet_test"],
                           sparse={"tags": {"multi_valued": True, "num_embeddings": 8}}))
    neg = tmp_path / "neg.parquet"
    pq.write_table(pa.table({"u": [0, 1, -2], "y": [0, 1, 0]}), neg)
    for policy in ({}, {"num_embeddings": 3, "out_of_range": "modulo"}):
        with pytest.raises(ValueError, match=r"sparse column 'u': id -2 in .*neg.parquet row 2 is negative"):
            load_tabular({"train": str(neg), "sparse": {"u": policy}, "tasks": [{"name": "y"}]})


def test_split_and_dense_transform(files: Dict[str, Path]) -> None:
    d = load_tabular(_spec(files["parquet"], test_fraction=0.2, dense_transform="log1p"), seed=3)
    assert len(d.train) == 8 and len(d.test) == 2 and d.info["rows"] == 10
    visits = torch.cat([d.train.dense[:, 1], d.test.dense[:, 1]])
    assert torch.allclose(visits.sort()[0], torch.log1p(torch.tensor(VISITS, dtype=torch.float)).sort()[0])
    again = load_tabular(_spec(files["parquet"], test_fraction=0.2), seed=3)
    other = load_tabular(_spec(files["parquet"], test_fraction=0.2), seed=4)
    assert again.test.extras["user"].tolist() == d.test.extras["user"].tolist()
    assert sorted(again.test.dense[:, 1].tolist()) != sorted(other.test.dense[:, 1].tolist())


@pytest.mark.parametrize("change, error, pattern", [
    ({"trian": "x"}, ValueError, r"table spec: table: unknown key\(s\) \['trian'\]; allowed keys are \["),
    ({"sparse": {"user": {"num_embedding": 3}}}, ValueError, r"sparse\.user: unknown key\(s\) \['num_embedding'\]"),
    ({"tasks": [{"name": "click", "knd": "binary"}]}, ValueError, r"tasks\[0\]: unknown key\(s\) \['knd'\]"),
    ({"tasks": [{"name": "click", "kind": "ranking"}]}, ValueError, r"tasks\[0\]: task 'click': unknown kind"),
    ({"tasks": []}, ValueError, r"table spec: tasks: expected a non-empty list"),
    ({"sparse": {"user": {"pooling": "max"}}}, ValueError, r"sparse\.user\.pooling: must be one of \['sum', 'mean'\]"),
    ({"sparse": {"city": {"out_of_range": "hash"}}}, ValueError,
     r"sparse\.city\.num_embeddings: is required with out_of_range: hash"),
    ({"sparse": {"user": {"num_embeddings": 0}}}, ValueError, r"sparse\.user\.num_embeddings: must be a positive"),
    ({"test_fraction": 1.5}, ValueError, r"test_fraction: must be a number in \(0, 1\)"),
    ({"chunk_rows": 0}, ValueError, r"chunk_rows: must be a positive integer"),
    ({"dense_transform": "log"}, ValueError, r"dense_transform: must be one of \[None, 'log1p'\]"),
    ({"dense": ["age", "user"]}, ValueError, r"column\(s\) \['user'\] are listed both as sparse and as dense"),
    ({"train": "/nonexistent/*.parquet"}, FileNotFoundError, r"train: no file matches '/nonexistent/\*\.parquet'"),
    ({"dense": ["age", "height", "weight"]}, ValueError,
     r"train.parquet lacks the column\(s\) \['height', 'weight'\]; its columns are \['user', 'item', 'tags'"),
    ({"sparse": {"age": {}}, "dense": []}, ValueError,
     r"sparse column 'age' in .*train.parquet has type double; ids must be integers >= 0"),
    ({"sparse": {"city": {}}}, ValueError, r"sparse column 'city' in .*train.parquet has type string; ids must be"),
    ({"sparse": {"tags": {}}}, ValueError, r"sparse column 'tags' in .* is a list column .*; set multi_valued: true"),
    ({"sparse": {"user": {"multi_valued": True}}}, ValueError,
     r"sparse column 'user' .* has type int64; a multi_valued"),
    ({"tasks": [{"name": "rating"}]}, ValueError,
     r"label column 'rating' \(task 'rating'\) in .*train.parquet row 0 is 4.5; expected 0 or 1 or null"),
    ({"tasks": [{"name": "r", "column": "rating", "kind": "multiclass", "num_classes": 5}]}, ValueError,
     r"label column 'rating' \(task 'r'\) in .* row 0 is 4.5; expected a class in 0..4 or null"),
    ({"stream": True, "format": "csv", "train": "CSV"}, ValueError, r"stream: streaming reads Parquet files only"),
    ({"user_column": "tags"}, ValueError, r"user_column: 'tags' is a multi_valued sparse column"),
    ({"item_column": "city"}, ValueError, r"item_column 'city' in .*train.parquet row 4 must hold one id, got None"),
])
def test_errors(files: Dict[str, Path], change: Dict[str, Any], error: type, pattern: str) -> None:
    spec = _spec(files["parquet"])
    if change.get("train") == "CSV":
        change = {**change, "train": str(files["csv"])}
    if "sparse" in change and "dense" not in change:
        change = {**change, "dense": ["age", "visits"]}
    spec.update(change)
    if "sparse" in change:
        spec["user_column"] = spec["item_column"] = None
    with pytest.raises(error, match=pattern):
        load_tabular(spec)


def test_spec_required_keys() -> None:
    with pytest.raises(ValueError, match=r"table spec: train: is required"):
        TableSpec.from_dict({"tasks": [{"name": "y"}], "dense": ["x"]})
    with pytest.raises(ValueError, match=r"table spec: tasks\[1\]\.name: a task needs a name"):
        TableSpec.from_dict({"train": "a.parquet", "dense": ["x"], "tasks": [{"name": "y"}, {"column": "z"}]})
    with pytest.raises(ValueError, match=r"table spec: sparse: no feature"):
        TableSpec.from_dict({"train": "a.parquet", "tasks": [{"name": "y"}]})


def test_csv_type_errors_and_format(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("u,y\n1,0\n1.5,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: sparse column 'u' holds a value of the wrong type .*'1.5'.*"
                                         r"ids must be integers >= 0 \(string ids need out_of_range: hash\)"):
        load_tabular({"train": str(bad), "sparse": {"u": {}}, "tasks": [{"name": "y"}]})
    joined = tmp_path / "joined.csv"
    joined.write_text("u,y\n1|x,0\n2,1\n")
    with pytest.raises(ValueError, match=r"sparse column 'u' in .*joined.csv: strings joined by '\|' .*'x'"):
        load_tabular({"train": str(joined), "sparse": {"u": {"multi_valued": True}}, "tasks": [{"name": "y"}]})
    odd = tmp_path / "rows.dat"
    odd.write_text("u,y\n1,0\n2,1\n0,1\n")
    with pytest.raises(ValueError, match=r"format: cannot tell it from the file names"):
        load_tabular({"train": str(odd), "sparse": {"u": {}}, "tasks": [{"name": "y"}]})
    d = load_tabular({"train": str(odd), "format": "csv", "sparse": ["u"], "tasks": [{"name": "y"}]}, seed=1)
    assert sorted(torch.cat([d.train.sparse["u"].values, d.test.sparse["u"].values]).tolist()) == [0, 1, 2]


def _stream_file(tmp_path: Path, n: int = 23) -> Path:
    path = tmp_path / "stream.parquet"
    tags = [[i % 4] * (i % 3) for i in range(n)]
    click = [None if i % 5 == 0 else i % 2 for i in range(n)]
    pq.write_table(pa.table({"row": list(range(n)), "tags": pa.array(tags, pa.list_(pa.int64())),
                             "x": [float(i) for i in range(n)], "click": pa.array(click, pa.float64())}),
                   path, row_group_size=5)
    return path


def _stream_spec(path: Path, **kw: Any) -> Dict[str, Any]:
    return {"train": str(path), "test": str(path), "sparse": {"row": {}, "tags": {"multi_valued": True}},
            "dense": ["x"], "tasks": [{"name": "click"}], "chunk_rows": 4, "stream": True, **kw}


def _rows(b: MultiTaskBatch) -> List[int]:
    """The ``row`` ids of a batch's real rows (padding rows have an empty ``row`` bag)."""
    kjt = b.sparse_features["row"]
    return kjt.values()[: int(kjt.lengths().sum())].tolist()


def test_stream_matches_in_memory_and_pads(tmp_path: Path) -> None:
    path = _stream_file(tmp_path)
    loaded = load_tabular(_stream_spec(path))
    s, mem = loaded.train, loaded.test  # the same file, streamed and in memory
    assert isinstance(s, TableStream) and len(s) == 23 and s.num_dense == 1
    assert s.num_embeddings == mem.num_embeddings == {"row": 23, "tags": 4}
    assert s.feature_names == ["row", "tags"] and s.task_names == ["click"]
    assert s.pooling == {"row": "sum", "tags": "sum"}
    assert torch.allclose(s.label_means(), mem.label_means())
    for world in (1, 2, 3):
        seen: List[int] = []
        for rank in range(world):
            got = list(s.batches(3, rank=rank, world_size=world, drop_last=False))
            ref = list(mem.batches(3, rank=rank, world_size=world, drop_last=False))
            assert len(got) == len(ref) == s.num_batches(3, world, drop_last=False) == math.ceil(23 / (3 * world))
            for a, b in zip(got, ref):  # row for row what the in-memory data gives, padding included
                assert torch.equal(a.dense_features, b.dense_features) and torch.equal(a.masks, b.masks)
                assert torch.equal(a.labels, b.labels) and a.sparse_features.keys() == b.sparse_features.keys()
                assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
                assert torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths())
                seen += _rows(a)
        assert sorted(seen) == list(range(23))  # the union over ranks is the file, each row once
    last = list(s.batches(3, rank=1, world_size=2, drop_last=False))[-1]  # rows 21, 22 and one padding row
    assert _rows(last) == [21, 22] and last.masks[:, 0].tolist() == [True, True, False]
    assert last.dense_features[:, 0].tolist() == [21.0, 22.0, 0.0]
    assert last.sparse_features["row"].lengths().tolist() == [1, 1, 0]
    tail = list(s.batches(3, rank=1, world_size=2, drop_last=False, start=2))
    assert [_rows(b) for b in tail] == [_rows(b) for b in list(s.batches(3, rank=1, world_size=2, drop_last=False))[2:]]


def test_stream_is_a_batch_source_not_in_memory(tmp_path: Path) -> None:
    loaded = load_tabular(_stream_spec(_stream_file(tmp_path)))
    s, mem = loaded.train, loaded.test
    assert isinstance(s, BatchSource) and isinstance(mem, BatchSource)
    assert not s.in_memory and s.in_memory_rows() is None and s.extras == {} and s.source == "table/train"
    assert mem.in_memory and mem.in_memory_rows() is mem


def test_table_dataset_builds_candidates_from_rows_in_memory(files: Dict[str, Path], tmp_path: Path) -> None:
    d = load_dataset("table", {"table": _spec(files["parquet"], item_features=["tags"])}, seed=1)
    assert d.candidates is not None and d.info["stream"] is False
    rows = d.train.in_memory_rows()
    assert rows is not None
    user, item = rows.extras["user"][:2], rows.extras["item"][2:4]
    cand = d.candidates(user, item)
    assert torch.equal(cand.sparse["user"].values, user) and not cand.masks.any()
    streamed = load_dataset("table", {"table": {**_stream_spec(_stream_file(tmp_path)), "user_column": "row",
                                                 "item_column": "row"}})
    assert streamed.candidates is None  # a stream has no rows to copy features from
    with pytest.raises(ValueError, match="dataset 'table' needs a 'table' section"):
        load_dataset("table")


def test_stream_training_ranks(tmp_path: Path) -> None:
    s = load_tabular(_stream_spec(_stream_file(tmp_path))).train
    for world in (2, 3):
        n = s.num_batches(3, world)
        assert n == 23 // (3 * world)
        for rank in range(world):
            lo, hi = rank * 23 // world, (rank + 1) * 23 // world
            plain = [_rows(b) for b in s.batches(3, rank=rank, world_size=world)]
            assert sum(plain, []) == list(range(lo, lo + 3 * n))  # contiguous rows of this rank, in order
            e0 = [_rows(b) for b in s.batches(3, shuffle=True, seed=1, epoch=0, rank=rank, world_size=world)]
            e1 = [_rows(b) for b in s.batches(3, shuffle=True, seed=1, epoch=1, rank=rank, world_size=world)]
            assert len(e0) == len(e1) == n and all(len(r) == 3 for r in e0 + e1)  # equal counts on every rank
            rows = sum(e0, [])
            assert len(set(rows)) == len(rows) and all(lo <= r < hi for r in rows)
            assert e0 == [_rows(b) for b in s.batches(3, shuffle=True, seed=1, epoch=0, rank=rank, world_size=world)]
            assert e0 != e1 or world == 3


def test_stream_held_out_split(tmp_path: Path) -> None:
    spec = _stream_spec(_stream_file(tmp_path), test_fraction=0.3)
    del spec["test"]
    loaded = load_tabular(spec, seed=5)
    train_rows = sum((_rows(b) for b in loaded.train.batches(4, drop_last=False)), [])
    test_rows = loaded.test.sparse["row"].values.tolist()
    assert 0 < len(test_rows) < 23 and len(train_rows) == len(loaded.train) == 23 - len(test_rows)
    assert sorted(train_rows + test_rows) == list(range(23))
    again = load_tabular(spec, seed=5)
    assert again.test.sparse["row"].values.tolist() == test_rows
    assert loaded.info["rows"] == 23 and loaded.info["stream"] is True


def test_batches_build_valid_kjt(files: Dict[str, Path], tmp_path: Path) -> None:
    d = load_tabular(_spec(files["parquet"], files["parquet_test"]))
    d.train.validate()
    tables = [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=4, num_embeddings=d.train.num_embeddings[f],
                                 feature_names=[f]) for f in d.train.feature_names]
    ebc = EmbeddingBagCollection(tables=tables)
    stream = load_tabular(_stream_spec(_stream_file(tmp_path))).train
    for b in [*d.train.batches(4, shuffle=True, drop_last=False), *d.test.batches(4, drop_last=False)]:
        kjt = b.sparse_features
        assert kjt.keys() == ["user", "tags", "city"] and kjt.lengths().numel() == 3 * 4
        assert int(kjt.lengths().sum()) == kjt.values().numel() and kjt.values().dtype == torch.int64
        assert ebc(kjt).values().shape == (4, 12)  # every id lies in its table
    for b in stream.batches(4, drop_last=False):
        assert int(b.sparse_features.lengths().sum()) == b.sparse_features.values().numel()


@pytest.mark.skipif(not CRITEO.is_dir(), reason="../shared/data/criteo-tsv-sample is missing")
def test_criteo_sample() -> None:
    d = load_criteo(CRITEO, num_embeddings=1000, test_fraction=0.1, seed=0)
    assert d.info["rows"] == 200 and len(d.train) == 180 and len(d.test) == 20
    assert [Path(f).name for f in d.info["files"]] == ["part-0", "sample_train.txt"]  # not SOURCE.txt, SHA256SUMS
    assert int(d.train.labels.sum() + d.test.labels.sum()) == 58  # 29 clicks in each sample
    assert d.train.feature_names == [f"cat_{i}" for i in range(26)] and d.train.num_dense == 13
    first = read_criteo([str(CRITEO / "part-0")], num_embeddings=1000, max_rows=1)
    ints = [2, 0, 0, 0, 957, 45, 2, 36, 45, 1, 1, 0, 0]
    assert len(first) == 1 and torch.allclose(first.dense[0], torch.log1p(torch.tensor(ints, dtype=torch.float)))
    assert first.sparse["cat_0"].values.tolist() == [0x05DB9164 % 1000] and first.sparse["cat_2"].values.tolist() == [0]
    assert first.labels.tolist() == [[0.0]]


def test_criteo_errors(tmp_path: Path) -> None:
    bad = tmp_path / "day_0"
    bad.write_text("0" + "\t1" * 13 + "\tab" * 26 + "\n" + "1" + "\t1" * 13 + "\tab" * 25 + "\n")
    with pytest.raises(ValueError, match=r"day_0:2: 39 fields, expected 40"):
        read_criteo([str(bad)])
    bad.write_text("0" + "\t1" * 12 + "\tx" + "\tab" * 26 + "\n")
    with pytest.raises(ValueError, match=r"day_0:1: field 14 is 'x', expected an integer value"):
        read_criteo([str(bad)])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.txt").write_text("not\tcriteo\n")
    with pytest.raises(FileNotFoundError, match="no Criteo TSV file in .*other"):
        load_criteo(tmp_path / "other")
