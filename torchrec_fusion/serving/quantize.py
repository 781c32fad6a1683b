"""Compressed embedding tables for serving, through TorchRec's own inference quantization.

:func:`quantize_tables` swaps every ``EmbeddingBagCollection`` of a model for TorchRec's quantized
one (``torchrec.inference.modules.quantize_inference_model`` -> ``torchrec.quant``'s
EmbeddingBagCollection over FBGEMM's inference kernels): ``fp16``, ``int8`` or ``int4`` rows (int8
and int4 are row-wise: each row keeps its own fp16 scale and bias), one dtype for every table or a
dtype per table. The dense part stays fp32.

The quantized weights are plain ``uint8``/``float16`` tensors (an int4 table is TorchRec's
``UInt4Tensor``, a uint8 view: :func:`plain_state_dict` stores the view), so the export is read back
with ``torch.load(weights_only=True)`` into a model quantized the same way (:func:`load_plain_state`).
"""

from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torchrec.inference.modules import quantize_inference_model
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.tensor_types import UIntXTensor

# the --quantize names and the weight dtypes TorchRec's quantization takes for them
QUANT_DTYPES: Dict[str, torch.dtype] = {"fp16": torch.float16, "int8": torch.int8, "int4": torch.quint4x2}


def parse_table_dtypes(items: Sequence[str]) -> Dict[str, str]:
    """``["item=int4", ...]`` as ``{"item": "int4"}``; a malformed item or unknown dtype is a ``ValueError``.

    Example::

        assert parse_table_dtypes(["item=int4", "t_user=fp16"]) == {"item": "int4", "t_user": "fp16"}
    """
    out: Dict[str, str] = {}
    for item in items:
        name, sep, dtype = item.partition("=")
        if not sep or not name or dtype not in QUANT_DTYPES:
            raise ValueError(f"--quantize-table {item!r}: give TABLE=DTYPE, DTYPE one of {sorted(QUANT_DTYPES)}")
        out[name] = dtype
    return out


def _collections(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if isinstance(m, (EmbeddingBagCollection, QuantEmbeddingBagCollection)):
            yield name, m


def table_names(model: nn.Module) -> Dict[str, str]:
    """Every embedding table of ``model`` (fp32 or quantized) and the first feature it serves."""
    configs: List[EmbeddingBagConfig] = [c for _, m in _collections(model)
                                         for c in cast(EmbeddingBagCollection, m).embedding_bag_configs()]
    return {c.name: c.feature_names[0] for c in configs}


def resolve_tables(model: nn.Module, per_table: Mapping[str, str]) -> Dict[str, str]:
    """``per_table`` keyed by table name: a key is a table name (``t_item``) or a feature name
    (``item``: every table of that feature, ensemble members' too); one that names neither is a
    ``ValueError`` naming the tables there are."""
    tables = table_names(model)
    out: Dict[str, str] = {}
    for key, dtype in per_table.items():
        hit = [t for t, f in tables.items() if key in (t, f)]
        if not hit:
            raise ValueError(f"--quantize-table {key}={dtype}: no table or feature {key!r}; tables: {sorted(tables)}")
        out.update(dict.fromkeys(hit, dtype))
    return out


def quantize_tables(model: nn.Module, dtype: str = "int8", per_table: Optional[Mapping[str, str]] = None
                    ) -> Dict[str, str]:
    """Quantizes every embedding table of ``model`` in place (``dtype``, or ``per_table[name]``, keys as
    in :func:`resolve_tables`); returns each table's dtype. Call it on a model in eval mode.

    Example::

        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_a", embedding_dim=8, num_embeddings=10, feature_names=["a"]),
            EmbeddingBagConfig(name="t_b", embedding_dim=8, num_embeddings=10, feature_names=["b"])])
        kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        holder = nn.ModuleDict({"ebc": ebc})
        before = ebc(kjt).values()
        assert quantize_tables(holder, "int8", {"b": "fp16"}) == {"t_a": "int8", "t_b": "fp16"}
        assert torch.allclose(holder["ebc"](kjt).values(), before, atol=0.02)
    """
    if dtype not in QUANT_DTYPES:
        raise ValueError(f"--quantize {dtype!r}: one of {sorted(QUANT_DTYPES)}")
    tables = resolve_tables(model, per_table or {})
    dtypes = {t: tables.get(t, dtype) for t in table_names(model)}
    quantize_inference_model(model, quantization_dtype=QUANT_DTYPES[dtype],
                             per_table_weight_dtype={t: QUANT_DTYPES[d] for t, d in dtypes.items()})
    return dtypes


def table_bytes(model: nn.Module) -> Dict[str, int]:
    """The bytes each embedding table's weights take (a quantized row with its scale, bias and the
    kernels' row padding; an fp32 table rows x dim x 4)."""
    out: Dict[str, int] = {}
    for _, m in _collections(model):
        if isinstance(m, QuantEmbeddingBagCollection):
            for name, holder in cast(nn.ModuleDict, m.embedding_bags).items():
                w = cast(torch.Tensor, holder.weight)
                w = w.view(torch.uint8) if isinstance(w, UIntXTensor) else w
                out[name] = w.numel() * w.element_size()
        else:
            for name, bag in cast(nn.ModuleDict, m.embedding_bags).items():
                weight = cast(torch.Tensor, bag.weight)
                out[name] = weight.numel() * weight.element_size()
    return out


def plain_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` with TorchRec's int4 tensors as their uint8 storage: plain tensors only,
    for ``torch.save`` and a ``weights_only`` load."""
    return {k: v.view(torch.uint8) if isinstance(v, UIntXTensor) else v for k, v in model.state_dict().items()}


def load_plain_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copies a :func:`plain_state_dict` into ``model`` quantized the same way (a quantized table's
    weights are views of its kernel's buffers: copied in place). Missing or extra keys, or a shape or
    dtype that differs, are a ``ValueError``."""
    own = plain_state_dict(model)
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"the exported weights do not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for k, dest in own.items():
            src = state[k]
            if src.shape != dest.shape or src.dtype != dest.dtype:
                raise ValueError(f"exported weight {k}: {src.dtype} {tuple(src.shape)}, the model has "
                                 f"{dest.dtype} {tuple(dest.shape)}")
            dest.copy_(src)
