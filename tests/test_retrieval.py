"""The retrieval head's building blocks: towers over an EBC, the log-Q sampled softmax, exact top-N."""

import math
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_fusion.evaluation.retrieval import ItemIndex, faiss_module, top_k
from torchrec_fusion.losses.retrieval import full_softmax_loss, mixture_log_q, sampled_softmax_loss
from torchrec_fusion.modules.retrieval import RetrievalArch

USER = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
CANDIDATES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # rows 0, 1 in-batch; row 2 sampled


def test_log_q_correction_matches_a_hand_computed_case() -> None:
    # dots: row 0 [1, 0, 1], row 1 [0, 1, 1]; q = [0.5, 0.25, 0.25], so exp(logit) = exp(dot) / q:
    # row 0: [2e, 4, 4e], target 0: loss = ln((6e + 4) / 2e) = ln(3 + 2/e)   = 1.3179...
    # row 1: [2, 4e, 4e], target 1: loss = ln((2 + 8e) / 4e) = ln(2 + 1/2e) = 0.7811...
    q = torch.tensor([0.5, 0.25, 0.25])
    loss = sampled_softmax_loss(USER, CANDIDATES, torch.tensor([10, 11, 12]), torch.tensor([10, 11]), q.log())
    expected = (math.log(3 + 2 / math.e) + math.log(2 + 1 / (2 * math.e))) / 2
    assert expected == pytest.approx(1.049541, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # uncorrected: row 0 [e, 1, e] -> ln(2 + 1/e); row 1 [1, e, e] -> ln(2 + 1/e)
    plain = sampled_softmax_loss(USER, CANDIDATES, torch.tensor([10, 11, 12]), torch.tensor([10, 11]), torch.zeros(3))
    assert plain.item() == pytest.approx(math.log(2 + 1 / math.e), abs=1e-6)


def test_mixture_log_q_is_the_expected_share_of_candidate_slots() -> None:
    # B = 2 in-batch slots, S = 4 sampled: q(j) = (2 p_data + 4 p_sampler) / 6
    p_data, p_sampler = torch.tensor([0.5, 0.5, 0.0, 0.0]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    q = mixture_log_q(torch.tensor([0, 3, 3]), p_data, p_sampler, batch_size=2, num_sampled=4).exp()
    assert torch.allclose(q, torch.tensor([2 / 6, 1 / 6, 1 / 6]))
    only_batch = mixture_log_q(torch.tensor([1, 2]), p_data, None, batch_size=2, num_sampled=0)
    assert only_batch[0].exp().item() == pytest.approx(0.5) and only_batch[1].isfinite()


def test_accidental_hits_and_seen_items_are_not_negatives() -> None:
    # rows 0 and 1 hold the same item 10: each one's column of the other is an accidental hit
    ids, pos = torch.tensor([10, 10, 12]), torch.tensor([10, 10])
    loss = sampled_softmax_loss(USER, CANDIDATES, ids, pos, torch.zeros(3))
    logits = USER @ CANDIDATES.T
    row0 = F.cross_entropy(logits[0, [0, 2]].unsqueeze(0), torch.tensor([0]))
    row1 = F.cross_entropy(logits[1, [1, 2]].unsqueeze(0), torch.tensor([0]))
    assert torch.isclose(loss, (row0 + row1) / 2)
    # seen masks a negative, never the row's own column
    seen = torch.tensor([[True, False, True], [False, True, False]])
    masked = sampled_softmax_loss(USER, CANDIDATES, torch.tensor([10, 11, 12]), torch.tensor([10, 11]),
                                  torch.zeros(3), seen=seen)
    row0 = F.cross_entropy(logits[0, [0, 1]].unsqueeze(0), torch.tensor([0]))
    row1 = F.cross_entropy(logits[1], torch.tensor(1))
    assert torch.isclose(masked, (row0 + row1) / 2)


def test_rows_outside_the_anchor_mask_contribute_nothing() -> None:
    ids, pos = torch.tensor([10, 11, 12]), torch.tensor([10, 11])
    anchors = torch.tensor([True, False])
    user = USER.clone().requires_grad_()
    loss = sampled_softmax_loss(user, CANDIDATES, ids, pos, torch.zeros(3), anchor_mask=anchors)
    torch.autograd.backward(loss)
    assert user.grad is not None and user.grad[1].abs().sum() == 0
    row0 = F.cross_entropy((USER @ CANDIDATES.T)[:1], torch.tensor([0]))
    assert torch.isclose(loss, row0)
    other = sampled_softmax_loss(USER * torch.tensor([[1.0], [5.0]]), CANDIDATES, ids, pos, torch.zeros(3),
                                 anchor_mask=anchors)
    assert torch.isclose(other, loss)


def test_no_anchors_give_zero_loss_and_a_finite_gradient() -> None:
    user, cand = USER.clone().requires_grad_(), CANDIDATES.clone().requires_grad_()
    loss = sampled_softmax_loss(user, cand, torch.tensor([10, 10, 10]), torch.tensor([10, 10]), torch.zeros(3),
                                anchor_mask=torch.tensor([False, False]))
    torch.autograd.backward(loss)
    assert loss.item() == 0
    assert user.grad is not None and cand.grad is not None
    assert user.grad.isfinite().all() and cand.grad.isfinite().all()


def test_full_softmax_masks_the_other_seen_items() -> None:
    items = torch.randn(5, 2)
    seen = torch.tensor([[True, True, False, False, False], [False, False, False, True, False]])
    loss = full_softmax_loss(USER, items, torch.tensor([0, 3]), seen)
    logits = USER @ items.T
    row0 = F.cross_entropy(logits[0, [0, 2, 3, 4]], torch.tensor(0))  # item 1 seen elsewhere: masked
    row1 = F.cross_entropy(logits[1], torch.tensor(3))  # its only seen item is its positive
    assert torch.isclose(loss, (row0 + row1) / 2)


def _ebc(order: List[str]) -> EmbeddingBagCollection:
    torch.manual_seed(0)
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=4, num_embeddings=6, feature_names=[f]) for f in order])


def test_towers_sqrt_pool_by_feature_name_over_an_ebc() -> None:
    ebc = _ebc(["rated", "liked", "item"])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["rated", "liked", "item"],
        values=torch.tensor([0, 1, 2, 5, 1, 3, 4, 4, 0, 2]),
        lengths=torch.tensor([3, 0, 1, 1, 0, 2, 1, 1, 1]))
    arch = RetrievalArch(["rated", "liked"], ["item"], 4, sqrt_pooled=["rated", "liked"])
    user, item = arch(ebc(kjt).to_dict(), arch.bag_lengths(kjt))
    w = {f: ebc.embedding_bags[f"t_{f}"].weight.detach() for f in ("rated", "liked", "item")}
    expected_user = torch.stack([
        w["rated"][[0, 1, 2]].sum(0) / math.sqrt(3) + w["liked"][1],
        torch.zeros(4),  # two empty bags: length clamped to 1, sum 0
        w["rated"][5] + w["liked"][[3, 4]].sum(0) / math.sqrt(2),
    ])
    assert torch.allclose(user, expected_user, atol=1e-6)
    assert torch.allclose(item, w["item"][[4, 0, 2]], atol=1e-6)
    assert torch.allclose(arch.score(user, item), (expected_user * w["item"][[4, 0, 2]]).sum(1), atol=1e-6)
    # another EBC whose pooled columns come in another order, same tables: the same vectors
    other = _ebc(["item", "liked", "rated"])
    other.load_state_dict(ebc.state_dict())
    user2, item2 = arch(other(kjt).to_dict(), arch.bag_lengths(kjt))
    assert torch.equal(user2, user) and torch.equal(item2, item)


def test_item_bias_and_mlp_fold_into_the_dot_product() -> None:
    arch = RetrievalArch(["user"], ["item"], 4, layer_sizes=[8, 3], item_bias_feature="item", num_items=6)
    assert arch.item_bias is not None
    with torch.no_grad():
        arch.item_bias.weight.copy_(torch.arange(6.0).unsqueeze(1))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([0, 1, 5, 2]),
                                              lengths=torch.tensor([1, 1, 1, 1]))
    pooled = {"user": torch.randn(2, 4), "item": torch.randn(2, 4)}
    ids = arch.bias_ids(kjt)
    assert ids is not None and ids.tolist() == [[5, 2], [0, 1]]  # the ids and their rows
    user, item = arch(pooled, arch.bag_lengths(kjt), ids)
    assert user.shape == item.shape == (2, 4) and arch.out_features == 4
    h, v = arch.user_mlp(pooled["user"]), arch.item_mlp(pooled["item"])
    assert torch.allclose(arch.score(user, item), (h * v).sum(1) + torch.tensor([5.0, 2.0]), atol=1e-6)
    with pytest.raises(ValueError, match="needs the ids"):
        arch.item_vectors(pooled, {})
    # a padding row (no item id) gets no bias
    padded = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([0, 1, 5]),
                                                 lengths=torch.tensor([1, 1, 1, 0]))
    _, item_p = arch(pooled, {}, arch.bias_ids(padded))
    assert item_p[1, -1].item() == 0.0 and item_p[0, -1].item() == 5.0
    with pytest.raises(ValueError, match="in neither tower"):
        RetrievalArch(["user"], ["item"], 4, sqrt_pooled=["history"])


def _catalogue() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(50, 8, generator=g), torch.randn(200, 8, generator=g)
    exclude = torch.rand(50, 200, generator=g) < 0.1
    exclude[3, 3:] = True  # user 3 has only 3 allowed items
    return users, items, exclude


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_top_k_equals_exhaustive_scoring_with_exclusions(backend: str) -> None:
    if backend == "faiss" and faiss_module() is None:
        pytest.skip("faiss-cpu is not installed")
    users, items, exclude = _catalogue()
    full = (users @ items.T).masked_fill(exclude, float("-inf"))
    want = torch.topk(full, 10, dim=1)
    for ex in (exclude, lambda a, b: exclude[a:b]):
        scores, ids = top_k(users, items, 10, exclude=ex, backend=backend, users_per_chunk=16)
        ok = torch.ones(50, dtype=torch.bool)
        ok[3] = False
        assert torch.equal(ids[ok], want.indices[ok])
        assert torch.allclose(scores[ok], want.values[ok], atol=1e-5)
        assert ids[3, :3].tolist() == want.indices[3, :3].tolist() and ids[3, 3:].tolist() == [-1] * 7
        assert scores[3, 3:].isneginf().all()
    scores, ids = top_k(users, items, 500, backend=backend)
    assert ids.shape == (50, 200) and torch.equal(ids, torch.topk(users @ items.T, 200, dim=1).indices)
    index = ItemIndex(items, backend)  # built once, searched by many calls: the same answers
    assert (index.faiss is None) == (backend == "torch") and len(index) == 200
    for ex in (exclude, None):
        again = top_k(users, index, 10, exclude=ex, users_per_chunk=16)
        want = top_k(users, items, 10, exclude=ex, backend=backend, users_per_chunk=16)
        assert torch.equal(again[1], want[1]) and torch.equal(again[0], want[0])


def test_top_k_refuses_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        top_k(torch.ones(1, 2), torch.ones(3, 2), 1, backend="annoy")
    with pytest.raises(ValueError, match="backend"):
        ItemIndex(torch.ones(3, 2), backend="annoy")
