"""Stage 2: structured pruning of attention heads and FFN neurons, physically removed.

Head importance follows Michel, Levy and Neubig, "Are Sixteen Heads Really Better than One?"
(NeurIPS 2019), section 4.1: each head's output is multiplied by a gate xi_h = 1, and the
head's importance is I_h = E_x |dL/dxi_h|, the first-order change of the loss were the head
masked.  Scores are normalised by their l2 norm within each layer before heads of different
layers are ranked together, as the paper recommends.  FFN neurons get the same score through a
gate on each intermediate activation, as TextPruner's transformer pruning (Shen et al., ACL 2022
demo) does.  The least
important heads and neurons are then *removed*: the rows of the query, key and value projections
of a removed head, the columns of the attention output projection that read it, the rows of the
first FFN Linear and the columns of the second; the matrices that remain are smaller, so the
model is smaller and faster, and computes exactly what the unpruned model computes with those
gates at 0 (tested).  Layers end up with different head counts and FFN widths; transformers 5
builds neither (its ``prune_heads`` and ``config.pruned_heads`` are gone), so a pruned model is
rebuilt from the shapes :func:`layer_shapes` records (:mod:`bertkit.compress.model`).

:func:`distillation_loss` (Hinton, Vinyals and Dean 2015, section 2) trains the pruned model
towards the uncompressed one's logits to win back the accuracy pruning costs.

Where we deviate, and why:
- |dL/dxi| is taken per batch, not per example, then summed over batches (one backward pass
  per batch; with batches of one it is the paper's estimate).
- Without labels in the batches, the loss is cross-entropy to the model's own predictions
  (the KL to its own distribution, TextPruner's label-free choice, has zero gradient at xi = 1).
- Importance is computed once and heads and neurons are pruned in one shot (Michel et al. prune
  by one ranking too; calling :func:`prune_structure` again repeats the cycle on the smaller
  model, as iterative pruning would).
- Each layer keeps at least ``minimum`` heads and neurons (default 1): with none left, a layer's
  attention would need special code, and the accuracy budget never allows it in practice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import BertkitError


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT model (``BertModel`` or one with a ``.bert`` backbone)."""
    bert = getattr(model, "bert", model)
    try:
        return bert.encoder.layer
    except AttributeError:
        raise BertkitError("structured pruning needs a BERT model (model_type bert: bert-base-chinese, MiniLM, ...)") from None


def head_size(model: nn.Module) -> int:
    """The width of one attention head: hidden size / the config's head count (pruning keeps it)."""
    return model.config.hidden_size // model.config.num_attention_heads


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Per layer: the number of attention heads and the FFN width, read from the modules."""
    size = head_size(model)
    return {"heads": [layer.attention.self.query.out_features // size for layer in encoder_layers(model)],
            "intermediate": [layer.intermediate.dense.out_features for layer in encoder_layers(model)]}


# ---------------------------------------------------------------- gates and importance


@contextlib.contextmanager
def gated(model: nn.Module, heads: Sequence[torch.Tensor | None] = (), neurons: Sequence[torch.Tensor | None] = ()):
    """Within the block, multiply each layer's head outputs by ``heads[l]`` (one value per head)
    and its FFN activations by ``neurons[l]`` (one per neuron); ``None`` (or a short list) leaves
    a layer as it is.  Michel et al.'s gates xi: 1 everywhere computes the model unchanged."""
    size, hooks = head_size(model), []

    def gate_heads(gate):
        def hook(module, args, output):
            context, weights = output[0], output[1:]
            shape = context.shape
            gated_context = (context.view(*shape[:-1], -1, size) * gate[:, None].to(context.dtype)).view(shape)
            return (gated_context, *weights)
        return hook

    def gate_neurons(gate):
        return lambda module, args, output: output * gate.to(output.dtype)

    try:
        for layer, gate in zip(encoder_layers(model), heads):
            if gate is not None:
                hooks.append(layer.attention.self.register_forward_hook(gate_heads(gate)))
        for layer, gate in zip(encoder_layers(model), neurons):
            if gate is not None:
                hooks.append(layer.intermediate.register_forward_hook(gate_neurons(gate)))
        yield
    finally:
        for hook in hooks:
            hook.remove()


@dataclass
class Importance:
    """Per layer, one score per head (``heads[l]``) and per FFN neuron (``neurons[l]``); higher
    is more important.  Raw sums of |dL/dxi| over the batches (not yet normalised)."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]


def importance(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> Importance:
    """Michel et al.'s head importance (and the same for FFN neurons) over ``batches``: dicts of
    model inputs, with ``labels`` (class ids) when the data has them.  The model is left as it
    was (its weights get no gradient, its train/eval mode is restored)."""
    shapes = layer_shapes(model)
    device = next(model.parameters()).device
    heads = [torch.ones(n, device=device, requires_grad=True) for n in shapes["heads"]]
    neurons = [torch.ones(n, device=device, requires_grad=True) for n in shapes["intermediate"]]
    totals = [torch.zeros(n, device=device) for n in shapes["heads"] + shapes["intermediate"]]
    was_training, seen = model.training, 0
    model.eval()  # no dropout: the score of a gate, not of a random subnetwork
    try:
        with gated(model, heads, neurons), torch.enable_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                logits = model(**inputs).logits
                labels = batch.get("labels")
                labels = logits.detach().argmax(-1) if labels is None else labels.to(device)
                grads = torch.autograd.grad(F.cross_entropy(logits, labels), heads + neurons)
                for total, grad in zip(totals, grads):
                    total += grad.abs()
                seen += 1
    finally:
        model.train(was_training)
    if not seen:
        raise BertkitError("head and neuron importance needs at least one batch of data")
    n = len(heads)
    return Importance(heads=[t.cpu() for t in totals[:n]], neurons=[t.cpu() for t in totals[n:]])


def select(scores: Sequence[torch.Tensor], fraction: float, minimum: int = 1, per_layer: bool = False) -> list[list[int]]:
    """Which units (heads or neurons) each layer keeps, when ``fraction`` of all of them goes.

    Global ranking (default): scores normalised by their l2 norm within each layer, the lowest
    removed first, a layer never going below ``minimum``.  ``per_layer``: each layer loses the
    same fraction (TextPruner's uniform target).  Returns the kept indices per layer, ascending."""
    if not 0.0 <= fraction <= 1.0:
        raise BertkitError(f"the fraction to prune must lie in [0, 1], not {fraction}")
    if per_layer:
        removed = [set(torch.argsort(s, stable=True)[: min(round(fraction * len(s)), max(len(s) - minimum, 0))].tolist())
                   for s in scores]
    else:
        ranked = []
        for layer, s in enumerate(scores):
            norm = s.norm()
            normed = s / norm if norm > 0 else s
            ranked += [(float(v), layer, i) for i, v in enumerate(normed.tolist())]
        ranked.sort()
        target = round(fraction * sum(len(s) for s in scores))
        left = [len(s) for s in scores]
        removed = [set() for _ in scores]
        for _, layer, i in ranked:
            if sum(map(len, removed)) >= target:
                break
            if left[layer] > minimum:
                removed[layer].add(i)
                left[layer] -= 1
    return [[i for i in range(len(s)) if i not in gone] for s, gone in zip(scores, removed)]


# ---------------------------------------------------------------- removal


def _rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight.data = linear.weight.data.index_select(0, index).clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data.index_select(0, index).clone()
    new.train(linear.training)
    return new


def _columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight.data = linear.weight.data.index_select(1, index).clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data.clone()
    new.train(linear.training)
    return new


def _check_float(model: nn.Module) -> None:
    for layer in encoder_layers(model):
        if not isinstance(layer.attention.self.query, nn.Linear) or not isinstance(layer.intermediate.dense, nn.Linear):
            raise BertkitError("prune heads and neurons before quantizing the Linear layers")


def prune_heads(model: nn.Module, keep: Sequence[Sequence[int]]) -> None:
    """Keep, in layer ``l``, only the heads ``keep[l]`` (indices into its current heads); the
    others' parameters are removed.  Every layer must keep at least one head."""
    _check_float(model)
    size = head_size(model)
    for layer, kept in zip(encoder_layers(model), keep, strict=True):
        attention = layer.attention.self
        count = attention.query.out_features // size
        kept = sorted(set(int(h) for h in kept))
        if not kept or kept[0] < 0 or kept[-1] >= count:
            raise BertkitError(f"heads to keep {kept} do not fit a layer of {count} heads (keep at least one)")
        if len(kept) == count:
            continue
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept]).to(attention.query.weight.device)
        attention.query, attention.key, attention.value = (_rows(m, index) for m in (attention.query, attention.key, attention.value))
        layer.attention.output.dense = _columns(layer.attention.output.dense, index)
        attention.num_attention_heads, attention.all_head_size = len(kept), len(kept) * size


def prune_neurons(model: nn.Module, keep: Sequence[Sequence[int]]) -> None:
    """Keep, in layer ``l``'s FFN, only the intermediate neurons ``keep[l]`` (at least one)."""
    _check_float(model)
    for layer, kept in zip(encoder_layers(model), keep, strict=True):
        width = layer.intermediate.dense.out_features
        kept = sorted(set(int(i) for i in kept))
        if not kept or kept[0] < 0 or kept[-1] >= width:
            raise BertkitError(f"neurons to keep do not fit an FFN of width {width} (keep at least one)")
        if len(kept) == width:
            continue
        index = torch.tensor(kept, device=layer.intermediate.dense.weight.device)
        layer.intermediate.dense = _rows(layer.intermediate.dense, index)
        layer.output.dense = _columns(layer.output.dense, index)


def set_layer_shapes(model: nn.Module, heads: Sequence[int], intermediate: Sequence[int]) -> None:
    """Give each layer ``heads[l]`` attention heads and an FFN of width ``intermediate[l]``, with
    new (untrained) Linear layers where a shape changes: the skeleton a pruned model's saved
    weights are loaded into."""
    size, hidden = head_size(model), model.config.hidden_size
    layers = encoder_layers(model)
    if len(heads) != len(layers) or len(intermediate) != len(layers):
        raise BertkitError(f"the shapes recorded are for {len(heads)} layers, the model has {len(layers)}")
    for layer, count, width in zip(layers, heads, intermediate):
        attention = layer.attention.self
        if count < 1 or width < 1:
            raise BertkitError("every layer keeps at least one head and one FFN neuron")
        if attention.query.out_features != count * size:
            attention.query, attention.key, attention.value = (nn.Linear(hidden, count * size) for _ in range(3))
            layer.attention.output.dense = nn.Linear(count * size, hidden)
            attention.num_attention_heads, attention.all_head_size = count, count * size
        if layer.intermediate.dense.out_features != width:
            layer.intermediate.dense = nn.Linear(hidden, width)
            layer.output.dense = nn.Linear(width, hidden)


def prune_structure(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], heads: float = 0.0,
                    neurons: float = 0.0, per_layer: bool = False, minimum: int = 1) -> dict:
    """Score heads and FFN neurons on ``batches`` (:func:`importance`), remove the ``heads`` and
    ``neurons`` fractions least important (:func:`select`) in place, and return the stage's record
    (the heads removed per layer, by their index before this stage, and the shapes left)."""
    scores = importance(model, batches)
    keep_heads = select(scores.heads, heads, minimum, per_layer)
    keep_neurons = select(scores.neurons, neurons, minimum, per_layer)
    before = layer_shapes(model)
    prune_heads(model, keep_heads)
    prune_neurons(model, keep_neurons)
    removed = {str(l): [h for h in range(n) if h not in kept]
               for l, (n, kept) in enumerate(zip(before["heads"], keep_heads)) if len(kept) < n}
    return {"stage": "structured", "heads_fraction": heads, "neurons_fraction": neurons, "per_layer": per_layer,
            "removed_heads": removed, **layer_shapes(model)}


# ---------------------------------------------------------------- distillation


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      labels: torch.Tensor | None = None, alpha: float = 0.5) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015, section 2): T^2 * KL(p_teacher^T || p_student^T),
    the distributions softened by ``temperature`` T (the T^2 keeps the gradients' scale as T
    changes); with ``labels``, ``alpha`` times that plus (1 - alpha) times the cross-entropy."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits.detach() / t, -1),
                    log_target=True, reduction="batchmean") * t * t
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def distillation_objective(teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5):
    """A ``loss(model, batch)`` for the training loop's task: :func:`distillation_loss` of the
    model being trained against ``teacher`` (the uncompressed model, frozen, on the same inputs)."""
    teacher.eval().requires_grad_(False)

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        return distillation_loss(model(**inputs).logits, teacher_logits, temperature, batch.get("labels"), alpha)

    return loss
