"""Post-hoc fusion of score files: joins, per-user rank aggregation, errors, and the CLI end to end."""

import json
from pathlib import Path

import pytest
import torch

from torchrec_fusion.cli import main
from torchrec_fusion.fusion.files import fuse_files, read_scores, write_scores
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
    keys, fused, report, key_columns = fuse_files([a, b], "rrf", "like", k=1)
    assert key_columns == ("user", "item")
    assert keys[:, :2].tolist() == [[1, 10], [1, 11], [1, 12], [2, 10], [2, 11]]
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
    with pytest.raises(ValueError, match="unknown score"):
        fuse_files([a, a], "rrf", "like", select=["a:like", "c:like"])
    with pytest.raises(ValueError, match="unknown fusion 'best'"):
        fuse_files([a, _write(tmp_path / "c" / "scores.csv", "1,10,1,0.2\n1,11,0,0.5\n")], "best", "like")


def test_weights_and_options_follow_the_registry(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n")
    b = _write(tmp_path / "b" / "scores.csv", "1,10,1,0.1\n1,11,0,0.5\n1,12,0,0.9\n")
    # rrf, k = 0, weights 3, 1: item 10 ranks 1 and 3 -> 3 + 1/3; 11 ranks 2, 2 -> 1.5 + .5; 12 ranks 3, 1 -> 1 + 1
    _, fused, _, _ = fuse_files([a, b], "rrf", "like", weights=[3.0, 1.0], options={"k": 0})
    assert fused.tolist() == pytest.approx([10 / 3, 2.0, 2.0])
    # weighted: per-user z-scores, a -> 1.224745, 0, -1.224745 and b the reverse; weights 2, 1
    _, fused, _, _ = fuse_files([a, b], "weighted", "like", weights=[2.0, 1.0])
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


# ------------------------------------------------------------------------------------- issue 13, item 6

def test_runs_returning_different_items_are_fused_as_not_returned(tmp_path: Path) -> None:
    # user 1: run a returns 10 > 11 > 12, run b returns 12 > 13; user 2: only run a
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n2,10,1,0.3\n")
    b = _write(tmp_path / "b" / "scores.csv", "1,13,0,1.0\n1,12,0,3.0\n")
    keys, fused, report, _ = fuse_files([a, b], "rrf", "like", k=1)
    assert keys[:, :2].tolist() == [[1, 10], [1, 11], [1, 12], [1, 13], [2, 10]]
    # k = 60: 10 rank 1 in a; 11 rank 2 in a; 12 rank 3 in a and 1 in b; 13 rank 2 in b; user 2: 10 rank 1
    assert fused.tolist() == pytest.approx([1 / 61, 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 61])
    # comb*: per-user min-max over the returned items (a: 1, .5, 0; b: 12 -> 1, 13 -> 0), missing adds 0
    assert fuse_files([a, b], "combsum", "like").fused.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0, 0.0])
    assert fuse_files([a, b], "combmnz", "like").fused.tolist() == pytest.approx([1.0, 0.5, 2.0, 0.0, 0.0])
    assert fuse_files([a, b], "combmin", "like").fused.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    # every score is evaluated on the same rows: b did not return either positive (user 1's 10, user 2's 10)
    b_report = {m: report["b:like"][m] for m in ("hr@1", "ndcg@1", "recall@1", "mrr", "users", "rows")}
    assert b_report == {"hr@1": 0.0, "ndcg@1": 0.0, "recall@1": 0.0, "mrr": 0.0, "users": 2, "rows": 2}
    # fused: user 1 puts 12 (two runs) above 10 (one), user 2 ranks its positive first
    assert report["a:like"]["hr@1"] == 1.0 and report["fused"]["hr@1"] == 0.5 and report["fused"]["rows"] == 5
    # AUC: rows b lacks tie lowest; both positives are among them, tied with negative (1, 11) and below
    # (1, 12) and (1, 13): 0.5 of 3 pairs each, 1 of 6 in all
    assert report["b:like"]["auc"] == pytest.approx(1 / 6)


def test_ids_are_read_exactly_as_int64(tmp_path: Path) -> None:
    big = 2**53  # 2**53 + 1 is not a float64: read through float it became 2**53
    a = _write(tmp_path / "a" / "scores.csv", f"{big + 1},{big},1,0.9\n{big + 1},{big + 1},0,0.5\n"
               f"{2**63 - 1},{-(2**63)},0,0.2\n")
    f = read_scores(a)
    assert f.keys.dtype == torch.int64 and f.keys[:, :2].tolist() == [[big + 1, big], [big + 1, big + 1],
                                                                      [2**63 - 1, -(2**63)]]
    b = _write(tmp_path / "b" / "scores.csv", f"{big + 1},{big + 1},0,0.7\n{big + 1},{big},1,0.1\n")
    keys, fused, _, _ = fuse_files([a, b], "rrf", "like", options={"k": 0})
    assert keys[:2, :2].tolist() == [[big + 1, big], [big + 1, big + 1]]
    assert fused.tolist()[:2] == pytest.approx([1 + 1 / 2, 1 / 2 + 1])
    out = tmp_path / "fused.csv"
    write_scores(str(out), {"user": keys[:, 0], "item": keys[:, 1]}, {}, {"fused": fused})
    back = read_scores(str(out))     # write_scores numbers the rows
    assert back.key_columns == ("user", "item", "row") and back.keys[:, :2].tolist() == keys[:, :2].tolist()
    for bad in ("1.5", "1e3", "abc", "", str(2**63), "0x10"):
        with pytest.raises(ValueError, match=rf"scores.csv:3: column 'item' value '{bad}' is not an integer id"):
            read_scores(_write(tmp_path / "x" / "scores.csv", f"1,10,1,0.9\n1,{bad},0,0.5\n"))


def test_repeated_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"scores.csv:4: \(user, item\) \(1, 10\) repeats line 2; .*\(a row column"):
        read_scores(_write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,10,0,0.2\n"))
    with pytest.raises(ValueError, match=r"r.csv:3: row 0 repeats line 2"):
        read_scores(_write_text(tmp_path / "r.csv", "row,label:like,score:like\n0,1,0.2\n0,0,0.3\n"))


def _write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_malformed_files_are_errors_naming_them(tmp_path: Path) -> None:
    cases = {
        "user,item,label:like,score:like\n": "a header but no rows",
        "": "empty score file",
        "user,label:like,score:like\n1,1,0.5\n": "has a 'user' column but no 'item' column",
        "item,label:like,score:like\n1,1,0.5\n": "has a 'item' column but no 'user' column",
        "label:like,score:like\n1,0.5\n": "needs key columns user and item",
        "user,item,label:like\n1,2,1\n": "no score:<name> column",
        "user,item,score:a,score:a\n1,2,.1,.2\n": r"column\(s\) \['score:a'\] appear more than once",
        "user,item,score:\n1,2,.1\n": "without a name",
        "user,item,label:like,score:like\n1,2,yes,0.5\n": "scores.csv:2: column 'label:like' value 'yes' is not a",
        "user,item,score:like\n1,2,inf\n": "scores.csv:2: score 'like' is inf; scores must be finite",
        "user,item,score:like\n1,2\n": "scores.csv:2: expected 3 fields, got 2",
    }
    for i, (text, message) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message):
            read_scores(_write_text(tmp_path / f"{i}scores.csv", text))
    # blank lines and extra columns are skipped
    f = read_scores(_write_text(tmp_path / "ok.csv", "user,item,note,score:s\n1,2,hello,.5\n\n1,3,x,.25\n"))
    assert f.keys.tolist() == [[1, 2, 0], [1, 3, 0]] and f.scores["s"].tolist() == [.5, .25]


def test_files_keyed_by_row_are_one_list_and_keys_must_agree(tmp_path: Path) -> None:
    a = _write_text(tmp_path / "a.csv", "row,label:ctr,score:ctr\n0,1,0.9\n1,0,0.2\n2,1,0.4\n")
    b = _write_text(tmp_path / "b.csv", "row,label:ctr,score:ctr\n2,1,0.8\n0,1,0.7\n1,0,0.1\n")
    keys, fused, report, key_columns = fuse_files([a, b], "borda", "ctr")
    # one list of three rows: a ranks 0 > 2 > 1, b ranks 2 > 0 > 1: Borda 3 + 2, 1 + 1, 2 + 3
    assert key_columns == ("row",) and keys[:, 0].tolist() == [0, 0, 0] and fused.tolist() == [5.0, 2.0, 5.0]
    assert report["fused"]["users"] == 1 and report["fused"]["auc"] == 1.0
    ui = _write(tmp_path / "c" / "scores.csv", "1,10,1,0.9\n")
    with pytest.raises(ValueError, match=r"is keyed by \('user', 'item'\)"):
        fuse_files([a, ui], "rrf", "ctr")


def test_labels_must_agree_and_be_binary(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n")
    b = _write(tmp_path / "b" / "scores.csv", "1,10,0,0.9\n1,11,,0.5\n")
    with pytest.raises(ValueError, match=r"label:like of user 1, item 10 is 0.0 in .*b/scores.csv but 1.0 in .*a/"):
        fuse_files([a, b], "rrf", "like")
    # an absent label (empty) in one file is filled from another
    c = _write(tmp_path / "c" / "scores.csv", "1,10,,0.1\n1,11,0,0.5\n")
    assert fuse_files([c, a], "rrf", "like").report["fused"]["users"] == 1
    r = _write(tmp_path / "r" / "scores.csv", "1,12,4,0.1\n1,11,0,0.5\n")
    with pytest.raises(ValueError, match=r"label:like must be 0 or 1 \(or empty\), got 4.0 at user 1, item 12"):
        fuse_files([r, a], "rrf", "like")


def test_weights_norm_and_k_through_fuse_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "scores.csv", "1,10,1,0.9\n1,11,0,0.5\n1,12,0,0.1\n")
    b = _write(tmp_path / "b" / "scores.csv", "1,10,1,5.0\n1,11,0,1.0\n1,12,0,9.0\n")
    # raw scores: combsum = .9 + 5, .5 + 1, .1 + 9; min-max would give 1 + .5, .5 + 0, 0 + 1
    assert fuse_files([a, b], "combsum", "like", norm="none").fused.tolist() == pytest.approx([5.9, 1.5, 9.1])
    assert fuse_files([a, b], "combsum", "like").fused.tolist() == pytest.approx([1.5, 0.5, 1.0])
    for weights, message in (([float("nan"), 1.0], "weights must be finite"), ([1.0], "1 weights for 2 scores"),
                             ([-1.0, 1.0], "weights must be finite and >= 0")):
        with pytest.raises(ValueError, match=message):
            fuse_files([a, b], "rrf", "like", weights=weights)
    with pytest.raises(ValueError, match="norm 'logit' takes probabilities"):
        fuse_files([a, b], "combsum", "like", norm="logit")
    with pytest.raises(ValueError, match="cutoff k must be >= 1"):
        fuse_files([a, b], "rrf", "like", k=0)


def test_a_row_column_keeps_repeated_impressions_apart(tmp_path: Path) -> None:
    head = "user,item,row,label:like,score:like\n"
    a = _write_text(tmp_path / "a.csv", head + "1,10,0,1,0.9\n1,10,1,0,0.2\n1,11,2,0,0.5\n")
    b = _write_text(tmp_path / "b.csv", head + "1,10,1,0,0.8\n1,10,0,1,0.7\n1,11,2,0,0.1\n")
    keys, fused, _, key_columns = fuse_files([a, b], "borda", "like")
    # rows joined by number, not by file order: row 0 ranks 1st in a and 2nd in b, row 1 3rd and 1st
    assert key_columns == ("user", "item", "row") and keys.tolist() == [[1, 10, 0], [1, 10, 1], [1, 11, 2]]
    assert fused.tolist() == [3.0 + 2.0, 1.0 + 3.0, 2.0 + 1.0]
    other = _write_text(tmp_path / "c.csv", head + "1,12,0,1,0.9\n")
    with pytest.raises(ValueError, match=r"row 0 is \(user, item\) \(1, 10\) in .*a.csv but \(1, 12\) in .*c.csv"):
        fuse_files([a, other], "rrf", "like")
    with pytest.raises(ValueError, match=r"c.csv:3: row 0 repeats line 2"):
        read_scores(_write_text(tmp_path / "c.csv", head + "1,12,0,1,0.9\n1,13,0,1,0.9\n"))
