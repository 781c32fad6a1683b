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
