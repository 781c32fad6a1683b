"""The optimizers of a sharded model: FBGEMM's fused ones for the tables, PyTorch's for the dense
part, and PyTorch versions of the fused ones for tables on the dense kernel (data_parallel)."""

from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Tuple, Type, TypeVar

import torch
from torchrec import optim as trec_optim
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

EMBEDDING_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "sgd": trec_optim.SGD,
    "adam": trec_optim.Adam,
}
DENSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}

# FBGEMM's TBE default epsilon; the fused optimizers use it unless told otherwise.
FBGEMM_EPS = 1.0e-8


def choose(choices: Mapping[K, V], name: K, what: str) -> V:
    """``choices[name]``; an unknown name is a ``ValueError`` listing the valid ones.

    Example::

        assert choose(DENSE_OPTIMIZERS, "sgd", "dense optimizer") is torch.optim.SGD
    """
    if name not in choices:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(str(k) for k in choices if k is not None)}")
    return choices[name]


def optimizer_state_bytes(embedding_optimizer: Optional[str], rows: int, cols: int, elem_bytes: int = 4) -> int:
    """Bytes of the embedding optimizer's state for a ``rows x cols`` shard (FBGEMM's layout:
    row-wise Adagrad keeps one float per row, Adagrad one per weight, Adam two, SGD none)."""
    per: Dict[Optional[str], int] = {None: 0, "sgd": 0, "rowwise_adagrad": rows, "adagrad": rows * cols,
                                     "adam": 2 * rows * cols}
    return choose(per, embedding_optimizer, "embedding optimizer") * elem_bytes


class RowSparseAdam(torch.optim.Optimizer):
    """Adam as FBGEMM's fused TBE runs it on embedding rows: only the rows with a gradient
    move (and their moments); the bias correction counts the steps that had a gradient;
    ``weight_decay`` is added to the update, scaled by the learning rate. (FBGEMM 1.8.0 has
    no CPU kernel for its fused Adam; this one serves dense-kernel tables on any device.)"""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = FBGEMM_EPS, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: Mapping[str, Any]) -> None:
        """One step of the rows of ``p`` that have a gradient."""
        assert p.grad is not None
        b1, b2 = group["betas"]
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros(())
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        g = p.grad.reshape(p.shape[0], -1)
        rows = g.ne(0).any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:  # e.g. a zero-gradient step that only creates the state
            return
        st["step"] += 1
        t = float(st["step"])
        w = p.view(p.shape[0], -1)
        m = st["exp_avg"].view(p.shape[0], -1)
        v = st["exp_avg_sq"].view(p.shape[0], -1)
        gr = g[rows]
        m_r = m[rows].mul_(b1).add_(gr, alpha=1 - b1)
        v_r = v[rows].mul_(b2).addcmul_(gr, gr, value=1 - b2)
        m[rows], v[rows] = m_r, v_r
        w_r = w[rows]
        upd = (m_r / (1 - b1 ** t)) / ((v_r / (1 - b2 ** t)).sqrt() + group["eps"])
        upd += group["weight_decay"] * w_r
        w[rows] = w_r - group["lr"] * upd


_DENSE_KERNEL_KWARGS = {"rowwise_adagrad": {"eps"}, "adagrad": {"eps"}, "sgd": set(), "adam": {"eps", "beta1", "beta2"}}


def dense_embedding_optimizer(name: str, params: List[torch.Tensor], lr: float,
                              kwargs: Optional[Mapping[str, Any]] = None) -> torch.optim.Optimizer:
    """A PyTorch optimizer that updates embedding tables the way FBGEMM's fused optimizer
    ``name`` does (same formula and epsilon), for tables whose kernel is not fused: the dense
    kernel of data_parallel tables, whose gradient DDP all-reduces before ``step()``.
    ``kwargs`` take FBGEMM's names: ``eps``, and ``beta1``/``beta2`` for Adam."""
    kw = dict(kwargs or {})
    allowed = choose(_DENSE_KERNEL_KWARGS, name, "embedding optimizer")
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"embedding optimizer kwargs {unknown} are not supported for {name!r} on tables with the "
                         f"dense kernel (data_parallel); supported: {sorted(allowed)}")
    eps = float(kw.get("eps", FBGEMM_EPS))
    if name == "rowwise_adagrad":
        optimizer: torch.optim.Optimizer = RowWiseAdagrad(params, lr=lr, eps=eps)
        return optimizer
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return RowSparseAdam(params, lr=lr, betas=(kw.get("beta1", 0.9), kw.get("beta2", 0.999)), eps=eps)
