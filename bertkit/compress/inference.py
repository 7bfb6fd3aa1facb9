"""The compressed architecture's inference forward: BERT's layer and embedding math in a few
plain-PyTorch operations, swapped in when a compressed directory is loaded.

Why: a compressed model is small enough that at batch 1 (a 60-token text) its time goes to
per-operation overhead, not arithmetic: under transformers' module tree a layer of the compressed
reviews model costs about 1.1 ms on 2 threads, of which its six int8 products are under half.  The
forward here does the same arithmetic on the same weights:

- :class:`CompressedLayer`: query, key and value as one int8 (or float) product of 3x the rows
  (the three weights stacked).  For int8 this is exact: dynamic quantization reads the input once
  per product (one scale for the tensor), the stacked weight keeps each row's codes and scale, and
  int32 sums are exact, so each output element is the one the separate product gives.  Then
  SDPA, the output projection, residual + LayerNorm, the FFN, residual + LayerNorm, each product
  called as its kernel, without the wrappers of transformers' layer (keyword-deprecation shims,
  the attention-function lookup, the chunked feed-forward helper) or module calls, which cost a
  small layer as much as its products.
- :class:`CompressedEmbeddings`: the position and token-type tables (a few hundred rows) decoded
  from their 8-bit codes once, at load, instead of at every lookup; the word table stays 8-bit
  (it is the large one) and decodes only the rows a batch reads.

For an encoder with SDPA attention (what bertkit builds; :func:`for_inference` leaves any other
model as it is) the outputs equal transformers' forward of the same modules bit for bit (tested
on int8 and float models, padded batches, the early-exit path's additive masks and unpadded
single texts).  Where it differs: inference only (training through it is refused), no attention
maps (``output_attentions``) and no KV cache; hidden states are still recorded
(``output_hidden_states``: the layer subclasses transformers' ``BertLayer``, whose instances
transformers hooks).  The stored format is unchanged: the stacked weight is rebuilt from the
query, key and value stored on disk, so a model loaded this way is not saved again (its modules
say ``inference_only``; :func:`bertkit.core.modelio.save_pretrained` and
:func:`bertkit.compress.model.save_compressed` refuse it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.bert.modeling_bert import BertLayer

from ..core.errors import BertkitError
from .factorize import FactorizedEmbedding
from .quantize import int8_linear, is_int8_linear, linear_codes


INFERENCE_ONLY = "a compressed model runs inference only: train the uncompressed model instead"


def stack_linears(linears: list[nn.Module]) -> nn.Module:
    """One Linear whose output is the outputs of ``linears`` (same input width) side by side:
    int8 codes and row scales stacked for int8 Linears, weights stacked for float ones."""
    if all(is_int8_linear(m) for m in linears):
        codes, scales, biases = zip(*(linear_codes(m) for m in linears))
        if any(b is None for b in biases):
            biases = [torch.zeros(len(s)) if b is None else b for b, s in zip(biases, scales)]
        return int8_linear(torch.cat(codes), torch.cat(scales), torch.cat(biases))
    if not all(isinstance(m, nn.Linear) for m in linears):
        raise TypeError("stacking needs Linear layers, all int8 or all float")
    weight = torch.cat([m.weight.detach() for m in linears])
    stacked = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(weight)
        stacked.bias.copy_(torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features)
                                      for m in linears]))
    return stacked.requires_grad_(False)


def kernel(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s arithmetic as a plain function: a module call costs a small product (a
    60-token text) a fifth of its time.  An int8 Linear: the kernel its forward calls for float32
    input (``quantized.linear_dynamic`` with ``reduce_range``, as module version 4 passes it); a
    float Linear or LayerNorm: its functional form; anything else: the module's own call.  The
    functions read the module's current weights at each call (device moves, reloaded weights)."""
    if is_int8_linear(module):
        params = module._packed_params
        if params.dtype != torch.qint8 or getattr(module, "version", None) is None or module.version < 4:
            return module.__call__
        return lambda x: torch.ops.quantized.linear_dynamic(x, params._packed_params, reduce_range=True)
    if type(module) is nn.Linear:
        return lambda x: F.linear(x, module.weight, module.bias)
    if type(module) is nn.LayerNorm:
        shape, eps = module.normalized_shape, module.eps
        return lambda x: F.layer_norm(x, shape, module.weight, module.bias, eps)
    return module.__call__  # a bound method: an attribute holding it is no second child of the module


class _Kernels(nn.Module):
    """A module whose forward calls plain functions made from its children (``_make_kernels``):
    they are dropped when it is copied or pickled and made again from the copy's children, so a
    deep copy computes with its own weights; and it refuses training."""

    inference_only = True

    def _make_kernels(self) -> None:
        raise NotImplementedError

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._kernel_names:
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._make_kernels()

    def _check_inference(self) -> None:
        if self.training and torch.is_grad_enabled():
            raise BertkitError(INFERENCE_ONLY)


class CompressedLayer(_Kernels, BertLayer):
    """One BERT encoder layer (post-LayerNorm, Devlin et al. 2019) for inference, from a
    ``BertLayer`` whose heads and FFN width may have been pruned; see the module docstring."""

    _kernel_names = ("_kernels",)

    def __init__(self, layer: BertLayer):
        nn.Module.__init__(self)  # BertLayer's own __init__ would build float modules of the config's shapes
        attention = layer.attention.self
        self.head_size, self.scaling = attention.attention_head_size, attention.scaling
        # the modules stay children (device moves, parameter counts); forward calls their kernels
        self.qkv = stack_linears([attention.query, attention.key, attention.value])
        self.attention_out, self.attention_norm = layer.attention.output.dense, layer.attention.output.LayerNorm
        self.ffn_in, self.activation = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        self.ffn_out, self.ffn_norm = layer.output.dense, layer.output.LayerNorm
        self._make_kernels()

    def _make_kernels(self) -> None:
        self._kernels = tuple(map(kernel, (self.qkv, self.attention_out, self.attention_norm, self.ffn_in,
                                           self.activation, self.ffn_out, self.ffn_norm)))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        """``attention_mask``: None, or what BERT's SDPA attention takes (boolean or additive)."""
        self._check_inference()
        qkv, attention_out, attention_norm, ffn_in, activation, ffn_out, ffn_norm = self._kernels
        n, length, _ = hidden_states.shape
        q, k, v = qkv(hidden_states).view(n, length, 3, -1, self.head_size).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scaling)
        hidden = attention_norm(attention_out(context.transpose(1, 2).reshape(n, length, -1)) + hidden_states)
        return ffn_norm(ffn_out(activation(ffn_in(hidden))) + hidden)


class CompressedEmbeddings(_Kernels):
    """BERT's embeddings (word + token type + position, LayerNorm) with the small tables decoded
    once; ``BertEmbeddings``' tables and LayerNorm as children under its names (so counting and
    ``get_input_embeddings`` see the stored modules; no dropout: inference only), the decoded
    tables as non-persistent buffers."""

    _kernel_names = ("_words", "_norm")

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.word_embeddings, self.LayerNorm = embeddings.word_embeddings, embeddings.LayerNorm
        self.position_embeddings, self.token_type_embeddings = embeddings.position_embeddings, embeddings.token_type_embeddings
        self.register_buffer("positions", _decoded(self.position_embeddings), persistent=False)
        self.register_buffer("token_types", _decoded(self.token_type_embeddings), persistent=False)
        self._make_kernels()

    def _make_kernels(self) -> None:
        self._words, self._norm = _word_kernel(self.word_embeddings), kernel(self.LayerNorm)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, cache_length: int = 0):
        self._check_inference()
        words = self._words(input_ids) if inputs_embeds is None else inputs_embeds
        length = words.shape[1]
        types = self.token_types[0] if token_type_ids is None else F.embedding(token_type_ids, self.token_types)
        positions = (self.positions[cache_length:cache_length + length] if position_ids is None
                     else F.embedding(position_ids, self.positions))
        return self._norm(words + types + positions)  # BERT's order: (word + type) + position


def _word_kernel(words: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(words, FactorizedEmbedding):  # table lookup, then the projection's kernel
        table, project = words.table, kernel(words.project)
        return lambda ids: project(table(ids))
    return words.__call__


def _decoded(table: nn.Module) -> torch.Tensor:
    """A table's rows as its lookups give them: an 8-bit table decoded to float32 (its ``weight``),
    a float table as it is."""
    return table.weight.detach().clone()


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` (a BERT classifier or backbone, int8 or float, SDPA attention, encoder only) with
    :class:`CompressedLayer` and :class:`CompressedEmbeddings` in place of transformers' modules,
    in place, in eval mode; a model with another attention implementation or a decoder is left as
    it is (its forward is transformers')."""
    bert = getattr(model, "bert", model)
    config = bert.config
    if config._attn_implementation != "sdpa" or config.is_decoder or config.add_cross_attention:
        return model.eval()
    layers = bert.encoder.layer
    for i, layer in enumerate(layers):
        if not isinstance(layer, CompressedLayer):
            layers[i] = CompressedLayer(layer)
    if not isinstance(bert.embeddings, CompressedEmbeddings):
        bert.embeddings = CompressedEmbeddings(bert.embeddings)
    for module in model.modules():  # hidden-state hooks, if installed, sat on the replaced layers: install anew
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False
    return model.eval()
