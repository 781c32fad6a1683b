import torch

from torchrec_fusion.evaluation.gates import GateStats


def test_gate_stats_flag_collapse_and_skip_padding() -> None:
    s = GateStats()
    w = torch.tensor([[0.97, 0.01, 0.02], [0.95, 0.03, 0.02], [0.0, 0.0, 1.0]])
    s.update({"a": w, "b": torch.full((3, 3), 1 / 3)}, keep=torch.tensor([True, True, False]))
    r = s.result()
    assert r["a"]["collapsed"] and r["a"]["dominant_expert"] == 0
    assert abs(r["a"]["dominant_share"] - 0.96) < 1e-6  # the padding row (all on expert 2) is not counted
    assert not r["b"]["collapsed"] and abs(r["b"]["normalised_entropy"] - 1) < 1e-6
    # sums survive the flat round trip used for the cross-rank all-reduce
    t = GateStats()
    t.load_tensors({k: v * 2 for k, v in s.tensors().items()})
    assert t.result()["a"]["mean_weight"] == r["a"]["mean_weight"]
