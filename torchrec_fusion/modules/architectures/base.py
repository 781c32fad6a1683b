"""The multi-task architecture family: shared input in, one representation per task out."""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_fusion.tasks import TaskKind, TaskSpec


def keep_mask(shape: Sequence[int], p: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """A bool mask, each element True with probability ``1 - p`` (to 1/65536), independently.

    One 64-bit random draw gives four 16-bit uniforms: on CPU this is about 10x faster than
    ``bernoulli_``, which drew one random number per element and was the largest single cost of
    an MMoE training step on CPU.
    """
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    u16 = words.view(torch.int16)[:n].view(*shape)  # uniform in [-32768, 32767]
    return u16 >= int(round(p * 65536)) - 32768


def active_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The 0/1 mask of ReLU + dropout in ``x``'s dtype: 1 where the unit is active (``x > 0``) and
    kept (:func:`keep_mask`). In ``x``'s dtype, so that multiplying by it converts nothing.

    Example::

        x = torch.tensor([[-1.0, 0.0, 2.0, float("nan")]])
        assert torch.equal(active_keep_mask(x, 0.0), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    """
    m = keep_mask(x.shape, p, x.device)
    m &= x > 0
    # bool to float through uint8: 8x faster than bool's own conversion to bfloat16 on CPU
    return m.view(torch.uint8).to(x.dtype)


class _ReluDropout(torch.autograd.Function):
    """``relu(x)`` then inverted dropout, in one autograd node that keeps one 0/1 mask (the units
    both active and kept) in ``x``'s dtype; the ``1 / (1 - p)`` scale is applied as a scalar (in
    bfloat16 a scaled mask would round it: 4/3 to 1.336)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        m = active_keep_mask(x, p)
        ctx.save_for_backward(m)
        ctx.scale = 1.0 / (1.0 - p)
        return (x * m).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        (m,) = ctx.saved_tensors
        return (grad * m).mul_(ctx.scale), None


def small_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch.softmax`` for a short ``dim`` (gates over a few experts): the same values from
    max-shift, ``exp`` and a sum, which on CPU run fwd + bwd in about 60% of ``torch.softmax``'s
    time when ``dim`` has 2-8 elements.

    Example::

        x = torch.randn(64, 3, 4)
        assert torch.allclose(small_softmax(x, 2), torch.softmax(x, 2), atol=1e-6)
    """
    e = (x - x.amax(dim, keepdim=True).detach()).exp()
    return e / e.sum(dim, keepdim=True)


def relu_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.Dropout(p)(relu(x))`` with :func:`keep_mask` masks, fused (see :class:`ReluDropout`)."""
    if not training or p == 0:
        return torch.relu(x)
    return cast(torch.Tensor, _ReluDropout.apply(x, p))  # type: ignore[no-untyped-call]  # untyped in torch


class ReluDropout(nn.Module):
    """``nn.ReLU`` followed by inverted dropout with probability ``p`` (``nn.Dropout``'s semantics,
    masks from :func:`keep_mask`), as one autograd node (:func:`relu_dropout`); ``p = 0`` or eval
    mode is a plain ReLU. The layer :func:`mlp` puts after each Linear when it has dropout.

    Example::

        x = torch.randn(1000, 100, requires_grad=True)
        y = ReluDropout(0.5)(x)
        y.sum().backward()
        kept = y > 0
        assert torch.equal(y[kept], 2 * x[kept]) and torch.equal(x.grad, 2.0 * kept)
        assert abs(float(kept.float().mean()) - 0.25) < 0.01  # half are active, half of those kept
        assert torch.equal(ReluDropout(0.5).eval()(x), torch.relu(x))
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear + ReLU (+ dropout: :class:`ReluDropout` in its place) layers; an empty ``layer_sizes``
    is the identity. The MLP builder of the package (architectures, towers, fusion heads).

    Example::

        net = mlp(8, [16, 4], dropout=0.1)
        assert net(torch.rand(2, 8)).shape == (2, 4) and len(mlp(8, [])) == 0
    """
    layers: List[nn.Module] = []
    for size in layer_sizes:
        layers += [nn.Linear(in_features, size), ReluDropout(dropout) if dropout else nn.ReLU()]
        in_features = size
    return nn.Sequential(*layers)


class StackedExperts(nn.Module):
    """``num_experts`` MLPs of one shape (Linear + ReLU (+ dropout) per layer) over the same input,
    computed together: the first layer of every expert as one matrix product ``[B, in] x [in, E*h1]``,
    the later layers as one batched product over the experts. Each expert's parameters are
    initialised as ``nn.Linear`` would (uniform in +-1/sqrt(fan_in)).

    Example::

        experts = StackedExperts(8, num_experts=3, layer_sizes=[16, 4])
        x = torch.rand(5, 8)
        y = experts(x)  # [B, E, H]
        w0, b0 = experts.expert_layer(1, 0)  # expert 1's first layer, as nn.Linear would hold it
        w1, b1 = experts.expert_layer(1, 1)
        expect = torch.relu(torch.relu(x @ w0.T + b0) @ w1.T + b1)
        assert y.shape == (5, 3, 4) and torch.allclose(y[:, 1], expect, atol=1e-6)
    """

    def __init__(self, in_features: int, num_experts: int, layer_sizes: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1 or not layer_sizes:
            raise ValueError("StackedExperts needs num_experts >= 1 and non-empty layer_sizes")
        self.num_experts, self.out_features = num_experts, layer_sizes[-1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        d = in_features
        for h in layer_sizes:
            bound = 1 / math.sqrt(d)
            self.weights.append(nn.Parameter(torch.empty(num_experts, d, h).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, 1, h).uniform_(-bound, bound)))
            d = h
        self.act = ReluDropout(dropout)  # after every layer (a plain ReLU when dropout is 0)

    def expert_layer(self, expert: int, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Expert ``expert``'s layer ``layer`` as ``nn.Linear`` holds it: (weight ``[out, in]``, bias ``[out]``)."""
        return self.weights[layer][expert].T, self.biases[layer][expert, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in]`` to ``[B, num_experts, out_features]``."""
        e, w0 = self.num_experts, self.weights[0]
        # every expert's first layer as one product, its bias added by addmm: [B, E*h1], expert-major
        first = torch.addmm(self.biases[0].reshape(-1), x, w0.permute(1, 0, 2).reshape(w0.size(1), -1))
        h: torch.Tensor = self.act(first)
        if len(self.weights) == 1:
            return h.view(x.size(0), e, -1)
        h = h.view(x.size(0), e, -1).transpose(0, 1)  # [E, B, h1]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = self.act(torch.baddbmm(b, h, w))
        return h.transpose(0, 1)


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """The logit of ``sigmoid(ctr_logit) * sigmoid(cvr_logit)``, computed in log space.

    With ``log p = logsigmoid(a) + logsigmoid(b)`` and
    ``log(1 - p) = logaddexp(logsigmoid(-a), logsigmoid(a) + logsigmoid(-b))``
    (as ``1 - s(a) s(b) = s(-a) + s(a) s(-b)``), the result ``log p - log(1 - p)``
    has no cancellation and finite gradients for any finite logits.

    Example::

        a, b = torch.tensor([0.3, 30.0]), torch.tensor([-1.2, 30.0])
        p = torch.sigmoid(ctcvr_logit(a, b).double())
        assert torch.allclose(p, torch.sigmoid(a.double()) * torch.sigmoid(b.double()))
    """
    log_ctr, log_cvr = F.logsigmoid(ctr_logit), F.logsigmoid(cvr_logit)
    log_not = torch.logaddexp(F.logsigmoid(-ctr_logit), log_ctr + F.logsigmoid(-cvr_logit))
    return log_ctr + log_cvr - log_not


@dataclass(frozen=True)
class TaskChain:
    """An entire-space chain of two binary tasks (ESMM's click -> conversion): ``second`` is
    P(second | first), learnt where it is observed, and the chain's output ``<first>_x_<second>`` is
    P(first) x P(second | first), learnt on every row (label ``first AND second``).

    Example::

        c = TaskChain("interaction", "like")
        assert c.name == "interaction_x_like" and c.spec.kind == TaskKind.BINARY
    """

    first: str
    second: str
    loss_weight: float = 1.0

    @property
    def name(self) -> str:
        """The chain's output (and task) name."""
        return f"{self.first}_x_{self.second}"

    @property
    def spec(self) -> TaskSpec:
        """The chain as a binary task of weight ``loss_weight`` (what losses, balancers and metrics see)."""
        return TaskSpec(self.name, TaskKind.BINARY, self.loss_weight)


def check_chain_options(chain: Sequence[str], loss_weight: float) -> None:
    """The ``chain`` / ``chain_loss_weight`` options' own checks (the task names are checked when
    the architecture is built): empty, or two different names; a weight >= 0."""
    if chain and (len(chain) != 2 or chain[0] == chain[1]):
        raise ValueError(f"chain: expected two different task names [first, second], got {list(chain)}")
    if not loss_weight >= 0:
        raise ValueError(f"chain_loss_weight: expected a number >= 0, got {loss_weight}")


class MultiTaskArch(nn.Module, ABC):
    """Base of every multi-task architecture.

    Subclasses map the feature vector ``[B, in_features]`` to one
    representation ``[B, out_features]`` per task. Architectures with gates
    keep the last batch's gate weights for introspection.

    Args:
        in_features: width of the input feature vector.
        task_names: the tasks, in order.
    """

    def __init__(self, in_features: int, task_names: Sequence[str]) -> None:
        super().__init__()
        self.in_features = in_features
        self.task_names = list(task_names)
        self.out_features = in_features
        self._gate_weights: Dict[str, torch.Tensor] = {}
        self.chains: List[TaskChain] = []

    def set_chain(self, chain: Sequence[str], loss_weight: float = 1.0) -> None:
        """Adds the entire-space chain ``[first, second]`` of two of the tasks (empty: none): its
        output joins :meth:`combine_outputs`' (see :class:`TaskChain`)."""
        check_chain_options(chain, loss_weight)
        if not chain:
            return
        unknown = [t for t in chain if t not in self.task_names]
        if unknown:
            raise ValueError(f"arch_options.chain {list(chain)}: unknown task(s) {unknown}; the tasks are "
                             f"{self.task_names}")
        c = TaskChain(chain[0], chain[1], loss_weight)
        if c.name in self.task_names:
            raise ValueError(f"arch_options.chain {list(chain)}: its output {c.name!r} is already a task")
        self.chains = [c]

    @abstractmethod
    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns ``{task: [B, out_features]}``."""

    def combine_outputs(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Hook after the task heads: architectures whose tasks are tied by construction
        (ESMM's pCTCVR = pCTR x pCVR, for example) derive outputs here. By default the outputs, and
        each chain's logit of P(first) x P(second | first) (in fp32, also under bf16 autocast)."""
        if not self.chains:
            return outputs
        combined = {t: outputs[t] for t in self.task_names}  # by name: fx-traced, outputs is a Proxy
        for c in self.chains:
            combined[c.name] = ctcvr_logit(outputs[c.first].float(), outputs[c.second].float())
        return combined

    def gate_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """Per task, the last batch's gate weights ``[B, num_experts]`` (detached),
        or None for architectures without gates (fp32, also under bf16 autocast)."""
        return {k: v.float() for k, v in self._gate_weights.items()} or None
