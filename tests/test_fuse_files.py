"""Post-hoc fusion of score files: joins, per-user rank aggregation, errors, and the CLI end to end."""

import json
from pathlib import Path

import pytest
import torch

from torchrec_fusion.cli import main
from torchrec_fusion.fusion.files import fuse_files, read_scores
from torchrec_fusion.fusion.rank_aggregation import rrf

HEADER = "user,item,label:like,score:like\n"


def _write(path: Path, rows: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + rows)
    return str(path)


def test_rrf_within_each_user_and_join_on_keys(tmp_path: Path) -> None:
    # run a ranks user 1's items 10 > 11 > 12; run b ranks 12 > 10 > 11 and lists its rows in another order
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n2,10,1,0.3\n2,11,0,0.2\n")
    b = _write(tmp_path / "b" / "scores.csv", "2,11,0,0.7\n1,12,0,3.0\n1,10,1,2.0\n1,11,0,1.0\n2,10,1,0.1\n")
    keys, fused, report = fuse_files([a, b], "rrf", "like", k=1)
    assert keys.tolist() == [[1, 10], [1, 11], [1, 12], [2, 10], [2, 11]]
    # by hand, k=60: user 1: item 10 ranks 1 and 2, item 11 ranks 2 and 3, item 12 ranks 3 and 1
    expect = rrf([torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[2.0, 1.0, 3.0]])])[0]
    torch.testing.assert_close(fused[:3], expect.double())
    torch.testing.assert_close(fused[:3], torch.tensor([1 / 61 + 1 / 62, 1 / 62 + 1 / 63, 1 / 63 + 1 / 61],
                                                       dtype=torch.float64))
    assert report["fused"]["hr@1"] == 1.0  # user 1: item 10 first; user 2: 10 and 11 tie on 1/61 + 1/62
    assert set(report) == {"a:like", "b:like", "fused"}


def test_errors_name_the_problem(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n")
    with pytest.raises(ValueError, match=r"scores.csv:3: score 'like' is empty"):
        read_scores(_write(tmp_path / "n" / "scores.csv", "1,10,1,0.9\n1,11,0,\n"))
    with pytest.raises(ValueError, match="cover different"):
        fuse_files([a, _write(tmp_path / "b" / "scores.csv", "1,10,1,0.9\n1,12,0,0.5\n")], "rrf", "like")
    with pytest.raises(ValueError, match="unknown score"):
        fuse_files([a, a], "rrf", "like", select=["a:like", "c:like"])
    with pytest.raises(ValueError, match="unknown fusion 'best'"):
        fuse_files([a, _write(tmp_path / "c" / "scores.csv", "1,10,1,0.2\n1,11,0,0.5\n")], "best", "like")


def test_weights_and_options_follow_the_registry(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n")
    b = _write(tmp_path / "b" / "scores.csv", "1,10,1,0.1\n1,11,0,0.5\n1,12,0,0.9\n")
    # rrf, k = 0, weights 3, 1: item 10 ranks 1 and 3 -> 3 + 1/3; 11 ranks 2, 2 -> 1.5 + .5; 12 ranks 3, 1 -> 1 + 1
    _, fused, _ = fuse_files([a, b], "rrf", "like", weights=[3.0, 1.0], options={"k": 0})
    assert fused.tolist() == pytest.approx([10 / 3, 2.0, 2.0])
    # weighted: per-user z-scores, a -> 1.224745, 0, -1.224745 and b the reverse; weights 2, 1
    _, fused, _ = fuse_files([a, b], "weighted", "like", weights=[2.0, 1.0])
    assert fused.tolist() == pytest.approx([1.224745, 0.0, -1.224745])
    with pytest.raises(ValueError, match=r"fusion 'combmax' takes no weights; these do: \['borda'"):
        fuse_files([a, b], "combmax", "like", weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"fusion 'borda' options: unknown option\(s\) \['k'\]"):
        fuse_files([a, b], "borda", "like", options={"k": 1})


def test_cli_two_runs_then_fuse(tmp_path: Path, capsys) -> None:
    for arch in ("mmoe", "shared_bottom"):
        assert main(["train", "--synthetic-rows", "6000", "--epochs", "1", "--arch", arch, "--world-size", "1",
                     "--output-dir", str(tmp_path / arch), "--save-scores", "--no-progress", "--quiet"]) == 0
    out = tmp_path / "fused"
    code = main(["fuse", str(tmp_path / "mmoe" / "scores.csv"), str(tmp_path / "shared_bottom" / "scores.csv"),
                 "--method", "borda", "--label", "ctr", "--scores", "mmoe:ctr", "shared_bottom:ctr",
                 "--output-dir", str(out)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["scores"]) == {"mmoe:ctr", "shared_bottom:ctr"} and 0 <= m["fused"]["ndcg@10"] <= 1
    assert len((out / "fused.csv").read_text().splitlines()) == 1201
