"""Stage 4: 8-bit weights: int8 Linear layers, int8 or 8-bit float embedding tables.

Linear layers use PyTorch's dynamic quantization (the recipe of PyTorch's "Dynamic Quantization
on BERT" tutorial; real = scale * (code - zero point), Jacob et al., CVPR 2018, section 2): each
weight matrix is stored as int8 with one scale per output row (symmetric, zero point 0); at run
time each input batch is quantized to 8 bits on the fly and the products run in int8 with int32
sums (fbgemm / x86 kernels), about 4x less weight memory and faster matrix products on CPU.

Embedding tables (which dynamic quantization leaves in float32: most of a small model's size)
are stored in 8 bits with one float32 scale per row, and decoded row by row at lookup, so they
stay 8-bit in memory too: ``int8`` (symmetric, scale = max|row| / 127) or ``fp8``
(``torch.float8_e4m3fn``, scale = max|row| / 448), after EdgeBERT (Tambe et al., MICRO 2021),
which keeps its embeddings in 8-bit floating point (AdaptivFloat).

Where we deviate, and why:
- EdgeBERT's AdaptivFloat shifts the exponent range per tensor; here a per-row float scale on a
  standard e4m3 format does that job, and computation is in float32 after the lookup (EdgeBERT's
  accelerator computes in 8-bit float; a CPU has no such units).
- Linear layers are int8, not 8-bit float: the CPU has int8 kernels and no float8 ones.
- ``torch.ao.quantization`` is deprecated in favour of torchao (not installed here); its
  deprecation warnings are silenced in this module only.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import BertkitError

FORMATS = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}  # code dtype, largest code
EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        yield


def _dynamic():
    with _quiet():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    return DynamicLinear, per_channel_dynamic_qconfig, quantize_dynamic


# ---------------------------------------------------------------- Linear layers


def is_int8_linear(module: nn.Module) -> bool:
    return isinstance(module, _dynamic()[0])


def quantize_linears(model: nn.Module) -> dict:
    """Every ``nn.Linear`` of ``model`` becomes a dynamically quantized int8 Linear (per output
    channel scales), in place; the stage's record.  CPU only, as PyTorch's int8 kernels are."""
    DynamicLinear, per_channel, quantize_dynamic = _dynamic()
    if next(model.parameters()).device.type != "cpu":
        raise BertkitError("int8 Linear layers run on the CPU only: move the model to the CPU first")
    count = sum(isinstance(m, nn.Linear) for m in model.modules())
    with _quiet():
        quantize_dynamic(model, {nn.Linear: per_channel}, dtype=torch.qint8, inplace=True)
    return {"stage": "int8-linear", "modules": count, "scheme": "int8, symmetric, one scale per output row"}


def linear_codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An int8 Linear's weight as (int8 codes [out, in], float32 scale per row [out]) and its bias."""
    with _quiet():
        weight, bias = module.weight(), module.bias()
    if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric) or weight.q_per_channel_axis() != 0:
        raise BertkitError("only int8 Linear layers with one scale per output row are stored (quantize_linears makes them)")
    if bool((weight.q_per_channel_zero_points() != 0).any()):
        raise BertkitError("int8 Linear layers with a zero point other than 0 are not stored")
    scale = weight.q_per_channel_scales().to(torch.float32)
    if not torch.equal(scale.to(torch.float64), weight.q_per_channel_scales()):
        raise BertkitError("an int8 Linear's scales do not fit float32")
    return weight.int_repr().clone(), scale, None if bias is None else bias.detach().clone()


def int8_linear(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """The int8 Linear :func:`linear_codes` read, built again (the same codes and scales)."""
    DynamicLinear = _dynamic()[0]
    if codes.dtype != torch.int8 or codes.dim() != 2 or scale.shape != codes.shape[:1]:
        raise ValueError(f"int8 codes {tuple(codes.shape)} {codes.dtype} and scales {tuple(scale.shape)} do not fit")
    scales = scale.to(torch.float64)
    with _quiet():
        weight = torch.quantize_per_channel(codes.to(torch.float32) * scale[:, None], scales,
                                            torch.zeros(len(scale), dtype=torch.int64), 0, torch.qint8)
        if not torch.equal(weight.int_repr(), codes):
            raise ValueError("int8 codes did not survive rebuilding the Linear layer")
        module = DynamicLinear(codes.shape[1], codes.shape[0], bias_=bias is not None, dtype=torch.qint8)
        module.set_weight_bias(weight, None if bias is None else bias.to(torch.float32))
    return module


# ---------------------------------------------------------------- embedding tables


def quantize_rows(weight: torch.Tensor, fmt: str = "int8") -> tuple[torch.Tensor, torch.Tensor]:
    """A float matrix as 8-bit codes (``int8`` or ``fp8``) and a float32 scale per row."""
    if fmt not in FORMATS:
        raise BertkitError(f"embedding format {fmt!r} is not one of {', '.join(FORMATS)}")
    dtype, largest = FORMATS[fmt]
    weight = weight.detach().to(torch.float32)
    amax = weight.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / largest, torch.ones_like(amax))
    scaled = (weight / scale[:, None]).clamp(-largest, largest)
    codes = scaled.round().to(dtype) if fmt == "int8" else scaled.to(dtype)
    return codes, scale


class QuantizedEmbedding(nn.Module):
    """An embedding table kept as 8-bit codes plus a float32 scale per row (buffers ``codes``,
    ``scale``); a lookup decodes only the rows it reads.  ``weight`` is the decoded table, for
    code that reads it (it is no parameter: the table is frozen)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str = "int8"):
        super().__init__()
        if fmt not in FORMATS:
            raise BertkitError(f"embedding format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt, self.num_embeddings, self.embedding_dim = fmt, num_embeddings, embedding_dim
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim, dtype=FORMATS[fmt][0]))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, fmt: str = "int8") -> "QuantizedEmbedding":
        new = cls(embedding.num_embeddings, embedding.embedding_dim, fmt)
        new.codes, new.scale = quantize_rows(embedding.weight, fmt)
        return new.to(embedding.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.codes).to(torch.float32) * F.embedding(ids, self.scale[:, None])

    @property
    def weight(self) -> torch.Tensor:
        return self.codes.to(torch.float32) * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}"


def quantize_embeddings(model: nn.Module, fmt: str = "int8", tables: Iterable[str] = EMBEDDING_TABLES) -> dict:
    """The BERT embedding ``tables`` (word, position, token type) become :class:`QuantizedEmbedding`
    in ``fmt`` (``int8`` or ``fp8``), in place; the stage's record."""
    embeddings = getattr(model, "bert", model).embeddings
    done = []
    for name in tables:
        table = getattr(embeddings, name, None)
        if isinstance(getattr(table, "table", None), nn.Embedding):  # factorised: its V x E table (.factorize)
            table.table = QuantizedEmbedding.from_embedding(table.table, fmt)
            done.append(name)
        elif isinstance(table, nn.Embedding):
            setattr(embeddings, name, QuantizedEmbedding.from_embedding(table, fmt))
            done.append(name)
        elif not isinstance(table, QuantizedEmbedding) and not isinstance(getattr(table, "table", None), QuantizedEmbedding):
            raise BertkitError(f"the model has no embedding table {name!r}")
    return {"stage": "embeddings", "format": fmt, "tables": done}


def quantize(model: nn.Module, embeddings: str | None = "int8", linear: bool = True) -> dict:
    """Both parts of this stage in place (``embeddings=None``: leave the tables in float32)."""
    record = {"stage": "quantize", "embeddings": embeddings, "int8_linear": linear}
    if embeddings:
        quantize_embeddings(model, embeddings)
    if linear:
        quantize_linears(model)
    return record


# ---------------------------------------------------------------- how close to float32


def compare_outputs(reference: nn.Module, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict:
    """How close ``model``'s logits stay to ``reference``'s (e.g. the float32 model) on ``batches``:
    the largest and mean absolute difference, and the share of predictions that agree."""
    diffs, agree, n = [], 0, 0
    for model_ in (reference, model):
        model_.eval()
    with torch.inference_mode():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            a, b = reference(**inputs).logits.float(), model(**inputs).logits.float()
            diffs.append((a - b).abs().flatten())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            n += len(a)
    if not n:
        raise BertkitError("comparing outputs needs at least one batch")
    diff = torch.cat(diffs)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "agreement": agree / n}
