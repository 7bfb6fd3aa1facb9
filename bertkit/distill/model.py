"""Early exit by self-distillation: FastBERT (Liu et al., ACL 2020), with PABEE's patience rule
(Zhou et al., NeurIPS 2020) beside it.

A fine-tuned BERT classifier (the *teacher*: the backbone and its last-layer classifier) gets a
small *student* classifier after each layer but the last.  Stage 2 of FastBERT freezes backbone and
teacher and trains the students to match the teacher's distribution (section 3.2, "self-
distillation": the sum over students of KL(p_student || p_teacher)), so unlabelled text serves
as well as labelled.  At inference (section 3.3) a sample leaves at the first layer whose
prediction is certain enough: normalised entropy H(p) / log N below ``speed``; or, with PABEE's
rule, once ``patience`` consecutive classifiers have agreed with the one before.

The student follows the paper's classifier (section 3.1, Table 1): a fully connected layer to 128
dimensions (tanh), self-attention over the 128-wide tokens, a fully connected 128 -> 128 (tanh) on
[CLS], and a fully connected layer to the N classes.

Where we deviate, and why:
- The teacher is the classifier `bertkit train` fine-tunes (BERT's own head: pooler + linear on
  [CLS], Devlin et al. 2019), not a FastBERT-design classifier: the backbone and teacher then stay
  a plain ``BertForSequenceClassification`` that transformers loads, and any fine-tuned classifier
  can be given a fast path without retraining it.
- The student's self-attention attends from the [CLS] query only: the one output the next layer
  uses, and the same value as full self-attention read at [CLS], for 1/T of the attention
  product's cost (the query projection runs over every token: one product for queries, keys and
  values costs less than slicing the weights).
- Two heads in the student's attention, as FastBERT's released code has it (the paper gives none).
- PABEE trains its classifiers on the labels with a weighted loss; here the patience rule runs on
  the same self-distilled students, so both rules are compared on one model.
- Batched inference, where FastBERT and DeeBERT run one sample at a time: a pool of samples runs
  layer by layer in batches; those that leave drop out and the rest regroup into full batches.
- A text longer than the window is split into windows that exit on their own; its probabilities
  are the windows' mean and its exit layer the deepest window's (the cost it paid).
- BERT only (``model_type`` bert, e.g. bert-base-chinese, MiniLM): the layers are run one by one
  here, and other families add steps between them (Megatron-BERT's final LayerNorm) or lack
  BERT's layer list (ALBERT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from ..core.errors import BertkitError

STUDENT_WIDTH, STUDENT_HEADS = 128, 2  # FastBERT Table 1; heads as in its released code


class StudentClassifier(nn.Module):
    """FastBERT's per-layer classifier (section 3.1): FC -> self-attention -> FC on [CLS] -> FC."""

    def __init__(self, hidden: int, num_labels: int, width: int = STUDENT_WIDTH, heads: int = STUDENT_HEADS):
        super().__init__()
        self.narrow = nn.Linear(hidden, width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.dense = nn.Linear(width, width)
        self.out = nn.Linear(width, num_labels)

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """Logits from a layer's token states; ``padding`` is True at padded positions (None: none)."""
        x = torch.tanh(self.narrow(hidden))
        return self.out(torch.tanh(self.dense(self._cls_attention(x, padding))))

    def _cls_attention(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """``self.attention`` (nn.MultiheadAttention's weights and math) for the [CLS] query alone,
        through SDPA: the module's own forward costs more in checks than this small attention
        does in arithmetic, and it runs after every layer of every sample."""
        att = self.attention
        n, length, width = x.shape
        heads = att.num_heads
        # one product for queries, keys and values of every token (the extra queries cost less than
        # the slicing that would avoid them); the [CLS] query is read out of it
        qkv = F.linear(x, att.in_proj_weight, att.in_proj_bias).view(n, length, 3, heads, width // heads)
        q, k, v = qkv[:, :1, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        mask = None if padding is None else ~padding[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [n, heads, 1, head width]
        return att.out_proj(out.reshape(n, width))


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """FastBERT's uncertainty (equation 6): H(p) / log N, in [0, 1]; 0 * log 0 counts as 0."""
    return torch.special.entr(probs).sum(-1) / math.log(probs.shape[-1])


@dataclass(frozen=True)
class ExitRule:
    """When a sample leaves: ``speed`` (entropy below it) or ``patience`` (PABEE), never both."""

    speed: float | None = None
    patience: int | None = None

    def __post_init__(self):
        if (self.speed is None) == (self.patience is None):
            raise BertkitError("give --speed or --patience, not both")
        if self.speed is not None and not 0.0 <= self.speed <= 1.0:
            raise BertkitError(f"--speed must be within [0, 1], not {self.speed}")
        if self.patience is not None and self.patience < 1:
            raise BertkitError(f"--patience must be at least 1, not {self.patience}")

    def leaves(self, probs: torch.Tensor, streak: torch.Tensor) -> torch.Tensor:
        """Which samples leave at this layer, given their probabilities and agreement streaks."""
        if self.speed is not None:
            return normalized_entropy(probs) < self.speed
        return streak >= self.patience

    def leaves_one(self, probs: list[float], streak: int) -> bool:
        """:meth:`leaves` for one sample, in Python numbers: at batch 1 the five tensor operations
        of the batched rule cost as much as a student's arithmetic (the entropy here is in double
        precision, the batched one in single: they can disagree only within ~1e-7 of ``speed``)."""
        if self.speed is not None:
            entropy = -sum(p * math.log(p) for p in probs if p > 0.0)
            return entropy / math.log(len(probs)) < self.speed
        return streak >= self.patience

    @property
    def name(self) -> str:
        return f"speed {self.speed}" if self.speed is not None else f"patience {self.patience}"


class EarlyExitClassifier(nn.Module):
    """A fine-tuned ``BertForSequenceClassification`` (backbone + teacher head) with one student
    classifier after each layer but the last, where the teacher speaks."""

    def __init__(self, classifier: nn.Module, students: nn.ModuleList | None = None):
        super().__init__()
        self.classifier = classifier
        base = classifier.base_model
        if classifier.config.model_type != "bert" or getattr(base, "pooler", None) is None:
            raise BertkitError(f"early exit runs BERT classifiers (model_type bert, with BERT's pooler), not "
                               f"{classifier.config.model_type!r}")
        cfg = classifier.config
        if cfg.num_hidden_layers < 2:
            raise BertkitError("early exit needs at least 2 layers: a 1-layer model has nowhere to leave early")
        self.layers = base.encoder.layer
        self.students = students if students is not None else nn.ModuleList(
            StudentClassifier(cfg.hidden_size, cfg.num_labels) for _ in range(len(self.layers) - 1))
        if len(self.students) != len(self.layers) - 1:
            raise BertkitError(f"{len(self.students)} students for {len(self.layers)} layers: the directory is corrupt")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids, token_type_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states after the embeddings, and the additive attention mask the layers take."""
        hidden = self.classifier.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return hidden, additive_mask(attention_mask, hidden.dtype)

    def layer(self, i: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.layers[i](hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def exit_logits(self, i: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Layer ``i``'s classifier: a student, or after the last layer the teacher (``attention_mask``
        None: no padding, as for one sample alone)."""
        if i < len(self.students):
            return self.students[i](hidden, None if attention_mask is None else attention_mask == 0)
        head = self.classifier
        return head.classifier(head.dropout(head.base_model.pooler(hidden)))

    def all_logits(self, input_ids, token_type_ids, attention_mask) -> list[torch.Tensor]:
        """Every classifier's logits (students first, teacher last), the whole batch to the end."""
        hidden, mask = self.embed(input_ids, token_type_ids, attention_mask)
        logits = []
        for i in range(self.num_layers):
            hidden = self.layer(i, hidden, mask)
            logits.append(self.exit_logits(i, hidden, attention_mask))
        return logits

    def forward(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        """Stage 2's loss for a batch: the students against the frozen teacher (backbone and teacher
        in eval mode and without gradients, so they give their inference distribution)."""
        self.classifier.eval()
        with torch.no_grad():
            hidden, mask = self.embed(input_ids, token_type_ids, attention_mask)
            states = []
            for i in range(self.num_layers):
                hidden = self.layer(i, hidden, mask)
                states.append(hidden)
            teacher = self.exit_logits(self.num_layers - 1, hidden, attention_mask)
        students = [self.exit_logits(i, h, attention_mask) for i, h in enumerate(states[:-1])]
        return distillation_loss(students, teacher)

    @torch.inference_mode()
    def early_exit(self, input_ids, token_type_ids, attention_mask, rule: ExitRule,
                   batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, exit layer 1..L) per sample of a right-padded pool.

        The pool runs layer by layer, in batches of at most ``batch_size`` samples (default: all).
        Samples that leave drop out, and the ones still running regroup, across the batches they
        came from, into full batches sorted by length, padded only as far as their longest member:
        a sample that has left costs nothing more, and the few that go deep still run in full
        batches (without regrouping, a batch of 32 where 28 left runs its deep layers on 4)."""
        n = input_ids.shape[0]
        if n == 1:
            return self._exit_one(input_ids, token_type_ids, attention_mask, rule)
        size = batch_size or n
        probs_out = torch.zeros(n, self.classifier.config.num_labels)
        layer_out = torch.zeros(n, dtype=torch.long)
        lengths = attention_mask.sum(1)
        streak = torch.zeros(n, dtype=torch.long, device=input_ids.device)
        previous = torch.full((n,), -1, dtype=torch.long, device=input_ids.device)
        active = torch.argsort(lengths, stable=True)  # sample ids still running, shortest first
        rows: list[torch.Tensor] = []  # their token states, each cut to its length (after layer 1)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            staying, kept_rows = [], []
            for start in range(0, len(active), size):
                ids = active[start:start + size]
                sizes = lengths[ids].tolist()
                width = max(sizes)
                mask = attention_mask[ids, :width]
                if i == 0:
                    hidden, additive = self.embed(input_ids[ids, :width], token_type_ids[ids, :width], mask)
                else:
                    hidden = pad_sequence(rows[start:start + size], batch_first=True)
                    additive = additive_mask(mask, hidden.dtype)
                hidden = self.layer(i, hidden, additive)
                probs = self.exit_logits(i, hidden, mask).float().softmax(-1)
                guess = probs.argmax(-1)
                streak[ids] = torch.where(guess == previous[ids], streak[ids] + 1, torch.zeros_like(guess))
                previous[ids] = guess
                leave = torch.ones_like(guess, dtype=torch.bool) if last else rule.leaves(probs, streak[ids])
                probs_out[ids[leave].cpu()] = probs[leave].cpu()
                layer_out[ids[leave].cpu()] = i + 1
                stay = (~leave).nonzero().flatten().tolist()
                staying.append(ids[stay])
                kept_rows.extend(hidden[j, :sizes[j]] for j in stay)
            active, rows = torch.cat(staying), kept_rows
            if not len(active):
                break
        return probs_out, layer_out

    def _exit_one(self, input_ids, token_type_ids, attention_mask, rule: ExitRule) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`early_exit` for one sample: the same rule, without the bookkeeping a shrinking
        batch needs (at batch 1 it costs about as much as a student's arithmetic), and without a mask:
        the sample is cut to its length, so nothing is padding."""
        n = int(attention_mask.sum())
        hidden = self.classifier.base_model.embeddings(input_ids=input_ids[:, :n], token_type_ids=token_type_ids[:, :n])
        streak, previous = 0, -1
        for i in range(self.num_layers):
            hidden = self.layer(i, hidden, None)
            probs = self.exit_logits(i, hidden, None).float().softmax(-1)
            if i == self.num_layers - 1:
                break
            p = probs[0].tolist()
            guess = max(range(len(p)), key=p.__getitem__)  # the first largest, as argmax
            streak, previous = (streak + 1 if guess == previous else 0), guess
            if rule.leaves_one(p, streak):
                break
        return probs.cpu(), torch.tensor([i + 1])


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BERT's additive attention mask, broadcast over heads and queries: what its eager and SDPA
    attention both add (0 where attended, the dtype's minimum at padding)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def distillation_loss(student_logits: list[torch.Tensor], teacher_logits: torch.Tensor) -> torch.Tensor:
    """FastBERT's self-distillation loss (equation 5): sum over students of KL(p_s || p_t)."""
    log_t = F.log_softmax(teacher_logits.float(), -1)
    loss = teacher_logits.new_zeros((), dtype=torch.float32)
    for logits in student_logits:
        log_s = F.log_softmax(logits.float(), -1)
        loss = loss + (log_s.exp() * (log_s - log_t)).sum(-1).mean()
    return loss
