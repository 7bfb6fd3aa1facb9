"""Chinese spelling correction with Soft-Masked BERT (Zhang et al., ACL 2020).

The model (section 2 of the paper):
- detection network: a bidirectional GRU over the input embeddings e_i gives each character an
  error probability p_i = sigmoid(W·h_i + b) (section 2.2);
- soft masking: e'_i = p_i·e_[MASK] + (1 − p_i)·e_i, the input of the correction network, a BERT
  encoder (section 2.3);
- a residual connection adds the input embedding to the last hidden state, h'_i = h^c_i + e_i,
  before the softmax over the vocabulary (section 2.3);
- loss L = λ·L_correction + (1 − λ)·L_detection, λ = 0.8 (section 2.4), both over every
  character position.

Where we deviate, and why:
- e_i is BERT's embedding sum (word + position + segment).  We apply the soft mask to the word
  part before the sum: p·(w_mask + pos) + (1 − p)·(w_i + pos) = (p·w_mask + (1 − p)·w_i) + pos, the
  same vector, so this is the paper's equation, applied before BERT's embedding LayerNorm (the
  paper's e_i is the un-normalised sum; the normalised one is what feeds the GRU and the
  residual, as those are the vectors the encoder itself sees).
- The output layer is the checkpoint's pretrained MLM head (transform + tied decoder) instead of
  a fresh linear layer: with a small BERT trained here, reusing the head's knowledge of which
  characters fit a context matters more than with BERT-base.
- ``kind="plain"`` is the paper's BERT baseline: the same BERT fine-tuned to predict the correct
  character at every position, with no detector, soft mask or residual.
- Decoding defaults to the character's confusion set (``candidates="confusion"``, see
  ``Corrector``); the paper's open-vocabulary decoding is ``candidates="all"``.  A change is made
  only when its probability reaches a threshold, tuned on dev (``tune_threshold``) and stored
  with the model; the paper takes the argmax.
- Synthetic errors are drawn afresh each epoch.  Training follows the paper's two stages
  (section 4.1) with one change: the first stage mixes the SIGHAN pairs into the synthetic data
  (they are our only real errors, and 9.5k pairs against 139k synthetic sentences), and the
  second fine-tunes on the SIGHAN pairs alone, from the saved corrector (``_initial_corrector``).
- The detector runs in float32 outside autocast: the GRU is a small share of the time, and CUDA
  autocast refuses a binary cross-entropy on probabilities.
- The residual carries a learned weight a, h'_i = h^c_i + a·e_i (the paper's a = 1, fixed), and
  ``--residual-init 0`` starts it at 0: our output layer is the pretrained MLM head, whose tied
  decoder scores the input character highly once e_i is added, so the paper's residual makes
  the small model copy its input (equal-steps CPU control in data/models/README.md, after both
  stages: correction F1 on the deduplicated dev, at each model's saved threshold, 22.93 with
  a = 1 fixed, 25.00 learned from 0, 22.78 plain BERT; SIGHAN15 21.82, 28.69, 27.43).
- Training details the paper leaves open: a new detector's output bias starts at the training
  data's error rate (``init_detector_prior``) rather than at p = 0.5; and ``--detector-lr`` lets
  the detector, trained from scratch beside a pretrained encoder, learn faster than it (the
  paper gives one learning rate for the whole model).

Characters are the unit: every non-space character of a line is one token (looked up in the
vocabulary, else [UNK]), so positions map one to one, and only Chinese characters are ever
replaced, by single Chinese characters.  Lines longer than the model's window are corrected in
overlapping windows; each character takes its prediction from the window where it sits most
centrally.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForMaskedLM

from ..core import modelio
from ..core.errors import BertkitError

KINDS = ("soft-masked", "plain")
NEW_PARTS = ("detector", "residual_scale")  # what soft masking adds to BERT, saved beside it
DEFAULT_THRESHOLD = 0.5


class SoftMaskedBert(nn.Module):
    """Detection GRU + soft-masked BERT correction network (or the plain BERT baseline)."""

    def __init__(self, mlm: BertForMaskedLM, mask_id: int, kind: str = "soft-masked", gru_hidden: int | None = None,
                 lam: float = 0.8, residual_init: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise BertkitError(f"corrector kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.mlm, self.kind, self.lam = mlm, kind, lam
        self.threshold = DEFAULT_THRESHOLD  # the operating point; training with --dev tunes it
        hidden = mlm.config.hidden_size
        self.gru_hidden = gru_hidden or hidden // 2
        self.mask_id = mask_id
        if kind == "soft-masked":
            self.detector = nn.GRU(hidden, self.gru_hidden, batch_first=True, bidirectional=True)
            self.detector_out = nn.Linear(2 * self.gru_hidden, 1)
            # weight of the residual h'_i = h^c_i + a·e_i; the paper's a = 1, learned here
            self.residual_scale = nn.Parameter(torch.tensor(float(residual_init)))

    def init_detector_prior(self, error_rate: float) -> None:
        """Start a new detector at the training data's error rate instead of p = 0.5.

        With p near 0.5 everywhere the first steps would feed the pretrained encoder half-[MASK]
        embeddings at every position, an input it has never seen (the prior-bias initialisation
        of Lin et al. 2017, "Focal loss", section 3.3).  In our control it made no measurable
        difference by step 200; it is kept as the better-defined start."""
        if self.kind == "soft-masked":
            rate = min(max(error_rate, 1e-4), 0.5)
            with torch.no_grad():
                self.detector_out.bias.fill_(math.log(rate / (1 - rate)))

    def detect(self, embedded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """p_i, the probability that character i is wrong (padding never reaches a real position)."""
        # float32, outside autocast: cuDNN's GRU and the BCE on p need not take bfloat16
        with torch.autocast(embedded.device.type, enabled=False):
            x = embedded.float()
            # packing needs the lengths on the host: on a GPU that read would stall every step
            states = self._bigru_aligned(x, attention_mask) if x.is_cuda else self._bigru_packed(x, attention_mask)
            return torch.sigmoid(self.detector_out(states).squeeze(-1))

    def _bigru_packed(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.detector(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def _bigru_aligned(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The packed result without host-side lengths: one GRU call over the batch twice, as
        given (right-padded: the forward direction never sees padding before a character) and
        right-aligned (the backward direction starts at the last character); the other half of
        each copy is discarded.  Twice the GRU's arithmetic, no synchronisation."""
        batch, steps = attention_mask.shape
        shift = (steps - attention_mask.sum(1)).unsqueeze(1)  # padding per row, on the device
        t = torch.arange(steps, device=x.device).unsqueeze(0)
        gather = lambda v, idx: v.gather(1, idx.unsqueeze(-1).expand(-1, -1, v.shape[-1]))
        right_aligned = gather(x, (t - shift).clamp(min=0))
        out, _ = self.detector(torch.cat([x, right_aligned]))
        forward, backward = out[:batch, :, : self.gru_hidden], out[batch:, :, self.gru_hidden :]
        backward = gather(backward, (t + shift).clamp(max=steps - 1))
        return torch.cat([forward, backward], -1) * attention_mask.unsqueeze(-1).to(out.dtype)

    def encode(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer's input (BERT's last hidden state, plus the weighted residual under soft
        masking) and the detector's error probabilities (None for plain BERT)."""
        bert = self.mlm.bert
        if self.kind == "plain":
            return bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, None
        words = bert.embeddings.word_embeddings(input_ids)
        embedded = bert.embeddings(inputs_embeds=words)  # e_i: what the encoder would see unmasked
        prob = self.detect(embedded, attention_mask)
        mask_word = bert.embeddings.word_embeddings.weight[self.mask_id]
        p = prob.unsqueeze(-1).to(words.dtype)
        soft = p * mask_word + (1 - p) * words
        hidden = bert(inputs_embeds=soft, attention_mask=attention_mask).last_hidden_state
        return hidden + self.residual_scale * embedded, prob

    def forward(self, input_ids, attention_mask, labels=None, detect_labels=None) -> dict[str, torch.Tensor]:
        states, prob = self.encode(input_ids, attention_mask)
        logits = self.mlm.cls(states)
        out = {"logits": logits}
        if prob is not None:
            out["detect_prob"] = prob
        if labels is not None:
            out["loss"] = self.loss(logits, prob, labels, detect_labels, attention_mask)
        return out

    def loss(self, logits, prob, labels, detect_labels, attention_mask) -> torch.Tensor:
        correction = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        if prob is None:
            return correction
        keep = attention_mask.bool()
        with torch.autocast(prob.device.type, enabled=False):  # CUDA autocast refuses BCE on probabilities
            detection = F.binary_cross_entropy(prob.float()[keep], detect_labels.float()[keep])
        return self.lam * correction + (1 - self.lam) * detection

    # ---- persistence: a transformers BertForMaskedLM directory; the detector and residual weight
    # are the manifest's part "detector", the settings its config

    def save(self, directory: Path, tokenizer, dtype: torch.dtype | None = None) -> None:
        directory = Path(directory)
        modelio.save_pretrained(self.mlm, tokenizer, directory, dtype=dtype)
        manifest = modelio.Manifest("corrector", config={
            "kind": self.kind, "gru_hidden": self.gru_hidden, "lambda": self.lam, "mask_id": self.mask_id,
            "threshold": self.threshold, "paper": "Soft-Masked BERT, Zhang et al., ACL 2020"})
        if self.kind == "soft-masked":  # copies: on a GPU the GRU's weights share one cuDNN buffer
            modelio.save_part(self, directory, manifest, "detector", prefix=NEW_PARTS, dtype=dtype)
        manifest.save(directory)

    @staticmethod
    def manifest(path: str) -> modelio.Manifest:
        """The directory's manifest, or one clear error if it holds no corrector (checked before any work)."""
        manifest = modelio.Manifest.read(Path(path))
        if manifest.kind != "corrector":
            raise BertkitError(f"{path} is not a spelling corrector; "
                               "train one with `bertkit train --task correct`")
        return manifest

    @classmethod
    def load(cls, path: str) -> "SoftMaskedBert":
        manifest = cls.manifest(path)
        meta = manifest.config
        try:
            kind, gru_hidden, lam, mask_id = meta["kind"], int(meta["gru_hidden"]), float(meta["lambda"]), int(meta["mask_id"])
        except (ValueError, KeyError, TypeError):
            raise BertkitError(f"{manifest.source} is corrupt") from None
        mlm = modelio.load_model(path, BertForMaskedLM, dtype=torch.float32)
        if not 0 <= mask_id < mlm.config.vocab_size:
            raise BertkitError(f"{manifest.source}: mask_id {mask_id} is outside the vocabulary")
        model = cls(mlm, mask_id, kind, gru_hidden, lam)
        model.threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
        if kind == "soft-masked":
            # a detector saved before the residual had a learned weight used the paper's fixed 1
            modelio.load_part(model, Path(path), manifest, "detector", prefix=NEW_PARTS, optional=("residual_scale",))
        return model


def save_threshold(path: str, threshold: float) -> None:
    """Make ``threshold`` the corrector's default operating point (in its manifest)."""
    manifest = modelio.Manifest.read(Path(path))
    manifest.config["threshold"] = threshold
    manifest.save(Path(path))
