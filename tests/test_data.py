"""Tests of the MovieLens readers and the synthetic dataset."""

import ast
import dataclasses
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np
import pytest
import torch

import torchrec_fusion.data
from torchrec_fusion.data.criteo import CriteoReader
from torchrec_fusion.data.dataset import MultiTaskData
from torchrec_fusion.data.movielens import MovieLensReader, load_movielens
from torchrec_fusion.data.registry import DATASETS, load_dataset
from torchrec_fusion.data.synthetic import SyntheticConfig, SyntheticReader, make_synthetic, zipf_ids
from torchrec_fusion.data.tabular import TableReader
from torchrec_fusion.data.types import BatchSource

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=f"{ML100K} is not there")


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank AUC (ties broken arbitrarily, fine for a sanity bound)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))


def _check_ids(data: MultiTaskData) -> None:
    for name, col in data.sparse.items():
        assert col.values.dtype == torch.int64, name
        if col.values.numel():
            assert int(col.values.min()) >= 0 and int(col.values.max()) < data.num_embeddings[name], name


def _write(root: Path, files: Dict[str, str], encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_bytes(text.encode(encoding))
    return root


# --------------------------------------------------------------------------- tiny hand-written files

ITEM_100K = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Caf\xe9 Noir (1960)|01-Jan-1960||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1\n"
    "5|unknown||||0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
USER_100K = "1|24|M|technician|85711\n2|60|F|other|T8H1N\n3|17|M|writer|85000\n"
DATA_100K = "1\t1\t5\t881250949\n2\t5\t3\t881250950\n3\t2\t4\t881250951\n1\t2\t1\t881250952\n"


def _ml100k(root: Path, data: Optional[str] = DATA_100K, **extra: str) -> Path:
    files = {"u.item": ITEM_100K, "u.user": USER_100K, **extra}
    if data is not None:
        files["u.data"] = data
    return _write(root, files, encoding="latin-1")


def test_tiny_ml100k_features(tmp_path: Path) -> None:
    ml = load_movielens(_ml100k(tmp_path, **{"u1.base": DATA_100K, "u1.test": "2\t1\t4\t1\n"}))
    tr, te = ml.train, ml.test
    assert (ml.variant, ml.num_users, ml.num_items, len(tr), len(te)) == ("ml-100k", 3, 3, 4, 1)
    assert ml.item_titles == ["Toy Story (1995)", "Caf\xe9 Noir (1960)", "unknown"]
    assert tr.feature_names == ["user", "item", "genres", "age", "gender", "occupation", "zip"]
    sizes = {"user": 3, "item": 3, "genres": 19, "age": 7, "gender": 2, "occupation": 3, "zip": 3}
    assert tr.num_embeddings == sizes
    assert tr.sparse["item"].values.tolist() == [0, 2, 1, 1]  # raw 5 -> index 2
    genres = tr.sparse["genres"]
    assert genres.lengths().tolist() == [3, 0, 2, 2]  # item 5 has no genre: empty bag
    assert genres.values[:3].tolist() == [3, 4, 5]
    assert tr.sparse["age"].values.tolist() == [1, 6, 0, 1]  # 24 -> 18-24, 60 -> 56+, 17 -> <18
    assert tr.sparse["gender"].values.tolist() == [0, 1, 0, 0]
    assert tr.sparse["zip"].values.tolist() == [1, 2, 0, 1]  # "857", "T8H", "850"
    assert tr.dense.dtype == torch.float32 and tr.dense.shape == (4, 2)
    assert torch.allclose(tr.dense[:, 0], torch.tensor([0.25, 0.0, -1.5, -1.5]))  # unknown year -> 0
    assert torch.allclose(tr.dense[:, 1], torch.tensor([0.48, 1.2, 0.34, 0.48]))
    assert tr.task_names == ["like", "rating"]
    assert tr.labels.tolist() == [[1, 5], [0, 3], [1, 4], [0, 1]]
    assert bool(tr.masks.all())
    assert tr.extras["timestamp"].dtype == torch.int64 and tr.extras["rating"].tolist() == [5, 3, 4, 1]
    assert te.extras["user"].tolist() == [1] and te.extras["item"].tolist() == [0]


def test_tiny_ml1m(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "movies.dat": "10::Caf\xe9 (1999)::Action|Comedy\n20::Heat (1995)::Crime\n",
            "users.dat": "7::F::1::10::48067\n3::M::56::16::70072\n",
            "ratings.dat": "7::20::4::978300760\n3::10::2::978302109\n7::10::5::978301968\n",
        },
        encoding="latin-1",
    )
    ml = load_movielens(root, split=None, test_fraction=0.34)
    assert (ml.variant, ml.num_users, ml.num_items) == ("ml-1m", 2, 2)
    assert ml.item_titles == ["Caf\xe9 (1999)", "Heat (1995)"]
    both = [ml.train, ml.test]
    assert [len(d) for d in both] == [2, 1]
    sizes = {"user": 2, "item": 2, "genres": 3, "age": 7, "gender": 2, "occupation": 2, "zip": 2}
    assert ml.train.num_embeddings == sizes
    user = torch.cat([d.extras["user"] for d in both])
    age = torch.cat([d.sparse["age"].values for d in both])
    gender = torch.cat([d.sparse["gender"].values for d in both])
    # users sorted by raw id: 3 -> 0 (M, 56), 7 -> 1 (F, code 1)
    assert torch.equal(age, torch.where(user == 0, 6, 0)) and torch.equal(gender, user)
    item = torch.cat([d.extras["item"] for d in both])
    lens = torch.cat([d.sparse["genres"].lengths() for d in both])
    assert torch.equal(lens, torch.where(item == 0, 2, 1))  # Action|Comedy vs Crime
    like = torch.cat([d.labels[:, 0] for d in both])
    rating = torch.cat([d.labels[:, 1] for d in both])
    assert torch.equal(like, (rating >= 4).float()) and sorted(rating.tolist()) == [2, 4, 5]


def test_tiny_ml20m_csv(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "ml-latest-small",
        {
            "movies.csv": 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
            "50,Untitled,(no genres listed)\n",
            "ratings.csv": "userId,movieId,rating,timestamp\r\n9,1,4.5,1112486027\r\n4,50,0.5,1112484676\r\n"
            "9,50,3.0,1112484819\r\n4,1,4.0,1112484727\r\n",
        },
    )
    ml = load_movielens(root, split="random", test_fraction=0.25, seed=3)
    assert (ml.variant, ml.num_users, ml.num_items) == ("ml-20m", 2, 2)
    assert ml.item_titles[0] == "American President, The (1995)"
    tr = ml.train
    assert tr.feature_names == ["user", "item", "genres"] and tr.dense.shape == (3, 1)
    assert tr.num_embeddings == {"user": 2, "item": 2, "genres": 3}
    item = tr.extras["item"]
    assert torch.equal(tr.sparse["genres"].lengths(), torch.where(item == 0, 3, 0))
    assert torch.allclose(tr.dense[:, 0], torch.where(item == 0, 0.25, 0.0))
    assert set(tr.labels[:, 1].tolist()) <= {4.5, 0.5, 3.0, 4.0}
    _check_ids(tr)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "data, pattern",
    [
        ("1\t1\t5\t1\n1\t2\t3\n", r"u\.data:2: expected 4 tab-separated fields, got 3"),
        ("1\t1\t5\t1\n\n2\t1\tx\t1\n", r"u\.data:3: field 3 \('x'\) is not a number"),
        ("1\t1\t5\t1\n2\t1\t4\t1\n3\t1\tnan\t5\n", r"u\.data:3: rating nan"),
        ("1\t1\t5\t1\n2\t1.5\t4\t1\n", r"u\.data:2: .*must be integers"),
        ("1\t1\t5\t1\n1\t99\t4\t1\n", r"u\.data:2: item id 99 is not in .*u\.item"),
        ("1\t1\t5\t1\n42\t1\t4\t1\n", r"u\.data:2: user id 42 is not in .*u\.user"),
    ],
)
def test_bad_ratings_name_file_and_line(tmp_path: Path, data: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as err:
        load_movielens(_ml100k(tmp_path, data))
    assert str(tmp_path / "u.data") in str(err.value)


def test_bad_side_files(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "a")
    (root / "u.user").write_text("1|24|M|technician|85711\n2|60|X|other|T8H1N\n")
    with pytest.raises(ValueError, match=r"u\.user:2: gender"):
        load_movielens(root)
    root = _ml100k(tmp_path / "b")
    (root / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995\n")
    with pytest.raises(ValueError, match=r"u\.item:1: expected 24"):
        load_movielens(root)
    root = _write(tmp_path / "c", {"movies.dat": "1::A (1990)::Drama\n", "users.dat": "1::M::1::1::1\n",
                                   "ratings.dat": "1::1::5::1\n1::1::5\n"})
    with pytest.raises(ValueError, match=r"ratings\.dat:2: expected 4 '::'-separated fields, got 3"):
        load_movielens(root)
    root = _write(tmp_path / "d", {"movies.csv": "movieId,title,genres\n1,A,Drama\n",
                                   "ratings.csv": "userId,movieId,rating,timestamp\n1,1,5,1\n1,2,5,1\n"})
    with pytest.raises(ValueError, match=r"ratings\.csv:3: item id 2 is not in .*movies\.csv"):
        load_movielens(root)


def test_missing_files(tmp_path: Path) -> None:
    looked_for = "no MovieLens data in .*empty.*u.data.*ratings.dat.*ratings.csv"
    with pytest.raises(FileNotFoundError, match=looked_for):
        load_movielens(_write(tmp_path / "empty", {}))
    root = _ml100k(tmp_path / "no_item")
    (root / "u.item").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_movielens(root)
    assert str(root / "u.item") in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"u2\.base"):
        load_movielens(_ml100k(tmp_path / "split"), split="u2")
    with pytest.raises(ValueError, match="unknown split"):
        load_movielens(_ml100k(tmp_path / "split"), split="u9")


# --------------------------------------------------------------------------- real ml-100k


@needs_ml100k
def test_ml100k_u1_split() -> None:
    start = time.perf_counter()
    ml = load_movielens(ML100K)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"ml-100k took {elapsed:.2f} s"
    tr, te = ml.train, ml.test
    assert (ml.variant, len(tr), len(te), ml.num_users, ml.num_items) == ("ml-100k", 80000, 20000, 943, 1682)
    assert ml.item_titles[0] == "Toy Story (1995)" and len(ml.item_titles) == 1682
    for d in (tr, te):
        _check_ids(d)
        assert d.num_embeddings["user"] == 943 and d.num_embeddings["item"] == 1682
        assert d.num_embeddings["genres"] == 19 and d.num_embeddings["occupation"] == 21
        assert d.dense.shape == (len(d), 2) and d.dense.dtype == torch.float32
        assert 0.5 < float(d.labels[:, 0].mean()) < 0.6
        assert 3.4 < float(d.labels[:, 1].mean()) < 3.7
        assert float((d.sparse["genres"].lengths() > 0).float().mean()) > 0.99
        assert torch.equal(d.labels[:, 1], d.extras["rating"])
    assert len(torch.cat([tr.extras["user"], te.extras["user"]]).unique()) == 943


@needs_ml100k
def test_ml100k_random_split_is_seeded() -> None:
    a, b, c = (load_movielens(ML100K, split="random", seed=s) for s in (1, 1, 2))
    assert (len(a.train), len(a.test)) == (80000, 20000)
    assert torch.equal(a.test.extras["timestamp"], b.test.extras["timestamp"])
    assert not torch.equal(a.test.extras["timestamp"], c.test.extras["timestamp"])
    pairs = [set((d.extras["user"] * 10_000 + d.extras["item"]).tolist()) for d in (a.train, a.test)]
    assert len(pairs[0]) == 80000 and len(pairs[1]) == 20000 and not pairs[0] & pairs[1]
    assert a.train.source == "ml-100k/train" and torch.equal(a.train.labels[:, 1], a.train.extras["rating"])


# --------------------------------------------------------------------------- synthetic

SMALL = SyntheticConfig(num_rows=60_000, seed=5)


@pytest.fixture(scope="module")
def synthetic() -> "tuple[MultiTaskData, MultiTaskData]":
    return make_synthetic(SMALL)


def test_synthetic_layout(synthetic: "tuple[MultiTaskData, MultiTaskData]") -> None:
    train, test = synthetic
    assert (len(train), len(test)) == (48_000, 12_000)
    assert train.feature_names == ["user", "item", "category", "tags"]
    assert train.num_embeddings == {"user": 10_000, "item": 5_000, "category": 100, "tags": 1_000}
    assert train.task_names == ["ctr", "cvr", "watch_time", "ctcvr"]
    assert train.dense.shape == (48_000, 4) and train.dense.dtype == torch.float32
    for d in (train, test):
        _check_ids(d)
        lens = d.sparse["tags"].lengths()
        assert int(lens.min()) == 0 and int(lens.max()) == SMALL.max_tags
        assert 0.1 < float((lens == 0).float().mean()) < 0.25
        assert torch.equal(d.masks[:, 1], d.labels[:, 0] == 1)  # cvr observed on clicks only
        assert bool(d.masks[:, [0, 2, 3]].all())
        # ctcvr = click and conversion on every impression (ESMM's label); equals cvr where clicked
        assert torch.equal(d.labels[:, 3], d.labels[:, 0] * d.labels[:, 1])
        assert 0.2 < float(d.labels[:, 0].mean()) < 0.6
        assert float(d.labels[:, 2].min()) >= 0
        assert torch.equal(d.extras["user"], d.sparse["user"].values)


def test_synthetic_determinism(synthetic: "tuple[MultiTaskData, MultiTaskData]") -> None:
    again, _ = make_synthetic(SMALL)
    other, _ = make_synthetic(SyntheticConfig(num_rows=60_000, seed=6))
    train = synthetic[0]
    for name in train.sparse:
        assert torch.equal(train.sparse[name].values, again.sparse[name].values)
    assert torch.equal(train.sparse["tags"].offsets, again.sparse["tags"].offsets)
    assert torch.equal(train.dense, again.dense) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.sparse["user"].values, other.sparse["user"].values)
    assert not torch.equal(train.labels, other.labels)


def test_zipf_skew() -> None:
    rng = np.random.default_rng(0)
    for a, lo, hi in ((1.1, 0.4, 1.0), (0.0, 0.0, 0.03)):
        ids = zipf_ids(rng, 200_000, 10_000, a)
        counts = np.sort(np.bincount(ids, minlength=10_000))[::-1]
        share = counts[:100].sum() / counts.sum()  # top 1% of ids
        assert lo < share < hi, (a, share)
    head = np.argsort(np.bincount(zipf_ids(rng, 100_000, 10_000, 1.1), minlength=10_000))[-10:]
    assert head.max() - head.min() > 1000  # popular ids are scattered, not 0..9


def test_synthetic_structure_is_learnable(synthetic: "tuple[MultiTaskData, MultiTaskData]") -> None:
    """Per-id training rates (additive in log-odds) already predict test labels."""
    train, test = synthetic
    for j in (0, 1):  # ctr, cvr
        m_tr, m_te = train.masks[:, j].numpy(), test.masks[:, j].numpy()
        y_tr, y_te = train.labels[:, j].numpy()[m_tr], test.labels[:, j].numpy()[m_te]
        score = np.zeros(int(m_te.sum()))
        for f in ("user", "item", "category"):
            a, b = train.sparse[f].values.numpy()[m_tr], test.sparse[f].values.numpy()[m_te]
            n = train.num_embeddings[f]
            rate = (np.bincount(a, y_tr, n) + 5 * y_tr.mean()) / (np.bincount(a, minlength=n) + 5)
            score += np.log(rate / (1 - rate))[b]
        assert _auc(y_te, score) > 0.62, train.task_names[j]
    ctr, watch = test.labels[:, 0].numpy(), test.labels[:, 2].numpy()
    assert _auc(ctr, watch) > 0.65  # watch time shares the affinity with clicks


def test_synthetic_config_checks() -> None:
    with pytest.raises(ValueError, match="user"):
        SyntheticConfig(table_sizes={"item": 10})
    with pytest.raises(ValueError, match="test_fraction"):
        SyntheticConfig(test_fraction=1.0)
    train, test = make_synthetic(SyntheticConfig(num_rows=1_000, num_dense=0, max_tags=0, zipf_a=0.0))
    assert train.dense.shape == (800, 0) and int(train.sparse["tags"].lengths().sum()) == 0


def test_registry_lists_the_four_datasets() -> None:
    assert list(DATASETS) == ["synthetic", "movielens", "table", "criteo"]
    assert [DATASETS[n] for n in DATASETS] == [SyntheticReader, MovieLensReader, TableReader, CriteoReader]
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; choose one of \['criteo', 'movielens'"):
        load_dataset("imagenet")


def test_reader_options_and_their_defaults() -> None:
    def defaults(name: str) -> Dict[str, object]:
        return dataclasses.asdict(DATASETS.options(name))

    assert defaults("synthetic") == {"synthetic_rows": 200_000, "synthetic_scale": 1.0}
    assert defaults("movielens") == {"data_dir": None, "split": "auto"}
    assert defaults("table") == {"table": None}
    assert defaults("criteo") == {"data_dir": None}
    opts = DATASETS.options("movielens", {"data-dir": "ml", "split": "u2"})  # flag spelling accepted
    assert (opts.data_dir, opts.split) == ("ml", "u2")


def test_unknown_or_mistyped_data_options_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"data: unknown option\(s\) \['data_dri'\]; known: \['data_dir', 'split'\]"):
        load_dataset("movielens", {"data_dri": "x"})
    with pytest.raises(ValueError, match=r"data\.synthetic_rows: expected an integer, got 'many'"):
        load_dataset("synthetic", {"synthetic_rows": "many"})
    with pytest.raises(ValueError, match="--dataset movielens needs --data-dir"):
        load_dataset("movielens", {"split": "random"})
    with pytest.raises(ValueError, match="--dataset criteo needs --data-dir"):
        load_dataset("criteo")


def test_synthetic_dataset_scales_and_seeds() -> None:
    a = load_dataset("synthetic", {"synthetic_rows": 1000, "synthetic_scale": 0.1}, seed=3)
    b = load_dataset("synthetic", {"synthetic_rows": 1000, "synthetic_scale": 0.1}, seed=3)
    assert isinstance(a.train, BatchSource) and a.train.in_memory
    assert a.train.num_embeddings == {"user": 1000, "item": 500, "category": 10, "tags": 100}
    assert a.info == {"dataset": "synthetic", "rows": 1000} and a.candidates is not None
    assert torch.equal(a.train.label_means(), b.train.label_means())


@needs_ml100k
def test_movielens_dataset_gives_public_ids_and_titles() -> None:
    d = load_dataset("movielens", {"data_dir": str(ML100K)})
    assert d.info == {"dataset": "ml-100k", "data_dir": str(ML100K), "num_items": 1682}
    assert d.user_ids is not None and d.item_ids is not None and d.item_titles is not None
    assert d.user_ids.tolist() == list(range(1, 944)) and d.item_ids[:3].tolist() == [1, 2, 3]
    assert d.candidates is not None and len(d.candidates(torch.tensor([0]), torch.tensor([5]))) == 1


DATA_DIR = Path(torchrec_fusion.data.__file__).parent


def _data_modules() -> List[str]:
    return sorted(f"torchrec_fusion.data.{p.stem}" for p in DATA_DIR.glob("*.py") if p.stem != "__init__")


def _imported(path: Path, mods: Set[str]) -> Set[str]:
    """The data modules ``path`` imports, anywhere in it (late imports too)."""
    out: Set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module:
            out |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
    return out & mods


def test_data_imports_have_no_circle() -> None:
    """Every import among the data modules, late ones included, follows one order."""
    mods = set(_data_modules())
    graph = {m: _imported(DATA_DIR / f"{m.rsplit('.', 1)[1]}.py", mods) for m in mods}
    done: Set[str] = set()

    def visit(m: str, path: List[str]) -> None:
        assert m not in path, f"import circle: {' -> '.join(path + [m])}"
        if m not in done:
            for d in sorted(graph[m]):
                visit(d, path + [m])
            done.add(m)

    for m in sorted(mods):
        visit(m, [])
    assert "torchrec_fusion.data.dataset" in graph["torchrec_fusion.data.types"]  # the scan sees imports


def test_each_data_module_imports_first() -> None:
    """Each data module imported with no other data module loaded, in a random order."""
    mods = _data_modules()
    random.shuffle(mods)
    script = ("import importlib, sys\n"
              f"for m in {mods!r}:\n"
              "    for k in [k for k in sys.modules if k.startswith('torchrec_fusion.data')]:\n"
              "        del sys.modules[k]\n"
              "    importlib.import_module(m)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, f"order {mods}:\n{run.stderr[-3000:]}"
