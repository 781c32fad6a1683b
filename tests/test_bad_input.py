"""Bad input gives a clear error naming the problem, through the API and the CLI."""

from pathlib import Path

import pytest
import torch
from test_data import DATA_100K, _ml100k

from torchrec_fusion.cli import main
from torchrec_fusion.data.dataset import MultiTaskData, SparseColumn
from torchrec_fusion.tasks import TaskSpec


def _data(**kw) -> MultiTaskData:
    args = {
        "dense": torch.zeros(3, 1),
        "sparse": {"user": SparseColumn(torch.tensor([0, 1, 2])),
                "tags": SparseColumn(torch.tensor([4, 1]), torch.tensor([0, 2, 2, 2]))},
        "num_embeddings": {"user": 3, "tags": 5},
        "tasks": [TaskSpec("like"), TaskSpec("rating", "regression")],
        "labels": torch.tensor([[1.0, 4.0], [0.0, 2.0], [1.0, 5.0]]),
        "masks": torch.ones(3, 2, dtype=torch.bool),
        "source": "mydata",
    }
    args.update(kw)
    return MultiTaskData(**args)


def test_id_out_of_range_names_feature() -> None:
    with pytest.raises(ValueError, match=r"mydata: feature 'tags' has id 5 outside \[0, num_embeddings=5\)"):
        _data(sparse={"user": SparseColumn(torch.tensor([0, 1, 2])),
                      "tags": SparseColumn(torch.tensor([5, 1]), torch.tensor([0, 2, 2, 2]))})
    with pytest.raises(ValueError, match="feature 'user' has id -1"):
        _data(sparse={"user": SparseColumn(torch.tensor([0, -1, 2])),
                      "tags": SparseColumn(torch.tensor([4, 1]), torch.tensor([0, 2, 2, 2]))})


def test_nan_label_names_task_and_row() -> None:
    with pytest.raises(ValueError, match="task 'rating' has a NaN/inf label in row 1"):
        _data(labels=torch.tensor([[1.0, 4.0], [0.0, float("nan")], [1.0, 5.0]]))
    # a NaN label whose mask is off is simply absent
    d = _data(labels=torch.tensor([[1.0, 4.0], [0.0, float("nan")], [1.0, 5.0]]),
              masks=torch.tensor([[True, True], [True, False], [True, True]]))
    assert d.labels[1, 1] == 0
    with pytest.raises(ValueError, match="binary task 'like' has labels other than 0/1"):
        _data(labels=torch.tensor([[2.0, 4.0], [0.0, 2.0], [1.0, 5.0]]))


def test_batches_pad_with_masked_rows_and_empty_bags() -> None:
    d = _data()
    batches = list(d.batches(2, rank=1, world_size=2, drop_last=False))
    assert len(batches) == 1
    b = batches[0]  # rank 1 of global batch 0 holds row 2 and one padding row
    assert b.masks.tolist() == [[True, True], [False, False]]
    assert b.sparse_features["tags"].lengths().tolist() == [0, 0]
    assert b.sparse_features["user"].values().tolist() == [2]


def _cli(capsys, *args: str) -> "tuple[int, str]":
    code = main(["train", "--world-size", "1", "--epochs", "1", "--no-progress", "--quiet", *args])
    return code, capsys.readouterr().err


def test_cli_malformed_line_names_file_and_line(tmp_path: Path, capsys) -> None:
    root = _ml100k(tmp_path, data=DATA_100K + "2\t1\tfive\t881250953\n")
    code, err = _cli(capsys, "--dataset", "movielens", "--data-dir", str(root), "--split", "random")
    assert code == 2 and "u.data:5" in err, err


def test_cli_missing_file_is_named(tmp_path: Path, capsys) -> None:
    root = _ml100k(tmp_path)
    (root / "u.item").unlink()
    code, err = _cli(capsys, "--dataset", "movielens", "--data-dir", str(root))
    assert code == 2 and "u.item" in err, err
    code, err = _cli(capsys, "--dataset", "movielens")
    assert code == 2 and "--data-dir" in err


def test_cli_unknown_task_and_architecture(capsys) -> None:
    code, err = _cli(capsys, "--synthetic-rows", "2000", "--tasks", "ctr", "clicks")
    assert code == 2 and "unknown task name(s) ['clicks']" in err, err
    with pytest.raises(SystemExit) as e:
        _cli(capsys, "--arch", "transformer")
    assert e.value.code == 2 and "invalid choice: 'transformer'" in capsys.readouterr().err


def test_fused_adam_on_cpu_is_a_clear_error(capsys) -> None:
    from torchrec_fusion.cli import main

    assert main(["train", "--synthetic-rows", "3000", "--epochs", "1", "--embedding-optimizer", "adam",
                 "--no-progress", "--quiet", "--no-report"]) == 2
    assert "no fused Adam" in capsys.readouterr().err


def _table_config(tmp_path: Path, train: Path, **extra: object) -> Path:
    import yaml

    config = {"dataset": "table", "epochs": 1, "report": False, "batch_size": 4, **extra,
              "table": {"train": str(train), "sparse": {"user": {}, "item": {}}, "dense": ["hour"],
                        "tasks": [{"name": "click"}, {"name": "rating", "kind": "regression"}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CSV_ROWS = "user,item,hour,click,rating\n" + "".join(f"{i % 5},{i % 7},{i % 24},{i % 2},{1 + i % 5}\n"
                                                     for i in range(40))


def test_csv_short_row_names_file_and_row(tmp_path: Path, capsys) -> None:
    from torchrec_fusion.data.tabular import load_tabular

    lines = CSV_ROWS.splitlines(keepends=True)
    bad = tmp_path / "short.csv"
    bad.write_text("".join(lines[:8] + ["3,4,5\n"] + lines[8:]))  # data row 7, line 9
    with pytest.raises(ValueError, match=r"short.csv row 7 \(line 9\): a row of the wrong number of cells"):
        load_tabular({"train": str(bad), "sparse": ["user"], "tasks": [{"name": "click"}]})
    wide = tmp_path / "wide.csv"
    wide.write_text(CSV_ROWS.replace("\n3,3,3,1,4\n", "\n3,3,3,1,4,9\n"))
    with pytest.raises(ValueError, match=r"wide.csv row 3 \(line 5\): a row of the wrong number of cells"):
        load_tabular({"train": str(wide), "sparse": ["user"], "tasks": [{"name": "click"}]})
    typo = tmp_path / "typo.csv"
    typo.write_text(CSV_ROWS.replace("\n4,4,4,0,5\n", "\n4,four,4,0,5\n"))
    with pytest.raises(ValueError, match=r"typo.csv: sparse column 'item' holds a value of the wrong type in row 4 "
                                         r"\(line 6\).*'four'"):
        load_tabular({"train": str(typo), "sparse": ["user", "item"], "tasks": [{"name": "click"}]})
    code = main(["train", "--config", str(_table_config(tmp_path, bad)), "--output-dir", str(tmp_path / "o"),
                 "--no-progress", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "short.csv row 7 (line 9)" in err, err


def test_nan_label_in_a_table_is_an_error_and_null_is_missing(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from torchrec_fusion.data.tabular import load_tabular

    spec = {"sparse": ["user"], "tasks": [{"name": "click"}, {"name": "rating", "kind": "regression"}]}
    for cell in ("nan", "NaN", "inf"):
        path = tmp_path / f"{cell}.csv"
        path.write_text(CSV_ROWS.replace("\n2,2,2,0,3\n", f"\n2,2,2,0,{cell}\n"))
        with pytest.raises(ValueError, match=rf"label column 'rating' \(task 'rating'\) in .*{cell}.csv row 2 is "):
            load_tabular({"train": str(path), **spec})
    empty = tmp_path / "empty.csv"  # an empty cell (or NA, null) is a missing label: the row is masked out
    empty.write_text(CSV_ROWS.replace("\n2,2,2,0,3\n", "\n2,2,2,0,\n").replace("\n3,3,3,1,4\n", "\n3,3,3,1,NA\n"))
    d = load_tabular({"train": str(empty), "test": str(empty), **spec})
    assert d.test.masks[:, 1].tolist() == [i not in (2, 3) for i in range(40)]
    parquet = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"user": [0, 1, 2, 3], "click": [1.0, None, float("nan"), 0.0], "rating": [1.0] * 4}),
                   parquet)
    with pytest.raises(ValueError, match=r"label column 'click' \(task 'click'\) in .*nan.parquet row 2 is nan"):
        load_tabular({"train": str(parquet), **spec})
    code = main(["train", "--config", str(_table_config(tmp_path, tmp_path / "nan.csv")),
                 "--output-dir", str(tmp_path / "o"), "--no-progress", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nan.csv row 2 is nan" in err and not (tmp_path / "o").exists(), err


def test_truncated_parquet_names_the_file(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from torchrec_fusion.data.tabular import load_tabular

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user": list(range(40)), "click": [i % 2 for i in range(40)]}), good, row_group_size=8)
    spec = {"sparse": ["user"], "tasks": [{"name": "click"}]}
    data = good.read_bytes()
    for name, cut in (("head.parquet", data[: len(data) // 2]), ("tail.parquet", data[:-3]), ("zero.parquet", b"")):
        (tmp_path / name).write_bytes(cut)
        for stream in (False, True):
            with pytest.raises(ValueError, match=rf"{name}: not a readable Parquet file \("):
                load_tabular({"train": str(tmp_path / name), "stream": stream, **spec})
    code = main(["train", "--config", str(_table_config(tmp_path, tmp_path / "head.parquet")),
                 "--output-dir", str(tmp_path / "o"), "--no-progress", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "head.parquet: not a readable Parquet file" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flag, key, what", [("--batch-size", "batch_size", "a size"),
                                             ("--embedding-dim", "embedding_dim", "a size"),
                                             ("--eval-batch-size", "eval_batch_size", "a size"),
                                             ("--epochs", "epochs", "a count")])
def test_zero_sizes_are_refused_by_the_config_check(flag: str, key: str, what: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"  # refused by TrainConfig.check: before the run folder, the data or any rank
    assert main(["train", "--synthetic-rows", "2000", flag, "0", "--output-dir", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"torchrec-fusion: error: command line: {key} must be >= 1 ({what}), got 0\n"
    assert not out.exists()


def test_mistyped_values_in_config_files_are_one_line(tmp_path: Path, capsys) -> None:
    for name, text, message in (("a.yaml", 'epochs: "two"\n', "a.yaml: epochs: expected an integer, got 'two'"),
                                ("b.yaml", "batch_size: 32.7\n", "b.yaml: batch_size: expected an integer, got 32.7"),
                                ("c.toml", 'epochs = "two"\n', "c.toml: epochs: expected an integer, got 'two'"),
                                ("d.toml", "batch_size = 0\n", "d.toml: batch_size must be >= 1"),
                                ("e.yaml", "embedding_dim: 0\n", "e.yaml: embedding_dim must be >= 1")):
        (tmp_path / name).write_text(text)
        assert main(["train", "--config", str(tmp_path / name), "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("torchrec-fusion: error: ") and message in err and err.count("\n") == 1, err
