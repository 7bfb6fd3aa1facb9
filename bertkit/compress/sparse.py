"""Stage 3: unstructured pruning of the remaining Linear weights, stored sparse on disk.

Magnitude pruning zeroes the weights of smallest |W| (Han et al. 2015; the baseline of Sanh et
al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020).  Movement
pruning (Sanh et al. 2020, section 3) keeps instead the weights moving away from zero during
fine-tuning: the score of W is S = -sum_t (dL/dW)_t * W_t accumulated over the training steps,
and the lowest scores are pruned.  Both prune each matrix of the encoder (query, key, value,
attention output, the two FFN Linears) to the same ``sparsity``; embeddings, pooler and
classifier are left dense, as in Sanh et al.

On disk a mostly-zero tensor is stored as a bitmask of its non-zero entries (one bit each) plus
those entries (:func:`pack` / :func:`unpack`, exact to the bit); in memory the weights are dense
again.  Unstructured sparsity makes the files smaller, not the dense matrix products faster:
the speed comes from the structured stage.

Where we deviate, and why:
- The pruning here is one shot, to a fixed sparsity; Sanh et al. raise it on a cubic schedule
  while fine-tuning.  :class:`KeepSparse` (re-applies the zeros after each optimizer step) and
  :class:`MovementScores` (accumulates S during training) are the hooks to do that with
  bertkit's training loop; :func:`movement_scores` is the same sum over given batches with the
  weights held fixed, i.e. a first-order (Taylor) saliency, what movement scores are before any
  training step.
- :class:`MovementScores` reads the gradient right after the optimizer step, so it multiplies
  it by W_{t+1} rather than W_t (the loop's only hook between backward and zero_grad).
- A bitmask instead of CSR indices: at the sparsities that keep accuracy (< 90%) one bit per
  entry is smaller than a 16- or 32-bit column index per non-zero.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import BertkitError
from ..core.weights import unwrap
from ..training.loop import TrainerHook
from .structured import encoder_layers

# ---------------------------------------------------------------- which weights, and pruning


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's Linear layers by qualified name (the matrices this stage prunes)."""
    inside = {id(m) for m in encoder_layers(unwrap(model)).modules()}
    return {name: module for name, module in unwrap(model).named_modules()
            if isinstance(module, nn.Linear) and id(module) in inside}


def prune_by_scores(model: nn.Module, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Zero, in each named Linear's weight, the ``sparsity`` fraction with the lowest scores
    (ties broken by position, so the count is exact).  Returns each matrix's sparsity."""
    if not 0.0 <= sparsity < 1.0:
        raise BertkitError(f"sparsity must lie in [0, 1), not {sparsity}")
    modules = dict(unwrap(model).named_modules())
    done = {}
    for name, score in scores.items():
        weight = modules[name].weight
        if score.shape != weight.shape:
            raise BertkitError(f"the scores of {name} have shape {tuple(score.shape)}, its weight {tuple(weight.shape)}")
        k = round(sparsity * weight.numel())
        mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[torch.argsort(score.flatten().to(weight.device), stable=True)[:k]] = False
        with torch.no_grad():
            weight.masked_fill_(~mask.view_as(weight), 0.0)  # +0.0: a product with 0 would leave -0.0
        done[name] = k / weight.numel()
    return done


def magnitude_prune(model: nn.Module, sparsity: float) -> dict:
    """Magnitude pruning of every encoder Linear to ``sparsity``, in place; the stage's record."""
    scores = {name: m.weight.detach().abs() for name, m in encoder_linears(model).items()}
    prune_by_scores(model, scores, sparsity)
    return {"stage": "sparse", "method": "magnitude", "sparsity": sparsity, "measured": round(sparsity_of(model), 6)}


def movement_prune(model: nn.Module, scores: dict[str, torch.Tensor], sparsity: float) -> dict:
    """Movement pruning (Sanh et al. 2020) with ``scores`` from :func:`movement_scores` or
    :class:`MovementScores`, in place; the stage's record."""
    prune_by_scores(model, scores, sparsity)
    return {"stage": "sparse", "method": "movement", "sparsity": sparsity, "measured": round(sparsity_of(model), 6)}


def movement_scores(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """S = -sum over ``batches`` of dL/dW * W for each encoder Linear (no weight changes).  The
    loss is the cross-entropy to ``labels`` in the batch, else to the model's own predictions."""
    linears = encoder_linears(model)
    weights = [m.weight for m in linears.values()]
    scores = [torch.zeros_like(w) for w in weights]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                device = weights[0].device
                logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits
                labels = batch.get("labels")
                labels = logits.detach().argmax(-1) if labels is None else labels.to(device)
                grads = torch.autograd.grad(F.cross_entropy(logits, labels), weights)
                for score, grad, weight in zip(scores, grads, weights):
                    score -= grad * weight.detach()
    finally:
        model.train(was_training)
    return dict(zip(linears, scores))


def sparsity_of(model: nn.Module) -> float:
    """The fraction of zeros over the encoder's Linear weights."""
    weights = [m.weight for m in encoder_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / max(sum(w.numel() for w in weights), 1)


class KeepSparse(TrainerHook):
    """Keeps the zeros of the encoder's Linear weights at zero while training goes on (the mask
    is taken when the hook is made): fine-tuning after pruning without losing the sparsity."""

    def __init__(self, model: nn.Module):
        self.masks = {name: m.weight.detach() != 0 for name, m in encoder_linears(model).items()}

    def after_optimizer_step(self, trainer, model, step):
        modules = dict(unwrap(model).named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                modules[name].weight.masked_fill_(~mask, 0.0)


class MovementScores(TrainerHook):
    """Accumulates Sanh et al.'s movement scores S -= dL/dW * W during training (``.scores``,
    by module name), for :func:`movement_prune` once training is done."""

    def __init__(self):
        self.scores: dict[str, torch.Tensor] = {}

    def after_optimizer_step(self, trainer, model, step):
        for name, linear in encoder_linears(model).items():
            if linear.weight.grad is not None:
                score = self.scores.setdefault(name, torch.zeros_like(linear.weight))
                score -= linear.weight.grad * linear.weight.detach()


# ---------------------------------------------------------------- storage: bitmask + values

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NO_SIGN = {1: 0x7F, 2: 0x7FFF, 4: 0x7FFFFFFF, 8: 0x7FFFFFFFFFFFFFFF}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers of the same width (NaN survives exactly; fp8 has no
    comparison kernels)."""
    return tensor.contiguous().view(_SAME_SIZE_INT[tensor.element_size()])


def _nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Where an entry is not zero; for floats -0.0 counts as zero (a pruned weight multiplied by
    0 is often -0.0, and storing those would undo the saving)."""
    bits = _bits(flat)
    return (bits & _NO_SIGN[flat.element_size()]) != 0 if flat.is_floating_point() else bits != 0


def pack(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """A tensor as ``mask`` (one bit per entry, set where the entry is not zero, eight to a byte,
    least significant bit first), ``values`` (those entries, in order, same dtype) and ``shape``.
    :func:`unpack` gives back the same bits, except that -0.0 comes back as 0.0."""
    tensor = tensor.detach().cpu()
    flat = tensor.reshape(-1)
    nonzero = _nonzero(flat)
    padded = torch.cat([nonzero, nonzero.new_zeros((-len(nonzero)) % 8)]).view(-1, 8).to(torch.uint8)
    mask = (padded << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
    return {"mask": mask, "values": flat[nonzero].clone(), "shape": torch.tensor(tensor.shape, dtype=torch.int64)}


def unpack(mask: torch.Tensor, values: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """The dense tensor :func:`pack` stored."""
    size = tuple(int(n) for n in shape.tolist())
    numel = 1
    for n in size:
        numel *= n
    if mask.dtype != torch.uint8 or mask.dim() != 1 or len(mask) != (numel + 7) // 8:
        raise ValueError(f"a sparse mask of {len(mask)} bytes does not fit shape {size}")
    nonzero = ((mask[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).bool().view(-1)[:numel]
    if int(nonzero.sum()) != len(values):
        raise ValueError(f"a sparse mask with {int(nonzero.sum())} entries set comes with {len(values)} values")
    dense = torch.zeros(numel, dtype=_SAME_SIZE_INT[values.element_size()])
    dense[nonzero] = _bits(values)
    return dense.view(values.dtype).view(size)


def packed_bytes(tensor: torch.Tensor) -> int:
    """Bytes :func:`pack` needs for ``tensor`` (mask + values + shape)."""
    nonzero = int(_nonzero(tensor.detach().cpu().reshape(-1)).sum())
    return (tensor.numel() + 7) // 8 + nonzero * tensor.element_size() + 8 * tensor.dim()


def worth_packing(tensor: torch.Tensor) -> bool:
    """Whether the bitmask form is smaller than the dense one (for float32, under ~97% dense;
    for int8 codes, under ~87%)."""
    return tensor.dim() >= 1 and packed_bytes(tensor) < tensor.numel() * tensor.element_size()
