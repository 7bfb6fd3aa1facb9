"""Stage 1: vocabulary pruning to the tokens a corpus uses (and positions to the window).

TextPruner's vocabulary pruning (Shen et al., ACL 2022 demo): tokens that never occur in the
task's texts are removed from the tokenizer and their rows from the embedding matrix; nothing
else changes, so the model computes the same function on every text whose tokens were all kept.
A word seen in the corpus also keeps its WordPiece segmentation: greedy longest-match-first
finds the same pieces in a subset of the vocabulary that still holds them (checked on
all-MiniLM-L6-v2 and AG News: same tokens, same logits); an unseen word may split differently.

Where we deviate, and why:
- The kept tokens are the special tokens plus every token seen ``min_count`` times (TextPruner
  keeps those seen at all); a pruned token becomes ``[UNK]``.
- The position table is cut to the ``--max-length`` window too (:func:`prune_positions`): a
  model bertkit runs with that window never reads the rows beyond it (longer texts are split into
  windows); the config's ``max_position_embeddings`` follows, and transformers loads the result.
- The new tokenizer is a plain WordPiece ``BertTokenizer`` with the old one's casing options
  (``bertkit.core.vocab.make_tokenizer``, shared with ``bertkit pretrain --prune-vocab``), even
  when the old one was a fast tokenizer: only the vocabulary is rewritten.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from torch import nn

from ..core.errors import BertkitError
from ..core.vocab import SPECIAL_TOKENS, prune_vocab, shrink_embeddings


def prune_vocabulary(model, tokenizer, texts: Iterable[str | tuple[str, str]], min_count: int = 1):
    """Keep the special tokens and the tokens ``texts`` use (each text a string or a pair).

    ``model`` (a BERT model with word embeddings) is changed in place: its embedding rows are
    those of the kept tokens, in the order of their old ids, and ``config.vocab_size`` /
    ``pad_token_id`` follow.  Returns (new tokenizer, record): a kept token's new id in the new
    tokenizer is the row its old embedding moved to.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise BertkitError(f"the tokenizer lacks the special tokens {missing}: not a BERT WordPiece vocabulary")
    table = model.get_input_embeddings()
    if not isinstance(table, nn.Embedding):
        raise BertkitError("prune the vocabulary before quantizing the embeddings")
    if table.num_embeddings != len(vocab):
        raise BertkitError(f"the model has {table.num_embeddings} embedding rows for a vocabulary of {len(vocab)} tokens")
    ids = token_ids(tokenizer, texts)
    new_tokenizer, keep = prune_vocab(ids, tokenizer, min_count=min_count)
    new_tokenizer.model_max_length = tokenizer.model_max_length
    shrink_embeddings(model, keep)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:
        model.config.pad_token_id = keep.index(pad) if pad in keep else new_tokenizer.pad_token_id
    return new_tokenizer, {"stage": "vocab", "kept": len(keep), "of": len(vocab), "min_count": min_count}


def token_ids(tokenizer, texts, chunk: int = 1024) -> Iterator[list[int]]:
    """Each text's token ids (a pair's two texts one after the other), tokenized in chunks."""
    batch: list[str] = []
    for text in texts:
        batch.extend([text] if isinstance(text, str) else text)
        if len(batch) >= chunk:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def prune_positions(model, max_length: int) -> dict:
    """Keep the first ``max_length`` rows of the position table, the positions a model run with
    ``--max-length`` windows ever reads (bertkit windows longer texts, never cuts them): the same
    pruning as the vocabulary's, applied to positions.  In place; the record says how many."""
    embeddings = model.base_model.embeddings
    table = embeddings.position_embeddings
    if model.config.model_type != "bert":  # RoBERTa-style tables keep padding_idx + 1 extra rows: leave them
        return {"positions_kept": table.num_embeddings, "positions_of": table.num_embeddings}
    if not isinstance(table, nn.Embedding):
        raise BertkitError("prune the positions before quantizing the embeddings")
    old = table.num_embeddings
    if max_length < old:
        embeddings.position_embeddings = nn.Embedding.from_pretrained(table.weight.detach()[:max_length].clone(), freeze=False)
        for name in ("position_ids", "token_type_ids"):  # transformers' buffers of the table's length
            buffer = getattr(embeddings, name, None)
            if buffer is not None:
                setattr(embeddings, name, buffer[:, :max_length].clone())
        model.config.max_position_embeddings = max_length
    return {"positions_kept": min(old, max_length), "positions_of": old}
