"""``torchrec-fusion fuse`` end to end on small hand-written score files: bad input ends in exit 2 with a
message naming the file, column or row (issue 13, item 6); RRF k, raw scores and missing items work."""

import json
import re
from pathlib import Path
from typing import List

import pytest

from torchrec_fusion.cli import main

HEADER = "user,item,label:like,score:like\n"


def _runs(tmp_path: Path, b_rows: str = "1,10,1,0.1\n1,11,0,0.5\n1,12,0,0.9\n") -> List[str]:
    paths = []
    for name, rows in (("a", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n"), ("b", b_rows)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "scores.csv").write_text(HEADER + rows)
        paths.append(str(tmp_path / name / "scores.csv"))
    return paths


def _fail(argv: List[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["fuse", *argv]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--method", "combmax", "--weights", "1", "2"], "fusion 'combmax' takes no weights"),
    (["--method", "combmed", "--weights", "1", "2"], "fusion 'combmed' takes no weights"),
    (["--method", "rrf", "--weights", "nan", "1"], r"weights must be finite and >= 0, not all 0; got \[nan, 1.0\]"),
    (["--method", "combsum", "--weights", "1"], r"1 weights for 2 scores"),
    (["--method", "combsum", "--rrf-k", "5"], "--rrf-k is the rrf constant; --method combsum takes none"),
    (["--method", "rrf", "--rrf-k", "-1"], "RRF k must be finite and >= 0"),
    (["--method", "borda", "--norm", "zscore"], "fusion 'borda' fuses ranks"),
    (["--method", "rrf", "--label", "click"], r"no label:click column"),
])
def test_bad_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: List[str],
                            message: str) -> None:
    # argparse keeps the last --label: the one in ``extra`` where it has one
    argv = [*_runs(tmp_path), "--label", "like", *extra, "--output-dir", str(tmp_path / "out")]
    assert re.search(message, _fail(argv, capsys))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("b_rows, message", [
    ("", "b/scores.csv: a header but no rows"),
    ("1,10,1,0.1\n1,10,0,0.5\n", r"b/scores.csv:3: \(user, item\) \(1, 10\) repeats line 2"),
    ("1,1.0e1,1,0.1\n", "b/scores.csv:2: column 'item' value '1.0e1' is not an integer id"),
    ("1,10,1,nan\n", "b/scores.csv:2: score 'like' is nan; scores must be finite"),
])
def test_bad_files_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], b_rows: str,
                                          message: str) -> None:
    err = _fail([*_runs(tmp_path, b_rows), "--method", "rrf", "--label", "like", "--output-dir",
                 str(tmp_path / "out")], capsys)
    assert re.search(message, err)


def test_no_item_column_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = _runs(tmp_path)
    (tmp_path / "u.csv").write_text("user,label:like,score:like\n1,1,0.5\n2,0,0.7\n")
    err = _fail([a, str(tmp_path / "u.csv"), "--method", "rrf", "--label", "like", "--output-dir",
                 str(tmp_path / "out")], capsys)
    assert "u.csv: has a 'user' column but no 'item' column" in err


def test_rrf_k_raw_scores_and_missing_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # b returns only items 11 and 13 of user 1: the others are "not returned" by it
    a, b = _runs(tmp_path, "1,11,0,2.0\n1,13,0,1.0\n")
    out = tmp_path / "rrf"
    assert main(["fuse", a, b, "--method", "rrf", "--rrf-k", "0", "--weights", "1", "2", "--label", "like",
                 "--output-dir", str(out)]) == 0
    # k = 0: a ranks 10, 11, 12 at 1, 2, 3; b ranks 11, 13 at 1, 2 (weight 2)
    rows = (out / "fused.csv").read_text().splitlines()
    assert rows[0] == "user,item,score:fused"
    fused = {int(r.split(",")[1]): float(r.split(",")[2]) for r in rows[1:]}
    assert fused == pytest.approx({10: 1.0, 11: 0.5 + 2.0, 12: 1 / 3, 13: 1.0})
    m = json.loads((out / "metrics.json").read_text())
    assert m["options"] == {"k": 0.0} and m["rows"] == 4 and m["lists"] == 1
    assert m["scores"]["b:like"]["rows"] == 2 and m["scores"]["b:like"]["hr@10"] == 0.0  # its positive: absent
    # raw scores: combsum of .9 / .5 / .1 and 2 / 1 where b lists the item
    raw = tmp_path / "raw"
    assert main(["fuse", a, b, "--method", "combsum", "--norm", "none", "--label", "like", "--output-dir",
                 str(raw)]) == 0
    fused = {int(r.split(",")[1]): float(r.split(",")[2]) for r in (raw / "fused.csv").read_text().splitlines()[1:]}
    assert fused == pytest.approx({10: 0.9, 11: 2.5, 12: 0.1, 13: 1.0})
    # one run per output folder: a second fuse into it is refused, the first one's files are kept
    before = (raw / "fused.csv").read_text()
    assert "already holds ['fused.csv', 'metrics.json']" in _fail(
        [a, b, "--method", "rrf", "--label", "like", "--output-dir", str(raw)], capsys)
    assert (raw / "fused.csv").read_text() == before and not list(raw.glob("*.tmp"))


def test_row_keyed_files_write_a_row_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, scores in (("a", (0.9, 0.2, 0.4)), ("b", (0.7, 0.1, 0.8))):
        (tmp_path / f"{name}.csv").write_text("row,label:ctr,score:ctr\n" + "".join(
            f"{i},{int(i != 1)},{s}\n" for i, s in enumerate(scores)))
    out = tmp_path / "out"
    assert main(["fuse", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--method", "borda", "--label", "ctr",
                 "--output-dir", str(out)]) == 0
    assert "ranked as one list" in capsys.readouterr().out
    assert (out / "fused.csv").read_text().splitlines() == ["row,score:fused", "0,5.0", "1,2.0", "2,5.0"]
