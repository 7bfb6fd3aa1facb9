"""The Lattice-BERT encoder (Lai et al., "Lattice-BERT: Leveraging Multi-Granularity Representations
in Chinese Pre-trained Language Models", NAACL 2021, section 3), in plain PyTorch.

The input is a word lattice (:mod:`.lattice`): every character of a sentence plus every lexicon word
matching a span of it, each a *unit* with a span ``start..end`` (inclusive, in characters).  The
encoder is BERT's, except for two things:

* **Lattice position embeddings** (:class:`LatticeEmbeddings`): a unit's position is its span, so its
  input embedding adds a *start* and an *end* absolute position embedding (a character, with
  start == end, gets both at the same position).
* **Lattice position attention** (:class:`LatticeSelfAttention`): the attention score of unit i
  (query) for unit j (key) is BERT's ``q_i . k_j / sqrt(d)`` plus, per head (:class:`LatticePositionBias`),

  - ``b_ij = b^ss[s_j - s_i] + b^se[e_j - s_i] + b^es[s_j - e_i] + b^ee[e_j - e_i]``: one learned
    scalar for each of the four relative distances (start-start, start-end, end-start, end-end;
    :func:`.lattice.distance_matrices`), each clipped to ``[-max_distance, max_distance]``.  This is
    the "embed each distance, sum, project to one bias per head" form: a linear projection of a sum
    of embeddings is the sum of the projected embeddings, so we store the projected ones directly
    (one table of ``4 x (2 max_distance + 1)`` rows by ``heads`` columns);
  - ``r_ij = r[relation(i, j)]``: one learned scalar for the positional relation of the two spans
    (six :class:`.lattice.Relation` values: identical, precede, succeed, contain, contained, overlap).

  Both tables start at zero, so that a fresh model (or one made by :func:`from_char_bert`) attends
  exactly like BERT until training moves them.  Relations and distances are computed inside the model
  from ``starts`` / ``ends`` (the collator ships two [batch, n] tensors, not four [batch, n, n] ones).

Pretraining (:class:`LatticeForPretraining`) is the paper's masked segment prediction: every unit
inside a masked segment (:func:`.lattice.mask_segments`) is replaced by ``[MASK]`` and predicted, a
character over the character vocabulary and a word over the word vocabulary, by two BERT-style MLM
heads (dense + activation + LayerNorm, then a decoder tied to that vocabulary's embedding table, plus
a bias).  The loss is the mean cross-entropy over all masked units, characters and words together.

Ids.  Characters and words have separate id spaces: ``input_ids`` holds a character id (BERT's own
vocabulary ids, so a character BERT's table carries over) where ``is_word`` is False, and a word id
(0 .. word_vocab_size - 1) where it is True.  A masked word unit enters as the *character* ``[MASK]``
(``is_word`` False) at its own span; what it should be predicted as is told by the labels, which come
in two tensors: ``char_labels`` (character ids) and ``word_labels`` (word ids), -100 where a unit is
not predicted.  :func:`collate_lattices` makes all of these from lattices.

Where we deviate from the paper, as far as we know it:

* Absolute positions: the paper scores them in an attention term of their own,
  ``att_ij = ([P^S_si; P^E_ei] W^q)([P^S_sj; P^E_ej] W^k)^T / sqrt(2d)`` (untied from the tokens, as
  in TUPE).  We add ``P^S_s + P^E_e`` to the input embedding instead, as BERT adds its position
  embedding: then a character BERT carries over exactly (:func:`from_char_bert` sets both tables to
  half of BERT's, so ``P^S_i + P^E_i`` is BERT's ``P_i``), and no third n x n score is computed.
* Relation term: an additive scalar per relation and head; the paper's ``r_ij`` may be
  parametrised otherwise (it calls it a scaling term).  OVERLAP is one symmetric relation (see
  :mod:`.lattice`); its direction is in the distances.
* Distance and relation terms: per head, one set for all layers (computed once per forward, as T5
  and TUPE share their position terms across layers; we do not know whether the paper's are per
  layer): per-layer tables made a training step 1.8x a character BERT's on CPU, shared ones 1.05x.
  Distances are clipped at ``max_distance`` (the paper's clipping or bucketing, if any, may differ).
* Masking: masked units become ``[MASK]`` always (no 80/10/10 replacement); a masked word's input is
  the character ``[MASK]`` embedding at its span.
* Initialisation from a character BERT (the paper starts from scratch or does not say): word
  embeddings are the mean of their characters' embeddings; the word head's transform starts as a
  copy of BERT's MLM head transform, its bias at zero.
* ``[CLS]`` and ``[SEP]`` (where the paper's inputs have them, we do not know) are units of one
  position each, before the first character and after the last one, as in BERT.

Files: :func:`save_lattice` writes ``model.safetensors``, ``lattice_config.json`` and ``bertkit.json``
(a :class:`bertkit.core.modelio.Manifest` with architecture ``lattice-bert``, registered here with
:func:`bertkit.core.modelio.register_architecture`); no ``config.json``, so transformers cannot
mistake the directory for a BERT.  Weights load from safetensors only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..core import modelio
from ..core.errors import BertkitError
from ..core.files import atomic_entries, read_json, write_json_atomic
from ..core.weights import save_weights
from .lattice import Relation, Unit, distance_matrices, relation_matrix

ARCHITECTURE = "lattice-bert"
CONFIG_FILE = "lattice_config.json"
WEIGHTS_FILE = "model.safetensors"
NUM_RELATIONS = len(Relation)
NUM_DISTANCES = 4  # start-start, start-end, end-start, end-end (distance_matrices' order)

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# ---------------------------------------------------------------- configuration


@dataclass
class LatticeConfig:
    """The shape of a Lattice-BERT model.

    ``max_position``: the number of start (and of end) position embeddings, i.e. the longest text in
    characters, ``[CLS]`` and ``[SEP]`` included.  ``max_distance``: relative distances are clipped to
    ``[-max_distance, max_distance]`` before their biases are looked up.
    """

    char_vocab_size: int
    word_vocab_size: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    max_distance: int = 64
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self):
        positive = ("char_vocab_size", "word_vocab_size", "hidden_size", "num_layers", "num_heads",
                    "intermediate_size", "max_position", "max_distance", "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> LatticeConfig:
        """The config of ``to_dict``; unknown keys are refused (a typo would otherwise pass silently)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown LatticeConfig keys: {', '.join(unknown)}")
        return cls(**dict(data))


# ---------------------------------------------------------------- the encoder


class LatticeEmbeddings(nn.Module):
    """A unit's input: its token embedding (character or word table, by ``is_word``) + token type
    embedding + start position embedding + end position embedding; then LayerNorm and dropout."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        self.char_embeddings = nn.Embedding(config.char_vocab_size, config.hidden_size)
        self.word_embeddings = nn.Embedding(config.word_vocab_size, config.hidden_size)
        self.start_position_embeddings = nn.Embedding(config.max_position, config.hidden_size)
        self.end_position_embeddings = nn.Embedding(config.max_position, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, is_word, starts, ends, token_type_ids=None) -> torch.Tensor:
        chars = self.char_embeddings(input_ids.masked_fill(is_word, 0))
        words = self.word_embeddings(input_ids.masked_fill(~is_word, 0))
        tokens = torch.where(is_word.unsqueeze(-1), words, chars)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # BERT's order of additions: (token + token type) + position; start + end stands for position
        positions = self.start_position_embeddings(starts) + self.end_position_embeddings(ends)
        embeddings = tokens + self.token_type_embeddings(token_type_ids) + positions
        return self.dropout(self.LayerNorm(embeddings))


class _SummedLookup(torch.autograd.Function):
    """``out[b, h, i, j] = sum_k table[index[b, k, i, j], h]``: a few small tables looked up at every
    unit pair and summed, per head.

    Why not ``nn.Embedding``: its backward accumulates one ``heads``-wide row per looked-up pair
    (millions per batch), which took half a training step on CPU; here the backward is one
    ``bincount`` per (kind, head), a single linear pass each."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        columns = table.t()  # [heads, rows]: column lookups come out head-major, as attention wants
        out = columns[:, index[:, 0]]
        for kind in range(1, index.shape[1]):
            out += columns[:, index[:, kind]]
        return out.transpose(0, 1)  # [batch, heads, n, n] (a view; its consumers accept the strides)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        heads = grad.shape[1]
        flat = index.transpose(0, 1).reshape(index.shape[1], -1)  # [kinds, batch * n * n]
        per_head = grad.transpose(0, 1).reshape(heads, -1)  # [heads, batch * n * n], same pair order
        columns = [sum(torch.bincount(rows, weights=per_head[h], minlength=ctx.rows) for rows in flat)
                   for h in range(heads)]
        return torch.stack(columns, dim=1).to(grad.dtype), None


class LatticePositionBias(nn.Module):
    """The lattice position terms of the attention scores, per head: ``b_ij`` from the four clipped
    relative distances and ``r_ij`` from the relation of the two spans (see the module docstring).

    One pair of tables for the whole encoder, computed once per forward and added in every layer,
    as T5 shares its relative position bias and TUPE its positional correlation across layers."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        # row (k * (2D + 1) + D + d): the bias of distance kind k at distance d, one column per head
        self.distance_bias = nn.Embedding(NUM_DISTANCES * (2 * config.max_distance + 1), config.num_heads)
        self.relation_bias = nn.Embedding(NUM_RELATIONS, config.num_heads)
        nn.init.zeros_(self.distance_bias.weight)
        nn.init.zeros_(self.relation_bias.weight)

    def forward(self, structure: torch.Tensor) -> torch.Tensor:
        """[batch, heads, n, n] from :meth:`LatticeModel.lattice_structure`'s rows [batch, 5, n, n]
        (four distance rows, then the relation row offset past the distance table)."""
        table = torch.cat([self.distance_bias.weight, self.relation_bias.weight])
        return _SummedLookup.apply(table, structure)


class LatticeSelfAttention(nn.Module):
    """Multi-head self-attention whose scores ``q_i . k_j / sqrt(d)`` get an additive bias per head
    (the lattice position terms plus the padding mask), through PyTorch's fused attention."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.hidden_size // config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_dropout

    def forward(self, hidden, bias) -> torch.Tensor:
        batch, n, width = hidden.shape
        q, k, v = (proj(hidden).view(batch, n, self.num_heads, self.head_size).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                  dropout_p=self.dropout if self.training else 0.0)
        return attended.transpose(1, 2).reshape(batch, n, width)


class LatticeLayer(nn.Module):
    """A BERT layer (post-LayerNorm) around :class:`LatticeSelfAttention`."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        self.attention = LatticeSelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden, bias) -> torch.Tensor:
        attended = self.attention(hidden, bias)
        hidden = self.attention_norm(self.dropout(self.attention_output(attended)) + hidden)
        ffn = self.output(self.act(self.intermediate(hidden)))
        return self.output_norm(self.dropout(ffn) + hidden)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) weights, zero biases, LayerNorm 1 and 0; the lattice
    attention biases zero."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    for sub in module.modules():  # after the loop above, which visits these tables after their parent
        if isinstance(sub, LatticePositionBias):
            nn.init.zeros_(sub.distance_bias.weight)
            nn.init.zeros_(sub.relation_bias.weight)


class LatticeModel(nn.Module):
    """Embeddings + layers; ``forward`` returns the last hidden states [batch, n, hidden]."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        self.config = config
        self.embeddings = LatticeEmbeddings(config)
        self.position_bias = LatticePositionBias(config)
        self.layers = nn.ModuleList(LatticeLayer(config) for _ in range(config.num_layers))
        init_weights(self, config.initializer_range)
        offsets = torch.arange(NUM_DISTANCES) * (2 * config.max_distance + 1) + config.max_distance
        self.register_buffer("distance_offsets", offsets.view(1, NUM_DISTANCES, 1, 1), persistent=False)

    def lattice_structure(self, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Rows of :class:`LatticePositionBias`'s tables per unit pair, [batch, 5, n, n]: the four
        clipped distances (rows of the distance table), then the relation (a row past it)."""
        bound = self.config.max_distance
        distances = distance_matrices(starts, ends).clamp(-bound, bound) + self.distance_offsets
        relations = relation_matrix(starts, ends) + NUM_DISTANCES * (2 * bound + 1)
        return torch.cat([distances, relations.unsqueeze(1)], dim=1)

    def forward(self, input_ids, starts, ends, is_word=None, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """``input_ids``, ``starts``, ``ends`` (and the optional ones): LongTensor / BoolTensor [batch, n].

        ``is_word``: which units' ids are word ids (default: none); ``attention_mask``: 1 for a real
        unit, 0 for padding (default: all real); ``token_type_ids``: default 0."""
        if is_word is None:
            is_word = torch.zeros_like(input_ids, dtype=torch.bool)
        is_word = is_word.bool()
        if int(ends.max()) >= self.config.max_position or int(starts.min()) < 0 or bool((ends < starts).any()):
            raise ValueError(f"unit spans must satisfy 0 <= start <= end < max_position {self.config.max_position}")
        hidden = self.embeddings(input_ids, is_word, starts, ends, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # keys that are padding get the most negative score: exp() makes their weight exactly 0
        padding = attention_mask[:, None, None, :] == 0
        bias = self.position_bias(self.lattice_structure(starts, ends))
        bias = bias.masked_fill(padding, torch.finfo(bias.dtype).min).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, bias)
        return hidden


# ---------------------------------------------------------------- pretraining


class LatticeLMHead(nn.Module):
    """BERT's MLM head: dense + activation + LayerNorm, then the embedding table (passed in, so the
    decoder is tied to it by construction) transposed, plus an output bias."""

    def __init__(self, config: LatticeConfig, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(self.act(self.dense(hidden))), table, self.bias)


@dataclass
class LatticePretrainingOutput:
    """Without labels: ``char_logits`` [batch, n, char vocab] and ``word_logits`` [batch, n, word
    vocab] for every unit, ``loss`` None.  With labels: the logits of the predicted units only
    ([masked characters, char vocab] and [masked words, word vocab], in row-major unit order) and the
    loss.  ``hidden_states``: the encoder's output [batch, n, hidden]."""

    loss: torch.Tensor | None
    char_logits: torch.Tensor
    word_logits: torch.Tensor
    hidden_states: torch.Tensor


class LatticeForPretraining(nn.Module):
    """:class:`LatticeModel` + masked segment prediction: a character head and a word head."""

    def __init__(self, config: LatticeConfig):
        super().__init__()
        self.config = config
        self.lattice = LatticeModel(config)
        self.char_head = LatticeLMHead(config, config.char_vocab_size)
        self.word_head = LatticeLMHead(config, config.word_vocab_size)
        init_weights(self.char_head, config.initializer_range)
        init_weights(self.word_head, config.initializer_range)

    def forward(self, input_ids, starts, ends, is_word=None, attention_mask=None, token_type_ids=None,
                char_labels=None, word_labels=None) -> LatticePretrainingOutput:
        """Labels (either or both): LongTensor [batch, n], -100 for units not predicted.  The loss is
        the cross-entropy summed over the predicted characters and words, divided by their number
        (0 when there are none)."""
        hidden = self.lattice(input_ids, starts, ends, is_word, attention_mask, token_type_ids)
        char_table = self.lattice.embeddings.char_embeddings.weight
        word_table = self.lattice.embeddings.word_embeddings.weight
        if char_labels is None and word_labels is None:
            return LatticePretrainingOutput(None, self.char_head(hidden, char_table),
                                            self.word_head(hidden, word_table), hidden)
        # like BERT's gather_indexes: the heads run on the predicted units only
        losses, count, logits = [], 0, []
        heads = ((char_labels, self.char_head, char_table), (word_labels, self.word_head, word_table))
        for labels, head, table in heads:
            if labels is None:
                labels = torch.full_like(input_ids, -100)
            chosen = labels != -100
            unit_logits = head(hidden[chosen], table)
            losses.append(F.cross_entropy(unit_logits.float(), labels[chosen], reduction="sum"))
            count += int(chosen.sum())
            logits.append(unit_logits)
        loss = (losses[0] + losses[1]) / max(count, 1)
        return LatticePretrainingOutput(loss, logits[0], logits[1], hidden)


# ---------------------------------------------------------------- from a character BERT


def from_char_bert(bert: nn.Module, char_vocab: Mapping[str, int], word_vocab: Mapping[str, int], *,
                   max_distance: int = 64, unk_token: str = "[UNK]") -> LatticeForPretraining:
    """A Lattice-BERT that computes what the character BERT ``bert`` computes on lattices of
    characters only, plus a word table for ``word_vocab``.

    ``bert``: a transformers ``BertModel`` or ``BertForMaskedLM`` (``BertForPreTraining`` works too);
    its MLM head, when it has one, becomes the character head (and the word head's transform).
    ``char_vocab``: BERT's tokenizer vocabulary (token -> id).  ``word_vocab``: word -> id, the ids
    exactly ``0 .. len(word_vocab) - 1``; each word's embedding starts as the mean of its characters'
    embeddings (a character missing from ``char_vocab`` counts as ``unk_token``).
    """
    encoder = getattr(bert, "bert", bert)
    predictions = getattr(getattr(bert, "cls", None), "predictions", None)
    bc = encoder.config
    if getattr(bc, "position_embedding_type", "absolute") != "absolute" or getattr(bc, "is_decoder", False):
        raise BertkitError("from_char_bert needs an encoder BERT with absolute position embeddings")
    if bc.hidden_act not in ACTIVATIONS:
        raise BertkitError(f"from_char_bert: BERT's activation {bc.hidden_act!r} is not one of "
                           f"{', '.join(ACTIVATIONS)}")
    if sorted(word_vocab.values()) != list(range(len(word_vocab))):
        raise BertkitError("word_vocab's ids must be exactly 0 .. len(word_vocab) - 1")
    if unk_token not in char_vocab:
        raise BertkitError(f"char_vocab has no {unk_token}")
    config = LatticeConfig(
        char_vocab_size=bc.vocab_size, word_vocab_size=max(len(word_vocab), 1), hidden_size=bc.hidden_size,
        num_layers=bc.num_hidden_layers, num_heads=bc.num_attention_heads, intermediate_size=bc.intermediate_size,
        max_position=bc.max_position_embeddings, max_distance=max_distance, type_vocab_size=bc.type_vocab_size,
        hidden_act=bc.hidden_act, dropout=bc.hidden_dropout_prob, attention_dropout=bc.attention_probs_dropout_prob,
        layer_norm_eps=bc.layer_norm_eps, initializer_range=bc.initializer_range,
    )
    model = LatticeForPretraining(config)
    ours, theirs = model.lattice, encoder
    with torch.no_grad():
        emb, bert_emb = ours.embeddings, theirs.embeddings
        emb.char_embeddings.weight.copy_(bert_emb.word_embeddings.weight)
        emb.start_position_embeddings.weight.copy_(bert_emb.position_embeddings.weight / 2)
        emb.end_position_embeddings.weight.copy_(bert_emb.position_embeddings.weight / 2)
        emb.token_type_embeddings.weight.copy_(bert_emb.token_type_embeddings.weight)
        _copy(emb.LayerNorm, bert_emb.LayerNorm)
        for layer, bert_layer in zip(ours.layers, theirs.encoder.layer):
            attention = bert_layer.attention
            for name in ("query", "key", "value"):
                _copy(getattr(layer.attention, name), getattr(attention.self, name))
            _copy(layer.attention_output, attention.output.dense)
            _copy(layer.attention_norm, attention.output.LayerNorm)
            _copy(layer.intermediate, bert_layer.intermediate.dense)
            _copy(layer.output, bert_layer.output.dense)
            _copy(layer.output_norm, bert_layer.output.LayerNorm)
        if predictions is not None:
            for head in (model.char_head, model.word_head):
                _copy(head.dense, predictions.transform.dense)
                _copy(head.LayerNorm, predictions.transform.LayerNorm)
            model.char_head.bias.copy_(predictions.decoder.bias if predictions.decoder.bias is not None
                                       else predictions.bias)
        table = emb.char_embeddings.weight
        unk = char_vocab[unk_token]
        for word, index in word_vocab.items():
            ids = [char_vocab.get(c, unk) for c in word]
            emb.word_embeddings.weight[index] = table[ids].mean(dim=0)
    return model


def _copy(ours: nn.Module, theirs: nn.Module) -> None:
    ours.weight.copy_(theirs.weight)
    if getattr(ours, "bias", None) is not None:
        ours.bias.copy_(theirs.bias)


# ---------------------------------------------------------------- batching


def collate_lattices(lattices: Sequence[Sequence[Unit]], char_vocab: Mapping[str, int], word_vocab: Mapping[str, int],
                     masked: Sequence[Sequence[bool]] | None = None, *,
                     add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
    """Lattices as padded tensors, the keyword arguments of :class:`LatticeForPretraining` (and,
    less the labels, of :class:`LatticeModel`).

    A unit of one position (start == end) is a character, looked up in ``char_vocab`` as it is
    (``[UNK]`` if absent; normalise the text as the tokenizer would before building lattices); a
    longer one is a word and must be in ``word_vocab`` (ValueError otherwise: build lattices with a
    :class:`.lattice.Lexicon` of the word vocabulary).  With ``add_special_tokens`` each lattice becomes
    ``[CLS]`` (position 0), its units in order with positions shifted by one, then ``[SEP]`` after the
    last character: unit k of a lattice is row ``1 + k``.  Padding: ``[PAD]`` at position 0,
    attention_mask 0.

    ``masked`` (per lattice, per unit, e.g. from :func:`.lattice.mask_segments`): those units' inputs
    become the character ``[MASK]`` and their ids go into ``char_labels`` / ``word_labels``.

    Returns LongTensors [batch, n] ``input_ids``, ``starts``, ``ends``, ``attention_mask``, a BoolTensor
    ``is_word``, and, with ``masked``, ``char_labels`` and ``word_labels`` (-100 where not predicted).
    """
    needed = ["[PAD]", "[UNK]"] + (["[CLS]", "[SEP]"] if add_special_tokens else [])
    needed += ["[MASK]"] if masked is not None else []
    missing = [t for t in needed if t not in char_vocab]
    if missing:
        raise ValueError(f"char_vocab lacks {', '.join(missing)}")
    if masked is not None and len(masked) != len(lattices):
        raise ValueError(f"{len(masked)} masks for {len(lattices)} lattices")
    unk, shift = char_vocab["[UNK]"], int(add_special_tokens)
    rows = []  # per lattice: (id, is_word, start, end, char label, word label) per unit
    for index, units in enumerate(lattices):
        flags = masked[index] if masked is not None else [False] * len(units)
        if len(flags) != len(units):
            raise ValueError(f"lattice {index}: {len(flags)} mask flags for {len(units)} units")
        row = [(char_vocab["[CLS]"], False, 0, 0, -100, -100)] if add_special_tokens else []
        for unit, mask in zip(units, flags):
            if not 0 <= unit.start <= unit.end:
                raise ValueError(f"lattice {index}: unit {unit} has no valid span")
            start, end = unit.start + shift, unit.end + shift
            if unit.start == unit.end:
                cid = char_vocab.get(unit.text, unk)
                row.append((char_vocab["[MASK]"], False, start, end, cid, -100) if mask
                           else (cid, False, start, end, -100, -100))
            else:
                if unit.text not in word_vocab:
                    raise ValueError(f"lattice {index}: word {unit.text!r} is not in word_vocab")
                wid = word_vocab[unit.text]
                row.append((char_vocab["[MASK]"], False, start, end, -100, wid) if mask
                           else (wid, True, start, end, -100, -100))
        if add_special_tokens:
            last = max((u.end for u in units), default=-1) + 1 + shift
            row.append((char_vocab["[SEP]"], False, last, last, -100, -100))
        rows.append(row)
    width = max((len(r) for r in rows), default=0)
    pad = (char_vocab["[PAD]"], False, 0, 0, -100, -100)
    table = [r + [pad] * (width - len(r)) for r in rows]

    def column(k: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor([[unit[k] for unit in r] for r in table], dtype=dtype).view(len(table), width)

    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    batch = {"input_ids": column(0), "is_word": column(1, torch.bool), "starts": column(2), "ends": column(3),
             "attention_mask": torch.tensor(mask, dtype=torch.long).view(len(rows), width)}
    if masked is not None:
        batch["char_labels"], batch["word_labels"] = column(4), column(5)
    return batch


# ---------------------------------------------------------------- files


# the model classes a directory may hold (class name, as lattice_config.json records it -> class) and
# the manifest kind each is saved as by default; the fine-tuned models of :mod:`.heads` add theirs
MODEL_CLASSES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (LatticeModel, LatticeForPretraining)}
MODEL_KINDS = {"LatticeModel": "lattice-encoder", "LatticeForPretraining": "lattice-pretraining"}


def register_model(kind: str):
    """Class decorator: a Lattice-BERT model class that :func:`save_lattice` saves (as manifest
    ``kind`` unless told otherwise) and :func:`load_lattice` loads.  Its ``config_class`` (default
    :class:`LatticeConfig`) reads ``lattice_config.json``."""

    def register(cls):
        MODEL_CLASSES[cls.__name__], MODEL_KINDS[cls.__name__] = cls, kind
        return cls

    return register


def save_lattice(model: nn.Module, directory: Path | str, dtype: torch.dtype | None = None,
                 kind: str | None = None) -> Path:
    """Write ``model.safetensors`` (in ``dtype``, e.g. float16 for half the size; loading gives
    float32 again), ``lattice_config.json`` and ``bertkit.json`` (manifest ``kind``, by default
    the class's) into ``directory``, each replacing its namesake by one rename (other files
    there, e.g. a vocabulary, stay).  ``model``: a class of :data:`MODEL_CLASSES`.  For a directory
    that also holds the tokenizer and word vocabulary: :func:`bertkit.multigrain.io.save_lattice_dir`."""
    if MODEL_CLASSES.get(type(model).__name__) is not type(model):
        raise TypeError(f"save_lattice saves a Lattice-BERT model ({', '.join(MODEL_CLASSES)}), "
                        f"not {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = kind or MODEL_KINDS[type(model).__name__]
    with atomic_entries(directory, last=modelio.MANIFEST) as staging:
        save_weights(model, staging / WEIGHTS_FILE, dtype=dtype)
        write_json_atomic(staging / CONFIG_FILE, {"architectures": [type(model).__name__], **model.config.to_dict()})
        modelio.Manifest(kind, architecture=ARCHITECTURE, config={"lattice_config": CONFIG_FILE}).save(staging)
    return directory


def load_lattice(directory: Path | str) -> nn.Module:
    """The model :func:`save_lattice` wrote (its class, float32, in eval mode); BertkitError if the
    directory does not hold one or its weights do not match its config.  A fine-tuned model
    (:mod:`.heads`) also gets the directory's word vocabulary, which its inputs are built with."""
    from . import heads  # noqa: F401  (registers the fine-tuned models' classes)

    directory = Path(directory)
    try:
        data = dict(read_json(directory / CONFIG_FILE))
        names = data.pop("architectures")
        cls = MODEL_CLASSES[names[0]]
        config = getattr(cls, "config_class", LatticeConfig).from_dict(data)
    except FileNotFoundError:
        raise BertkitError(f"{directory} has no {CONFIG_FILE}: not a Lattice-BERT model directory") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise BertkitError(f"{directory / CONFIG_FILE} is corrupt: {exc}") from None
    model = cls(config)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except Exception as exc:  # a missing, truncated or mis-shaped file
        raise BertkitError(f"cannot load the weights of {directory}: {modelio._first_line(exc)}") from None
    if missing or unexpected:
        raise BertkitError(f"{directory}: weights do not match {CONFIG_FILE}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if isinstance(model, heads.LatticeTaskModel):
        model.words = heads.directory_words(directory, config)
    return model.float().eval()


@modelio.register_architecture(ARCHITECTURE)
def build(directory: Path, cls=None, **kwargs) -> nn.Module:
    """The builder :func:`bertkit.core.modelio.load_model` calls for a ``lattice-bert`` directory:
    ``cls`` LatticeModel gives the encoder (of any saved model), None what was saved; a sequence or
    token classification class (transformers' ``AutoModelFor...`` ones too, as the classification
    and NER commands ask) is built by :func:`.heads.build_task_model`."""
    if cls not in (None, LatticeModel, LatticeForPretraining):
        from .heads import build_task_model

        return build_task_model(Path(directory), cls, **kwargs)
    if kwargs.pop("dtype", None) not in (None, torch.float32) or kwargs:
        raise BertkitError(f"{directory} is a Lattice-BERT model: it loads in float32, without options")
    model = load_lattice(directory)
    if cls is LatticeModel:
        return getattr(model, "lattice", model)
    if cls is LatticeForPretraining and not isinstance(model, LatticeForPretraining):
        raise BertkitError(f"{directory} holds a Lattice-BERT encoder without pretraining heads")
    return model
