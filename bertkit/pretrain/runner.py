"""The masked-LM runner: masked-token accuracy and loss of a (pre)trained BERT on held-out text."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from ..core import modelio
from ..core.device import module_device
from ..core.runner import Runner
from .data import PackedSequence, WholeWordMasker, collate_mlm
from .model import MaskedLMPretrainer


class MaskedLanguageModel(Runner):
    """A BERT with its MLM head, scored on whole-word-masked sequences with fixed masks."""

    def __init__(self, model: MaskedLMPretrainer | BertForMaskedLM, tokenizer, batch_size: int = 64):
        self.model = model if isinstance(model, MaskedLMPretrainer) else MaskedLMPretrainer(model)
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.masker = WholeWordMasker(tokenizer)

    @classmethod
    def load(cls, path: str | None = None, **options) -> "MaskedLanguageModel":
        path = modelio.resolve_model(path)
        mlm = modelio.load_model(path, BertForMaskedLM, dtype=torch.float32)
        return cls(mlm.eval(), modelio.load_tokenizer(path), **options)

    def evaluate(self, sequences: Sequence[PackedSequence], seed: int = 1234) -> dict[str, float]:
        """Masked-token accuracy and loss, the masks drawn from ``seed`` (the same every call)."""
        if not sequences:
            return {}
        model = self.model
        gen = torch.Generator().manual_seed(seed)
        correct = total = 0
        loss_sum = 0.0
        device = module_device(model)
        with torch.inference_mode():
            for start in range(0, len(sequences), self.batch_size):
                batch = collate_mlm(sequences[start : start + self.batch_size], self.masker, self.tokenizer, gen)
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model.masked_logits(batch["input_ids"], batch["attention_mask"], batch["mlm_positions"]).float()
                loss_sum += float(F.cross_entropy(logits, batch["mlm_labels"], reduction="sum"))
                correct += int((logits.argmax(-1) == batch["mlm_labels"]).sum())
                total += len(batch["mlm_labels"])
        return {"mlm_accuracy": correct / total, "mlm_loss": loss_sum / total}
